// ext/adp_router.cpp: the sequential parts of the attention-DP routers (see the header).
#include "adp_router.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "errors.h"

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

// ------------------------------------------------------------------ argument checks (before any write)

void check_tokens(Span<const int64_t> tokens) {
    for (int32_t i = 0; i < tokens.size; ++i)
        if (tokens[i] <= 0) fail_input("tokens: every request needs at least one token");
}

void check_candidates(const Span<const int32_t>* candidates, int32_t n) {
    if (!candidates) return;
    std::vector<uint8_t> seen(static_cast<size_t>(n), 0);
    for (int32_t j = 0; j < candidates->size; ++j) {
        const int32_t i = (*candidates)[j];
        if (i < 0 || i >= n) fail_input("candidates: index " + std::to_string(i) + " is not a request");
        if (seen[static_cast<size_t>(i)]++) fail_input("candidates: request " + std::to_string(i) + " is listed twice");
    }
}

void check_rank_arrays(Span<const int64_t> rank_tokens, Span<const int64_t> rank_requests) {
    if (rank_tokens.size == 0 || rank_tokens.size != rank_requests.size)
        fail_input("rank_tokens and rank_requests must have one entry per rank (at least one)");
}

/// Request counts below 2**32 (their sums over ranks and candidates are then exact in int64, and
/// in a double) and a positive cap.
void check_counts(Span<const int64_t> rank_requests, int64_t max_active) {
    for (int32_t r = 0; r < rank_requests.size; ++r)
        if (rank_requests[r] < 0 || rank_requests[r] >= (int64_t{1} << 32))
            fail_input("rank_requests: every count must be >= 0 and below 2**32");
    if (max_active <= 0) fail_input("max_active must be positive");
}

void check_finite(double v, const char* name) {
    if (!std::isfinite(v) || v < 0) fail_input(std::string(name) + ": must be a finite number >= 0");
}

/// The per-rank request count the router aims at (TensorRT-LLM's expected_num_active_requests):
/// min(max(ceil(multiplier * ceil((active + k) / ranks)), busiest rank), max_active), with k
/// requests to place. Exact for every multiplier: a share of 2**63 or more is above any cap.
int64_t expected_count(Span<const int64_t> rank_requests, int32_t k, double multiplier, int64_t max_active) {
    int64_t total = k, busiest = 0;
    for (int32_t r = 0; r < rank_requests.size; ++r) total += rank_requests[r], busiest = std::max(busiest, rank_requests[r]);
    const int64_t fair = (total + rank_requests.size - 1) / rank_requests.size;
    const double share = std::ceil(multiplier * static_cast<double>(fair));
    const int64_t want = share >= 0x1p63 ? max_active : static_cast<int64_t>(share);
    return std::min(std::max(want, busiest), max_active);
}

void check_out(Span<int32_t> ranks, int32_t n) {
    if (ranks.size != n) fail_input("ranks: expected one entry per request");
}

/// Every sum of the token counts fits: below 2**62 (load router: int64 loads) or 2**53 (KV router:
/// its double sums are then exact in any order). `log2_limit` is 62 or 53.
void check_token_counts(Span<const int64_t> tokens, Span<const int64_t> rank_tokens, int log2_limit) {
    for (int32_t r = 0; r < rank_tokens.size; ++r)
        if (rank_tokens[r] < 0) fail_input("rank_tokens: must be >= 0");
    // A 128-bit sum of values clamped to the limit (< 2**63 each, fewer than 2**32 of them) cannot
    // overflow; its adds form a shorter dependency chain than a saturating int64 sum.
    const int64_t limit = int64_t{1} << log2_limit;
    unsigned __int128 total = 0;
    for (int32_t i = 0; i < tokens.size; ++i) total += static_cast<uint64_t>(std::min(tokens[i], limit));
    for (int32_t r = 0; r < rank_tokens.size; ++r) total += static_cast<uint64_t>(std::min(rank_tokens[r], limit));
    if (total >= static_cast<uint64_t>(limit))
        fail_input("token counts too large: they must sum to less than 2**" + std::to_string(log2_limit));
}

// ------------------------------------------------------------------ the orderings

int bit_width(uint64_t x) { return x ? 64 - __builtin_clzll(x) : 0; }

