// ext/adp_router.cpp: the sequential greedy loops of the attention-DP routers (see the header).
#include "adp_router.h"

#include <algorithm>
#include <vector>

namespace tllm {

void adp_balance(const int64_t* tokens, const int32_t* order, int32_t k, const int64_t* rank_tokens,
                 const int64_t* rank_requests, int32_t num_ranks, int64_t expected, int32_t* out) {
    const size_t R = static_cast<size_t>(num_ranks);
    std::vector<int64_t> load(rank_tokens, rank_tokens + R), count(rank_requests, rank_requests + R);
    // A linear scan for the minimum: TensorRT-LLM's heap with (tokens, requests, rank) keys pops the
    // same rank, and a handful of ranks fit in a cache line.
    for (int32_t j = 0; j < k; ++j) {
        int32_t best = -1;
        for (size_t r = 0; r < R; ++r) {
            if (count[r] >= expected) continue;
            if (best < 0) {
                best = static_cast<int32_t>(r);
                continue;
            }
            const size_t b = static_cast<size_t>(best);
            if (load[r] < load[b] || (load[r] == load[b] && count[r] < count[b])) best = static_cast<int32_t>(r);
        }
        if (best < 0) break;  // every rank is at the expected count: the rest stay queued
        const int32_t i = order[j];
        load[static_cast<size_t>(best)] += tokens[i];
        ++count[static_cast<size_t>(best)];
        out[i] = best;
    }
}

void adp_kv_route(const int64_t* tokens, const int32_t* order, int32_t k, const int64_t* match, const int64_t* tie,
                  const int64_t* rank_tokens, const int64_t* rank_requests, int32_t num_ranks, int64_t expected,
                  double weight, double threshold, int32_t* out) {
    const size_t R = static_cast<size_t>(num_ranks);
    std::vector<double> load(R);
    std::vector<int64_t> count(rank_requests, rank_requests + R);
    std::vector<int32_t> eligible;
    for (size_t r = 0; r < R; ++r) {
        load[r] = static_cast<double>(rank_tokens[r]);
        if (count[r] < expected) eligible.push_back(static_cast<int32_t>(r));
    }
    for (int32_t j = 0; j < k && !eligible.empty(); ++j) {
        const int32_t i = order[j];
        const int64_t t = tokens[i];
        const int64_t* m = match + static_cast<size_t>(i) * R;
        const int64_t* p = tie + static_cast<size_t>(i) * R;
        double total = 0.0;
        int64_t best_match = 0;
        for (int32_t r : eligible) {
            total += load[static_cast<size_t>(r)];
            best_match = std::max(best_match, m[r]);
        }
        const double denom = std::max(total, static_cast<double>(t));
        const bool affinity = static_cast<double>(best_match) / static_cast<double>(std::max<int64_t>(t, 1)) > threshold;
        int32_t best = -1;
        double best_score = 0.0;
        for (int32_t r : eligible) {
            const double l = load[static_cast<size_t>(r)];
            const double score = static_cast<double>(t - (affinity ? m[r] : 0)) + weight * (l / denom * static_cast<double>(t));
            if (best < 0) {
                best = r, best_score = score;
                continue;
            }
            const double bl = load[static_cast<size_t>(best)];
            if (score < best_score || (score == best_score && (l < bl || (l == bl && p[r] < p[best])))) {
                best = r, best_score = score;
            }
        }
        const size_t b = static_cast<size_t>(best);
        out[i] = best;
        ++count[b];
        load[b] += static_cast<double>(std::max<int64_t>(t - m[best], 0));
        if (count[b] >= expected) eligible.erase(std::find(eligible.begin(), eligible.end(), best));
    }
}

}  // namespace tllm
