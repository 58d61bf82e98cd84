// ext/errors.h: the exceptions of the core and the one-line helpers that throw them.
//
// The bindings translate them: InputError -> ValueError, TypeInputError -> TypeError,
// SchedulingError -> tllm_sched._core.SchedulingError (a RuntimeError), std::out_of_range (an index
// out of range) -> IndexError, std::logic_error (a broken internal invariant) -> RuntimeError. Every InputError is thrown before any state changes.
#pragma once

#include <stdexcept>
#include <string>

namespace tllm {

/// User-input error: the bindings turn it into ValueError.
struct InputError : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};
/// Wrong-kind input (shape, dtype): the bindings turn it into TypeError.
struct TypeInputError : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};
/// A scheduling invariant the caller broke (a too-long context, chunking needed but disabled):
/// TensorRT-LLM asserts; we raise RuntimeError before anything is changed.
struct SchedulingError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

/// Out of line, so the hot paths that check keep only a compare and a call.
[[gnu::noinline, noreturn]] inline void fail_input(const std::string& msg) { throw InputError(msg); }
[[gnu::noinline, noreturn]] inline void fail_index(const std::string& msg) { throw std::out_of_range(msg); }
[[gnu::noinline, noreturn]] inline void fail_invariant(const std::string& msg) { throw std::logic_error(msg); }

}  // namespace tllm
