// ext/policies/max_utilization.cpp: MAX_UTILIZATION: admit one step of blocks, pause from the tail.
//
// Python twin: tllm_sched/policies/max_utilization.py (fused: policies/fused.py). Mirrors
// MaxUtilizationScheduler and trySchedulingRequestMaxUtilization, and TensorRT-LLM's 2026 fused
// MaxUtilizationPolicy. The cross cache is ignored, as TensorRT-LLM's C++ does.
#include "policies/max_utilization.h"

#include <unordered_set>

#include "policies/registry.h"
#include "policies/reuse_skipping.h"

namespace tllm {

namespace {

/// The loop, with TensorRT-LLM's TokenBudgetTracker inside it in the fused mode: over the budget
/// the loop stops, pausing nobody (pausing frees blocks, not tokens); a full batch stops it too.
/// A template, so the two-stage loop carries no test of the mode.
template <bool kFused>
void max_utilization(const CapacityContext& c, TokenBudget* budget, CapacityOutput& out) {
    RequestTable& t = *c.table;
    KVCacheManager& kv = *c.kv;
    kv.start_scheduling();
    ReuseSkipper skipper(t, c.kv, c.slots, c.num_slots);
    int64_t scheduled_blocks = 0, peft_pages = 0;
    std::unordered_set<int64_t> task_ids;

    int32_t i = 0, end = c.num_slots;
    while (i < end) {
        int32_t s = c.slots[i], st = t.state[s];
        if (!can_be_scheduled_with_disagg_exception(c, st) || skipper.beneficial_to_skip(s)) {
            ++i;
            continue;
        }
        if (static_cast<int32_t>(out.scheduled.size()) < c.max_num_requests) {
            int64_t task = t.lora_task_id[s];
            bool new_task = task >= 0 && !task_ids.count(task);
            int64_t pages = (new_task && c.peft) ? c.peft->determine_num_pages(t, s) : 0;
            int64_t total = scheduled_blocks + kv.get_needed_blocks_one_step(s, c.two_steps_look_ahead);
            bool fits_peft = !c.peft || pages + peft_pages <= c.peft->max_device_pages();
            if (kv.scheduling_has_free_blocks(total) && fits_peft) {
                if constexpr (kFused) {
                    if (!budget->try_add(s)) break;
                }
                scheduled_blocks = total;
                peft_pages += pages;
                out.scheduled.push_back(s);
                if (new_task) task_ids.insert(task);
                if constexpr (kFused) {
                    if (budget->batch_full()) break;  // later requests are never evaluated
                }
                ++i;
                continue;
            }
        }
        // Failure: pause the last started request in [i, end) and retry request i.
        if (!pause_last_started(c, i, end, out)) break;
    }
}

}  // namespace

void schedule_max_utilization(const CapacityContext& c, CapacityOutput& out) {
    max_utilization<false>(c, nullptr, out);
}
void schedule_fused_max_utilization(const CapacityContext& c, TokenBudget& budget, CapacityOutput& out) {
    max_utilization<true>(c, &budget, out);
}

bool max_utilization_fitting(const CapacityContext& c, CapacityOutput& out, std::vector<int32_t>& generations,
                             std::vector<int32_t>& contexts) {
    out.clear();
    max_utilization<false>(c, nullptr, out);
    out.split_disagg(*c.table);
    generations.clear();
    contexts.clear();
    for (int32_t s : out.fitting) {
        int32_t st = c.table->state[s];
        if (st == static_cast<int32_t>(LlmRequestState::kGENERATION_IN_PROGRESS)) {
            generations.push_back(s);
        } else if (state::is_context_init(st)) {
            contexts.push_back(s);
        } else {
            generations.clear();
            contexts.clear();
            return false;
        }
    }
    return true;
}

}  // namespace tllm
