// ext/policies/max_requests.cpp: the capacity path without a KV cache: admit by count only.
//
// Python twin: tllm_sched/policies/max_requests.py. Mirrors MaxRequestsScheduler.
#include "policies/registry.h"

namespace tllm {

namespace {
/// In the fused mode the tracker stops the loop: over the budget, or batch full (a template: the
/// two-stage loop carries no test of the mode).
template <bool kFused>
void max_requests(const CapacityContext& c, TokenBudget* budget, CapacityOutput& out) {
    const RequestTable& t = *c.table;
    for (int32_t i = 0; i < c.num_slots; ++i) {
        int32_t s = c.slots[i], st = t.state[s];
        if (!can_be_scheduled(c, st)) continue;  // no disagg exception here
        if (static_cast<int32_t>(out.scheduled.size()) >= c.max_num_requests) break;
        if (!(state::is_encoder_init(st) || state::is_context_init(st) || state::is_generation_in_progress(st))) continue;
        if constexpr (kFused) {
            if (!budget->try_add(s)) break;
        }
        out.scheduled.push_back(s);
        if constexpr (kFused) {
            if (budget->batch_full()) break;
        }
    }
}
}  // namespace

void schedule_max_requests(const CapacityContext& c, CapacityOutput& out) { max_requests<false>(c, nullptr, out); }
void schedule_fused_max_requests(const CapacityContext& c, TokenBudget& budget, CapacityOutput& out) {
    max_requests<true>(c, &budget, out);
}

}  // namespace tllm
