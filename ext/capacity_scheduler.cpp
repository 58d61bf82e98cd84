// ext/capacity_scheduler.cpp: policy factory and the fitting / disagg-gen-init output split.
#include "capacity_scheduler.h"

#include <string>

#include "policies/registry.h"

namespace tllm {

CapacityScheduler::CapacityScheduler(int32_t max_num_requests, CapacitySchedulerPolicy policy, bool has_kv,
                                     bool two_steps, int32_t no_schedule_until_state, int32_t no_schedule_after_state)
    : max_num_requests_(max_num_requests), policy_(policy), has_kv_(has_kv), two_steps_look_ahead_(two_steps),
      no_schedule_until_state_(no_schedule_until_state), no_schedule_after_state_(no_schedule_after_state) {
    if (max_num_requests <= 0) throw InputError("max_num_requests must be positive, got " + std::to_string(max_num_requests));
    if (!has_kv) {
        fn_ = schedule_max_requests;
        fused_fn_ = schedule_fused_max_requests;
        return;
    }
    const int32_t index = static_cast<int32_t>(policy);
    if (index < 0 || index >= kNumCapacityPolicies)
        throw InputError("unknown capacity scheduler policy " + std::to_string(index));
    fn_ = kCapacityPolicies[index].schedule;
    fused_fn_ = kCapacityPolicies[index].fused;
}

template <class Run>
void CapacityScheduler::run(RequestTable& t, const int32_t* slots, int32_t n, KVCacheManager* kv,
                            PeftCacheManager* peft, KVCacheManager* cross_kv, CapacityOutput& out,
                            Run&& policy) const {
    if (has_kv_ && !kv) throw InputError("this CapacityScheduler was built with a KV cache: pass kv_cache_manager");
    if (!has_kv_ && kv) throw InputError("this CapacityScheduler was built without a KV cache: pass no kv_cache_manager");
    if (kv && &kv->table() != &t) throw InputError("kv_cache_manager belongs to another RequestTable");
    if (cross_kv && &cross_kv->table() != &t) throw InputError("cross_kv_cache_manager belongs to another RequestTable");
    out.clear();
    out.scheduled.reserve(static_cast<size_t>(n));  // no-op once a reused output has grown
    out.fitting.reserve(static_cast<size_t>(n));
    CapacityContext c{&t, slots, n, kv, cross_kv, peft, max_num_requests_, two_steps_look_ahead_,
                      no_schedule_until_state_, no_schedule_after_state_};
    policy(c, out);
    out.split_disagg(t);
}

void CapacityScheduler::schedule(RequestTable& t, const int32_t* slots, int32_t n, KVCacheManager* kv,
                                 PeftCacheManager* peft, KVCacheManager* cross_kv, CapacityOutput& out) const {
    run(t, slots, n, kv, peft, cross_kv, out, [this](const CapacityContext& c, CapacityOutput& o) { fn_(c, o); });
}

void CapacityScheduler::schedule_fused(RequestTable& t, const int32_t* slots, int32_t n, KVCacheManager* kv,
                                       PeftCacheManager* peft, KVCacheManager* cross_kv, TokenBudget& budget,
                                       CapacityOutput& out) const {
    run(t, slots, n, kv, peft, cross_kv, out,
        [this, &budget](const CapacityContext& c, CapacityOutput& o) { fused_fn_(c, budget, o); });
}

}  // namespace tllm
