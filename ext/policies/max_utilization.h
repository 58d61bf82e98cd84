// ext/policies/max_utilization.h: MAX_UTILIZATION as one call for the batched Python scheduler.
//
// With block reuse the loop is sequential by nature: each skip depends on the keys claimed before
// it and each pause on the failure before it. The batched Python scheduler
// (tllm_sched/policies/max_utilization.py, one call a step) runs the C++ policy's own loop
// (max_utilization.cpp).
#pragma once

#include "policies/common.h"

namespace tllm {

/// MAX_UTILIZATION as the C++ policy runs it (step A and B skipping, pausing from the tail) over
/// `c.slots`, its output split as CapacityScheduler splits it: fitting, fitting_disagg_gen_init
/// and paused slots, in admission and pausing order. Also splits `fitting` for the micro-batch
/// stage: its running generations into `generations` and its contexts into `contexts`, both in
/// list order; returns false (the two left empty) when an entry is neither.
bool max_utilization_fitting(const CapacityContext& c, CapacityOutput& out, std::vector<int32_t>& generations,
                             std::vector<int32_t>& contexts);

}  // namespace tllm
