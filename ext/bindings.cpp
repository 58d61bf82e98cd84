// ext/bindings.cpp: the nanobind module tllm_sched._core (thin: argument checks and array views only).
//
// Names follow TensorRT-LLM's Python bindings (snake_case of the C++ names). Arrays coming in are
// never converted: a wrong dtype, shape or layout raises TypeError naming the argument. Arrays
// going out are either zero-copy read-only views owned by the C++ object, or fresh arrays.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <limits>
#include <string>

#include "adp_router.h"
#include "capacity_scheduler.h"
#include "kv_cache_manager.h"
#include "micro_batch_scheduler.h"
#include "request_list.h"
#include "request_table.h"
#include "scheduler.h"
#include "sim_executor.h"

namespace nb = nanobind;
using namespace nb::literals;
using namespace tllm;

namespace {

template <class T>
using RoView = nb::ndarray<nb::numpy, const T, nb::ndim<1>>;
template <class T>
using OutArray = nb::ndarray<nb::numpy, T, nb::ndim<1>>;
using AnyArray = nb::ndarray<nb::ro, nb::device::cpu>;

template <class T>
const char* dtype_name();
template <>
const char* dtype_name<int32_t>() { return "int32"; }
template <>
const char* dtype_name<int64_t>() { return "int64"; }

std::string dtype_str(nb::dlpack::dtype d) {
    const char* kind = "unknown";
    switch (static_cast<nb::dlpack::dtype_code>(d.code)) {
        case nb::dlpack::dtype_code::Int: kind = "int"; break;
        case nb::dlpack::dtype_code::UInt: kind = "uint"; break;
        case nb::dlpack::dtype_code::Float: kind = "float"; break;
        case nb::dlpack::dtype_code::Bool: return "bool";
        case nb::dlpack::dtype_code::Complex: kind = "complex"; break;
        default: break;
    }
    return std::string(kind) + std::to_string(d.bits);
}

/// Borrowed, checked view of a 1-D contiguous array of T (no conversion, no copy).
template <class T>
std::pair<const T*, int32_t> checked(const AnyArray& a, const char* name) {
    if (a.dtype() != nb::dtype<T>())
        throw TypeInputError(std::string(name) + ": expected a numpy array of dtype " + dtype_name<T>() +
                             " (no silent conversion), got " + dtype_str(a.dtype()));
    if (a.ndim() != 1) throw TypeInputError(std::string(name) + ": expected a 1-D array, got " + std::to_string(a.ndim()) + "-D");
    if (a.shape(0) > 1 && a.stride(0) != 1)
        throw TypeInputError(std::string(name) + ": array must be C-contiguous (no silent copies); use np.ascontiguousarray");
    if (a.shape(0) > static_cast<size_t>(std::numeric_limits<int32_t>::max())) throw InputError(std::string(name) + ": too long");
    return {static_cast<const T*>(a.data()), static_cast<int32_t>(a.shape(0))};
}

/// Slots of live requests of `t`.
std::pair<const int32_t*, int32_t> checked_slots(const RequestTable& t, const AnyArray& a, const char* name = "slots") {
    auto [p, n] = checked<int32_t>(a, name);
    for (int32_t i = 0; i < n; ++i) t.check_slot(p[i]);
    return {p, n};
}

/// A fresh numpy array that owns a moved-in vector.
template <class T>
OutArray<T> to_numpy(std::vector<T>&& v) {
    auto* heap = new std::vector<T>(std::move(v));
    nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
    return OutArray<T>(heap->data(), {heap->size()}, owner);
}
template <class T>
OutArray<T> to_numpy(const std::vector<T>& v) { return to_numpy(std::vector<T>(v)); }

/// f(slot) for each of the live `slots` of `t`, as a fresh int32 array (the `*_batch` queries).
template <class F>
OutArray<int32_t> per_slot(const RequestTable& t, const AnyArray& slots, F f) {
    auto [p, n] = checked_slots(t, slots);
    std::vector<int32_t> out(static_cast<size_t>(n));
    for (int32_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = f(p[i]);
    return to_numpy(std::move(out));
}

/// The sum of f(slot) over the live `slots` of `t` (the `*_sum` queries: no array).
template <class F>
int64_t sum_per_slot(const RequestTable& t, const AnyArray& slots, F f) {
    auto [p, n] = checked_slots(t, slots);
    int64_t total = 0;
    for (int32_t i = 0; i < n; ++i) total += f(p[i]);
    return total;
}

/// Zero-copy read-only view of `n` entries at `p`, kept alive by `owner`.
template <class T>
RoView<T> view(const T* p, size_t n, nb::handle owner) { return RoView<T>(p, {n}, owner); }

/// A request in a table, as Python sees it (TensorRT-LLM's LlmRequest). Becomes invalid, not
/// dangling, when the request is removed from its table.
struct PyRequest {
    std::shared_ptr<RequestTable> table;  ///< shared; keeps the table alive
    int32_t slot;                         ///< slot in the table
    uint32_t generation;                  ///< slot generation at creation: detects removal
    int64_t request_id;                   ///< the id (readable even after removal)

    RequestTable& t() const {
        if (!table->is_live(slot) || table->generation(slot) != generation)
            throw InputError("request " + std::to_string(request_id) + " was removed from its RequestTable");
        return *table;
    }
    int32_t s() const {
        t();
        return slot;
    }
};

PyRequest make_request(const std::shared_ptr<RequestTable>& t, int32_t s) {
    return PyRequest{t, s, t->generation(s), t->request_id[s]};
}

std::vector<int32_t> tokens_from(nb::handle obj, const char* name) {
    if (nb::isinstance<AnyArray>(obj)) {
        AnyArray a = nb::cast<AnyArray>(obj, /*convert=*/false);
        auto [p, n] = checked<int32_t>(a, name);
        return std::vector<int32_t>(p, p + n);
    }
    if (!nb::isinstance<nb::sequence>(obj) || nb::isinstance<nb::str>(obj))
        throw TypeInputError(std::string(name) + ": expected a sequence of ints or an int32 numpy array");
    std::vector<int32_t> out;
    for (nb::handle h : nb::iter(obj)) {
        if (!PyLong_Check(h.ptr()) || PyBool_Check(h.ptr()))
            throw TypeInputError(std::string(name) + ": every token must be an int");
        long long v = PyLong_AsLongLong(h.ptr());
        if (PyErr_Occurred() || v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max()) {
            PyErr_Clear();
            throw InputError(std::string(name) + ": token id out of the int32 range");
        }
        out.push_back(static_cast<int32_t>(v));
    }
    return out;
}

int32_t check_window(const KVCacheManager& kv, std::optional<int32_t> window) {
    if (window && *window != kv.config().max_seq_len)
        throw InputError("window_size " + std::to_string(*window) + " is not this cache's single window " +
                         std::to_string(kv.config().max_seq_len));
    return kv.config().max_seq_len;
}

int32_t request_slot_for(const KVCacheManager& kv, const PyRequest& r) {
    if (r.table.get() != &kv.table()) throw InputError("llm_request belongs to another RequestTable");
    return r.s();
}

nb::dict columns_dict(RequestTable& t, nb::handle owner) {
    size_t n = static_cast<size_t>(t.capacity());
    nb::dict d;
    d["request_id"] = view(t.request_id, n, owner);
    d["state"] = view(t.state, n, owner);
    d["prompt_len"] = view(t.prompt_len, n, owner);
    d["orig_prompt_len"] = view(t.orig_prompt_len, n, owner);
    d["max_new_tokens"] = view(t.max_new_tokens, n, owner);
    d["num_tokens"] = view(t.num_tokens, n, owner);
    d["context_current_position"] = view(t.context_position, n, owner);
    d["context_chunk_size"] = view(t.context_chunk_size, n, owner);
    d["prepopulated_prompt_len"] = view(t.prepopulated_prompt_len, n, owner);
    d["num_draft_tokens"] = view(t.num_draft_tokens, n, owner);
    d["lora_task_id"] = view(t.lora_task_id, n, owner);
    d["beam_width"] = view(t.beam_width, n, owner);
    d["beam_width_by_iter"] = view(t.beam_width_by_iter, n, owner);
    d["priority"] = view(t.priority, n, owner);
    d["encoder_output_len"] = view(t.encoder_output_len, n, owner);
    d["decoding_iter"] = view(t.decoding_iter, n, owner);
    return d;
}

template <class T>
OutArray<T> gather_col(const T* col, const int32_t* slots, int32_t n) {
    std::vector<T> v(static_cast<size_t>(n));
    for (int32_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = col[slots[i]];
    return to_numpy(std::move(v));
}

std::pair<const int32_t*, int32_t> list_or_slots(const RequestTable& t, nb::handle active) {
    if (nb::isinstance<RequestList>(active)) {
        RequestList& l = nb::cast<RequestList&>(active);
        if (l.table().get() != &t) throw InputError("the RequestList belongs to another RequestTable");
        return {l.data(), l.size()};
    }
    if (nb::isinstance<AnyArray>(active)) {
        auto [p, n] = checked_slots(t, nb::cast<AnyArray>(active, false), "active_requests");
        std::vector<int32_t> sorted(p, p + n);
        std::sort(sorted.begin(), sorted.end());
        auto dup = std::adjacent_find(sorted.begin(), sorted.end());
        if (dup != sorted.end()) throw InputError("active_requests: slot " + std::to_string(*dup) + " is listed twice");
        return {p, n};
    }
    throw TypeInputError("active_requests: expected a RequestList or an int32 array of slots");
}

std::pair<const int64_t*, int32_t> inflight_ids(nb::handle obj) {
    if (obj.is_none()) return {nullptr, 0};
    if (!nb::isinstance<AnyArray>(obj)) throw TypeInputError("inflight_request_ids: expected an int64 numpy array or None");
    return checked<int64_t>(nb::cast<AnyArray>(obj, false), "inflight_request_ids");
}

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

NB_MODULE(_core, m) {
    m.doc() = "tllm_sched C++ core: request table, KV-cache block manager, reference schedulers";

    nb::register_exception_translator([](const std::exception_ptr& p, void*) {
        try {
            std::rethrow_exception(p);
        } catch (const TypeInputError& e) {
            PyErr_SetString(PyExc_TypeError, e.what());
        }
    });
    static nb::exception<SchedulingError> scheduling_error(m, "SchedulingError", PyExc_RuntimeError);

    nb::enum_<LlmRequestState>(m, "LlmRequestState", nb::is_arithmetic())
        .value("DISAGG_TRANS_ERROR", LlmRequestState::kDISAGG_TRANS_ERROR)
        .value("UNKNOWN", LlmRequestState::kUNKNOWN)
        .value("ENCODER_INIT", LlmRequestState::kENCODER_INIT)
        .value("DISAGG_GENERATION_INIT", LlmRequestState::kDISAGG_GENERATION_INIT)
        .value("DISAGG_GENERATION_TRANS_IN_PROGRESS", LlmRequestState::kDISAGG_GENERATION_TRANS_IN_PROGRESS)
        .value("CONTEXT_INIT", LlmRequestState::kCONTEXT_INIT)
        .value("DISAGG_CONTEXT_INIT_AND_TRANS", LlmRequestState::kDISAGG_CONTEXT_INIT_AND_TRANS)
        .value("DISAGG_GENERATION_TRANS_COMPLETE", LlmRequestState::kDISAGG_GENERATION_TRANS_COMPLETE)
        .value("GENERATION_IN_PROGRESS", LlmRequestState::kGENERATION_IN_PROGRESS)
        .value("GENERATION_TO_COMPLETE", LlmRequestState::kGENERATION_TO_COMPLETE)
        .value("GENERATION_COMPLETE", LlmRequestState::kGENERATION_COMPLETE)
        .value("DISAGG_CONTEXT_TRANS_IN_PROGRESS", LlmRequestState::kDISAGG_CONTEXT_TRANS_IN_PROGRESS)
        .value("DISAGG_CONTEXT_COMPLETE", LlmRequestState::kDISAGG_CONTEXT_COMPLETE);

    nb::enum_<CapacitySchedulerPolicy>(m, "CapacitySchedulerPolicy", nb::is_arithmetic())
        .value("MAX_UTILIZATION", CapacitySchedulerPolicy::kMAX_UTILIZATION)
        .value("GUARANTEED_NO_EVICT", CapacitySchedulerPolicy::kGUARANTEED_NO_EVICT)
        .value("STATIC_BATCH", CapacitySchedulerPolicy::kSTATIC_BATCH);

    nb::enum_<ContextChunkingPolicy>(m, "ContextChunkingPolicy", nb::is_arithmetic())
        .value("FIRST_COME_FIRST_SERVED", ContextChunkingPolicy::kFIRST_COME_FIRST_SERVED)
        .value("EQUAL_PROGRESS", ContextChunkingPolicy::kEQUAL_PROGRESS);

    // ------------------------------------------------------------------ RequestTable
    nb::class_<RequestTable>(m, "RequestTable", "Request state as columns (structure of arrays), one slot per request.")
        .def(nb::init<int32_t>(), "capacity"_a)
        .def_prop_ro("capacity", &RequestTable::capacity)
        .def("__len__", &RequestTable::size)
        .def("__contains__", [](const RequestTable& t, int64_t id) { return t.find(id) >= 0; }, "request_id"_a)
        .def(
            "add_request",
            [](nb::handle self, int64_t request_id, nb::handle input_tokens, int32_t max_new_tokens,
               std::optional<int64_t> lora_task_id, float priority, int32_t beam_width, int32_t num_draft_tokens,
               std::optional<int32_t> encoder_output_len, LlmRequestState state,
               std::optional<std::vector<uint64_t>> input_token_extra_ids,
               std::optional<std::vector<int32_t>> beam_width_schedule) {
                auto t = nb::cast<std::shared_ptr<RequestTable>>(self);
                std::vector<int32_t> tokens = tokens_from(input_tokens, "input_tokens");
                if (lora_task_id && *lora_task_id < 0) throw InputError("lora_task_id must be >= 0 or None");
                if (encoder_output_len && *encoder_output_len <= 0) throw InputError("encoder_output_len must be positive or None");
                if (tokens.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) throw InputError("prompt too long");
                RequestOptions o;
                o.lora_task_id = lora_task_id.value_or(-1);
                o.priority = priority;
                o.beam_width = beam_width;
                o.num_draft_tokens = num_draft_tokens;
                o.encoder_output_len = encoder_output_len.value_or(0);
                o.state = static_cast<int32_t>(state);
                if (input_token_extra_ids) o.extra_ids = std::move(*input_token_extra_ids);
                if (beam_width_schedule) o.beam_width_schedule = std::move(*beam_width_schedule);
                int32_t s = t->add_request(request_id, tokens.data(), static_cast<int32_t>(tokens.size()),
                                           max_new_tokens, o);
                return make_request(t, s);
            },
            "request_id"_a, "input_tokens"_a, "max_new_tokens"_a, nb::kw_only(), "lora_task_id"_a = nb::none(),
            "priority"_a = 0.5f, "beam_width"_a = 1, "num_draft_tokens"_a = 0, "encoder_output_len"_a = nb::none(),
            "state"_a = LlmRequestState::kCONTEXT_INIT, "input_token_extra_ids"_a = nb::none(),
            "beam_width_schedule"_a = nb::none(),
            "Adds a request; its token storage is reserved once for prompt + max_new_tokens + drafts.")
        .def(
            "remove_request",
            [](RequestTable& t, const PyRequest& r) {
                if (r.table.get() != &t) throw InputError("request belongs to another RequestTable");
                t.remove_request(r.s());
            },
            "request"_a, "Frees the request's slot; its LlmRequest handles become invalid, its token views stay valid.")
        .def("remove_requests", [](RequestTable& t, const AnyArray& slots) {
                auto [p, n] = checked_slots(t, slots);
                for (int32_t i = 0; i < n; ++i)  // check all, then remove: all or nothing
                    if (t.kv_refs[p[i]] != 0 || t.list_refs[p[i]] != 0)
                        throw InputError("request " + std::to_string(t.request_id[p[i]]) +
                                         " is still held by a KV cache or a RequestList");
                std::vector<int32_t> sorted(p, p + n);
                std::sort(sorted.begin(), sorted.end());
                auto dup = std::adjacent_find(sorted.begin(), sorted.end());
                if (dup != sorted.end()) throw InputError("slot " + std::to_string(*dup) + " is listed twice");
                for (int32_t i = 0; i < n; ++i) t.remove_request(p[i]);
            }, "slots"_a.noconvert(), "Frees many slots at once (e.g. the finished requests of a step).")
        .def("get", [](nb::handle self, int64_t id) {
                auto t = nb::cast<std::shared_ptr<RequestTable>>(self);
                return make_request(t, t->slot_of(id));
            }, "request_id"_a)
        .def("request_at", [](nb::handle self, int32_t slot) {
                auto t = nb::cast<std::shared_ptr<RequestTable>>(self);
                t->check_slot(slot);
                return make_request(t, slot);
            }, "slot"_a)
        .def("slot_of", &RequestTable::slot_of, "request_id"_a)
        .def("slots_of", [](const RequestTable& t, const AnyArray& ids) {
                auto [p, n] = checked<int64_t>(ids, "request_ids");
                std::vector<int32_t> out(static_cast<size_t>(n));
                for (int32_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = t.slot_of(p[i]);
                return to_numpy(std::move(out));
            }, "request_ids"_a.noconvert(), "Slots of many request ids (ValueError on an unknown id).")
        .def("columns", [](nb::handle self) { return columns_dict(nb::cast<RequestTable&>(self), self); },
             "Zero-copy read-only views of every column (capacity entries, indexed by slot). Build once.")
        .def("tallies", [](nb::handle self) {
                const RequestTable& t = nb::cast<const RequestTable&>(self);
                return view(t.tallies(), RequestTable::kNumTallies, self);
            }, "Zero-copy read-only view of table-wide counts over live requests: [requests with a LoRA "
               "task, with draft tokens, with a current beam width other than 1]. Build once.")
        .def("gather", [](const RequestTable& t, const AnyArray& slots) {
                auto [p, n] = checked_slots(t, slots);
                nb::dict d;
                d["request_id"] = gather_col(t.request_id, p, n);
                d["state"] = gather_col(t.state, p, n);
                d["prompt_len"] = gather_col(t.prompt_len, p, n);
                d["context_current_position"] = gather_col(t.context_position, p, n);
                d["context_chunk_size"] = gather_col(t.context_chunk_size, p, n);
                d["max_new_tokens"] = gather_col(t.max_new_tokens, p, n);
                d["num_tokens"] = gather_col(t.num_tokens, p, n);
                d["num_draft_tokens"] = gather_col(t.num_draft_tokens, p, n);
                d["lora_task_id"] = gather_col(t.lora_task_id, p, n);
                d["beam_width"] = gather_col(t.beam_width, p, n);
                d["priority"] = gather_col(t.priority, p, n);
                return d;
            }, "slots"_a.noconvert(), "The scheduler scalars of many requests in one call (compact copies, list order).")
        .def("request_ids", [](const RequestTable& t, const AnyArray& slots) {
                auto [p, n] = checked_slots(t, slots);
                return gather_col(t.request_id, p, n);
            }, "slots"_a.noconvert())
        .def("set_context_chunk_sizes", [](RequestTable& t, const AnyArray& slots, const AnyArray& sizes,
                                           std::optional<AnyArray> discards) {
                auto [p, n] = checked_slots(t, slots);
                auto [v, m] = checked<int32_t>(sizes, "sizes");
                if (m != n) throw InputError("sizes must have one entry per slot");
                const int32_t* d = nullptr;
                if (discards) {
                    auto [dp, dn] = checked<int32_t>(*discards, "draft_discards");
                    if (dn != n) throw InputError("draft_discards must have one entry per slot");
                    d = dp;
                }
                for (int32_t i = 0; i < n; ++i) {  // validate all, then write: all or nothing
                    int32_t st = t.state[p[i]];
                    if (v[i] < 0) throw InputError("chunk sizes must be >= 0");
                    if (!state::is_context_init(st) && st != state::DISAGG_GEN_INIT && st != state::DISAGG_GEN_TRANS_COMPLETE)
                        throw InputError("request " + std::to_string(t.request_id[p[i]]) + " is not in a context state");
                    if (d && (d[i] < 0 || d[i] > t.num_draft_tokens[p[i]]))
                        throw InputError("request " + std::to_string(t.request_id[p[i]]) + ": cannot discard " +
                                         std::to_string(d[i]) + " of " + std::to_string(t.num_draft_tokens[p[i]]) + " draft tokens");
                }
                for (int32_t i = 0; i < n; ++i) {
                    t.set_context_chunk_size(p[i], v[i]);
                    if (d && d[i] > 0) t.discard_draft_tokens(p[i], d[i]);
                }
            }, "slots"_a.noconvert(), "sizes"_a.noconvert(), "draft_discards"_a.noconvert() = nb::none(),
            "Clamping chunk-size setter for many requests; `draft_discards` (>= 0 each, optional) drops "
            "trailing draft tokens in the same call, all or nothing.")
        .def("discard_draft_tokens", [](RequestTable& t, const AnyArray& slots, const AnyArray& counts) {
                auto [p, n] = checked_slots(t, slots);
                auto [v, m] = checked<int32_t>(counts, "counts");
                if (m != n) throw InputError("counts must have one entry per slot");
                for (int32_t i = 0; i < n; ++i)
                    if (v[i] <= 0 || v[i] > t.num_draft_tokens[p[i]])
                        throw InputError("request " + std::to_string(t.request_id[p[i]]) + ": cannot discard " +
                                         std::to_string(v[i]) + " of " + std::to_string(t.num_draft_tokens[p[i]]) + " draft tokens");
                for (int32_t i = 0; i < n; ++i) t.discard_draft_tokens(p[i], v[i]);
            }, "slots"_a.noconvert(), "counts"_a.noconvert(), "Drops trailing draft tokens of many requests.");

    // ------------------------------------------------------------------ LlmRequest
    nb::class_<PyRequest>(m, "LlmRequest", "A request of a RequestTable (TensorRT-LLM's LlmRequest surface).")
        .def_prop_ro("request_id", [](const PyRequest& r) { return r.request_id; })
        .def_prop_ro("py_request_id", [](const PyRequest& r) { return r.request_id; })
        .def_prop_ro("slot", [](const PyRequest& r) { return r.s(); })
        .def_prop_ro("is_valid", [](const PyRequest& r) { return r.table->is_live(r.slot) && r.table->generation(r.slot) == r.generation; })
        .def_prop_ro("state", [](const PyRequest& r) { return static_cast<LlmRequestState>(r.t().state[r.slot]); })
        .def_prop_ro("state_value", [](const PyRequest& r) { return r.t().state[r.slot]; })
        .def("set_state", [](const PyRequest& r, LlmRequestState s) { r.t().set_state(r.slot, static_cast<int32_t>(s)); }, "state"_a)
        .def("has_reached_state", [](const PyRequest& r, LlmRequestState s) { return r.t().state[r.slot] >= static_cast<int32_t>(s); }, "state"_a)
        .def_prop_ro("is_encoder_init_state", [](const PyRequest& r) { return state::is_encoder_init(r.t().state[r.slot]); })
        .def_prop_ro("is_context_init_state", [](const PyRequest& r) { return state::is_context_init(r.t().state[r.slot]); })
        .def_prop_ro("is_generation_in_progress_state", [](const PyRequest& r) { return state::is_generation_in_progress(r.t().state[r.slot]); })
        .def_prop_ro("is_disagg_generation_init_state", [](const PyRequest& r) { return state::is_disagg_generation_init(r.t().state[r.slot]); })
        .def_prop_ro("is_generation_complete_state", [](const PyRequest& r) { return r.t().state[r.slot] == state::GEN_COMPLETE; })
        .def_prop_ro("is_first_context_chunk", [](const PyRequest& r) { return r.t().is_first_context_chunk(r.slot); })
        .def_prop_ro("is_last_context_chunk", [](const PyRequest& r) { return r.t().is_last_context_chunk(r.slot); })
        .def_prop_ro("context_remaining_length", [](const PyRequest& r) { return r.t().context_remaining_length(r.slot); })
        .def_prop_rw("context_chunk_size", [](const PyRequest& r) { return r.t().context_chunk_size[r.slot]; },
                     [](const PyRequest& r, int32_t n) { r.t().set_context_chunk_size(r.slot, n); })
        .def_prop_rw("context_current_position", [](const PyRequest& r) { return r.t().context_position[r.slot]; },
                     [](const PyRequest& r, int32_t p) { r.t().set_context_current_position(r.slot, p); })
        .def("move_to_next_context_chunk", [](const PyRequest& r) { r.t().move_to_next_context_chunk(r.slot); })
        .def_prop_ro("prepopulated_prompt_len", [](const PyRequest& r) { return r.t().prepopulated_prompt_len[r.slot]; })
        .def_prop_ro("prompt_len", [](const PyRequest& r) { return r.t().prompt_len[r.slot]; })
        .def_prop_ro("orig_prompt_len", [](const PyRequest& r) { return r.t().orig_prompt_len[r.slot]; })
        .def_prop_ro("max_new_tokens", [](const PyRequest& r) { return r.t().max_new_tokens[r.slot]; })
        .def("get_num_tokens", [](const PyRequest& r, int32_t beam) {
                if (beam != 0) throw InputError("only beam 0 is stored");
                return r.t().num_tokens[r.slot];
            }, "beam"_a = 0)
        .def_prop_ro("max_num_generated_tokens", [](const PyRequest& r) { return r.t().max_num_generated_tokens(r.slot); })
        .def_prop_ro("encoder_output_len", [](const PyRequest& r) { return r.t().encoder_output_len[r.slot]; })
        .def_prop_ro("num_draft_tokens", [](const PyRequest& r) { return r.t().num_draft_tokens[r.slot]; })
        .def_prop_ro("has_draft_tokens", [](const PyRequest& r) { return r.t().num_draft_tokens[r.slot] > 0; })
        .def("set_num_draft_tokens", [](const PyRequest& r, int32_t n) { r.t().set_num_draft_tokens(r.slot, n); }, "count"_a)
        .def("discard_draft_tokens", [](const PyRequest& r, int32_t n) { r.t().discard_draft_tokens(r.slot, n); }, "num_tokens_to_discard"_a)
        .def_prop_ro("lora_task_id", [](const PyRequest& r) -> std::optional<int64_t> {
                int64_t v = r.t().lora_task_id[r.slot];
                return v < 0 ? std::nullopt : std::optional<int64_t>(v);
            })
        .def_prop_ro("priority", [](const PyRequest& r) { return r.t().priority[r.slot]; })
        .def_prop_ro("beam_width", [](const PyRequest& r) { return r.t().beam_width[r.slot]; })
        .def("get_beam_width_by_iter", [](const PyRequest& r) { return r.t().beam_width_by_iter[r.slot]; })
        .def_prop_ro("decoding_iter", [](const PyRequest& r) { return r.t().decoding_iter[r.slot]; })
        .def("advance_decoding_iteration", [](const PyRequest& r) { r.t().advance_decoding_iteration(r.slot); })
        .def("add_new_token", [](const PyRequest& r, int32_t token) { r.t().add_new_token(r.slot, token); }, "token"_a)
        .def("pause", [](const PyRequest& r, int32_t max_input_len) { r.t().pause(r.slot, max_input_len); }, "max_input_len"_a)
        .def_prop_ro("tokens", [](const PyRequest& r) {
                auto store = r.t().tokens(r.slot);
                const int32_t* p = store->tokens.get();
                size_t n = static_cast<size_t>(store->size);
                nb::capsule owner(new std::shared_ptr<TokenStore>(std::move(store)),
                                  [](void* q) noexcept { delete static_cast<std::shared_ptr<TokenStore>*>(q); });
                return view(p, n, owner);
            }, nb::rv_policy::automatic, "Zero-copy read-only view of the tokens (beam 0); keeps the storage alive.")
        .def_prop_ro("token_buffer", [](const PyRequest& r) {
                auto store = r.t().tokens(r.slot);
                const int32_t* p = store->tokens.get();
                size_t n = static_cast<size_t>(store->capacity);
                nb::capsule owner(new std::shared_ptr<TokenStore>(std::move(store)),
                                  [](void* q) noexcept { delete static_cast<std::shared_ptr<TokenStore>*>(q); });
                return view(p, n, owner);
            }, nb::rv_policy::automatic, "Zero-copy read-only view of the whole reserved storage (prompt + max new + drafts).")
        .def("tokens_torch", [](const PyRequest& r) {
                auto store = r.t().tokens(r.slot);
                int32_t* p = store->tokens.get();
                size_t n = static_cast<size_t>(store->size);
                nb::capsule owner(new std::shared_ptr<TokenStore>(std::move(store)),
                                  [](void* q) noexcept { delete static_cast<std::shared_ptr<TokenStore>*>(q); });
                return nb::ndarray<nb::pytorch, int32_t, nb::ndim<1>>(p, {n}, owner);
            }, "Zero-copy torch tensor of the tokens via DLPack (imports torch). Treat it as read-only.")
        .def("get_tokens", [](const PyRequest& r, int32_t beam) {
                if (beam != 0) throw InputError("only beam 0 is stored");
                const TokenStore& ts = *r.t().tokens(r.slot);
                return std::vector<int32_t>(ts.tokens.get(), ts.tokens.get() + ts.size);
            }, "beam"_a = 0, "A copy of the tokens as a list (TensorRT-LLM's O(n) get_tokens).")
        .def("get_unique_tokens", [](const PyRequest& r, int32_t beam) {
                if (beam != 0) throw InputError("only beam 0 is stored");
                RequestTable& t = r.t();
                const TokenStore& ts = *t.tokens(r.slot);
                std::vector<std::pair<int32_t, uint64_t>> out;
                out.reserve(static_cast<size_t>(ts.size));
                for (int32_t i = 0; i < ts.size; ++i) out.emplace_back(ts.tokens[static_cast<size_t>(i)], t.extra_id(r.slot, i));
                return out;
            }, "beam"_a = 0, "(token id, extra id) pairs of beam 0, as a list (a copy).")
        .def("__repr__", [](const PyRequest& r) {
                if (!r.table->is_live(r.slot) || r.table->generation(r.slot) != r.generation)
                    return "LlmRequest(" + std::to_string(r.request_id) + ", removed)";
                RequestTable& t = *r.table;
                return "LlmRequest(" + std::to_string(r.request_id) + ", state=" + std::to_string(t.state[r.slot]) +
                       ", prompt_len=" + std::to_string(t.prompt_len[r.slot]) + ", tokens=" + std::to_string(t.num_tokens[r.slot]) + ")";
            });

    // ------------------------------------------------------------------ RequestList
    nb::class_<RequestList>(m, "RequestList", "An ordered list of requests of one table (the active list).")
        .def("__init__", [](RequestList* self, std::shared_ptr<RequestTable> t) { new (self) RequestList(std::move(t)); }, "table"_a)
        .def("__len__", &RequestList::size)
        .def("append", [](RequestList& l, const PyRequest& r) {
                if (r.table != l.table()) throw InputError("request belongs to another RequestTable");
                l.append(r.s());
            }, "request"_a)
        .def("insert_by_priority", [](RequestList& l, const PyRequest& r) {
                if (r.table != l.table()) throw InputError("request belongs to another RequestTable");
                l.insert_by_priority(r.s());
            }, "request"_a, "Inserts after every request of priority >= its own.")
        .def("remove", [](RequestList& l, const PyRequest& r) {
                if (r.table != l.table()) throw InputError("request belongs to another RequestTable");
                l.remove(r.s());
            }, "request"_a)
        .def("remove_slots", [](RequestList& l, const AnyArray& slots) {
                auto [p, n] = checked_slots(*l.table(), slots);
                l.remove_many(p, n);
            }, "slots"_a.noconvert(), "Removes the listed requests that are present, keeping the order of the rest.")
        .def("clear", &RequestList::clear)
        .def("__contains__", [](const RequestList& l, const PyRequest& r) { return r.table == l.table() && l.contains(r.s()); })
        .def_prop_ro("slots", [](nb::handle self) {
                RequestList& l = nb::cast<RequestList&>(self);
                return view(l.data(), static_cast<size_t>(l.size()), self);
            }, nb::rv_policy::automatic, "Zero-copy read-only view of the slots in list order (valid until the list changes length).")
        .def_prop_ro("slot_buffer", [](nb::handle self) {
                RequestList& l = nb::cast<RequestList&>(self);
                return view(l.data(), static_cast<size_t>(l.table()->capacity()), self);
            }, nb::rv_policy::automatic, "Zero-copy view of the whole slot storage; the first len(list) entries are the list. Never moves.")
        .def("request_ids", [](const RequestList& l) { return gather_col(l.table()->request_id, l.data(), l.size()); })
        .def("requests", [](const RequestList& l) {
                std::vector<PyRequest> out;
                for (int32_t i = 0; i < l.size(); ++i) out.push_back(make_request(l.table(), l.data()[i]));
                return out;
            }, "LlmRequest handles in list order.")
        .def_prop_ro("table", &RequestList::table);

    // ------------------------------------------------------------------ KVCacheManager
    nb::class_<KVCacheManager>(m, "KVCacheManager", "Paged KV-cache block manager with prefix reuse (one attention window).")
        .def("__init__",
             [](KVCacheManager* self, std::shared_ptr<RequestTable> table, int32_t tokens_per_block, int32_t num_blocks,
                int32_t max_seq_len, bool enable_block_reuse, bool enable_partial_reuse, bool copy_on_partial_reuse,
                int32_t num_secondary_blocks, bool cross_kv, std::optional<std::vector<int32_t>> max_attention_window_vec,
                int32_t sink_token_length) {
                 if (max_attention_window_vec) {
                     if (max_attention_window_vec->empty())
                         throw InputError("max_attention_window_vec must hold the one window (max_seq_len), got none");
                     for (int32_t w : *max_attention_window_vec)
                         if (w != max_seq_len)
                             throw InputError("only one attention window, equal to max_seq_len, is supported; got window " +
                                              std::to_string(w));
                 }
                 if (sink_token_length != 0) throw InputError("sink tokens are not supported (sink_token_length must be 0)");
                 KvCacheConfig c;
                 c.tokens_per_block = tokens_per_block;
                 c.num_blocks = num_blocks;
                 c.max_seq_len = max_seq_len;
                 c.enable_block_reuse = enable_block_reuse;
                 c.enable_partial_reuse = enable_partial_reuse;
                 c.copy_on_partial_reuse = copy_on_partial_reuse;
                 c.num_secondary_blocks = num_secondary_blocks;
                 c.cross_kv = cross_kv;
                 new (self) KVCacheManager(std::move(table), c);
             },
             "table"_a, "tokens_per_block"_a, "num_blocks"_a, "max_seq_len"_a, nb::kw_only(), "enable_block_reuse"_a = false,
             "enable_partial_reuse"_a = true, "copy_on_partial_reuse"_a = true, "num_secondary_blocks"_a = 0,
             "cross_kv"_a = false, "max_attention_window_vec"_a = nb::none(), "sink_token_length"_a = 0)
        .def_prop_ro("tokens_per_block", &KVCacheManager::tokens_per_block)
        .def_prop_ro("max_seq_len", [](const KVCacheManager& k) { return k.config().max_seq_len; })
        .def_prop_ro("max_attention_window_vec", [](const KVCacheManager& k) { return std::vector<int32_t>{k.config().max_seq_len}; })
        .def_prop_ro("enable_block_reuse", [](const KVCacheManager& k) { return k.config().enable_block_reuse; })
        .def_prop_ro("cross_kv", [](const KVCacheManager& k) { return k.config().cross_kv; })
        .def_prop_ro("is_variable_window", [](const KVCacheManager&) { return false; })
        .def_prop_ro("max_num_blocks", &KVCacheManager::max_num_blocks)
        .def_prop_ro("num_free_blocks", &KVCacheManager::num_free_blocks)
        .def_prop_ro("num_free_secondary_blocks", &KVCacheManager::num_free_secondary_blocks)
        .def("free_block_counts", [](nb::handle self) {
                return view(nb::cast<const KVCacheManager&>(self).free_block_counts(), 2, self);
            }, "Zero-copy read-only view of [num_free_blocks, num_free_secondary_blocks], always current. Build once.")
        .def_prop_ro("num_used_blocks", &KVCacheManager::num_used_blocks)
        .def_prop_ro("num_cached_blocks", &KVCacheManager::num_cached_blocks)
        .def_prop_ro("num_key_walks", &KVCacheManager::num_key_walks, "Reuse-tree walks made for skip keys so far.")
        .def("get_num_free_blocks_per_window_size", [](const KVCacheManager& k) {
                nb::dict d;
                d[nb::int_(k.config().max_seq_len)] = k.num_free_blocks();
                return d;
            })
        .def("get_kv_cache_stats", [](const KVCacheManager& k) {
                const KvCacheStats& s = k.stats();
                nb::dict d;
                d["max_num_blocks"] = k.max_num_blocks();
                d["free_num_blocks"] = k.num_free_blocks();
                d["used_num_blocks"] = k.num_used_blocks();
                d["tokens_per_block"] = k.tokens_per_block();
                d["alloc_total_blocks"] = s.alloc_total_blocks;
                d["alloc_new_blocks"] = s.alloc_new_blocks;
                d["reused_blocks"] = s.reused_blocks;
                d["missed_blocks"] = s.missed_blocks;
                int64_t looked = s.reused_blocks + s.missed_blocks;
                d["cache_hit_rate"] = looked ? static_cast<double>(s.reused_blocks) / static_cast<double>(looked) : 0.0;
                nb::dict per;
                per[nb::int_(k.config().max_seq_len)] = k.num_free_blocks();
                d["num_free_blocks_per_window_size"] = per;
                return d;
            })
        .def("add_sequence", [](KVCacheManager& k, int64_t request_id, int32_t input_length, int32_t beam_width,
                                std::optional<PyRequest> llm_request) {
                int32_t s = k.table().slot_of(request_id);
                if (llm_request && (request_slot_for(k, *llm_request) != s)) throw InputError("llm_request does not match request_id");
                k.add_sequence(s, input_length, beam_width);
            }, "request_id"_a, "input_length"_a, "beam_width"_a = 1, "llm_request"_a = nb::none())
        .def("add_token", [](KVCacheManager& k, int64_t request_id) { k.add_token(k.table().slot_of(request_id)); }, "request_id"_a)
        .def("store_context_blocks", [](KVCacheManager& k, const PyRequest& r) { k.store_context_blocks(request_slot_for(k, r)); }, "llm_request"_a)
        .def("remove_sequence", [](KVCacheManager& k, int64_t request_id, std::optional<PyRequest> llm_request) {
                int32_t s = k.table().slot_of(request_id);
                if (llm_request && request_slot_for(k, *llm_request) != s) throw InputError("llm_request does not match request_id");
                k.remove_sequence(s, llm_request.has_value());
            }, "request_id"_a, "llm_request"_a = nb::none(),
            "Releases the sequence; with llm_request (and reuse on) its blocks are stored for reuse first.")
        .def("has_sequence", [](const KVCacheManager& k, int64_t request_id) {
                int32_t s = k.table().find(request_id);
                return s >= 0 && k.has_sequence(s);
            }, "request_id"_a)
        .def("get_cache_block_ids", [](const KVCacheManager& k, int64_t request_id) {
                int32_t s = k.table().slot_of(request_id);
                if (!k.has_sequence(s)) throw InputError("request " + std::to_string(request_id) + " has no sequence in this KV cache");
                return to_numpy(k.block_ids(s));
            }, "request_id"_a)
        .def("get_sequence_num_tokens", [](const KVCacheManager& k, int64_t request_id) {
                int32_t s = k.table().slot_of(request_id);
                if (!k.has_sequence(s)) throw InputError("request " + std::to_string(request_id) + " has no sequence in this KV cache");
                return k.sequence_num_tokens(s);
            }, "request_id"_a)
        .def("start_scheduling", [](KVCacheManager& k) { k.start_scheduling(); return k.scheduling_free_blocks(); },
             "Snapshots free blocks for a scheduling pass; returns the snapshot's free count.")
        .def("scheduling_has_free_blocks", [](const KVCacheManager& k, int64_t n, std::optional<int32_t> w) {
                check_window(k, w);
                return k.scheduling_has_free_blocks(n);
            }, "num_required"_a, "window_size"_a = nb::none())
        .def_prop_ro("scheduling_free_blocks", &KVCacheManager::scheduling_free_blocks)
        .def("scheduling_remove_sequence", [](KVCacheManager& k, int64_t request_id) {
                return k.scheduling_remove_sequence(k.table().slot_of(request_id));
            }, "request_id"_a, "Frees the sequence in the snapshot only; returns the snapshot's free count.")
        .def("get_remaining_blocks_to_completion", [](const KVCacheManager& k, const PyRequest& r, std::optional<int32_t> w) {
                check_window(k, w);
                return k.get_remaining_blocks_to_completion(request_slot_for(k, r));
            }, "llm_request"_a, "window_size"_a = nb::none())
        .def("get_needed_blocks_one_step", [](const KVCacheManager& k, const PyRequest& r, bool two, std::optional<int32_t> w) {
                check_window(k, w);
                return k.get_needed_blocks_one_step(request_slot_for(k, r), two);
            }, "llm_request"_a, "two_steps_look_ahead"_a = false, "window_size"_a = nb::none())
        .def("find_new_context_block", [](const KVCacheManager& k, const PyRequest& r) -> nb::object {
                auto key = k.find_new_context_block(request_slot_for(k, r));
                if (!key) return nb::none();
                std::optional<int64_t> lora;
                if (key->lora_task_id >= 0) lora = key->lora_task_id;
                return nb::make_tuple(to_numpy(std::move(key->tokens)), lora);
            }, "llm_request"_a, "(tokens through the first uncached full block, lora_task_id), or None if all cached.")
        // array forms: one call for many requests
        .def("get_remaining_blocks_to_completion_batch", [](const KVCacheManager& k, const AnyArray& slots) {
                return per_slot(k.table(), slots, [&](int32_t s) { return k.get_remaining_blocks_to_completion(s); });
            }, "slots"_a.noconvert())
        .def("get_remaining_blocks_to_completion_sum", [](const KVCacheManager& k, const AnyArray& slots) {
                return sum_per_slot(k.table(), slots, [&](int32_t s) { return k.get_remaining_blocks_to_completion(s); });
            }, "slots"_a.noconvert(), "The sum of get_remaining_blocks_to_completion over many requests (no array).")
        .def("get_needed_blocks_one_step_batch", [](const KVCacheManager& k, const AnyArray& slots, bool two) {
                return per_slot(k.table(), slots, [&](int32_t s) { return k.get_needed_blocks_one_step(s, two); });
            }, "slots"_a.noconvert(), "two_steps_look_ahead"_a = false)
        .def("get_needed_blocks_one_step_sum", [](const KVCacheManager& k, const AnyArray& slots, bool two) {
                return sum_per_slot(k.table(), slots, [&](int32_t s) { return k.get_needed_blocks_one_step(s, two); });
            }, "slots"_a.noconvert(), "two_steps_look_ahead"_a = false,
            "The sum of get_needed_blocks_one_step over many requests (no array).")
        .def("find_new_context_block_batch", [](KVCacheManager& k, const AnyArray& slots, bool continue_pass) {
                auto [p, n] = checked_slots(k.table(), slots);
                std::vector<int64_t> out(static_cast<size_t>(n), -1);
                for (int32_t i = 0; i < n; ++i)
                    out[static_cast<size_t>(i)] = k.find_new_context_block_id(p[i], i == 0 && !continue_pass);
                return to_numpy(std::move(out));
            }, "slots"_a.noconvert(), "continue_pass"_a = false,
            "Key ids: equal ids iff equal first-new-block keys, within one call or across calls made with "
            "continue_pass=True after it; -1 for none.")
        .def("probe_prefix_match_lengths", [](const KVCacheManager& k, const AnyArray& tokens, const AnyArray& offsets,
                                               nb::handle lora_task_ids) {
                auto [tp, tn] = checked<int32_t>(tokens, "tokens");
                auto [op, on] = checked<int64_t>(offsets, "offsets");
                if (on == 0) throw InputError("offsets: expected n + 1 entries, got none");
                for (int32_t i = 0; i < on; ++i)
                    if (op[i] < (i ? op[i - 1] : 0) || op[i] > tn)
                        throw InputError("offsets: must rise from >= 0 to at most len(tokens); entry " + std::to_string(i) + " does not");
                const int64_t* lp = nullptr;
                if (!lora_task_ids.is_none()) {
                    if (!nb::isinstance<AnyArray>(lora_task_ids)) throw TypeInputError("lora_task_ids: expected an int64 numpy array or None");
                    auto [l, ln] = checked<int64_t>(nb::cast<AnyArray>(lora_task_ids, false), "lora_task_ids");
                    if (ln != on - 1) throw InputError("lora_task_ids: expected one entry per prompt");
                    lp = l;
                }
                std::vector<int32_t> out(static_cast<size_t>(on - 1));
                k.probe_prefix_match_lengths(tp, op, on - 1, lp, out.data());
                return to_numpy(std::move(out));
            }, "tokens"_a.noconvert(), "offsets"_a.noconvert(), "lora_task_ids"_a = nb::none(),
            "Attention-DP routing: cached leading tokens (whole blocks, last token excluded) of each prompt "
            "tokens[offsets[i]:offsets[i+1]]; a dry run that changes nothing.")
        .def("get_sequence_num_blocks_batch", [](const KVCacheManager& k, const AnyArray& slots) {
                return per_slot(k.table(), slots, [&](int32_t s) {
                    return k.has_sequence(s) ? static_cast<int32_t>(k.block_ids(s).size()) : 0;
                });
            }, "slots"_a.noconvert())
        // introspection (tests, invariants)
        .def("ref_count", [](const KVCacheManager& k, int32_t b) {
                if (b < 0 || b >= k.max_num_blocks()) throw nb::index_error("block id out of range");
                return k.ref_count(b);
            }, "block_id"_a)
        .def("is_cached", [](const KVCacheManager& k, int32_t b) {
                if (b < 0 || b >= k.max_num_blocks()) throw nb::index_error("block id out of range");
                return k.in_tree(b);
            }, "block_id"_a)
        .def("tree_parent", [](const KVCacheManager& k, int32_t b) {
                if (b < 0 || b >= k.max_num_blocks()) throw nb::index_error("block id out of range");
                return k.tree_parent(b);
            }, "block_id"_a, "Parent block in the reuse tree: -1 for the root, -2 when not cached.")
        .def("is_primary", [](const KVCacheManager& k, int32_t b) {
                if (b < 0 || b >= k.max_num_blocks()) throw nb::index_error("block id out of range");
                return k.is_primary(b);
            }, "block_id"_a)
        .def("free_queue", [](const KVCacheManager& k, int32_t level) { return to_numpy(k.free_queue(level)); }, "level"_a = 0,
             "Free blocks in eviction order (front first) of one level (0 primary, 1 secondary).")
        .def("check_invariants", &KVCacheManager::check_invariants, "Raises RuntimeError naming the first broken invariant.");

    nb::class_<PeftCacheManager>(m, "PeftCacheManager", "LoRA weight pages per task.")
        .def(nb::init<int32_t, int32_t>(), "pages_per_task"_a, "max_device_pages"_a)
        .def_prop_ro("max_device_pages", &PeftCacheManager::max_device_pages)
        .def_prop_ro("pages_per_task", &PeftCacheManager::pages_per_task)
        .def("set_task_pages", &PeftCacheManager::set_task_pages, "task_id"_a, "pages"_a)
        .def("determine_num_pages", [](const PeftCacheManager& p, const PyRequest& r) { return p.determine_num_pages(r.t(), r.slot); }, "llm_request"_a)
        .def("determine_num_pages_batch", [](const PeftCacheManager& p, const RequestTable& t, const AnyArray& slots) {
                return per_slot(t, slots, [&](int32_t s) { return p.determine_num_pages(t, s); });
            }, "table"_a, "slots"_a.noconvert());

    // ------------------------------------------------------------------ schedulers
    nb::class_<CapacityScheduler>(m, "CapacityScheduler", "Reference C++ capacity scheduler.")
        .def(nb::init<int32_t, CapacitySchedulerPolicy, bool, bool, int32_t, int32_t>(), "max_num_requests"_a,
             "capacity_scheduler_policy"_a, "has_kv_cache_manager"_a = true, "two_steps_look_ahead"_a = false,
             "no_schedule_until_state"_a = static_cast<int32_t>(LlmRequestState::kCONTEXT_INIT),
             "no_schedule_after_state"_a = static_cast<int32_t>(LlmRequestState::kGENERATION_COMPLETE))
        .def("schedule", [](const CapacityScheduler& c, RequestTable& t, nb::handle active, KVCacheManager* kv,
                            PeftCacheManager* peft, KVCacheManager* cross) {
                auto [p, n] = list_or_slots(t, active);
                CapacityOutput out;
                c.schedule(t, p, n, kv, peft, cross, out);
                return nb::make_tuple(to_numpy(std::move(out.fitting)), to_numpy(std::move(out.fitting_disagg_gen_init)),
                                      to_numpy(std::move(out.paused)));
            }, "table"_a, "active_requests"_a, "kv_cache_manager"_a = nb::none(), "peft_cache_manager"_a = nb::none(),
            "cross_kv_cache_manager"_a = nb::none(), "Returns slot arrays (fitting, fitting_disagg_gen_init, paused).");

    nb::class_<MicroBatchScheduler>(m, "MicroBatchScheduler", "Reference C++ micro-batch scheduler.")
        .def("__init__", [](MicroBatchScheduler* self, std::optional<std::pair<ContextChunkingPolicy, int32_t>> chunking,
                            std::optional<int32_t> max_context_length, int32_t until, int32_t after) {
                std::optional<ContextChunkingConfig> cfg;
                if (chunking) cfg = ContextChunkingConfig{chunking->first, chunking->second};
                new (self) MicroBatchScheduler(cfg, max_context_length, until, after);
            }, "ctx_chunk_config"_a = nb::none(), "max_context_length"_a = nb::none(),
            "no_schedule_until_state"_a = static_cast<int32_t>(LlmRequestState::kCONTEXT_INIT),
            "no_schedule_after_state"_a = static_cast<int32_t>(LlmRequestState::kGENERATION_TO_COMPLETE),
            "ctx_chunk_config: None (no chunking) or (ContextChunkingPolicy, chunk_unit_size).")
        .def("schedule", [](MicroBatchScheduler& m, RequestTable& t, nb::handle active, nb::handle inflight,
                            int32_t max_batch_size, std::optional<int32_t> max_num_tokens) {
                auto [p, n] = list_or_slots(t, active);
                auto [ip, in] = inflight_ids(inflight);
                if (max_batch_size <= 0) throw InputError("max_batch_size must be positive");
                if (max_num_tokens && *max_num_tokens <= 0) throw InputError("max_num_tokens must be positive or None");
                MicroBatchOutput out;
                m.schedule(t, p, n, ip, in, max_batch_size, max_num_tokens, out);
                return nb::make_tuple(to_numpy(std::move(out.context)), to_numpy(std::move(out.generation)));
            }, "table"_a, "active_requests"_a, "inflight_request_ids"_a = nb::none(), "max_batch_size"_a,
            "max_num_tokens"_a = nb::none(), "Returns slot arrays (context, generation).");

    m.def("set_ctx_requests_chunk_size", [](RequestTable& t, const AnyArray& slots, ContextChunkingPolicy policy,
                                            std::optional<int32_t> capacity, int32_t unit, std::optional<int32_t> max_ctx) {
            auto [p, n] = checked_slots(t, slots);
            if (unit <= 0) throw InputError("chunk_unit_size must be positive");
            if (capacity && *capacity < 0) throw InputError("capacity must be >= 0 or None");
            if (max_ctx && *max_ctx <= 0) throw InputError("max_context_length must be positive or None");
            std::vector<ChunkItem> items;
            for (int32_t i = 0; i < n; ++i) {
                if (!state::is_context_init(t.state[p[i]]))
                    throw InputError("request " + std::to_string(t.request_id[p[i]]) + " is not in a context state");
                items.push_back(ChunkItem{p[i], t.context_remaining_length(p[i]), t.num_draft_tokens[p[i]]});
            }
            set_ctx_requests_chunk_size(items, policy, capacity, unit, max_ctx);
            for (const ChunkItem& it : items) {
                t.set_context_chunk_size(it.slot, it.chunk);
                if (it.discard > 0) t.discard_draft_tokens(it.slot, it.discard);
            }
        }, "table"_a, "slots"_a.noconvert(), "policy"_a, "capacity"_a.none(), "chunk_unit_size"_a, "max_context_length"_a = nb::none(),
        "Sets chunk sizes directly (TensorRT-LLM's setCtxRequestsChunkSize), discarding draft tokens that do not fit.");

    nb::class_<StepScheduler>(m, "StepScheduler", "Capacity then micro-batch scheduling in one call (reference C++).")
        .def("__init__", [](StepScheduler* self, const CapacityScheduler& cap, const MicroBatchScheduler& micro,
                            std::shared_ptr<RequestTable> table, std::shared_ptr<KVCacheManager> kv,
                            std::shared_ptr<KVCacheManager> cross, std::shared_ptr<PeftCacheManager> peft,
                            int32_t max_batch_size, std::optional<int32_t> max_num_tokens) {
                new (self) StepScheduler(cap, micro, std::move(table), std::move(kv), std::move(cross), std::move(peft),
                                         max_batch_size, max_num_tokens);
            }, "capacity_scheduler"_a, "micro_batch_scheduler"_a, "table"_a, "kv_cache_manager"_a.none(),
            "cross_kv_cache_manager"_a.none(), "peft_cache_manager"_a.none(), "max_batch_size"_a, "max_num_tokens"_a.none())
        .def("schedule", [](StepScheduler& s, const RequestList& active, nb::handle inflight) {
                if (active.table() != s.table()) throw InputError("the RequestList belongs to another RequestTable");
                auto [ip, in] = inflight_ids(inflight);
                const StepOutput& out = s.schedule(active.data(), active.size(), ip, in);
                return nb::make_tuple(to_numpy(out.capacity.fitting), to_numpy(out.capacity.fitting_disagg_gen_init),
                                      to_numpy(out.capacity.paused), to_numpy(out.micro.context),
                                      to_numpy(out.micro.generation));
            }, "active_requests"_a, "inflight_request_ids"_a = nb::none(),
            "Returns slot arrays (fitting, fitting_disagg_gen_init, paused, context, generation).");

    nb::class_<SimExecutor>(m, "SimExecutor", "GPU-less executor step: pause, allocate, advance chunks, append, complete.")
        .def(nb::init<std::shared_ptr<RequestTable>, std::shared_ptr<KVCacheManager>, std::shared_ptr<KVCacheManager>, int32_t>(),
             "table"_a, "kv_cache_manager"_a.none(), "cross_kv_cache_manager"_a.none(), "max_input_len"_a)
        .def("apply", [](SimExecutor& e, const AnyArray& paused, const AnyArray& disagg, const AnyArray& execute,
                         int32_t token) {
                const RequestTable& t = e.table();
                auto [pp, pn] = checked_slots(t, paused, "paused");
                auto [dp, dn] = checked_slots(t, disagg, "disagg_gen_init");
                auto [ep, en] = checked_slots(t, execute, "execute");
                std::vector<int32_t> finished;
                e.apply(pp, pn, dp, dn, ep, en, token, finished);
                return to_numpy(std::move(finished));
            }, "paused"_a.noconvert(), "disagg_gen_init"_a.noconvert(), "execute"_a.noconvert(),
            "generated_token"_a = 1, "Applies one step; returns the slots completed, in completion order.")
        .def_prop_ro("tokens_appended", &SimExecutor::tokens_appended);

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
