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

/// GUARANTEED_NO_EVICT's pass 2 over the entries of a list that are not running generations
/// (`c.slots`, in list order), after pass 1 admitted the running generations `generations` (they
/// reserve their blocks to completion first). Self cache only, no LoRA pages (c.cross_kv and
/// c.peft must be null). Step A claims the keys of the contexts in progress among `c.slots`; the
/// entries in the gating window, which must be contexts (pass 1 decides generations), are then
/// skipped (step B), admitted while their blocks fit and the count (generations included) stays
/// below c.max_num_requests, or stop the list when their blocks do not fit. Returns the admitted
/// positions of `c.slots` in order. InputError, before any claim, when an entry in the window is
/// not a context or the generations reach the count limit (pass 1 would cut the list).
std::vector<int32_t> no_evict_admit_contexts(const CapacityContext& c, const int32_t* generations,
                                             int32_t num_generations);

}  // namespace tllm
