// ext/request_state.h: the request states (TensorRT-LLM's LlmRequestState) and their predicates.
//
// The list below is the one place the states are written: it makes the enum the bindings expose,
// the int32 constants the state column holds (state::CONTEXT_INIT, ...) and state::is_valid.
#pragma once

#include <cstdint>

namespace tllm {

/// X(name, number): TensorRT-LLM's numbering (Dec 2025); only the order matters.
#define TLLM_FOR_EACH_REQUEST_STATE(X)        \
    X(DISAGG_TRANS_ERROR, -1)                 \
    X(UNKNOWN, 0)                             \
    X(ENCODER_INIT, 1)                        \
    X(DISAGG_GENERATION_INIT, 8)              \
    X(DISAGG_GENERATION_TRANS_IN_PROGRESS, 9) \
    X(CONTEXT_INIT, 10)                       \
    X(DISAGG_CONTEXT_INIT_AND_TRANS, 11)      \
    X(DISAGG_GENERATION_TRANS_COMPLETE, 12)   \
    X(GENERATION_IN_PROGRESS, 13)             \
    X(GENERATION_TO_COMPLETE, 14)             \
    X(GENERATION_COMPLETE, 20)                \
    X(DISAGG_CONTEXT_TRANS_IN_PROGRESS, 21)   \
    X(DISAGG_CONTEXT_COMPLETE, 22)

enum class LlmRequestState : int32_t {
#define TLLM_STATE_ENUMERATOR(name, number) k##name = number,
    TLLM_FOR_EACH_REQUEST_STATE(TLLM_STATE_ENUMERATOR)
#undef TLLM_STATE_ENUMERATOR
};

/// The states as the int32 values of the state column, and the predicates the schedulers use
/// (all exact-state tests).
namespace state {
#define TLLM_STATE_CONSTANT(name, number) constexpr int32_t name = number;
TLLM_FOR_EACH_REQUEST_STATE(TLLM_STATE_CONSTANT)
#undef TLLM_STATE_CONSTANT

inline bool is_valid(int32_t s) {
    switch (s) {
#define TLLM_STATE_CASE(name, number) case number:
        TLLM_FOR_EACH_REQUEST_STATE(TLLM_STATE_CASE)
#undef TLLM_STATE_CASE
        return true;
        default:
            return false;
    }
}
inline bool is_encoder_init(int32_t s) { return s == ENCODER_INIT; }
inline bool is_context_init(int32_t s) { return s == CONTEXT_INIT || s == DISAGG_CONTEXT_INIT_AND_TRANS; }
inline bool is_generation_in_progress(int32_t s) {
    return s == GENERATION_IN_PROGRESS || s == GENERATION_TO_COMPLETE || s == DISAGG_GENERATION_TRANS_COMPLETE;
}
inline bool is_disagg_generation_init(int32_t s) { return s == DISAGG_GENERATION_INIT; }
inline bool is_generation_complete(int32_t s) { return s == GENERATION_COMPLETE; }
/// The states whose context chunk may be set: context init and the disagg generation inits.
inline bool takes_context_chunk(int32_t s) {
    return is_context_init(s) || s == DISAGG_GENERATION_INIT || s == DISAGG_GENERATION_TRANS_COMPLETE;
}
}  // namespace state

}  // namespace tllm
