// ext/bindings/common.h: what the binding files share besides arrays: the LlmRequest handle and
// the bind_* functions module.cpp calls, in the order the module defines its names.
#pragma once

#include <nanobind/nanobind.h>

#include <memory>
#include <string>

#include "request_table.h"

namespace tllm::bindings {

namespace nb = nanobind;

/// A request in a table, as Python sees it (TensorRT-LLM's LlmRequest). Becomes invalid, not
/// dangling, when the request is removed from its table.
struct PyRequest {
    std::shared_ptr<RequestTable> table;  ///< shared; keeps the table alive
    int32_t slot;                         ///< slot in the table
    uint32_t generation;                  ///< slot generation at creation: detects removal
    int64_t request_id;                   ///< the id (readable even after removal)

    RequestTable& t() const {
        if (!table->is_live(slot) || table->generation(slot) != generation)
            throw InputError("request " + std::to_string(request_id) + " was removed from its RequestTable");
        return *table;
    }
    int32_t s() const {
        t();
        return slot;
    }
    /// The slot, checking that the request is live and belongs to `owner` (`arg`: the argument's
    /// name in the error).
    int32_t slot_in(const RequestTable& owner, const char* arg = "request") const {
        if (table.get() != &owner) throw InputError(std::string(arg) + " belongs to another RequestTable");
        return s();
    }
};

inline PyRequest make_request(const std::shared_ptr<RequestTable>& t, int32_t s) {
    return PyRequest{t, s, t->generation(s), t->request_id[s]};
}

void bind_request_state(nb::module_& m);  // request_table.cpp
void bind_policy_enums(nb::module_& m);   // schedulers.cpp
void bind_request_table(nb::module_& m);  // request_table.cpp: RequestTable, LlmRequest, RequestList
void bind_kv_cache(nb::module_& m);       // kv_cache.cpp: KVCacheManager, PeftCacheManager
void bind_waiting_queue(nb::module_& m);  // waiting_queue.cpp
void bind_schedulers(nb::module_& m);     // schedulers.cpp
void bind_attention_dp(nb::module_& m);   // attention_dp.cpp: the routers' loops
void bind_executor(nb::module_& m);       // executor.cpp: Executor, SimExecutor

}  // namespace tllm::bindings
