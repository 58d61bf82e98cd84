// ext/policies/guaranteed_no_evict.h: GUARANTEED_NO_EVICT's pass 2 as one call for the batched Python scheduler.
//
// With block reuse pass 2 is sequential by nature: each skip depends on the keys claimed before
// it, and the first context that does not fit stops the list. The C++ policy
// (guaranteed_no_evict.cpp) and the batched Python scheduler's split path
// (tllm_sched/policies/guaranteed_no_evict.py, one call a step) run the same loop, defined once.
#pragma once

#include <vector>

#include "policies/common.h"

namespace tllm {

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
