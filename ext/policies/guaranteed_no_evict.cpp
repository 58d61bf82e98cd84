// ext/policies/guaranteed_no_evict.cpp: GUARANTEED_NO_EVICT and STATIC_BATCH.
//
// Python twin: tllm_sched/policies/guaranteed_no_evict.py. Mirrors GuaranteedNoEvictScheduler
// (and its STATIC_BATCH variant): running generations are admitted unconditionally and pre-claim their
// remaining blocks; new contexts are admitted while their remaining blocks to completion fit.
#include "policies/guaranteed_no_evict.h"

#include <string>
#include <unordered_set>

#include "policies/registry.h"

namespace tllm {

namespace {

void schedule_no_evict(const CapacityContext& c, bool static_batch, CapacityOutput& out) {
    RequestTable& t = *c.table;
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

    // Pass 2: disagg-generation-init first, then contexts. STATIC_BATCH does no reuse skipping.
    ReuseSkipper skipper(t, static_batch ? nullptr : c.kv, c.slots, c.num_slots);
    NoEvictAdmission pass{c, skipper, NoEvictBlocks(c.kv), NoEvictBlocks(c.cross_kv), max_pages - claimed_pages,
                          task_ids, count()};
    pass.reserve(out.scheduled);
    for (const std::vector<int32_t>* list : {&pending_disagg, &pending})
        pass.run(list->data(), static_cast<int32_t>(list->size()), [&](int32_t i) { out.scheduled.push_back((*list)[i]); });
}

}  // namespace

void schedule_guaranteed_no_evict(const CapacityContext& c, CapacityOutput& out) { schedule_no_evict(c, false, out); }
void schedule_static_batch(const CapacityContext& c, CapacityOutput& out) { schedule_no_evict(c, true, out); }

bool no_evict_split_fitting(const CapacityContext& c, std::vector<int32_t>& fitting, int32_t& num_generations) {
    RequestTable& t = *c.table;
    if (c.cross_kv || c.peft) throw InputError("no_evict_split_fitting: only the self cache, without PEFT");
    fitting.clear();  // pass 1's generations first, then the admitted contexts
    std::vector<int32_t> others;
    bool waiting = false;  // a context in the gating window: pass 2 has work
    for (int32_t i = 0; i < c.num_slots; ++i) {
        int32_t s = c.slots[i], st = t.state[s];
        bool gated = can_be_scheduled_with_disagg_exception(c, st);
        if (gated && st == static_cast<int32_t>(LlmRequestState::kGENERATION_IN_PROGRESS)) {
            fitting.push_back(s);
            continue;
        }
        if (gated && !state::is_context_init(st)) return false;  // pass 1 decides it: not this shape
        waiting = waiting || gated;
        others.push_back(s);
    }
    num_generations = static_cast<int32_t>(fitting.size());
    if (num_generations >= c.max_num_requests) return false;  // pass 1 cuts the list
    // Nothing for pass 2: no block count can change the outcome, so none is computed (no claim either).
    if (!waiting) return true;
    std::unordered_set<int64_t> no_tasks;
    ReuseSkipper skipper(t, c.kv, others.data(), static_cast<int32_t>(others.size()));
    NoEvictAdmission pass{c, skipper, NoEvictBlocks(c.kv), NoEvictBlocks(nullptr), INT32_MAX, no_tasks, num_generations};
    pass.reserve(fitting);  // only the generations so far
    pass.run(others.data(), static_cast<int32_t>(others.size()), [&](int32_t i) { fitting.push_back(others[static_cast<size_t>(i)]); });
    return true;
}

}  // namespace tllm
