// ext/policies/max_utilization.cpp: MAX_UTILIZATION: admit one step of blocks, pause from the tail.
//
// Python twin: tllm_sched/policies/max_utilization.py. Mirrors MaxUtilizationScheduler and
// trySchedulingRequestMaxUtilization. The cross cache is ignored, as TensorRT-LLM's C++ does.
#include <unordered_set>

#include "policies/registry.h"
#include "policies/reuse_skipping.h"

namespace tllm {

void schedule_max_utilization(const CapacityContext& c, CapacityOutput& out) {
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
                scheduled_blocks = total;
                peft_pages += pages;
                out.scheduled.push_back(s);
                if (new_task) task_ids.insert(task);
                ++i;
                continue;
            }
        }
        // Failure: pause the last started request in [i, end) and retry request i.
        if (!pause_last_started(c, i, end, out)) break;
    }
}

}  // namespace tllm
