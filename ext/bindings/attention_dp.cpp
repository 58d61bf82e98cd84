// ext/bindings/attention_dp.cpp: the attention-DP routers' loops (ext/adp_router.h), one call per
// step. Conversion only: the core checks the values.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "adp_router.h"
#include "bindings/arrays.h"
#include "bindings/common.h"

namespace tllm::bindings {

using namespace nb::literals;

namespace {

template <class T>
Span<const T> span(const AnyArray& a, const char* name) {
    auto [p, n] = checked<T>(a, name);
    return {p, n};
}

/// An optional int32 array argument (None: nullopt).
std::optional<Span<const int32_t>> optional_i32(nb::handle obj, const char* name) {
    if (obj.is_none()) return std::nullopt;
    if (!nb::isinstance<AnyArray>(obj)) throw TypeInputError(std::string(name) + ": expected an int32 numpy array or None");
    return span<int32_t>(nb::cast<AnyArray>(obj, false), name);
}

/// The routing so far, copied (the core writes into it); None: `n` entries of -1.
std::vector<int32_t> initial_ranks(nb::handle ranks, int32_t n) {
    std::optional<Span<const int32_t>> r = optional_i32(ranks, "ranks");
    return r ? std::vector<int32_t>(r->data, r->data + r->size) : std::vector<int32_t>(static_cast<size_t>(n), -1);
}

Span<int32_t> out_span(std::vector<int32_t>& v) { return {v.data(), static_cast<int32_t>(v.size())}; }

/// A (ranks, requests) int64 matrix of any strides, e.g. a slice of the gathered records.
using Matrix = nb::ndarray<nb::ro, nb::ndim<2>, nb::device::cpu>;
MatchView match_view(const Matrix& m) {
    if (m.dtype() != nb::dtype<int64_t>())
        throw TypeInputError("match: expected a numpy array of dtype int64 (no silent conversion), got " + dtype_str(m.dtype()));
    return MatchView{static_cast<const int64_t*>(m.data()), static_cast<int64_t>(m.shape(0)),
                     static_cast<int64_t>(m.shape(1)), m.stride(0), m.stride(1)};
}

/// Row `row` of a (rows, ranks) int64 matrix whose rows are contiguous.
Span<const int64_t> matrix_row(const Matrix& m, int64_t row) {
    if (m.dtype() != nb::dtype<int64_t>())
        throw TypeInputError("rank_fields: expected a numpy array of dtype int64 (no silent conversion), got " + dtype_str(m.dtype()));
    if (m.shape(1) > 1 && m.stride(1) != 1) throw TypeInputError("rank_fields: rows must be contiguous");
    if (row < 0 || row >= static_cast<int64_t>(m.shape(0)))
        throw InputError("rank_fields: row " + std::to_string(row) + " is not one of its " + std::to_string(m.shape(0)));
    return {static_cast<const int64_t*>(m.data()) + row * m.stride(0), static_cast<int32_t>(m.shape(1))};
}

const Span<const int32_t>* ptr(const std::optional<Span<const int32_t>>& o) { return o ? &*o : nullptr; }

}  // namespace

void bind_attention_dp(nb::module_& m) {
    // ------------------------------------------------------------------ attention DP routers (one call per step)
    // candidates: int32 request indices, None for all in order; ranks: the routing so far, None for all -1.
    m.def("adp_round_robin", [](const AnyArray& tokens, nb::handle candidates, const AnyArray& rank_requests,
                                int64_t max_active, int32_t start, nb::handle ranks) {
            Span<const int64_t> tok = span<int64_t>(tokens, "tokens");
            auto cand = optional_i32(candidates, "candidates");
            Span<const int64_t> rq = span<int64_t>(rank_requests, "rank_requests");
            std::vector<int32_t> out = initial_ranks(ranks, tok.size);
            int32_t next = adp_round_robin(tok, ptr(cand), rq, max_active, start, out_span(out));
            return nb::make_tuple(to_numpy(std::move(out)), next);
        }, "tokens"_a.noconvert(), "candidates"_a.none(), "rank_requests"_a.noconvert(), "max_active"_a, "start"_a,
        "ranks"_a.none(), "Round-robin deal: (a copy of `ranks` with each placed candidate's rank, next start).");
    // adp_balance and adp_kv_route aim at an expected per-rank count they work out and return.
    m.def("adp_balance", [](const AnyArray& tokens, nb::handle candidates, const AnyArray& rank_tokens,
                            const AnyArray& rank_requests, int64_t max_active, nb::handle ranks) {
            Span<const int64_t> tok = span<int64_t>(tokens, "tokens");
            auto cand = optional_i32(candidates, "candidates");
            Span<const int64_t> rt = span<int64_t>(rank_tokens, "rank_tokens"), rq = span<int64_t>(rank_requests, "rank_requests");
            std::vector<int32_t> out = initial_ranks(ranks, tok.size);
            int64_t expected = adp_balance(tok, ptr(cand), rt, rq, max_active, out_span(out));
            return nb::make_tuple(to_numpy(std::move(out)), expected);
        }, "tokens"_a.noconvert(), "candidates"_a.none(), "rank_tokens"_a.noconvert(), "rank_requests"_a.noconvert(),
        "max_active"_a, "ranks"_a.none(),
        "DefaultADPRouter's balance: (a copy of `ranks` with each candidate's rank set (left as is: none was "
        "left), the expected per-rank count).");
    m.def("adp_kv_route", [](const AnyArray& tokens, const AnyArray& request_ids, const AnyArray& fingerprints,
                             nb::handle candidates, const Matrix& match, const Matrix& rank_fields, int64_t load_row,
                             int64_t requests_row, int64_t max_active, double fair_share_multiplier, double weight,
                             double threshold, nb::handle ranks, bool reset) {
            Span<const int64_t> tok = span<int64_t>(tokens, "tokens"), ids = span<int64_t>(request_ids, "request_ids"),
                                fp = span<int64_t>(fingerprints, "fingerprints");
            auto cand = optional_i32(candidates, "candidates");
            MatchView mv = match_view(match);
            Span<const int64_t> rt = matrix_row(rank_fields, load_row), rq = matrix_row(rank_fields, requests_row);
            OutBuffer out = out_buffer(ranks, "ranks", 1, false);
            if (out.rows > std::numeric_limits<int32_t>::max()) throw InputError("ranks: too long");
            return adp_kv_route(tok, ids, fp, ptr(cand), mv, rt, rq, max_active, fair_share_multiplier, weight, threshold,
                                {static_cast<int32_t*>(out.data), static_cast<int32_t>(out.rows)}, reset);
        }, "tokens"_a.noconvert(), "request_ids"_a.noconvert(), "fingerprints"_a.noconvert(), "candidates"_a.none(),
        "match"_a.noconvert(), "rank_fields"_a.noconvert(), "load_row"_a, "requests_row"_a, "max_active"_a,
        "fair_share_multiplier"_a, "weight"_a, "threshold"_a, "ranks"_a.none(), "reset"_a,
        "KVCacheAwareADPRouter's loop; match is (ranks, requests) int64, any strides; rank_fields a (fields, ranks) "
        "int64 matrix with contiguous rows (e.g. RankStates.fields: one array for both per-rank inputs) "
        "whose rows load_row and requests_row hold each rank's load and active requests. `ranks`, a writable int32 "
        "array of one entry per request, is the routing so far (all -1 first with `reset`): each candidate's rank is "
        "written there in place (left as is: no rank was eligible); nothing is written when the arguments are refused. "
        "Returns the expected per-rank count.");
}

}  // namespace tllm::bindings
