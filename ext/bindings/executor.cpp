// ext/bindings/executor.cpp: the executor's step (Executor) with its batched block tables, and the
// simulated executor (SimExecutor).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>

#include <limits>
#include <string>
#include <utility>

#include "bindings/arrays.h"
#include "bindings/common.h"
#include "block_tables.h"
#include "executor.h"
#include "sim_executor.h"

namespace tllm::bindings {

using namespace nb::literals;

namespace {

/// The prepared step's rows, or a ValueError naming `call` when none is prepared.
const std::vector<int32_t>& prepared_rows(const Executor& e, const char* call) {
    if (!e.has_prepared_step())
        throw InputError(std::string(call) + ": no step is prepared; these buffers describe the step between "
                                             "prepare(scheduled) and commit(tokens)");
    return e.rows();
}

int32_t num_rows(const Executor& e) { return static_cast<int32_t>(e.rows().size()); }


void check_length(const char* name, int64_t have, int64_t need, const char* what) {
    if (have < need)
        throw InputError(std::string(name) + ": the buffer has room for " + std::to_string(have) + " " + what +
                         ", this step needs " + std::to_string(need) + " (size it for the largest step)");
}

/// Two optional 1-D int32 outputs of `n` `what` each: their data, null for None (`keep` holds them).
std::pair<int32_t*, int32_t*> optional_pair(nb::handle a, const char* a_name, nb::handle b, const char* b_name,
                                            int64_t n, const char* what, OutBuffer (&keep)[2]) {
    auto one = [&](nb::handle obj, const char* name, OutBuffer& k) -> int32_t* {
        if (obj.is_none()) return nullptr;
        k = out_buffer(obj, name, 1, false);
        check_length(name, k.rows, n, what);
        return static_cast<int32_t*>(k.data);
    };
    int32_t* pa = one(a, a_name, keep[0]);
    return {pa, one(b, b_name, keep[1])};
}

}  // namespace

void bind_executor(nb::module_& m) {
    nb::class_<Executor>(m, "Executor",
        "The executor's side of a serving step, around the model: prepare(scheduled) before it runs (pauses, KV "
        "blocks for new sequences, one more slot per generation), the block tables, slot mapping and inputs of the "
        "step into caller-owned buffers, then commit(tokens) after it (chunks, tokens, states, completion and "
        "release). Each call checks everything first: a refused call changes nothing.")
        .def("__init__", [](Executor* self, std::shared_ptr<RequestTable> table, std::shared_ptr<KVCacheManager> kv,
                            std::optional<int32_t> max_input_len) {
                if (!kv) throw InputError("Executor: kv_cache_manager must not be None (the block tables index it)");
                if (kv->config().num_secondary_blocks > 0)
                    throw InputError("Executor: a KV cache with a host pool (num_secondary_blocks > 0) moves blocks "
                                     "between storage levels without telling the executor, so its block ids do not "
                                     "address device memory; use num_secondary_blocks=0");
                new (self) Executor(std::move(table), kv, nullptr, max_input_len.value_or(kv->config().max_seq_len));
            }, "table"_a, "kv_cache_manager"_a.none(), nb::kw_only(), "max_input_len"_a = nb::none(),
            "max_input_len: a paused request's new prompt (prompt + generated tokens, recomputed) is cut to this "
            "many tokens; default max_seq_len, which cuts nothing.")
        .def("prepare", [](Executor& e, nb::handle scheduled) {
                const char* fields[4] = {"paused", "fitting_disagg_gen_init", "context", "generation"};
                nb::object arrays[4];
                for (int i = 0; i < 4; ++i) {
                    if (!nb::hasattr(scheduled, fields[i]))
                        throw TypeInputError("Executor.prepare: expected the Scheduler's output (its paused, "
                                             "fitting_disagg_gen_init, context and generation slots), got " + describe(scheduled));
                    arrays[i] = scheduled.attr(fields[i]);
                }
                AnyArray keep[4];
                const RequestTable& t = e.table();
                auto [pp, pn] = slots_arg(t, arrays[0], "paused", keep[0]);
                auto [dp, dn] = slots_arg(t, arrays[1], "fitting_disagg_gen_init", keep[1]);
                auto [cp, cn] = slots_arg(t, arrays[2], "context", keep[2]);
                auto [gp, gn] = slots_arg(t, arrays[3], "generation", keep[3]);
                e.prepare(pp, pn, dp, dn, cp, cn, gp, gn);
            }, "scheduled"_a.none(),
            "Before the model: pauses `scheduled.paused` (their blocks go back; they restart as contexts that "
            "recompute), gives new sequences their KV blocks (prefix reuse may move a context's position: read "
            "token_inputs after this call) and each generation the slot of the token it feeds. Rows: "
            "scheduled.context, then scheduled.generation. Apply block_copies() to the KV data before the model.")
        .def("commit", [](Executor& e, nb::handle tokens) {
                Int32Values v = int32_values(tokens, "tokens");
                std::vector<int32_t> finished;
                e.commit(v.data, v.size, finished);
                return to_numpy(std::move(finished));
            }, "tokens"_a.none(),
            "After the model: one sampled token per row (an int array: numpy, a list, or a torch CPU tensor, int32 "
            "read in place, other integer dtypes checked), then one per fitting_disagg_gen_init request; entries of "
            "context rows that do not finish their prompt are ignored. Returns the slots completed (their blocks are "
            "released, stored for reuse): remove them from the active list, then from the table.")
        .def_prop_ro("has_prepared_step", &Executor::has_prepared_step)
        .def_prop_ro("num_rows", [](const Executor& e) {
                prepared_rows(e, "Executor.num_rows");
                return num_rows(e);
            })
        .def_prop_ro("num_context_rows", [](const Executor& e) {
                prepared_rows(e, "Executor.num_context_rows");
                return e.num_context_rows();
            })
        .def_prop_ro("num_tokens", [](const Executor& e) {
                prepared_rows(e, "Executor.num_tokens");
                return e.num_step_tokens();
            }, "Tokens the prepared step writes: the length of its slot mapping and token inputs.")
        .def_prop_ro("max_blocks_per_row", [](const Executor& e) {
                prepared_rows(e, "Executor.max_blocks_per_row");
                return e.max_blocks_per_row();
            }, "The most blocks a row of the prepared step holds.")
        .def_prop_ro("rows", [](const Executor& e) { return to_numpy(prepared_rows(e, "Executor.rows")); },
                     nb::rv_policy::automatic, "Slots of the prepared step's rows: context requests, then generation requests (a copy).")
        .def("block_copies", [](const Executor& e) {
                prepared_rows(e, "Executor.block_copies");
                const std::vector<BlockCopy>& c = e.block_copies();
                std::vector<int32_t> flat;
                flat.reserve(c.size() * 3);
                for (const BlockCopy& x : c) flat.insert(flat.end(), {x.src, x.dst, x.num_tokens});
                auto* heap = new std::vector<int32_t>(std::move(flat));
                nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<int32_t>*>(p); });
                return nb::ndarray<nb::numpy, int32_t, nb::ndim<2>>(heap->data(), {c.size(), 3}, owner);
            }, "[k, 3] int32 rows (src, dst, num_tokens): blocks partially reused by copy. Before the model, copy "
               "the KV data of block src into block dst (its first num_tokens positions; copying the whole block "
               "is fine), in this order.")
        .def("block_tables", [](const Executor& e, nb::handle out) {
                const auto& rows = prepared_rows(e, "Executor.block_tables");
                OutBuffer b = out_buffer(out, "block_tables", 2, false);
                const int32_t n = num_rows(e), most = e.max_blocks_per_row();
                check_length("block_tables", b.rows, n, "rows");
                if (b.cols < most)
                    throw InputError("block_tables: a row of this step holds " + std::to_string(most) +
                                     " blocks, the buffer has " + std::to_string(b.cols) + " columns (size it for "
                                     "ceil(max_seq_len / tokens_per_block) = " +
                                     std::to_string(ceil_div(e.kv()->config().max_seq_len, e.kv()->tokens_per_block())) + ")");
                fill_block_tables(*e.kv(), rows.data(), n, static_cast<int32_t*>(b.data), b.row_stride, most);
                return n;
            }, "out"_a.none(),
            "Fills rows [0, num_rows) of the caller's [rows, width] int32 buffer (numpy or torch, host memory) with "
            "each row's block ids in order, then 0 up to max_blocks_per_row (vLLM's block_table). Returns num_rows. "
            "Rows past num_rows and columns past max_blocks_per_row are not touched.")
        .def("slot_mapping", [](const Executor& e, nb::handle out) {
                const auto& rows = prepared_rows(e, "Executor.slot_mapping");
                OutBuffer b = out_buffer(out, "slot_mapping", 1, true);
                const int64_t n = e.num_step_tokens();
                check_length("slot_mapping", b.rows, n, "tokens");
                const KVCacheManager& kv = *e.kv();
                if (!b.is_int64 && int64_t{kv.max_num_blocks()} * kv.tokens_per_block() > std::numeric_limits<int32_t>::max())
                    throw InputError("slot_mapping: slot ids of this cache reach " +
                                     std::to_string(int64_t{kv.max_num_blocks()} * kv.tokens_per_block() - 1) +
                                     ", beyond int32: pass an int64 buffer");
                if (b.is_int64) fill_slot_mapping(kv, rows.data(), num_rows(e), static_cast<int64_t*>(b.data));
                else fill_slot_mapping(kv, rows.data(), num_rows(e), static_cast<int32_t*>(b.data));
                return n;
            }, "out"_a.none(),
            "Fills entries [0, num_tokens) of the caller's 1-D int32 or int64 buffer with the KV slot of every token "
            "the step writes, row by row: block_id * tokens_per_block + position % tokens_per_block (vLLM's "
            "slot_mapping). Returns num_tokens.")
        .def("token_inputs", [](const Executor& e, nb::handle input_ids, nb::handle positions) {
                const auto& rows = prepared_rows(e, "Executor.token_inputs");
                const int64_t n = e.num_step_tokens();
                OutBuffer keep[2];
                auto [ids, pos] = optional_pair(input_ids, "input_ids", positions, "positions", n, "tokens", keep);
                fill_token_inputs(e.table(), rows.data(), num_rows(e), ids, pos);
                return n;
            }, "input_ids"_a.none(), "positions"_a.none(),
            "Fills entries [0, num_tokens) of 1-D int32 buffers (either may be None) with the token ids the step "
            "feeds and their positions, in slot-mapping order. Returns num_tokens.")
        .def("sequence_lengths", [](const Executor& e, nb::handle query_lens, nb::handle seq_lens) {
                const auto& rows = prepared_rows(e, "Executor.sequence_lengths");
                OutBuffer keep[2];
                auto [q, k] = optional_pair(query_lens, "query_lens", seq_lens, "seq_lens", num_rows(e), "rows", keep);
                fill_lengths(e.table(), rows.data(), num_rows(e), q, k);
                return num_rows(e);
            }, "query_lens"_a.none(), "seq_lens"_a.none(),
            "Fills entries [0, num_rows) of 1-D int32 buffers (either may be None): tokens each row writes this "
            "step, and tokens in its KV cache after the step (last position + 1). Returns num_rows.");

    nb::class_<SimExecutor>(m, "SimExecutor",
        "GPU-less executor step: the Executor's operations in the replay loop's order, with a synthetic token.")
        .def(nb::init<std::shared_ptr<RequestTable>, std::shared_ptr<KVCacheManager>, std::shared_ptr<KVCacheManager>, int32_t>(),
             "table"_a, "kv_cache_manager"_a.none(), "cross_kv_cache_manager"_a.none(), "max_input_len"_a)
        .def("apply", [](SimExecutor& e, nb::handle paused, nb::handle disagg, nb::handle execute, int32_t token) {
                const RequestTable& t = e.table();
                AnyArray keep[3];
                auto [pp, pn] = slots_arg(t, paused, "paused", keep[0]);
                auto [dp, dn] = slots_arg(t, disagg, "disagg_gen_init", keep[1]);
                auto [ep, en] = slots_arg(t, execute, "execute", keep[2]);
                std::vector<int32_t> finished;
                e.apply(pp, pn, dp, dn, ep, en, token, finished);
                return to_numpy(std::move(finished));
            }, "paused"_a.none(), "disagg_gen_init"_a.none(), "execute"_a.none(), "generated_token"_a = 1,
            "Applies one step (int32 slot arrays: paused, fitting_disagg_gen_init, context + generation); returns the "
            "slots completed, in completion order.")
        .def_prop_ro("tokens_appended", &SimExecutor::tokens_appended);
}

}  // namespace tllm::bindings
