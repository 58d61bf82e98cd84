// ext/policies/chunking.h: context chunk sizes under a token capacity (setCtxRequestsChunkSize).
//
// Python twin: tllm_sched/policies/chunking.py. Mirrors MicroBatchScheduler::setCtxRequestsChunkSize,
// its EQUAL_PROGRESS / FIRST_COME_FIRST_SERVED branches and fitDraftTokens. The decision works on
// plain arrays (ChunkItem), so the micro-batch scheduler can decide first and commit later.
#pragma once

#include <cstdint>
#include <iterator>
#include <optional>
#include <vector>

#include "request_table.h"

namespace tllm {

/// A chunking policy: its index in kChunkingPolicies.
enum class ContextChunkingPolicy : int32_t {};

struct ContextChunkingConfig {
    ContextChunkingPolicy policy{};  ///< the first entry of kChunkingPolicies by default
    int32_t unit_size = 0;           ///< chunk granularity in tokens (> 0)
};

/// One context request being chunked: inputs and the decision.
struct ChunkItem {
    int32_t slot;        ///< request slot
    int32_t remaining;   ///< prompt tokens not yet processed
    int32_t draft;       ///< draft tokens of the request
    int32_t chunk = 0;   ///< decided chunk size
    int32_t discard = 0; ///< decided draft tokens to drop
};

/// Sets items[].chunk from zero, under the capacity (if any), in units of unit_size.
using ChunkingPolicyFn = void (*)(std::vector<ChunkItem>& items, std::optional<int32_t> capacity, int32_t unit_size,
                                  std::optional<int32_t> max_context_length);
void chunk_first_come_first_served(std::vector<ChunkItem>& items, std::optional<int32_t> capacity, int32_t unit_size,
                                   std::optional<int32_t> max_context_length);
void chunk_equal_progress(std::vector<ChunkItem>& items, std::optional<int32_t> capacity, int32_t unit_size,
                          std::optional<int32_t> max_context_length);

/// The chunking policies, listed once: TensorRT-LLM's name (the ContextChunkingPolicy binding's
/// member) and function; the policy's value is its index (TensorRT-LLM's numbering).
struct ChunkingPolicyEntry {
    const char* name;
    ChunkingPolicyFn chunk;
};
inline constexpr ChunkingPolicyEntry kChunkingPolicies[] = {
    {"FIRST_COME_FIRST_SERVED", chunk_first_come_first_served},
    {"EQUAL_PROGRESS", chunk_equal_progress},
};
inline constexpr int32_t kNumChunkingPolicies = static_cast<int32_t>(std::size(kChunkingPolicies));

/// Sets items[].chunk per the policy, then items[].discard per fitDraftTokens.
void set_ctx_requests_chunk_size(std::vector<ChunkItem>& items, ContextChunkingPolicy policy,
                                 std::optional<int32_t> capacity, int32_t unit_size,
                                 std::optional<int32_t> max_context_length);

/// Writes the decided chunks (clamped to the remaining prompt) and drops the decided draft tokens.
void commit_chunk_sizes(RequestTable& t, const std::vector<ChunkItem>& items);

/// setCtxRequestsChunkSize on the table: the context requests `slots` get their chunk sizes and
/// draft discards per the policy. Everything is checked before any request is written.
void set_ctx_requests_chunk_size(RequestTable& t, const int32_t* slots, int32_t n, ContextChunkingPolicy policy,
                                 std::optional<int32_t> capacity, int32_t unit_size,
                                 std::optional<int32_t> max_context_length);

}  // namespace tllm
