// ext/policies/registry.h: the capacity policies, listed once.
//
// One entry per policy: its TensorRT-LLM name (the member of the CapacitySchedulerPolicy binding)
// and its functions (two-stage and fused); the policy's value is its index (TensorRT-LLM's
// numbering). The binding's enum and CapacityScheduler's dispatch both read the table, so a new
// policy is its file in ext/policies/, its fused loop, and declarations + one entry here.
#pragma once

#include <cstdint>
#include <iterator>

#include "policies/common.h"
#include "policies/fused.h"

namespace tllm {

void schedule_max_utilization(const CapacityContext& c, CapacityOutput& out);
void schedule_guaranteed_no_evict(const CapacityContext& c, CapacityOutput& out);
void schedule_static_batch(const CapacityContext& c, CapacityOutput& out);
// The fused single pass (policies/fused.cpp).
void schedule_fused_max_utilization(const CapacityContext& c, TokenBudget& budget, CapacityOutput& out);
void schedule_fused_guaranteed_no_evict(const CapacityContext& c, TokenBudget& budget, CapacityOutput& out);
void schedule_fused_static_batch(const CapacityContext& c, TokenBudget& budget, CapacityOutput& out);

struct CapacityPolicyEntry {
    const char* name;         ///< TensorRT-LLM's CapacitySchedulerPolicy member name
    CapacityPolicyFn schedule;  ///< two-stage mode: capacity only
    FusedPolicyFn fused;        ///< fused mode: capacity with the token budget inside
};

inline constexpr CapacityPolicyEntry kCapacityPolicies[] = {
    {"MAX_UTILIZATION", schedule_max_utilization, schedule_fused_max_utilization},
    {"GUARANTEED_NO_EVICT", schedule_guaranteed_no_evict, schedule_fused_guaranteed_no_evict},
    {"STATIC_BATCH", schedule_static_batch, schedule_fused_static_batch},
};
inline constexpr int32_t kNumCapacityPolicies = static_cast<int32_t>(std::size(kCapacityPolicies));

/// Without a KV cache every policy admits by count only (TensorRT-LLM's MaxRequestsScheduler).
void schedule_max_requests(const CapacityContext& c, CapacityOutput& out);
void schedule_fused_max_requests(const CapacityContext& c, TokenBudget& budget, CapacityOutput& out);

}  // namespace tllm
