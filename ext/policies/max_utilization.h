// ext/policies/max_utilization.h: MAX_UTILIZATION as one call for the batched Python scheduler.
//
// With block reuse the loop is sequential by nature: each skip depends on the keys claimed before
// it and each pause on the failure before it. The batched Python scheduler
// (tllm_sched/policies/max_utilization.py, one call a step) runs the C++ policy's own loop
// (max_utilization.cpp).
#pragma once

#include <vector>

#include "policies/common.h"

namespace tllm {

/// MAX_UTILIZATION as the C++ policy runs it (step A and B skipping, pausing from the tail) over
/// `c.slots`: the admitted and the paused requests as positions of `c.slots`, in admission and
/// pausing order.
void max_utilization_positions(const CapacityContext& c, std::vector<int32_t>& scheduled, std::vector<int32_t>& paused);

}  // namespace tllm
