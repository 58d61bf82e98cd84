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

const Span<const int32_t>* ptr(const std::optional<Span<const int32_t>>& o) { return o ? &*o : nullptr; }

/// An int64 array argument of the KV router, read through the buffer protocol when it is a native
/// int64 array (numpy: cheaper than a DLPack import, which allocates a capsule per argument), else
/// through nanobind, whose checks say what is wrong. Strides are in elements.
class Int64Arg {
  public:
    Int64Arg(nb::handle obj, int ndim, const char* name) {
        if (PyObject_GetBuffer(obj.ptr(), &view_, PyBUF_RECORDS_RO) == 0) {
            const char* f = view_.format;
            const bool int64 = view_.itemsize == 8 && f && (f[0] == 'l' || f[0] == 'q') && f[1] == 0;
            bool aligned = true;
            for (int d = 0; d < view_.ndim; ++d) aligned = aligned && view_.strides[d] % 8 == 0;
            if (int64 && aligned && view_.ndim == ndim) {
                buffered_ = true;
                data = static_cast<const int64_t*>(view_.buf);
                for (int d = 0; d < ndim; ++d) shape[d] = view_.shape[d], stride[d] = view_.strides[d] / 8;
                return;
            }
            PyBuffer_Release(&view_);
        } else {
            PyErr_Clear();
        }
        array_ = array_arg(obj, name, ndim == 1 ? "a 1-D int64 numpy array" : "a 2-D int64 numpy array");
        if (array_.dtype() != nb::dtype<int64_t>())
            throw TypeInputError(std::string(name) + ": expected a numpy array of dtype int64 (no silent conversion), got " +
                                 dtype_str(array_.dtype()));
        if (array_.ndim() != static_cast<size_t>(ndim))
            throw TypeInputError(std::string(name) + ": expected a " + std::to_string(ndim) + "-D array, got " +
                                 std::to_string(array_.ndim()) + "-D");
        data = static_cast<const int64_t*>(array_.data());
        for (int d = 0; d < ndim; ++d) shape[d] = static_cast<int64_t>(array_.shape(d)), stride[d] = array_.stride(d);
    }
    ~Int64Arg() {
        if (buffered_) PyBuffer_Release(&view_);
    }
    Int64Arg(const Int64Arg&) = delete;
    Int64Arg& operator=(const Int64Arg&) = delete;

    /// A 1-D contiguous array.
    Span<const int64_t> span(const char* name) const {
        if (shape[0] > 1 && stride[0] != 1)
            throw TypeInputError(std::string(name) + ": array must be C-contiguous (no silent copies); use np.ascontiguousarray");
        if (shape[0] > std::numeric_limits<int32_t>::max()) throw InputError(std::string(name) + ": too long");
        return {data, static_cast<int32_t>(shape[0])};
    }

    const int64_t* data = nullptr;
    int64_t shape[2] = {0, 0}, stride[2] = {0, 0};

  private:
    Py_buffer view_{};
    bool buffered_ = false;
    AnyArray array_;
};

/// Row `row` of a (rows, ranks) int64 matrix whose rows are contiguous.
Span<const int64_t> matrix_row(const Int64Arg& m, int64_t row) {
    if (m.shape[1] > 1 && m.stride[1] != 1) throw TypeInputError("rank_fields: rows must be contiguous");
    if (row < 0 || row >= m.shape[0])
        throw InputError("rank_fields: row " + std::to_string(row) + " is not one of its " + std::to_string(m.shape[0]));
    return {m.data + row * m.stride[0], static_cast<int32_t>(m.shape[1])};
}

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
    m.def("adp_kv_route", [](nb::handle tokens, nb::handle request_ids, nb::handle fingerprints, nb::handle candidates,
                             nb::handle match, nb::handle rank_fields, int64_t load_row, int64_t requests_row,
                             int64_t max_active, double fair_share_multiplier, double weight, double threshold,
                             nb::handle ranks, bool reset) {
            const Int64Arg tok_a(tokens, 1, "tokens"), ids_a(request_ids, 1, "request_ids"),
                fp_a(fingerprints, 1, "fingerprints"), match_a(match, 2, "match"), fields_a(rank_fields, 2, "rank_fields");
            Span<const int64_t> tok = tok_a.span("tokens"), ids = ids_a.span("request_ids"), fp = fp_a.span("fingerprints");
            auto cand = optional_i32(candidates, "candidates");
            MatchView mv{match_a.data, match_a.shape[0], match_a.shape[1], match_a.stride[0], match_a.stride[1]};
            Span<const int64_t> rt = matrix_row(fields_a, load_row), rq = matrix_row(fields_a, requests_row);
            // The output likewise: a writable native int32 buffer, else nanobind's checks and messages.
            OutBuffer out;
            Py_buffer view{};
            const bool buffered = PyObject_GetBuffer(ranks.ptr(), &view, PyBUF_RECORDS) == 0;
            if (!buffered) PyErr_Clear();
            const bool fast = buffered && view.ndim == 1 && view.itemsize == 4 && view.format && view.format[0] == 'i' &&
                              view.format[1] == 0 && (view.shape[0] <= 1 || view.strides[0] == 4);
            if (fast) {
                out.data = view.buf, out.rows = view.shape[0];
            } else {
                if (buffered) PyBuffer_Release(&view);
                out = out_buffer(ranks, "ranks", 1, false);
            }
            struct Release {
                Py_buffer* v;
                ~Release() { if (v) PyBuffer_Release(v); }
            } release{fast ? &view : nullptr};
            if (out.rows > std::numeric_limits<int32_t>::max()) throw InputError("ranks: too long");
            return adp_kv_route(tok, ids, fp, ptr(cand), mv, rt, rq, max_active, fair_share_multiplier, weight, threshold,
                                {static_cast<int32_t*>(out.data), static_cast<int32_t>(out.rows)}, reset);
        }, "tokens"_a, "request_ids"_a, "fingerprints"_a, "candidates"_a.none(), "match"_a, "rank_fields"_a, "load_row"_a,
        "requests_row"_a, "max_active"_a, "fair_share_multiplier"_a, "weight"_a, "threshold"_a, "ranks"_a.none(), "reset"_a,
        "KVCacheAwareADPRouter's loop; match is (ranks, requests) int64, any strides; rank_fields a (fields, ranks) "
        "int64 matrix with contiguous rows (e.g. RankStates.fields: one array for both per-rank inputs) "
        "whose rows load_row and requests_row hold each rank's load and active requests. `ranks`, a writable int32 "
        "array of one entry per request, is the routing so far (all -1 first with `reset`): each candidate's rank is "
        "written there in place (left as is: no rank was eligible); nothing is written when the arguments are refused. "
        "Returns the expected per-rank count.");
}

}  // namespace tllm::bindings
