// ext/bindings/module.cpp: the nanobind module tllm_sched._core.
//
// Thin by design: the bindings convert arguments and manage ownership; the logic is in the core.
// Names follow TensorRT-LLM's Python bindings (snake_case of the C++ names).
#include <nanobind/nanobind.h>

#include "block_pool.h"
#include "bindings/common.h"
#include "errors.h"

namespace nb = nanobind;
using namespace tllm;

NB_MODULE(_core, m) {
    m.doc() = "tllm_sched C++ core: request table, KV-cache block manager, reference schedulers";

    nb::register_exception_translator([](const std::exception_ptr& p, void*) {
        try {
            std::rethrow_exception(p);
        } catch (const TypeInputError& e) {
            PyErr_SetString(PyExc_TypeError, e.what());
        }
    });
    static nb::exception<SchedulingError> scheduling_error(m, "SchedulingError", PyExc_RuntimeError);
    // The size limits (larger is a ValueError): command lines check their inputs against them
    // before a run starts.
    m.attr("MAX_TABLE_CAPACITY") = kMaxTableCapacity;
    m.attr("MAX_REQUEST_TOKENS") = kMaxRequestTokens;
    m.attr("MAX_BEAM_WIDTH") = kMaxBeamWidth;
    m.attr("MAX_NUM_BLOCKS") = BlockPool::kMaxBlocks;
    // In this order: the stub lists the names as the module defines them.
    bindings::bind_request_state(m);
    bindings::bind_policy_enums(m);
    bindings::bind_request_table(m);
    bindings::bind_kv_cache(m);
    bindings::bind_waiting_queue(m);
    bindings::bind_schedulers(m);
    bindings::bind_attention_dp(m);
    bindings::bind_executor(m);
}
