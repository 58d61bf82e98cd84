// ext/bindings/attention_dp.cpp: the attention-DP routers' loops (ext/adp_router.h), one call per step.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <string>
#include <vector>

#include "adp_router.h"
#include "bindings/arrays.h"
#include "bindings/common.h"

namespace tllm::bindings {

using namespace nb::literals;

namespace {

/// Attention DP: the candidate requests of a router step, checked: distinct indices of `n` requests;
/// None: every request, in order.
std::vector<int32_t> checked_candidates(nb::handle candidates, int32_t n) {
    if (candidates.is_none()) {
        std::vector<int32_t> all(static_cast<size_t>(n));
        for (int32_t i = 0; i < n; ++i) all[static_cast<size_t>(i)] = i;
        return all;
    }
    if (!nb::isinstance<AnyArray>(candidates)) throw TypeInputError("candidates: expected an int32 numpy array or None");
    auto [p, k] = checked<int32_t>(nb::cast<AnyArray>(candidates, false), "candidates");
    std::vector<uint8_t> seen(static_cast<size_t>(n), 0);
    for (int32_t j = 0; j < k; ++j) {
        if (p[j] < 0 || p[j] >= n) throw InputError("candidates: index " + std::to_string(p[j]) + " is not a request");
        if (seen[static_cast<size_t>(p[j])]++) throw InputError("candidates: request " + std::to_string(p[j]) + " is listed twice");
    }
    return std::vector<int32_t>(p, p + k);
}

/// Attention DP: the new requests' prompt tokens, all positive.
std::pair<const int64_t*, int32_t> checked_tokens(const AnyArray& tokens) {
    auto [p, n] = checked<int64_t>(tokens, "tokens");
    for (int32_t i = 0; i < n; ++i)
        if (p[i] <= 0) throw InputError("tokens: every request needs at least one token");
    return {p, n};
}

/// Attention DP: per-rank (tokens, requests) arrays of equal, non-zero length.
std::tuple<const int64_t*, const int64_t*, int32_t> checked_ranks(const AnyArray& tokens, const AnyArray& requests) {
    auto [t, r] = checked<int64_t>(tokens, "rank_tokens");
    auto [q, r2] = checked<int64_t>(requests, "rank_requests");
    if (r == 0 || r != r2) throw InputError("rank_tokens and rank_requests must have one entry per rank (at least one)");
    return {t, q, r};
}

/// Attention DP: the routing so far (one int32 rank or -1 per request), copied; None: all -1.
std::vector<int32_t> initial_ranks(nb::handle ranks, int32_t n) {
    if (ranks.is_none()) return std::vector<int32_t>(static_cast<size_t>(n), -1);
    if (!nb::isinstance<AnyArray>(ranks)) throw TypeInputError("ranks: expected an int32 numpy array or None");
    auto [p, m] = checked<int32_t>(nb::cast<AnyArray>(ranks, false), "ranks");
    if (m != n) throw InputError("ranks: expected one entry per request");
    return std::vector<int32_t>(p, p + m);
}

/// Attention DP (KV-aware): (positive) request tokens and non-negative rank tokens summing to
/// less than 2**53 so that every sum of them is exact in a double (the router adds them up).
void check_token_counts(const int64_t* tokens, int32_t n, const int64_t* rank_tokens, int32_t num_ranks) {
    constexpr int64_t kExact = int64_t{1} << 53;
    int64_t total = 0;
    for (int32_t i = 0; i < n; ++i) total = std::min(kExact, total + std::min(tokens[i], kExact));
    for (int32_t r = 0; r < num_ranks; ++r) {
        if (rank_tokens[r] < 0) throw InputError("rank_tokens: must be >= 0");
        total = std::min(kExact, total + std::min(rank_tokens[r], kExact));
    }
    if (total >= kExact) throw InputError("token counts too large: they must sum to less than 2**53");
}

/// Attention DP: a (ranks, requests) int64 matrix of any strides, e.g. a slice of the gathered records.
using Matrix = nb::ndarray<nb::ro, nb::ndim<2>, nb::device::cpu>;
MatchView checked_match(const Matrix& m, int32_t num_ranks, int32_t n) {
    if (m.dtype() != nb::dtype<int64_t>())
        throw TypeInputError("match: expected a numpy array of dtype int64 (no silent conversion), got " + dtype_str(m.dtype()));
    if (m.shape(0) != static_cast<size_t>(num_ranks) || m.shape(1) != static_cast<size_t>(n))
        throw InputError("match: expected shape (ranks, requests) = (" + std::to_string(num_ranks) + ", " + std::to_string(n) + ")");
    return MatchView{static_cast<const int64_t*>(m.data()), m.stride(0), m.stride(1)};
}

}  // namespace

void bind_attention_dp(nb::module_& m) {
    // ------------------------------------------------------------------ attention DP routers (one call per step)
    // candidates: int32 request indices, None for all in order; ranks: the routing so far, None for all -1.
    m.def("adp_round_robin", [](const AnyArray& tokens, nb::handle candidates, const AnyArray& rank_requests,
                                int64_t max_active, int32_t start, nb::handle ranks) {
            auto [tp, n] = checked_tokens(tokens);
            std::vector<int32_t> cand = checked_candidates(candidates, n);
            auto [rq, R] = checked<int64_t>(rank_requests, "rank_requests");
            if (R == 0 || start < 0 || start >= R) throw InputError("round robin: start must be a rank of at least one");
            std::vector<int32_t> out = initial_ranks(ranks, n);
            int32_t next = adp_round_robin(tp, cand.data(), static_cast<int32_t>(cand.size()), rq, R, max_active, start, out.data());
            return nb::make_tuple(to_numpy(std::move(out)), next);
        }, "tokens"_a.noconvert(), "candidates"_a.none(), "rank_requests"_a.noconvert(), "max_active"_a, "start"_a,
        "ranks"_a.none(), "Round-robin deal: (a copy of `ranks` with each placed candidate's rank, next start).");
    m.def("adp_balance", [](const AnyArray& tokens, nb::handle candidates, const AnyArray& rank_tokens,
                            const AnyArray& rank_requests, int64_t expected, nb::handle ranks) {
            auto [tp, n] = checked_tokens(tokens);
            std::vector<int32_t> cand = checked_candidates(candidates, n);
            auto [rt, rq, R] = checked_ranks(rank_tokens, rank_requests);
            std::vector<int32_t> out = initial_ranks(ranks, n);
            adp_balance(tp, cand.data(), static_cast<int32_t>(cand.size()), rt, rq, R, expected, out.data());
            return to_numpy(std::move(out));
        }, "tokens"_a.noconvert(), "candidates"_a.none(), "rank_tokens"_a.noconvert(), "rank_requests"_a.noconvert(),
        "expected"_a, "ranks"_a.none(),
        "DefaultADPRouter's balance: a copy of `ranks` with each candidate's rank set (left as is: none was left).");
    m.def("adp_kv_route", [](const AnyArray& tokens, const AnyArray& request_ids, const AnyArray& fingerprints,
                             nb::handle candidates, const Matrix& match, const AnyArray& rank_tokens,
                             const AnyArray& rank_requests, int64_t expected, double weight, double threshold,
                             nb::handle ranks) {
            auto [tp, n] = checked_tokens(tokens);
            auto [ip, in] = checked<int64_t>(request_ids, "request_ids");
            auto [fp, fn] = checked<int64_t>(fingerprints, "fingerprints");
            if (in != n || fn != n) throw InputError("request_ids and fingerprints: expected one entry per request");
            std::vector<int32_t> cand = checked_candidates(candidates, n);
            auto [rt, rq, R] = checked_ranks(rank_tokens, rank_requests);
            MatchView mv = checked_match(match, R, n);
            check_token_counts(tp, n, rt, R);
            std::vector<int32_t> out = initial_ranks(ranks, n);
            adp_kv_route(tp, ip, fp, cand.data(), static_cast<int32_t>(cand.size()), mv, rt, rq, R, expected, weight,
                         threshold, out.data());
            return to_numpy(std::move(out));
        }, "tokens"_a.noconvert(), "request_ids"_a.noconvert(), "fingerprints"_a.noconvert(), "candidates"_a.none(),
        "match"_a.noconvert(), "rank_tokens"_a.noconvert(), "rank_requests"_a.noconvert(), "expected"_a, "weight"_a,
        "threshold"_a, "ranks"_a.none(),
        "KVCacheAwareADPRouter's loop; match is (ranks, requests) int64, any strides. A copy of `ranks` with "
        "each candidate's rank set (left as is: no rank was eligible).");
}

}  // namespace tllm::bindings
