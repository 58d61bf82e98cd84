// ext/adp_router.h: the sequential parts of the attention-DP routers, one call per step.
//
// Python twin: tllm_sched/attention_dp/adp_router.py, which does the array math around them
// (target admission, caps) and keeps the same loops in plain Python as the naive reference
// (backend "python"; the tests hold the two to the same assignments). Both follow TensorRT-LLM's
// adp_router.py (DefaultADPRouter, KVCacheAwareADPRouter): every choice depends on the one before,
// and numpy's sort alone costs more than this whole call (design.md, attention DP #7).
//
// Every function checks its arguments (InputError, before writing anything): the bindings only
// convert.
#pragma once

#include <cstdint>

namespace tllm {

/// An array and its length.
template <class T>
struct Span {
    T* data;
    int32_t size;
    T& operator[](int32_t i) const { return data[i]; }
};

/// Rank-major match lengths, (ranks, requests) with any strides: match(r, i) = data[r * rank_stride + i * request_stride].
struct MatchView {
    const int64_t* data;
    int64_t num_ranks, num_requests, rank_stride, request_stride;
    int64_t operator()(int32_t r, int32_t i) const { return data[r * rank_stride + i * request_stride]; }
};

/// A fixed pseudo-random priority of rank r for request `request_id` (exact score ties go to the
/// lower one; TensorRT-LLM shuffles the ranks with random.Random(request_id) instead).
int64_t adp_tie_priority(int64_t request_id, int32_t rank);

// Common arguments: `tokens` are the new requests' prompt lengths (each > 0); `candidates` the
// distinct indices into them to route, in order (nullptr: every request, in order); `rank_requests`
// each rank's active requests (each in [0, 2**32)); `max_active` the per-rank cap (> 0); `ranks`
// one entry per request: the rank each placed candidate gets is written there, the other entries
// keep their value (-1: still queued).

/// Round-robin: the candidates, largest first (stable), dealt to the ranks in turn from `start`,
/// skipping ranks with `max_active` requests (counting the ones dealt; `rank_requests` has one
/// entry per rank). Returns the rank after the last one dealt to (`start` if none).
int32_t adp_round_robin(Span<const int64_t> tokens, const Span<const int32_t>* candidates,
                        Span<const int64_t> rank_requests, int64_t max_active, int32_t start, Span<int32_t> ranks);

// The next two aim at an expected per-rank request count (TensorRT-LLM's
// expected_num_active_requests), which they return: with k candidates over R ranks,
// min(max(ceil(multiplier * ceil((sum of rank_requests + k) / R)), max of rank_requests), max_active).

/// DefaultADPRouter's balance (multiplier 1): the candidates, largest first (stable), each go to
/// the rank with the smallest (tokens, requests, rank) among ranks below the expected count,
/// starting from `rank_tokens` / `rank_requests` (one entry per rank each). `rank_tokens` (>= 0)
/// and the request tokens must sum to less than 2**62 (the loads are int64).
int64_t adp_balance(Span<const int64_t> tokens, const Span<const int32_t>* candidates, Span<const int64_t> rank_tokens,
                    Span<const int64_t> rank_requests, int64_t max_active, Span<int32_t> ranks);

/// KVCacheAwareADPRouter's loop (multiplier `fair_share_multiplier`): the candidates, ordered by
/// (fingerprint, tokens descending) (stable), each go to the eligible rank with the lowest (score,
/// rank tokens, tie priority), where
///     score = (tokens - gated match) + weight * (rank tokens / max(eligible total, tokens) * tokens)
/// and the match counts only when the best eligible match exceeds `threshold` of the tokens. A
/// rank stops being eligible at the expected count; a placed request adds its uncached tokens.
/// `rank_tokens` (>= 0) and the request tokens must sum to less than 2**53 (the loop's double sums
/// are then exact in any order). With `reset`, every entry of `ranks` is set to -1 first (after the
/// checks), so a caller can hand in a reused buffer.
int64_t adp_kv_route(Span<const int64_t> tokens, Span<const int64_t> request_ids, Span<const int64_t> fingerprints,
                     const Span<const int32_t>* candidates, MatchView match, Span<const int64_t> rank_tokens,
                     Span<const int64_t> rank_requests, int64_t max_active, double fair_share_multiplier, double weight,
                     double threshold, Span<int32_t> ranks, bool reset = false);

}  // namespace tllm