/// Each group's rank among the distinct groups (ascending, signed), per candidate position j, or
/// false when there are more than 16 distinct groups (a handful of shared prefixes is the usual
/// case). A small open-addressing table finds a group's id in one probe, nearly always.
bool group_ranks(const int64_t* group, int32_t k, const Span<const int32_t>* candidates, std::vector<uint8_t>& rank,
                 int& num_groups) {
    constexpr int kMaxGroups = 16, kSlots = 128, kHashShift = 57;
    constexpr uint8_t kFree = 255;
    int64_t distinct[kMaxGroups], slot_group[kSlots];
    uint8_t slot_id[kSlots];
    std::fill(slot_id, slot_id + kSlots, kFree);
    num_groups = 0;
    rank.resize(static_cast<size_t>(k));
    for (int32_t j = 0; j < k; ++j) {
        const int64_t g = group[candidates ? (*candidates)[j] : j];
        uint64_t h = (static_cast<uint64_t>(g) * 0x9E3779B97F4A7C15u) >> kHashShift;
        uint8_t id = slot_id[h];
        if (__builtin_expect(id == kFree || slot_group[h] != g, 0)) {  // a new group, or a collision
            while (slot_id[h] != kFree && slot_group[h] != g) h = (h + 1) % kSlots;
            if (slot_id[h] == kFree) {
                if (num_groups == kMaxGroups) return false;
                slot_group[h] = g, slot_id[h] = static_cast<uint8_t>(num_groups);
                distinct[num_groups++] = g;
            }
            id = slot_id[h];
        }
        rank[static_cast<size_t>(j)] = id;
    }
    uint8_t order_of[kMaxGroups];
    for (int x = 0; x < num_groups; ++x) {
        int below = 0;
        for (int y = 0; y < num_groups; ++y) below += distinct[y] < distinct[x];
        order_of[x] = static_cast<uint8_t>(below);
    }
    for (uint8_t& r : rank) r = order_of[r];
    return true;
}

/// Sorts `items` (a key below 2**bits above, bits <= 32, and a payload in the low 32 bits) by key,
/// stably: an LSD radix sort in as few counting passes of at most 11 bits as cover the key, each
/// reading the items in a row (the key travels with its payload) and the counts on the stack.
void radix_sort(std::vector<uint64_t>& items, int bits) {
    std::vector<uint64_t> tmp(items.size());
    const int passes = std::max(1, (bits + 10) / 11), width = (bits + passes - 1) / passes;
    const uint64_t mask = (uint64_t{1} << width) - 1;
    const size_t buckets = (size_t{1} << width) + 1;
    int32_t start[(1 << 11) + 1];
    for (int shift = 32; shift < 32 + bits; shift += width) {
        std::fill(start, start + buckets, 0);
        for (uint64_t item : items) ++start[((item >> shift) & mask) + 1];
        for (size_t d = 1; d < buckets; ++d) start[d] += start[d - 1];
        for (uint64_t item : items) tmp[static_cast<size_t>(start[(item >> shift) & mask]++)] = item;
        items.swap(tmp);
    }
}

