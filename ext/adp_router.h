// ext/adp_router.h: the sequential greedy loops of the attention-DP routers.
//
// Python twin: tllm_sched/attention_dp/adp_router.py, which prepares every input with array math
// (targets, orders, caps, match gating, tie priorities) and has the same loops in plain Python
// (backend "python"). These are the loops whose every step depends on the one before, so they run
// here in one call per step. Both follow TensorRT-LLM's adp_router.py (DefaultADPRouter,
// KVCacheAwareADPRouter); the tests hold the two backends to the same assignments.
#pragma once

#include <cstdint>

namespace tllm {

/// DefaultADPRouter's min-heap balance: requests `order[0..k)` (indices into `tokens`, already
/// sorted by tokens descending) each go to the rank with the smallest (tokens, requests, rank)
/// among ranks with fewer than `expected` requests; out[i] = rank of request i, -1 if none was left.
/// `rank_tokens` / `rank_requests` (num_ranks entries) are the starting load, not modified.
void adp_balance(const int64_t* tokens, const int32_t* order, int32_t k, const int64_t* rank_tokens,
                 const int64_t* rank_requests, int32_t num_ranks, int64_t expected, int32_t* out);

/// KVCacheAwareADPRouter's scoring loop over `order[0..k)`: score = (tokens - gated match) +
/// weight * (rank tokens / max(eligible total, tokens) * tokens), lowest (score, rank tokens,
/// tie[i][r]) wins; a rank leaves when it reaches `expected` requests. match and tie are
/// row-major [request][rank]. out[i] = rank of request i, -1 if none was eligible.
void adp_kv_route(const int64_t* tokens, const int32_t* order, int32_t k, const int64_t* match, const int64_t* tie,
                  const int64_t* rank_tokens, const int64_t* rank_requests, int32_t num_ranks, int64_t expected,
                  double weight, double threshold, int32_t* out);

}  // namespace tllm
