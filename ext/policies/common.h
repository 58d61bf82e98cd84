// ext/policies/common.h: what every capacity policy shares: its inputs, its output, gating.
//
// Python twin: tllm_sched/policies/common.py. Mirrors the helpers of TensorRT-LLM's
// CapacityScheduler (canBeScheduled, the disagg exception, the output split).
#pragma once

#include <cstdint>
#include <vector>

#include "errors.h"
#include "kv_cache_manager.h"
#include "peft_cache_manager.h"
#include "request_table.h"

namespace tllm {

/// A capacity policy: its index in kCapacityPolicies (policies/registry.h).
enum class CapacitySchedulerPolicy : int32_t {};

/// Inputs of one capacity-scheduling call. Pointers are borrowed for the call.
struct CapacityContext {
    RequestTable* table;           ///< request columns
    const int32_t* slots;          ///< the active list, in order
    int32_t num_slots;             ///< its length
    KVCacheManager* kv;            ///< self-attention cache (null: max-requests path)
    KVCacheManager* cross_kv;      ///< cross-attention cache or null
    PeftCacheManager* peft;        ///< LoRA pages or null
    int32_t max_num_requests;      ///< admission count limit
    bool two_steps_look_ahead;     ///< MAX_UTILIZATION: reserve two steps of blocks
    int32_t no_schedule_until_state;  ///< gating window start (inclusive)
    int32_t no_schedule_after_state;  ///< gating window end (exclusive)
};

/// Scheduled and paused slots, in admission / pausing order.
struct CapacityOutput {
    std::vector<int32_t> scheduled;  ///< everything admitted (split into the two lists below)
    std::vector<int32_t> fitting;                   ///< admitted, not disagg-generation-init
    std::vector<int32_t> fitting_disagg_gen_init;   ///< admitted, disagg-generation-init
    std::vector<int32_t> paused;                    ///< MAX_UTILIZATION victims, in pausing order
    void clear() {
        scheduled.clear();
        fitting.clear();
        fitting_disagg_gen_init.clear();
        paused.clear();
    }
    /// Splits `scheduled` into `fitting` and `fitting_disagg_gen_init`, in order.
    void split_disagg(const RequestTable& t) {
        for (int32_t s : scheduled) {
            if (state::is_disagg_generation_init(t.state[s])) fitting_disagg_gen_init.push_back(s);
            else fitting.push_back(s);
        }
    }
};

inline bool can_be_scheduled(const CapacityContext& c, int32_t st) {
    return st >= c.no_schedule_until_state && st < c.no_schedule_after_state;
}
/// Disagg-generation-init requests bypass the window "so that their KV cache gets allocated".
inline bool can_be_scheduled_with_disagg_exception(const CapacityContext& c, int32_t st) {
    return state::is_disagg_generation_init(st) || can_be_scheduled(c, st);
}

/// MAX_UTILIZATION's pause candidates: requests that already hold KV blocks.
inline bool is_started(const CapacityContext& c, const RequestTable& t, int32_t s) {
    int32_t st = t.state[s];
    return can_be_scheduled(c, st) &&
           ((state::is_context_init(st) && !t.is_first_context_chunk(s)) || state::is_generation_in_progress(st));
}

/// MAX_UTILIZATION's answer to a request that does not fit: pause the last started request in
/// [i, end) (it gives its blocks back to the scheduling snapshot) and shrink the range. False when
/// there is none (the loop stops).
inline bool pause_last_started(const CapacityContext& c, int32_t i, int32_t& end, CapacityOutput& out) {
    int32_t j = end - 1;
    while (j >= i && !is_started(c, *c.table, c.slots[j])) --j;
    if (j < i) return false;
    c.kv->scheduling_remove_sequence(c.slots[j]);
    out.paused.push_back(c.slots[j]);
    end = j;
    return true;
}

/// GUARANTEED_NO_EVICT's free blocks left after the admissions so far (may go negative), one window.
struct NoEvictBlocks {
    KVCacheManager* kv;  ///< borrowed; null: no such cache (needs nothing)
    int64_t available;   ///< free blocks minus the blocks to completion of every admission
    explicit NoEvictBlocks(KVCacheManager* m) : kv(m), available(m ? m->num_free_blocks() : 0) {}
    int32_t need(int32_t s) const { return kv ? kv->get_remaining_blocks_to_completion(s) : 0; }
};

using CapacityPolicyFn = void (*)(const CapacityContext&, CapacityOutput&);

}  // namespace tllm
