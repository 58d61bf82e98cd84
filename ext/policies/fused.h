// ext/policies/fused.h: the fused single pass: micro-batch checks inside the capacity loop.
//
// Python twins: tllm_sched/policies/fused.py (batched), tllm_sched/naive/fused.py. Mirrors
// TensorRT-LLM's 2026 UnifiedScheduler: `TokenBudgetTracker` (try_add, try_add_generation,
// try_add_context, finalize) and the fused loops of GuaranteedNoEvictPolicy, MaxUtilizationPolicy
// and MaxRequestsPolicy (unified_scheduler.py). design.md, "The fused mode", lists every way it
// differs from the two-stage mode.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <unordered_set>
#include <vector>

#include "micro_batch_scheduler.h"
#include "policies/common.h"

namespace tllm {

/// The micro-batch limits the tracker enforces.
struct TokenBudgetLimits {
    int32_t max_batch_size;                        ///< requests the tracker counts, at most
    std::optional<int32_t> max_num_tokens;         ///< token budget; none: unlimited
    std::optional<int32_t> max_context_length;     ///< already min(config, max_num_tokens): see fused_max_context_length
    std::optional<ContextChunkingConfig> chunking;  ///< none: contexts are never chunked
};

/// TensorRT-LLM's tracker fixes max_context_length = max_num_tokens; a smaller configured limit
/// still applies.
inline std::optional<int32_t> fused_max_context_length(std::optional<int32_t> configured,
                                                       std::optional<int32_t> max_num_tokens) {
    if (configured && max_num_tokens) return std::min(*configured, *max_num_tokens);
    return configured ? configured : max_num_tokens;
}

/// TensorRT-LLM's TokenBudgetTracker: one step's token budget, batch size and beam width, asked
/// request by request from inside a capacity loop. Decisions go to scratch (the chunk items and
/// the output lists); `finalize` chunks, commits and sorts, so a SchedulingError leaves every
/// request as it was.
class TokenBudget {
public:
    /// Results of try_add_generation.
    static constexpr int32_t kFull = -1, kOverBudget = 0, kContinue = 1;

    TokenBudget(RequestTable& t, const TokenBudgetLimits& limits, const int64_t* inflight, int32_t num_inflight,
                std::vector<ChunkItem>& items, MicroBatchOutput& out);

    /// Any request (MaxRequests, MAX_UTILIZATION). False: over the token budget (stop the loop).
    /// True also for a request it passes over without counting: in flight, disagg-generation-init,
    /// outside [CONTEXT_INIT, GENERATION_TO_COMPLETE), a different beam width.
    bool try_add(int32_t s);
    /// A running generation (GUARANTEED_NO_EVICT pass 1): kContinue, kOverBudget or kFull.
    int32_t try_add_generation(int32_t s);
    /// A context or disagg-generation-init request (GUARANTEED_NO_EVICT pass 2). False: over budget.
    bool try_add_context(int32_t s);
    bool batch_full() const { return batch_full_; }
    /// Chunks the contexts when they do not all fit, commits chunk sizes and draft discards, sorts
    /// by LoRA task. Returns num_fitting: the requests counted (a context whose chunk came out 0
    /// stays counted, as in TensorRT-LLM).
    int32_t finalize();

private:
    enum class Added { kYes, kOverBudget, kSkipped };
    bool in_flight(int32_t s) const { return !inflight_.empty() && inflight_.count(table_.request_id[s]) > 0; }
    Added add_context(int32_t s);
    Added add_generation(int32_t s);
    void count();

    RequestTable& table_;
    TokenBudgetLimits lim_;
    std::unordered_set<int64_t> inflight_;  ///< ids in flight in other micro batches
    ChunkedContexts chunked_;               ///< contexts to be chunked (in borrowed scratch)
    MicroBatchOutput& out_;                 ///< borrowed: plain contexts, then chunked ones; generations
    int64_t batch_tokens_ = 0;              ///< budget tokens of the counted requests
    int32_t req_size_ = 0;                  ///< requests counted toward max_batch_size
    int32_t beam_ = 0;                      ///< beam width of the first generation, 0 before it
    int32_t num_fitting_ = 0;               ///< TensorRT-LLM's _num_fitting
    bool batch_full_ = false;
};

/// A fused capacity policy: the capacity loop of `c`, asking `budget` for each request it admits.
using FusedPolicyFn = void (*)(const CapacityContext& c, TokenBudget& budget, CapacityOutput& out);

}  // namespace tllm
