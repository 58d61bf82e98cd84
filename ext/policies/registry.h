// ext/policies/registry.h: the capacity policies, listed once.
//
// One entry per policy: its TensorRT-LLM name (the member of the CapacitySchedulerPolicy binding)
// and its function; the policy's value is its index (TensorRT-LLM's numbering). The binding's enum
// and CapacityScheduler's dispatch both read the table, so a new policy is its file in
// ext/policies/ and one declaration + one entry here.
#pragma once

#include <cstdint>
#include <iterator>

#include "policies/common.h"

namespace tllm {

void schedule_max_utilization(const CapacityContext& c, CapacityOutput& out);
void schedule_guaranteed_no_evict(const CapacityContext& c, CapacityOutput& out);
void schedule_static_batch(const CapacityContext& c, CapacityOutput& out);

struct CapacityPolicyEntry {
    const char* name;         ///< TensorRT-LLM's CapacitySchedulerPolicy member name
    CapacityPolicyFn schedule;
};

inline constexpr CapacityPolicyEntry kCapacityPolicies[] = {
    {"MAX_UTILIZATION", schedule_max_utilization},
    {"GUARANTEED_NO_EVICT", schedule_guaranteed_no_evict},
    {"STATIC_BATCH", schedule_static_batch},
};
inline constexpr int32_t kNumCapacityPolicies = static_cast<int32_t>(std::size(kCapacityPolicies));

/// Without a KV cache every policy admits by count only (TensorRT-LLM's MaxRequestsScheduler).
void schedule_max_requests(const CapacityContext& c, CapacityOutput& out);

}  // namespace tllm
