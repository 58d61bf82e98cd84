// ext/policies/chunking.h: context chunk sizes under a token capacity (setCtxRequestsChunkSize).
//
// Python twin: tllm_sched/policies/chunking.py. Mirrors MicroBatchScheduler::setCtxRequestsChunkSize,
// its EQUAL_PROGRESS / FIRST_COME_FIRST_SERVED branches and fitDraftTokens (scheduler.md §3.3).
// Works on plain arrays so the micro-batch scheduler can decide first and commit later.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace tllm {

enum class ContextChunkingPolicy : int32_t { kFIRST_COME_FIRST_SERVED = 0, kEQUAL_PROGRESS = 1 };

struct ContextChunkingConfig {
    ContextChunkingPolicy policy = ContextChunkingPolicy::kFIRST_COME_FIRST_SERVED;
    int32_t unit_size = 0;  ///< chunk granularity in tokens (> 0)
};

/// One context request being chunked: inputs and the decision.
struct ChunkItem {
    int32_t slot;        ///< request slot
    int32_t remaining;   ///< prompt tokens not yet processed
    int32_t draft;       ///< draft tokens of the request
    int32_t chunk = 0;   ///< decided chunk size
    int32_t discard = 0; ///< decided draft tokens to drop
};

/// Sets items[].chunk per the policy, then items[].discard per fitDraftTokens.
void set_ctx_requests_chunk_size(std::vector<ChunkItem>& items, ContextChunkingPolicy policy,
                                 std::optional<int32_t> capacity, int32_t unit_size,
                                 std::optional<int32_t> max_context_length);

}  // namespace tllm
