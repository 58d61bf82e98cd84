// ext/adp_router.cpp: the sequential parts of the attention-DP routers (see the header).
#include "adp_router.h"

#include <algorithm>
#include <vector>

namespace tllm {

int64_t adp_tie_priority(int64_t request_id, int32_t rank) {
    uint64_t x = static_cast<uint64_t>(request_id) * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(rank) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    x ^= x >> 31;
    return static_cast<int64_t>(x >> 1);
}

void adp_balance(const int64_t* tokens, const int32_t* candidates, int32_t k, const int64_t* rank_tokens,
                 const int64_t* rank_requests, int32_t num_ranks, int64_t expected, int32_t* ranks) {
    std::vector<int32_t> order(candidates, candidates + k);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return tokens[a] > tokens[b]; });
    const size_t R = static_cast<size_t>(num_ranks);
    std::vector<int64_t> load(rank_tokens, rank_tokens + R), count(rank_requests, rank_requests + R);
    // A linear scan for the minimum: TensorRT-LLM's heap of (tokens, requests, rank) pops the same
    // rank, and a handful of ranks fit in a cache line.
    for (int32_t i : order) {
        int32_t best = -1;
        for (size_t r = 0; r < R; ++r) {
            if (count[r] >= expected) continue;
            const size_t b = static_cast<size_t>(best);
            if (best < 0 || load[r] < load[b] || (load[r] == load[b] && count[r] < count[b])) best = static_cast<int32_t>(r);
        }
        if (best < 0) break;  // every rank is at the expected count: the rest stay queued
        load[static_cast<size_t>(best)] += tokens[i];
        ++count[static_cast<size_t>(best)];
        ranks[i] = best;
    }
}

void adp_kv_route(const int64_t* tokens, const int64_t* request_ids, const int64_t* fingerprints,
                  const int32_t* candidates, int32_t k, MatchView match, const int64_t* rank_tokens,
                  const int64_t* rank_requests, int32_t num_ranks, int64_t expected, double weight, double threshold,
                  int32_t* ranks) {
    std::vector<int32_t> order(candidates, candidates + k);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
        return fingerprints[a] != fingerprints[b] ? fingerprints[a] < fingerprints[b] : tokens[a] > tokens[b];
    });
    const size_t R = static_cast<size_t>(num_ranks);
    std::vector<double> load(R);
    std::vector<int64_t> count(rank_requests, rank_requests + R);
    std::vector<int32_t> eligible;
    std::vector<double> score(R);
    for (size_t r = 0; r < R; ++r) {
        load[r] = static_cast<double>(rank_tokens[r]);
        if (count[r] < expected) eligible.push_back(static_cast<int32_t>(r));
    }
    for (int32_t i : order) {
        if (eligible.empty()) break;
        const int64_t t = tokens[i];
        double total = 0.0;
        int64_t best_match = 0;
        for (int32_t r : eligible) {
            total += load[static_cast<size_t>(r)];
            best_match = std::max(best_match, match(r, i));
        }
        const double denom = std::max(total, static_cast<double>(t));
        const bool affinity = static_cast<double>(best_match) / static_cast<double>(std::max<int64_t>(t, 1)) > threshold;
        // scores first (independent divisions pipeline), then the minimum
        const size_t e = eligible.size();
        for (size_t j = 0; j < e; ++j) {
            const int32_t r = eligible[j];
            score[j] = static_cast<double>(t - (affinity ? match(r, i) : 0)) +
                       weight * (load[static_cast<size_t>(r)] / denom * static_cast<double>(t));
        }
        size_t bj = 0;
        for (size_t j = 1; j < e; ++j) {
            const double l = load[static_cast<size_t>(eligible[j])], bl = load[static_cast<size_t>(eligible[bj])];
            // exact ties are rare: hash only then
            if (score[j] < score[bj] ||
                (score[j] == score[bj] && (l < bl || (l == bl && adp_tie_priority(request_ids[i], eligible[j]) <
                                                                     adp_tie_priority(request_ids[i], eligible[bj])))))
                bj = j;
        }
        const int32_t best = eligible[bj];
        const size_t b = static_cast<size_t>(best);
        ranks[i] = best;
        ++count[b];
        load[b] += static_cast<double>(std::max<int64_t>(t - match(best, i), 0));
        if (count[b] >= expected) eligible.erase(std::find(eligible.begin(), eligible.end(), best));
    }
}

}  // namespace tllm
