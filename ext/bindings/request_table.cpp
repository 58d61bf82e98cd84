// ext/bindings/request_table.cpp: RequestTable, its LlmRequest handles and RequestList.
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

#include "bindings/arrays.h"
#include "bindings/common.h"
#include "request_list.h"
#include "request_table.h"

namespace tllm::bindings {

using namespace nb::literals;

namespace {

/// ImportError naming torch and the numpy alternative, before a DLPack export that would fail with
/// the import's traceback folded into its message.
void require_torch(const char* what) {
    try {
        nb::module_::import_("torch");
    } catch (nb::python_error&) {
        throw nb::import_error((std::string(what) + " needs torch (pip install torch==2.13.0); tokens() is the same "
                                "view as a numpy array").c_str());
    }
}

std::vector<int32_t> tokens_from(nb::handle obj, const char* name) {
    Int32Values v = int32_values(obj, name);
    return std::vector<int32_t>(v.data, v.data + v.size);
}

/// A zero-copy view of the request's tokens (the whole reserved buffer if `whole_buffer`) that
/// keeps the token storage alive, so it outlives the request's removal from its table.
template <class Array>
Array token_view(const PyRequest& r, bool whole_buffer) {
    std::shared_ptr<TokenStore> store = r.t().tokens(r.slot);
    int32_t* p = store->tokens.get();
    size_t n = static_cast<size_t>(whole_buffer ? store->capacity : store->size);
    nb::capsule owner(new std::shared_ptr<TokenStore>(std::move(store)),
                      [](void* q) noexcept { delete static_cast<std::shared_ptr<TokenStore>*>(q); });
    return Array(p, {n}, owner);
}

/// Only beam 0 is stored: other beams are refused, not answered with beam 0's tokens.
void check_beam(int32_t beam) {
    if (beam != 0) throw InputError("only beam 0 is stored");
}

/// The columns Python sees, by name, in one place: f(name, column, gathered), where `gathered`
/// says whether RequestTable.gather copies it too (the scheduler scalars).
template <class F>
void for_each_column(const RequestTable& t, F&& f) {
    f("request_id", t.request_id, true);
    f("state", t.state, true);
    f("prompt_len", t.prompt_len, true);
    f("orig_prompt_len", t.orig_prompt_len, false);
    f("max_new_tokens", t.max_new_tokens, true);
    f("num_tokens", t.num_tokens, true);
    f("context_current_position", t.context_current_position, true);
    f("context_chunk_size", t.context_chunk_size, true);
    f("prepopulated_prompt_len", t.prepopulated_prompt_len, false);
    f("num_draft_tokens", t.num_draft_tokens, true);
    f("lora_task_id", t.lora_task_id, true);
    f("beam_width", t.beam_width, true);
    f("beam_width_by_iter", t.beam_width_by_iter, false);
    f("priority", t.priority, true);
    f("encoder_output_len", t.encoder_output_len, false);
    f("decoding_iter", t.decoding_iter, false);
}

nb::dict columns_dict(const RequestTable& t, nb::handle owner) {
    size_t n = static_cast<size_t>(t.capacity());
    nb::dict d;
    for_each_column(t, [&](const char* name, const auto* col, bool) { d[name] = view(col, n, owner); });
    return d;
}

}  // namespace

void bind_request_state(nb::module_& m) {
    nb::enum_<LlmRequestState> e(m, "LlmRequestState", nb::is_arithmetic());
#define TLLM_STATE_VALUE(name, number) e.value(#name, LlmRequestState::k##name);
    TLLM_FOR_EACH_REQUEST_STATE(TLLM_STATE_VALUE)
#undef TLLM_STATE_VALUE
}

void bind_request_table(nb::module_& m) {
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
                t.remove_request(r.slot_in(t));
            },
            "request"_a, "Frees the request's slot; its LlmRequest handles become invalid, its token views stay valid.")
        .def("remove_slots", [](RequestTable& t, const ArrayArg& slots) {
                auto [p, n] = checked_slots(t, slots);
                t.remove_slots(p, n);
            }, "slots"_a.noconvert(),
            "Frees many slots, all or nothing (e.g. the finished requests of a step).")
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
        .def("slots_of", [](const RequestTable& t, const ArrayArg& ids) {
                auto [p, n] = checked<int64_t>(ids, "request_ids");
                std::vector<int32_t> out(static_cast<size_t>(n));
                for (int32_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = t.slot_of(p[i]);
                return to_numpy(std::move(out));
            }, "request_ids"_a.noconvert(), "Slots of many request ids (ValueError on an unknown id).")
        .def("columns", [](nb::handle self) { return columns_dict(nb::cast<const RequestTable&>(self), self); },
             "Zero-copy read-only views of every column (capacity entries, indexed by slot). Build once.")
        .def("tallies", [](nb::handle self) {
                const RequestTable& t = nb::cast<const RequestTable&>(self);
                return view(t.tallies(), RequestTable::kNumTallies, self);
            }, "Zero-copy read-only view of table-wide counts over live requests: [requests with a LoRA "
               "task, with draft tokens, with a current beam width other than 1]. Build once.")
        .def("gather", [](const RequestTable& t, const ArrayArg& slots) {
                auto [p, n] = checked_slots(t, slots);
                nb::dict d;
                for_each_column(t, [&](const char* name, const auto* col, bool gathered) {
                    if (gathered) d[name] = gather_col(col, p, n);
                });
                return d;
            }, "slots"_a.noconvert(), "The scheduler scalars of many requests in one call (compact copies, list order).")
        .def("request_ids", [](const RequestTable& t, const ArrayArg& slots) {
                auto [p, n] = checked_slots(t, slots);
                return gather_col(t.request_id, p, n);
            }, "slots"_a.noconvert())
        .def("set_context_chunk_sizes", [](RequestTable& t, const ArrayArg& slots, const ArrayArg& sizes,
                                           std::optional<ArrayArg> discards) {
                auto [p, n] = checked_slots(t, slots);
                auto [v, m] = checked<int32_t>(sizes, "sizes");
                if (m != n) throw InputError("sizes must have one entry per slot");
                const int32_t* d = nullptr;
                if (discards) {
                    auto [dp, dn] = checked<int32_t>(*discards, "draft_discards");
                    if (dn != n) throw InputError("draft_discards must have one entry per slot");
                    d = dp;
                }
                t.set_context_chunk_sizes(p, v, d, n);
            }, "slots"_a.noconvert(), "sizes"_a.noconvert(), "draft_discards"_a.noconvert() = nb::none(),
            "Clamping chunk-size setter for many requests; `draft_discards` (>= 0 each, optional) drops "
            "trailing draft tokens in the same call, all or nothing.")
        .def("discard_draft_tokens", [](RequestTable& t, const ArrayArg& slots, const ArrayArg& counts) {
                auto [p, n] = checked_slots(t, slots);
                auto [v, m] = checked<int32_t>(counts, "counts");
                if (m != n) throw InputError("counts must have one entry per slot");
                t.discard_draft_tokens(p, v, n);
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
        .def_prop_ro("is_generation_complete_state", [](const PyRequest& r) { return r.t().state[r.slot] == state::GENERATION_COMPLETE; })
        .def_prop_ro("is_first_context_chunk", [](const PyRequest& r) { return r.t().is_first_context_chunk(r.slot); })
        .def_prop_ro("is_last_context_chunk", [](const PyRequest& r) { return r.t().is_last_context_chunk(r.slot); })
        .def_prop_ro("context_remaining_length", [](const PyRequest& r) { return r.t().context_remaining_length(r.slot); })
        .def_prop_rw("context_chunk_size", [](const PyRequest& r) { return r.t().context_chunk_size[r.slot]; },
                     [](const PyRequest& r, int32_t n) { r.t().set_context_chunk_size(r.slot, n); })
        .def_prop_rw("context_current_position", [](const PyRequest& r) { return r.t().context_current_position[r.slot]; },
                     [](const PyRequest& r, int32_t p) { r.t().set_context_current_position(r.slot, p); })
        .def("move_to_next_context_chunk", [](const PyRequest& r) { r.t().move_to_next_context_chunk(r.slot); })
        .def_prop_ro("prepopulated_prompt_len", [](const PyRequest& r) { return r.t().prepopulated_prompt_len[r.slot]; })
        .def_prop_ro("prompt_len", [](const PyRequest& r) { return r.t().prompt_len[r.slot]; })
        .def_prop_ro("orig_prompt_len", [](const PyRequest& r) { return r.t().orig_prompt_len[r.slot]; })
        .def_prop_ro("max_new_tokens", [](const PyRequest& r) { return r.t().max_new_tokens[r.slot]; })
        .def("get_num_tokens", [](const PyRequest& r, int32_t beam) {
                check_beam(beam);
                return r.t().num_tokens[r.slot];
            }, "beam"_a = 0)
        .def_prop_ro("max_num_generated_tokens", [](const PyRequest& r) { return r.t().max_num_generated_tokens(r.slot); })
        .def_prop_ro("encoder_output_len", [](const PyRequest& r) { return r.t().encoder_output_len[r.slot]; })
        .def_prop_ro("num_draft_tokens", [](const PyRequest& r) { return r.t().num_draft_tokens[r.slot]; })
        .def_prop_ro("has_draft_tokens", [](const PyRequest& r) { return r.t().num_draft_tokens[r.slot] > 0; })
        .def("set_num_draft_tokens", [](const PyRequest& r, int32_t n) { r.t().set_num_draft_tokens(r.slot, n); }, "count"_a,
             "Sets the draft token count of the next step: 0 <= count <= the reserved token storage (prompt + max new + initial drafts).")
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
        .def_prop_ro("tokens", [](const PyRequest& r) { return token_view<RoView<int32_t>>(r, false); },
                     nb::rv_policy::automatic, "Zero-copy read-only view of the tokens (beam 0); keeps the storage alive.")
        .def_prop_ro("token_buffer", [](const PyRequest& r) { return token_view<RoView<int32_t>>(r, true); },
                     nb::rv_policy::automatic,
                     "Zero-copy read-only view of the whole reserved storage (prompt + max new + drafts).")
        // Annotated Any: a stub that named torch.Tensor would make type checkers import torch.
        .def("tokens_torch", [](const PyRequest& r) {
                require_torch("tokens_torch");
                return token_view<nb::ndarray<nb::pytorch, int32_t, nb::ndim<1>>>(r, false);
            },
             nb::sig("def tokens_torch(self) -> typing.Any"),
             "Zero-copy torch.Tensor (int32, 1-D) of the tokens via DLPack (imports torch). Treat it as read-only.")
        .def("get_tokens", [](const PyRequest& r, int32_t beam) {
                check_beam(beam);
                const TokenStore& ts = *r.t().tokens(r.slot);
                return std::vector<int32_t>(ts.tokens.get(), ts.tokens.get() + ts.size);
            }, "beam"_a = 0, "A copy of the tokens as a list (TensorRT-LLM's O(n) get_tokens).")
        .def("get_unique_tokens", [](const PyRequest& r, int32_t beam) {
                check_beam(beam);
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
                l.append(r.slot_in(*l.table()));
            }, "request"_a)
        .def("insert_by_priority", [](RequestList& l, const PyRequest& r) {
                l.insert_by_priority(r.slot_in(*l.table()));
            }, "request"_a, "Inserts after every request of priority >= its own.")
        .def("remove", [](RequestList& l, const PyRequest& r) {
                l.remove(r.slot_in(*l.table()));
            }, "request"_a)
        .def("remove_slots", [](RequestList& l, const ArrayArg& slots) {
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
}

}  // namespace tllm::bindings
