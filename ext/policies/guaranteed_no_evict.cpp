// ext/policies/guaranteed_no_evict.cpp: GUARANTEED_NO_EVICT and STATIC_BATCH.
//
// Python twin: tllm_sched/policies/guaranteed_no_evict.py. Mirrors GuaranteedNoEvictScheduler
// (and its STATIC_BATCH variant): running generations are admitted unconditionally and pre-claim their
// remaining blocks; new contexts are admitted while their remaining blocks to completion fit.
#include <unordered_set>

#include "policies/registry.h"
#include "policies/reuse_skipping.h"

namespace tllm {

namespace {

void schedule_no_evict(const CapacityContext& c, bool static_batch, CapacityOutput& out) {
    RequestTable& t = *c.table;
    NoEvictBlocks self(c.kv), cross(c.cross_kv);
    const int64_t max_pages = c.peft ? c.peft->max_device_pages() : INT32_MAX;
    int64_t claimed_pages = 0;
    std::unordered_set<int64_t> task_ids;
    std::vector<int32_t> pending_disagg, pending;
    auto count = [&] { return static_cast<int32_t>(out.scheduled.size()); };

    // Pass 1: classify; running generations are admitted without a capacity check.
    for (int32_t i = 0; i < c.num_slots; ++i) {
        int32_t s = c.slots[i], st = t.state[s];
        if (!can_be_scheduled_with_disagg_exception(c, st)) continue;
        if (count() >= c.max_num_requests) break;  // stops classification entirely
        if (state::is_generation_in_progress(st)) {
            out.scheduled.push_back(s);
            int64_t task = t.lora_task_id[s];
            if (task >= 0 && task_ids.insert(task).second)
                claimed_pages += c.peft ? c.peft->determine_num_pages(t, s) : 0;
        } else if (state::is_disagg_generation_init(st)) {
            pending_disagg.push_back(s);
        } else {
            pending.push_back(s);
        }
    }
    if (static_batch && !out.scheduled.empty()) return;
    // Nothing for pass 2: no block count can change the outcome, so none is computed.
    if (pending.empty() && pending_disagg.empty()) return;
    for (int32_t s : out.scheduled) {  // the running generations reserve their blocks to completion
        self.available -= self.need(s);
        cross.available -= cross.need(s);
    }

    // Pass 2: disagg-generation-init first, then contexts; a block shortage stops the list.
    int64_t available_pages = max_pages - claimed_pages;
    // STATIC_BATCH does no reuse skipping at all.
    ReuseSkipper skipper(t, static_batch ? nullptr : c.kv, c.slots, c.num_slots);
    for (const std::vector<int32_t>* list : {&pending_disagg, &pending}) {
        for (int32_t s : *list) {
            int32_t st = t.state[s];
            bool disagg = state::is_disagg_generation_init(st);
            if (!static_batch && !disagg && skipper.beneficial_to_skip(s)) continue;
            if (count() >= c.max_num_requests) break;  // this list only
            if (!state::is_context_init(st) && !disagg) continue;
            int32_t need_self = self.need(s), need_cross = cross.need(s);
            bool enough_blocks = need_self <= self.available;
            bool enough_cross = !cross.kv || need_cross <= cross.available;
            int64_t task = t.lora_task_id[s];
            bool new_task = task >= 0 && !task_ids.count(task);
            int64_t pages = (new_task && c.peft) ? c.peft->determine_num_pages(t, s) : 0;
            if (enough_blocks && enough_cross && pages <= available_pages) {
                out.scheduled.push_back(s);
                self.available -= need_self;
                cross.available -= need_cross;
                available_pages -= pages;
                if (new_task) task_ids.insert(task);
            } else if (!enough_blocks || !enough_cross) {
                break;  // head-of-line blocking
            }  // else: only PEFT pages are short; try the next request
        }
    }
}

}  // namespace

void schedule_guaranteed_no_evict(const CapacityContext& c, CapacityOutput& out) { schedule_no_evict(c, false, out); }
void schedule_static_batch(const CapacityContext& c, CapacityOutput& out) { schedule_no_evict(c, true, out); }

}  // namespace tllm
