// ext/adp_router.h: the sequential parts of the attention-DP routers, one call per step.
//
// Python twin: tllm_sched/attention_dp/adp_router.py, which does the array math around them
// (target admission, caps) and has the same code in plain Python (backend "python"; the tests hold
// the two to the same assignments). Both follow TensorRT-LLM's adp_router.py (DefaultADPRouter,
// KVCacheAwareADPRouter): every choice depends on the one before, so the loops run here.
#pragma once

#include <cstdint>

namespace tllm {

/// Rank-major match lengths: match(r, i) = data[r * rank_stride + i * request_stride].
struct MatchView {
    const int64_t* data;
    int64_t rank_stride, request_stride;
    int64_t operator()(int32_t r, int32_t i) const { return data[r * rank_stride + i * request_stride]; }
};

/// A fixed pseudo-random priority of rank r for request `request_id` (exact score ties go to the
/// lower one; TensorRT-LLM shuffles the ranks with random.Random(request_id) instead).
int64_t adp_tie_priority(int64_t request_id, int32_t rank);

/// Round-robin: the `candidates`, largest first (stable), dealt to the ranks in turn from `start`,
/// skipping ranks with `max_active` requests (counting the ones dealt); ranks[i] is set for each
/// candidate placed. Returns the rank after the last one dealt to (`start` if none).
int32_t adp_round_robin(const int64_t* tokens, const int32_t* candidates, int32_t k, const int64_t* rank_requests,
                        int32_t num_ranks, int64_t max_active, int32_t start, int32_t* ranks);

/// DefaultADPRouter's balance: the `candidates` (indices into `tokens`), largest first (stable),
/// each go to the rank with the smallest (tokens, requests, rank) among ranks with fewer than
/// `expected` requests; ranks[i] is set for each candidate placed (the rest keep their value).
/// `rank_tokens` / `rank_requests` (num_ranks entries) are the starting load.
void adp_balance(const int64_t* tokens, const int32_t* candidates, int32_t k, const int64_t* rank_tokens,
                 const int64_t* rank_requests, int32_t num_ranks, int64_t expected, int32_t* ranks);

/// KVCacheAwareADPRouter's loop: the candidates, ordered by (fingerprint, tokens descending)
/// (stable), each go to the eligible rank with the lowest (score, rank tokens, tie priority), where
/// score = (tokens - gated match) + weight * (rank tokens / max(eligible total, tokens) * tokens)
/// and the match counts only when the best eligible match exceeds `threshold` of the tokens. A
/// rank stops being eligible at `expected` requests; a placed request adds its uncached tokens.
void adp_kv_route(const int64_t* tokens, const int64_t* request_ids, const int64_t* fingerprints,
                  const int32_t* candidates, int32_t k, MatchView match, const int64_t* rank_tokens,
                  const int64_t* rank_requests, int32_t num_ranks, int64_t expected, double weight, double threshold,
                  int32_t* ranks);

}  // namespace tllm
