// ext/bindings/kv_cache.cpp: KVCacheManager and PeftCacheManager.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <string>

#include "bindings/arrays.h"
#include "bindings/common.h"
#include "kv_cache_manager.h"
#include "peft_cache_manager.h"

namespace tllm::bindings {

using namespace nb::literals;

namespace {

/// {window: free blocks} (TensorRT-LLM's per-window form; one window here).
nb::dict free_blocks_per_window(const KVCacheManager& k) {
    nb::dict d;
    d[nb::int_(k.config().max_seq_len)] = k.num_free_blocks();
    return d;
}

/// A query of one block of the pool, by a checked block id (IndexError when out of range).
template <class R>
auto block_query(R (BlockPool::*query)(int32_t) const) {
    return [query](const KVCacheManager& k, int32_t b) {
        k.pool().check_block_id(b);
        return (k.pool().*query)(b);
    };
}

/// The slot of a request that has a sequence in `k`.
int32_t slot_with_sequence(const KVCacheManager& k, int64_t request_id) {
    int32_t s = k.table().slot_of(request_id);
    if (!k.has_sequence(s)) throw InputError("request " + std::to_string(request_id) + " has no sequence in this KV cache");
    return s;
}

int32_t request_slot_for(const KVCacheManager& kv, const PyRequest& r) { return r.slot_in(kv.table(), "llm_request"); }

}  // namespace

void bind_kv_cache(nb::module_& m) {
    m.def("_set_block_hash_mask", &KVCacheManager::set_block_hash_mask, "mask"_a,
          "Tests only: masks every chained block hash so that hashes collide (decisions must not change). "
          "Only while no KVCacheManager exists; all ones restores the default.");
    // ------------------------------------------------------------------ KVCacheManager
    nb::class_<KVCacheManager>(m, "KVCacheManager", "Paged KV-cache block manager with prefix reuse (one attention window).")
        .def("__init__",
             [](KVCacheManager* self, std::shared_ptr<RequestTable> table, int32_t tokens_per_block, int32_t num_blocks,
                int32_t max_seq_len, bool enable_block_reuse, bool enable_partial_reuse, bool copy_on_partial_reuse,
                int32_t num_secondary_blocks, bool cross_kv, std::optional<std::vector<int32_t>> max_attention_window_vec,
                int32_t sink_token_length) {
                 KvCacheConfig c;
                 c.tokens_per_block = tokens_per_block;
                 c.num_blocks = num_blocks;
                 c.max_seq_len = max_seq_len;
                 c.enable_block_reuse = enable_block_reuse;
                 c.enable_partial_reuse = enable_partial_reuse;
                 c.copy_on_partial_reuse = copy_on_partial_reuse;
                 c.num_secondary_blocks = num_secondary_blocks;
                 c.cross_kv = cross_kv;
                 c.max_attention_window_vec = std::move(max_attention_window_vec);
                 c.sink_token_length = sink_token_length;
                 new (self) KVCacheManager(std::move(table), c);
             },
             "table"_a, "tokens_per_block"_a, "num_blocks"_a, "max_seq_len"_a, nb::kw_only(), "enable_block_reuse"_a = false,
             "enable_partial_reuse"_a = true, "copy_on_partial_reuse"_a = true, "num_secondary_blocks"_a = 0,
             "cross_kv"_a = false, "max_attention_window_vec"_a = nb::none(), "sink_token_length"_a = 0)
        .def_prop_ro("table", &KVCacheManager::table_ptr, "The RequestTable whose requests this cache holds.")
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
        .def_prop_ro("num_key_walks", &KVCacheManager::num_key_walks, "Skip-key questions answered so far (find_new_context_block and its batch and claim forms; a remembered walk counts too).")
        .def("get_num_free_blocks_per_window_size", free_blocks_per_window)
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
                d["cache_hit_rate"] = s.cache_hit_rate();
                // Work statistics of prefix reuse: chained block hashes computed and block keys
                // compared to confirm a hash match (each once per request and block, while
                // nothing the answer depends on changes).
                d["blocks_hashed"] = k.num_blocks_hashed();
                d["blocks_compared"] = k.num_blocks_compared();
                d["num_free_blocks_per_window_size"] = free_blocks_per_window(k);
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
                return to_numpy(k.block_ids(slot_with_sequence(k, request_id)));
            }, "request_id"_a)
        .def("get_sequence_num_tokens", [](const KVCacheManager& k, int64_t request_id) {
                return k.sequence_num_tokens(slot_with_sequence(k, request_id));
            }, "request_id"_a)
        .def("start_scheduling", [](KVCacheManager& k) { k.start_scheduling(); return k.scheduling_free_blocks(); },
             "Snapshots free blocks for a scheduling pass; returns the snapshot's free count.")
        .def("scheduling_has_free_blocks", [](const KVCacheManager& k, int64_t n, std::optional<int32_t> w) {
                k.check_window(w);
                return k.scheduling_has_free_blocks(n);
            }, "num_required"_a, "window_size"_a = nb::none())
        .def_prop_ro("scheduling_free_blocks", &KVCacheManager::scheduling_free_blocks)
        .def("scheduling_remove_sequence", [](KVCacheManager& k, int64_t request_id) {
                return k.scheduling_remove_sequence(k.table().slot_of(request_id));
            }, "request_id"_a, "Frees the sequence in the snapshot only; returns the snapshot's free count.")
        .def("get_remaining_blocks_to_completion", [](const KVCacheManager& k, const PyRequest& r, std::optional<int32_t> w) {
                k.check_window(w);
                return k.get_remaining_blocks_to_completion(request_slot_for(k, r));
            }, "llm_request"_a, "window_size"_a = nb::none())
        .def("get_needed_blocks_one_step", [](const KVCacheManager& k, const PyRequest& r, bool two, std::optional<int32_t> w) {
                k.check_window(w);
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
        .def("get_remaining_blocks_to_completion_batch", [](const KVCacheManager& k, const ArrayArg& slots) {
                return per_slot(k.table(), slots, [&](int32_t s) { return k.get_remaining_blocks_to_completion(s); });
            }, "slots"_a.noconvert())
        .def("get_remaining_blocks_to_completion_sum", [](const KVCacheManager& k, const ArrayArg& slots) {
                return sum_per_slot(k.table(), slots, [&](int32_t s) { return k.get_remaining_blocks_to_completion(s); });
            }, "slots"_a.noconvert(), "The sum of get_remaining_blocks_to_completion over many requests (no array).")
        .def("get_needed_blocks_one_step_batch", [](const KVCacheManager& k, const ArrayArg& slots, bool two) {
                return per_slot(k.table(), slots, [&](int32_t s) { return k.get_needed_blocks_one_step(s, two); });
            }, "slots"_a.noconvert(), "two_steps_look_ahead"_a = false)
        .def("get_needed_blocks_one_step_sum", [](const KVCacheManager& k, const ArrayArg& slots, bool two) {
                return sum_per_slot(k.table(), slots, [&](int32_t s) { return k.get_needed_blocks_one_step(s, two); });
            }, "slots"_a.noconvert(), "two_steps_look_ahead"_a = false,
            "The sum of get_needed_blocks_one_step over many requests (no array).")
        .def("find_new_context_block_batch", [](KVCacheManager& k, const ArrayArg& slots, bool continue_pass) {
                auto [p, n] = checked_slots(k.table(), slots);
                std::vector<int64_t> out(static_cast<size_t>(n), -1);
                k.find_new_context_block_ids(p, n, continue_pass, out.data());
                return to_numpy(std::move(out));
            }, "slots"_a.noconvert(), "continue_pass"_a = false,
            "Key ids: equal ids iff equal first-new-block keys, within one call or across calls made with "
            "continue_pass=True after it; -1 for none.")
        .def("claim_new_context_blocks", [](KVCacheManager& k, const AnyArray& slots, bool continue_pass) {
                auto [p, n] = checked_slots(k.table(), slots);
                std::vector<int8_t> out(static_cast<size_t>(n), 0);
                for (int32_t i = 0; i < n; ++i)
                    out[static_cast<size_t>(i)] = k.claim_new_context_block(p[i], i == 0 && !continue_pass);
                return to_numpy(std::move(out));
            }, "slots"_a.noconvert(), "continue_pass"_a = false,
            "Step B of reuse skipping, in order, on the keys of a pass (as find_new_context_block_batch): "
            "0 no key (every full block cached), 1 the key is claimed now, 2 another request of the pass "
            "claimed it (skip).")
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
        .def("get_sequence_num_blocks_batch", [](const KVCacheManager& k, const ArrayArg& slots) {
                return per_slot(k.table(), slots, [&](int32_t s) { return k.sequence_num_blocks(s); });
            }, "slots"_a.noconvert())
        // introspection (tests, invariants)
        .def("ref_count", block_query(&BlockPool::ref_count), "block_id"_a)
        .def("is_cached", block_query(&BlockPool::in_tree), "block_id"_a)
        .def("tree_parent", block_query(&BlockPool::tree_parent), "block_id"_a, "Parent block in the reuse tree: -1 for the root, -2 when not cached.")
        .def("is_primary", block_query(&BlockPool::is_primary), "block_id"_a)
        .def("free_queue", [](const KVCacheManager& k, int32_t level) { return to_numpy(k.pool().free_queue(level)); }, "level"_a = 0,
             "Free blocks in eviction order (front first) of one level (0 primary, 1 secondary).")
        .def("check_invariants", &KVCacheManager::check_invariants, "Raises RuntimeError naming the first broken invariant.");

    nb::class_<PeftCacheManager>(m, "PeftCacheManager", "LoRA weight pages per task.")
        .def(nb::init<int32_t, int32_t>(), "pages_per_task"_a, "max_device_pages"_a)
        .def_prop_ro("max_device_pages", &PeftCacheManager::max_device_pages)
        .def_prop_ro("pages_per_task", &PeftCacheManager::pages_per_task)
        .def("set_task_pages", &PeftCacheManager::set_task_pages, "task_id"_a, "pages"_a)
        .def("determine_num_pages", [](const PeftCacheManager& p, const PyRequest& r) { return p.determine_num_pages(r.t(), r.slot); }, "llm_request"_a)
        .def("determine_num_pages_batch", [](const PeftCacheManager& p, const RequestTable& t, const ArrayArg& slots) {
                return per_slot(t, slots, [&](int32_t s) { return p.determine_num_pages(t, s); });
            }, "table"_a, "slots"_a.noconvert());
}

}  // namespace tllm::bindings
