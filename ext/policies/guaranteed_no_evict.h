// ext/policies/guaranteed_no_evict.h: GUARANTEED_NO_EVICT's pass 2, and the policy as one call for
// the batched Python scheduler.
//
// With block reuse pass 2 is sequential by nature: each skip depends on the keys claimed before
// it, and the first context that does not fit stops the list. The C++ policy
// (guaranteed_no_evict.cpp), its fused twin (fused.cpp, with the token budget) and the batched
// Python scheduler's split path (tllm_sched/policies/guaranteed_no_evict.py, one call a step) run
// the same loop, defined once.
#pragma once

#include <unordered_set>
#include <vector>

#include "policies/common.h"
#include "policies/reuse_skipping.h"

namespace tllm {

/// The two-stage pass has no token budget: every request that fits is taken.
struct NoTokenBudget {
    bool accept(int32_t) const { return true; }
    bool full() const { return false; }
};

/// Pass 2: what is left (blocks of both caches, LoRA pages, the count) as it admits list after list.
struct NoEvictAdmission {
    const CapacityContext& c;
    ReuseSkipper& skipper;  ///< never skips for STATIC_BATCH (built without a cache)
    NoEvictBlocks self, cross;
    int64_t available_pages;
    std::unordered_set<int64_t>& task_ids;  ///< LoRA tasks admitted so far
    int32_t count;                          ///< requests admitted so far (pass 1 included)

    /// Pass 1's admitted generations reserve their blocks to completion.
    void reserve(const std::vector<int32_t>& generations) {
        for (int32_t s : generations) {
            self.available -= self.need(s);
            cross.available -= cross.need(s);
        }
    }

    /// One list in order: entries outside the gating window are passed over, first-chunk contexts
    /// whose key another request claimed are skipped, the rest admitted while they fit (admit(i)
    /// for position i); a block shortage stops the list, a page shortage skips one request. The
    /// fused pass adds its token budget: a request that fits is then offered to it
    /// (`budget.accept(s)`, false: the list stops) and the list stops once `budget.full()`.
    template <class Admit, class Budget = NoTokenBudget>
    void run(const int32_t* list, int32_t n, Admit admit, Budget&& budget = {}) {
        RequestTable& t = *c.table;
        for (int32_t i = 0; i < n; ++i) {
            int32_t s = list[i], st = t.state[s];
            if (!can_be_scheduled_with_disagg_exception(c, st)) continue;
            if (skipper.beneficial_to_skip(s)) continue;
            if (count >= c.max_num_requests) break;  // this list only
            bool disagg = state::is_disagg_generation_init(st);
            if (!state::is_context_init(st) && !disagg) continue;
            int32_t need_self = self.need(s), need_cross = cross.need(s);
            bool enough_blocks = need_self <= self.available;
            bool enough_cross = !cross.kv || need_cross <= cross.available;
            int64_t task = t.lora_task_id[s];
            bool new_task = task >= 0 && !task_ids.count(task);
            int64_t pages = (new_task && c.peft) ? c.peft->determine_num_pages(t, s) : 0;
            if (enough_blocks && enough_cross && pages <= available_pages) {
                if (!budget.accept(s)) break;
                admit(i);
                ++count;
                self.available -= need_self;
                cross.available -= need_cross;
                available_pages -= pages;
                if (new_task) task_ids.insert(task);
                if (budget.full()) break;
            } else if (!enough_blocks || !enough_cross) {
                break;  // head-of-line blocking
            }  // else: only PEFT pages are short; try the next request
        }
    }
};

/// GUARANTEED_NO_EVICT over a list of running generations and contexts (`c.slots`; the batched
/// Python scheduler's step with block reuse), self cache only, no LoRA pages (c.cross_kv and
/// c.peft must be null: InputError). Pass 1 admits the requests in state GENERATION_IN_PROGRESS
/// (they reserve their blocks to completion); pass 2 runs over the others, the C++ policy's loop:
/// step A claims the keys of the contexts in progress, then the entries in the gating window are
/// skipped (step B), admitted while their blocks fit and the count stays below
/// c.max_num_requests, or stop the list when their blocks do not fit. Sets `fitting` to the
/// generations in list order, then the admitted contexts, and `num_generations`. Returns false,
/// before any claim, when the list is not of that shape (an entry in the window that is neither
/// a running generation nor a context, or generations that reach the count limit: pass 1 cuts
/// the list); the caller then takes the general path.
bool no_evict_split_fitting(const CapacityContext& c, std::vector<int32_t>& fitting, int32_t& num_generations);

}  // namespace tllm