/// The candidates (nullptr: 0..n-1) in the order of (group, tokens descending, position in the
/// list), with group 0 for all when `group` is nullptr: what a stable sort by (group, -tokens)
/// gives. The usual case (token counts of at most 28 bits, at most 16 distinct groups) is a radix
/// sort of a 32-bit key, the group's rank above the descending token count: no comparisons, so no
/// mispredicted branches (std::sort of 256 random keys costs about 2 us, mostly mispredictions; the
/// radix sort 1.2 us, 1.9 us with the group lookup, measured hot). Otherwise each candidate packs
/// into one 128-bit integer key (group above, tokens descending and the position below) for
/// std::sort; tokens and positions too wide to share 64 bits fall back to a sort of structs.
std::vector<int32_t> ordered(const int64_t* group, Span<const int64_t> tokens, const Span<const int32_t>* candidates) {
    const int32_t k = candidates ? candidates->size : tokens.size;
    auto at = [&](int32_t j) { return candidates ? (*candidates)[j] : j; };
    std::vector<int32_t> order(static_cast<size_t>(k));
    int64_t max_tokens = 0;
    for (int32_t j = 0; j < k; ++j) max_tokens = std::max(max_tokens, tokens[at(j)]);
    const int pos_bits = bit_width(static_cast<uint64_t>(k));
    const int tok_bits = bit_width(static_cast<uint64_t>(max_tokens));
    const uint64_t tok_max = (uint64_t{1} << tok_bits) - 1;  // tokens > 0: at most 63 bits
    std::vector<uint8_t> rank;
    int num_groups = 1;
    int group_bits = 0;
    if (tok_bits <= 28 && (!group || group_ranks(group, k, candidates, rank, num_groups)) &&
        (group_bits = bit_width(static_cast<uint64_t>(num_groups - 1))) + tok_bits <= 32) {
        std::vector<uint64_t> items(static_cast<size_t>(k));
        for (int32_t j = 0; j < k; ++j) {
            const uint64_t g = group ? uint64_t{rank[static_cast<size_t>(j)]} << tok_bits : 0;
            const uint64_t key = g | (tok_max - static_cast<uint64_t>(tokens[at(j)]));
            items[static_cast<size_t>(j)] = key << 32 | static_cast<uint32_t>(at(j));
        }
        radix_sort(items, group_bits + tok_bits);
        for (int32_t j = 0; j < k; ++j) order[static_cast<size_t>(j)] = static_cast<int32_t>(static_cast<uint32_t>(items[static_cast<size_t>(j)]));
        return order;
    }
    if (pos_bits + tok_bits <= 64) {
        using u128 = unsigned __int128;
        std::vector<u128> keys(static_cast<size_t>(k));
        for (int32_t j = 0; j < k; ++j) {
            const int32_t i = at(j);
            const uint64_t hi = group ? static_cast<uint64_t>(group[i]) ^ (uint64_t{1} << 63) : 0;  // signed order
            const uint64_t lo = ((tok_max - static_cast<uint64_t>(tokens[i])) << pos_bits) | static_cast<uint64_t>(j);
            keys[static_cast<size_t>(j)] = (u128{hi} << 64) | lo;
        }
        std::sort(keys.begin(), keys.end());
        const uint64_t pos_mask = (uint64_t{1} << pos_bits) - 1;
        for (size_t j = 0; j < keys.size(); ++j) order[j] = at(static_cast<int32_t>(static_cast<uint64_t>(keys[j]) & pos_mask));
        return order;
    }
    struct Item {
        int64_t group, neg_tokens;
        int32_t position;
    };
    std::vector<Item> items(static_cast<size_t>(k));
    for (int32_t j = 0; j < k; ++j) items[static_cast<size_t>(j)] = {group ? group[at(j)] : 0, -tokens[at(j)], j};
    std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
        return a.group != b.group ? a.group < b.group : a.neg_tokens != b.neg_tokens ? a.neg_tokens < b.neg_tokens : a.position < b.position;
    });
    for (size_t j = 0; j < items.size(); ++j) order[j] = at(items[j].position);
    return order;
}

}  // namespace

int32_t adp_round_robin(Span<const int64_t> tokens, const Span<const int32_t>* candidates,
                        Span<const int64_t> rank_requests, int64_t max_active, int32_t start, Span<int32_t> ranks) {
    check_tokens(tokens);
    check_candidates(candidates, tokens.size);
    if (rank_requests.size == 0 || start < 0 || start >= rank_requests.size)
        fail_input("round robin: start must be a rank of at least one");
    check_counts(rank_requests, max_active);
    check_out(ranks, tokens.size);
    const int32_t num_ranks = rank_requests.size;
    const int64_t k = candidates ? candidates->size : tokens.size;
    std::vector<int64_t> room(static_cast<size_t>(num_ranks));
    int64_t total = 0;  // (room capped at k, which no rank can exceed: the total cannot overflow)
    for (int32_t r = 0; r < num_ranks; ++r)
        total += room[static_cast<size_t>(r)] = std::min(std::max<int64_t>(max_active - rank_requests[r], 0), k);
    int32_t turn = start;
    auto next = [num_ranks](int32_t r) { return r + 1 == num_ranks ? 0 : r + 1; };  // no division
    for (int32_t i : ordered(nullptr, tokens, candidates)) {
        if (total == 0) break;
        while (room[static_cast<size_t>(turn)] == 0) turn = next(turn);
        ranks[i] = turn;
        --room[static_cast<size_t>(turn)], --total;
        turn = next(turn);
    }
    return turn;
}

