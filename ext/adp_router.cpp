// ext/adp_router.cpp: the sequential parts of the attention-DP routers (see the header).
#include "adp_router.h"

#include <algorithm>
#include <cstddef>
#include <utility>
#include <vector>

namespace tllm {

int64_t adp_tie_priority(int64_t request_id, int32_t rank) {
    constexpr uint64_t k0 = 0x9E3779B97F4A7C15u, k1 = 0xBF58476D1CE4E5B9u, k2 = 0x94D049BB133111EBu;
    const uint64_t id = static_cast<uint64_t>(request_id), r = static_cast<uint64_t>(static_cast<uint32_t>(rank));
    uint64_t x = id * k0 + r * k1;
    x = (x ^ (x >> 30)) * k1;
    x = (x ^ (x >> 27)) * k2;
    x ^= x >> 31;
    return static_cast<int64_t>(x >> 1);
}

namespace {
/// `candidates` in the order of (key1, key2), ties kept in candidate order (what a stable sort
/// gives): the keys are copied next to each candidate so that the sort touches one array.
std::vector<int32_t> sorted_by(const int32_t* candidates, int32_t k, const int64_t* key1, const int64_t* key2,
                               bool key2_descending) {
    struct Item {
        int64_t k1, k2;
        int32_t position, request;
    };
    std::vector<Item> items(static_cast<size_t>(k));
    for (int32_t j = 0; j < k; ++j) {
        const int32_t i = candidates[j];
        items[static_cast<size_t>(j)] = {key1 ? key1[i] : 0, key2_descending ? -key2[i] : key2[i], j, i};
    }
    std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
        return a.k1 != b.k1 ? a.k1 < b.k1 : a.k2 != b.k2 ? a.k2 < b.k2 : a.position < b.position;
    });
    std::vector<int32_t> order(static_cast<size_t>(k));
    for (size_t j = 0; j < items.size(); ++j) order[j] = items[j].request;
    return order;
}

/// The candidates by tokens, largest first (stable).
std::vector<int32_t> largest_first(const int64_t* tokens, const int32_t* candidates, int32_t k) {
    return sorted_by(candidates, k, nullptr, tokens, /*key2_descending=*/true);
}
}  // namespace

int32_t adp_round_robin(const int64_t* tokens, const int32_t* candidates, int32_t k, const int64_t* rank_requests,
                        int32_t num_ranks, int64_t max_active, int32_t start, int32_t* ranks) {
    std::vector<int64_t> room(static_cast<size_t>(num_ranks));
    int64_t total = 0;
    for (size_t r = 0; r < room.size(); ++r) total += room[r] = std::max<int64_t>(max_active - rank_requests[r], 0);
    int32_t turn = start;
    for (int32_t i : largest_first(tokens, candidates, k)) {
        if (total == 0) break;
        while (room[static_cast<size_t>(turn)] == 0) turn = (turn + 1) % num_ranks;
        ranks[i] = turn;
        --room[static_cast<size_t>(turn)], --total;
        turn = (turn + 1) % num_ranks;
    }
    return turn;
}

void adp_balance(const int64_t* tokens, const int32_t* candidates, int32_t k, const int64_t* rank_tokens,
                 const int64_t* rank_requests, int32_t num_ranks, int64_t expected, int32_t* ranks) {
    const std::vector<int32_t> order = largest_first(tokens, candidates, k);
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
    const std::vector<int32_t> order = sorted_by(candidates, k, fingerprints, tokens, /*key2_descending=*/true);
    const size_t R = static_cast<size_t>(num_ranks);
    std::vector<double> load(R);
    std::vector<int64_t> count(rank_requests, rank_requests + R);
    std::vector<int32_t> eligible;
    std::vector<double> score(R);
    for (size_t r = 0; r < R; ++r) {
        load[r] = static_cast<double>(rank_tokens[r]);
        if (count[r] < expected) eligible.push_back(static_cast<int32_t>(r));
    }
    // Token counts are integers below 2**53 (the binding checks), so every sum of them is exact in a
    // double in any order: the eligible total is kept up to date instead of re-added per request.
    double total = 0.0;
    for (int32_t r : eligible) total += load[static_cast<size_t>(r)];
    auto tie_first = [&](int32_t i, int32_t a, int32_t b) {  // a before b among exact ties
        return adp_tie_priority(request_ids[i], a) < adp_tie_priority(request_ids[i], b);
    };
    for (int32_t i : order) {
        if (eligible.empty()) break;
        const int64_t t = tokens[i];
        int64_t best_match = 0;
        for (int32_t r : eligible) best_match = std::max(best_match, match(r, i));
        const double denom = std::max(total, static_cast<double>(t));
        const bool affinity = static_cast<double>(best_match) / static_cast<double>(std::max<int64_t>(t, 1)) > threshold;
        const size_t e = eligible.size();
        size_t bj = 0;
        if (!affinity) {
            // score = t + weight * (load / denom * t) never decreases as the load grows (weight >= 0,
            // rounding is monotone), and exact ties go to the lower load: the least loaded rank wins.
            for (size_t j = 1; j < e; ++j) {
                const double l = load[static_cast<size_t>(eligible[j])], bl = load[static_cast<size_t>(eligible[bj])];
                if (l < bl || (l == bl && tie_first(i, eligible[j], eligible[bj]))) bj = j;
            }
        } else {
            for (size_t j = 0; j < e; ++j) {  // scores first: the divisions pipeline
                const int32_t r = eligible[j];
                score[j] = static_cast<double>(t - match(r, i)) +
                           weight * (load[static_cast<size_t>(r)] / denom * static_cast<double>(t));
            }
            for (size_t j = 1; j < e; ++j) {
                const double l = load[static_cast<size_t>(eligible[j])], bl = load[static_cast<size_t>(eligible[bj])];
                if (score[j] < score[bj] ||
                    (score[j] == score[bj] && (l < bl || (l == bl && tie_first(i, eligible[j], eligible[bj])))))
                    bj = j;
            }
        }
        const int32_t best = eligible[bj];
        const size_t b = static_cast<size_t>(best);
        ranks[i] = best;
        ++count[b];
        const double added = static_cast<double>(std::max<int64_t>(t - match(best, i), 0));
        load[b] += added;
        total += added;
        if (count[b] >= expected) {
            eligible.erase(eligible.begin() + static_cast<std::ptrdiff_t>(bj));
            total -= load[b];
        }
    }
}

}  // namespace tllm
