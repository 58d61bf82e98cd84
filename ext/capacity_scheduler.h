// ext/capacity_scheduler.h: which active requests get KV blocks and LoRA pages this step.
//
// Python twin: tllm_sched/capacity_scheduler.py. Mirrors TensorRT-LLM's CapacityScheduler: the
// policy (policies/registry.h) is chosen once, at construction (no KV cache -> max-requests).
#pragma once

#include "policies/common.h"
#include "policies/fused.h"

namespace tllm {

class CapacityScheduler {
public:
    CapacityScheduler(int32_t max_num_requests, CapacitySchedulerPolicy policy, bool has_kv_cache_manager,
                      bool two_steps_look_ahead = false, int32_t no_schedule_until_state = state::CONTEXT_INIT,
                      int32_t no_schedule_after_state = state::GENERATION_COMPLETE);

    /// Fills `out` for the active list `slots`. `kv` must be given iff built with a KV cache.
    void schedule(RequestTable& t, const int32_t* slots, int32_t num_slots, KVCacheManager* kv,
                  PeftCacheManager* peft, KVCacheManager* cross_kv, CapacityOutput& out) const;
    /// The fused pass's capacity loop: `schedule` with `budget` asked inside the loop.
    void schedule_fused(RequestTable& t, const int32_t* slots, int32_t num_slots, KVCacheManager* kv,
                        PeftCacheManager* peft, KVCacheManager* cross_kv, TokenBudget& budget,
                        CapacityOutput& out) const;

    int32_t max_num_requests() const { return max_num_requests_; }
    CapacitySchedulerPolicy policy() const { return policy_; }
    bool has_kv_cache_manager() const { return has_kv_; }

private:
    int32_t max_num_requests_;
    CapacitySchedulerPolicy policy_;
    bool has_kv_;
    bool two_steps_look_ahead_;
    int32_t no_schedule_until_state_, no_schedule_after_state_;
    CapacityPolicyFn fn_;     ///< chosen once
    FusedPolicyFn fused_fn_;  ///< chosen once: the same policy's fused loop
    template <class Run>
    void run(RequestTable& t, const int32_t* slots, int32_t n, KVCacheManager* kv, PeftCacheManager* peft,
             KVCacheManager* cross_kv, CapacityOutput& out, Run&& policy) const;
};

}  // namespace tllm