int64_t adp_balance(Span<const int64_t> tokens, const Span<const int32_t>* candidates, Span<const int64_t> rank_tokens,
                    Span<const int64_t> rank_requests, int64_t max_active, Span<int32_t> ranks) {
    check_tokens(tokens);
    check_candidates(candidates, tokens.size);
    check_rank_arrays(rank_tokens, rank_requests);
    check_token_counts(tokens, rank_tokens, 62);
    check_counts(rank_requests, max_active);
    check_out(ranks, tokens.size);
    const int64_t expected = expected_count(rank_requests, candidates ? candidates->size : tokens.size, 1.0, max_active);
    const size_t R = static_cast<size_t>(rank_tokens.size);
    std::vector<int64_t> load(rank_tokens.data, rank_tokens.data + R), count(rank_requests.data, rank_requests.data + R);
    // A linear scan for the minimum: TensorRT-LLM's heap of (tokens, requests, rank) pops the same
    // rank, and a handful of ranks fit in a cache line.
    for (int32_t i : ordered(nullptr, tokens, candidates)) {
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
    return expected;
}

int64_t adp_kv_route(Span<const int64_t> tokens, Span<const int64_t> request_ids, Span<const int64_t> fingerprints,
                     const Span<const int32_t>* candidates, MatchView match, Span<const int64_t> rank_tokens,
                     Span<const int64_t> rank_requests, int64_t max_active, double fair_share_multiplier, double weight,
                     double threshold, Span<int32_t> ranks, bool reset) {
    check_tokens(tokens);
    if (request_ids.size != tokens.size || fingerprints.size != tokens.size)
        fail_input("request_ids and fingerprints: expected one entry per request");
    check_candidates(candidates, tokens.size);
    check_rank_arrays(rank_tokens, rank_requests);
    if (match.num_ranks != rank_tokens.size || match.num_requests != tokens.size)
        fail_input("match: expected shape (ranks, requests) = (" + std::to_string(rank_tokens.size) + ", " +
                   std::to_string(tokens.size) + ")");
    check_token_counts(tokens, rank_tokens, 53);
    check_counts(rank_requests, max_active);
    check_finite(fair_share_multiplier, "fair_share_multiplier");
    check_finite(weight, "weight");  // the no-affinity shortcut below needs a score that never falls as the load grows
    check_finite(threshold, "threshold");
    check_out(ranks, tokens.size);
    if (reset) std::fill(ranks.data, ranks.data + ranks.size, -1);
    const int64_t expected =
        expected_count(rank_requests, candidates ? candidates->size : tokens.size, fair_share_multiplier, max_active);

    const std::vector<int32_t> order = ordered(fingerprints.data, tokens, candidates);
    // The eligible ranks, each with its load, request count, offset into the match rows and the
    // current request's match and score, in one small array (one allocation). Loads are integers:
    // every sum of token counts is below 2**53 (checked above), so each converts to the double the
    // scores use exactly, and the eligible total is kept up to date instead of re-added per request.
    struct Eligible {
        int64_t load, count, offset, matched;
        double score;
        int32_t rank;
    };
    std::vector<Eligible> el;
    el.reserve(static_cast<size_t>(rank_tokens.size));
    int64_t total = 0;
    for (int32_t r = 0; r < rank_tokens.size; ++r) {
        if (rank_requests[r] >= expected) continue;
        el.push_back({rank_tokens[r], rank_requests[r], r * match.rank_stride, 0, 0.0, r});
        total += rank_tokens[r];
    }
    auto tie_first = [&](int32_t i, size_t a, size_t b) {  // el[a] before el[b] among exact ties
        return adp_tie_priority(request_ids[i], el[a].rank) < adp_tie_priority(request_ids[i], el[b].rank);
    };
    for (int32_t i : order) {
        const size_t e = el.size();
        if (e == 0) break;
        const int64_t t = tokens[i];
        // The request's match on each eligible rank, gathered once (independent loads, no branch).
        const int64_t* column = match.data + i * match.request_stride;
        int64_t best_match = 0;
        for (Eligible& x : el) best_match = std::max(best_match, x.matched = column[x.offset]);
        // (threshold >= 0: no match, no affinity)
        const bool affinity = best_match > 0 && static_cast<double>(best_match) / static_cast<double>(t) > threshold;
        size_t bj = 0;
        if (!affinity) {
            // score = t + weight * (load / denom * t) never decreases as the load grows (weight >= 0,
            // rounding is monotone), and exact ties go to the lower load: the least loaded rank wins.
            for (size_t j = 1; j < e; ++j)
                if (el[j].load < el[bj].load || (el[j].load == el[bj].load && tie_first(i, j, bj))) bj = j;
        } else {
            const double denom = std::max(static_cast<double>(total), static_cast<double>(t));
            for (Eligible& x : el)  // scores first: the divisions pipeline
                x.score = static_cast<double>(t - x.matched) + weight * (static_cast<double>(x.load) / denom * static_cast<double>(t));
            for (size_t j = 1; j < e; ++j) {
                const Eligible &x = el[j], &b = el[bj];
                if (x.score < b.score ||
                    (x.score == b.score && (x.load < b.load || (x.load == b.load && tie_first(i, j, bj)))))
                    bj = j;
            }
        }
        Eligible& best = el[bj];
        ranks[i] = best.rank;
        const int64_t added = std::max<int64_t>(t - best.matched, 0);
        best.load += added;
        total += added;
        if (++best.count >= expected) {
            total -= best.load;
            el.erase(el.begin() + static_cast<std::ptrdiff_t>(bj));
        }
    }
    return expected;
}

}  // namespace tllm
