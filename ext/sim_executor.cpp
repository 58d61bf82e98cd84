// ext/sim_executor.cpp: the executor step of the replay harness and the benchmark.
#include "sim_executor.h"

#include <algorithm>
#include <string>
#include <unordered_map>

namespace tllm {

SimExecutor::SimExecutor(std::shared_ptr<RequestTable> table, std::shared_ptr<KVCacheManager> kv,
                         std::shared_ptr<KVCacheManager> cross_kv, int32_t max_input_len)
    : table_(std::move(table)), kv_(std::move(kv)), cross_kv_(std::move(cross_kv)), max_input_len_(max_input_len) {
    if (!table_) throw InputError("SimExecutor: table must not be None");
    if (max_input_len <= 0) throw InputError("max_input_len must be positive");
    if ((kv_ && &kv_->table() != table_.get()) || (cross_kv_ && &cross_kv_->table() != table_.get()))
        throw InputError("SimExecutor: KV caches must belong to the same RequestTable");
}

void SimExecutor::sort_by_id(const int32_t* slots, int32_t n, std::vector<int32_t>& out) const {
    out.assign(slots, slots + n);
    const RequestTable& t = *table_;
    auto by_id = [&t](int32_t a, int32_t b) { return t.request_id[a] < t.request_id[b]; };
    if (!std::is_sorted(out.begin(), out.end(), by_id)) std::sort(out.begin(), out.end(), by_id);
}

void SimExecutor::add_sequences(int32_t s) {
    RequestTable& t = *table_;
    if (kv_) kv_->add_sequence(s, t.prompt_len[s], 1);
    if (cross_kv_) cross_kv_->add_sequence(s, std::max(t.encoder_output_len[s], 1), 1);
}

void SimExecutor::complete_if_done(int32_t s, std::vector<int32_t>& finished) {
    RequestTable& t = *table_;
    if (t.num_tokens[s] != t.prompt_len[s] + t.max_new_tokens[s]) return;
    t.set_state(s, state::GENERATION_COMPLETE);
    if (kv_ && kv_->has_sequence(s)) kv_->remove_sequence(s, /*store_for_reuse=*/true);
    if (cross_kv_ && cross_kv_->has_sequence(s)) cross_kv_->remove_sequence(s, true);
    finished.push_back(s);
}

namespace {
[[gnu::noinline, noreturn]] void refuse(const RequestTable& t, int32_t s, const std::string& what) {
    throw InputError("SimExecutor.apply: request " + std::to_string(t.request_id[s]) + " " + what);
}
}  // namespace

void SimExecutor::validate(const int32_t* paused, int32_t np, const int32_t* disagg, int32_t nd,
                           const int32_t* execute, int32_t ne) const {
    const RequestTable& t = *table_;
    std::vector<int32_t> all;
    all.reserve(static_cast<size_t>(np) + static_cast<size_t>(nd) + static_cast<size_t>(ne));
    auto appends = [&](int32_t s) {  // the step appends one token: it must fit the reserved storage
        if (t.tokens(s)->size >= t.tokens(s)->capacity)
            refuse(t, s, "has no room for another token (reserved capacity " + std::to_string(t.tokens(s)->capacity) + " reached)");
    };
    for (int32_t i = 0; i < np; ++i) {
        int32_t s = paused[i], st = t.state[s];
        if (!state::is_context_init(st) && !state::is_generation_in_progress(st))
            refuse(t, s, "cannot be paused in state " + std::to_string(st) + " (only running requests can)");
        all.push_back(s);
    }
    for (int32_t i = 0; i < nd; ++i) {
        int32_t s = disagg[i];
        if (!state::is_disagg_generation_init(t.state[s])) refuse(t, s, "is not in DISAGG_GENERATION_INIT");
        appends(s);
        all.push_back(s);
    }
    for (int32_t i = 0; i < ne; ++i) {
        int32_t s = execute[i], st = t.state[s];
        if (state::is_context_init(st)) {
            appends(s);  // it may finish its prompt this step (reuse can move its position)
        } else if (state::is_generation_in_progress(st)) {
            if (kv_ && !kv_->has_sequence(s)) refuse(t, s, "is generating but has no KV-cache sequence");
            appends(s);
        } else {
            refuse(t, s, "cannot be executed in state " + std::to_string(st));
        }
        all.push_back(s);
    }
    int32_t dup = first_repeated_slot(all.data(), static_cast<int32_t>(all.size()));
    if (dup >= 0) refuse(t, dup, "is listed twice among paused, disagg-gen-init and executed requests");
    for (const KVCacheManager* kv : {kv_.get(), cross_kv_.get()}) {
        if (!kv) continue;
        block_budget(*kv, kv == cross_kv_.get(), paused, np, disagg, nd, execute, ne);
    }
}

void SimExecutor::block_budget(const KVCacheManager& kv, bool cross, const int32_t* paused, int32_t np,
                               const int32_t* disagg, int32_t nd, const int32_t* execute, int32_t ne) const {
    const RequestTable& t = *table_;
    const int64_t tpb = kv.tokens_per_block();
    const int64_t max_len = kv.config().max_seq_len;
    int64_t need = 0;
    auto new_sequence = [&](int32_t s) {
        int64_t len = cross ? std::max(t.encoder_output_len[s], 1) : t.prompt_len[s];
        if (len > max_len)
            refuse(t, s, "needs " + std::to_string(len) + " tokens, more than max_seq_len " + std::to_string(max_len));
        if (t.beam_width[s] != 1) refuse(t, s, "has beam width > 1, which KV allocation does not support");
        need += ceil_div(len, tpb);  // an upper bound: reuse only lowers it
    };
    for (int32_t i = 0; i < nd; ++i) new_sequence(disagg[i]);
    for (int32_t i = 0; i < ne; ++i) {
        int32_t s = execute[i];
        if (state::is_context_init(t.state[s])) {
            if (t.is_first_context_chunk(s) && !kv.has_sequence(s)) new_sequence(s);
        } else if (!cross && kv.sequence_num_tokens(s) % tpb == 0) {
            need += 1;  // the next token opens a block
        }
    }
    // Blocks the pauses release: those every holder of which is paused.
    std::unordered_map<int32_t, int32_t> held;
    for (int32_t i = 0; i < np; ++i)
        if (kv.has_sequence(paused[i]))
            for (int32_t b : kv.block_ids(paused[i])) ++held[b];
    int64_t released = 0;
    for (const auto& [b, n] : held) released += kv.pool().ref_count(b) == n ? 1 : 0;
    const int64_t free = int64_t{kv.num_free_blocks()} + released;
    if (need > free)
        throw InputError(std::string("SimExecutor.apply: the step may need ") + std::to_string(need) + " " +
                         (cross ? "cross-cache" : "KV-cache") + " blocks and there would be " + std::to_string(free) +
                         " free blocks (none free for the rest); nothing was changed");
}

void SimExecutor::apply(const int32_t* paused, int32_t num_paused, const int32_t* disagg, int32_t num_disagg,
                        const int32_t* execute, int32_t num_execute, int32_t token, std::vector<int32_t>& finished) {
    RequestTable& t = *table_;
    for (int32_t i = 0; i < num_paused; ++i) t.check_slot(paused[i]);
    for (int32_t i = 0; i < num_disagg; ++i) t.check_slot(disagg[i]);
    for (int32_t i = 0; i < num_execute; ++i) t.check_slot(execute[i]);
    validate(paused, num_paused, disagg, num_disagg, execute, num_execute);  // phase 1: no change yet
    for (int32_t i = 0; i < num_paused; ++i) {  // step 4: free without storing, then restart
        int32_t s = paused[i];
        if (kv_ && kv_->has_sequence(s)) kv_->remove_sequence(s, false);
        if (cross_kv_ && cross_kv_->has_sequence(s)) cross_kv_->remove_sequence(s, false);
        t.pause(s, max_input_len_);
    }
    sort_by_id(disagg, num_disagg, order_);
    for (int32_t s : order_) {  // step 5: generation-only requests get their KV and a first token
        add_sequences(s);
        t.set_state(s, state::GENERATION_IN_PROGRESS);
        t.context_current_position[s] = t.prompt_len[s];
        t.add_new_token(s, token);
        ++tokens_appended_;
        complete_if_done(s, finished);
    }
    sort_by_id(execute, num_execute, order_);
    for (int32_t s : order_) {  // step 6
        if (state::is_context_init(t.state[s])) {
            if (t.is_first_context_chunk(s) && !(kv_ && kv_->has_sequence(s))) add_sequences(s);
            int32_t c = t.context_chunk_size[s];
            t.move_to_next_context_chunk(s);
            t.set_context_chunk_size(s, c);
            if (t.context_remaining_length(s) == 0) {
                if (kv_) kv_->store_context_blocks(s);
                t.add_new_token(s, token);
                ++tokens_appended_;
                t.set_state(s, state::GENERATION_IN_PROGRESS);
            }
        } else {
            if (kv_) kv_->add_token(s);
            t.add_new_token(s, token);
            ++tokens_appended_;
            t.advance_decoding_iteration(s);
        }
        complete_if_done(s, finished);
    }
}

}  // namespace tllm
