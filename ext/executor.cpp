// ext/executor.cpp: the executor's step: checks, then pause, allocate, commit, complete.
#include "executor.h"

#include "block_tables.h"

#include <algorithm>
#include <string>
#include <unordered_map>

namespace tllm {

namespace {
[[gnu::noinline, noreturn]] void refuse(const char* call, const RequestTable& t, int32_t s, const std::string& what) {
    throw InputError(std::string(call) + ": request " + std::to_string(t.request_id[s]) + " " + what);
}
constexpr const char* kApply = "SimExecutor.apply";
}  // namespace

Executor::Executor(std::shared_ptr<RequestTable> table, std::shared_ptr<KVCacheManager> kv,
                   std::shared_ptr<KVCacheManager> cross_kv, int32_t max_input_len)
    : table_(std::move(table)), kv_(std::move(kv)), cross_kv_(std::move(cross_kv)), max_input_len_(max_input_len) {
    if (!table_) throw InputError("executor: table must not be None");
    if (max_input_len <= 0) throw InputError("max_input_len must be positive");
    if ((kv_ && &kv_->table() != table_.get()) || (cross_kv_ && &cross_kv_->table() != table_.get()))
        throw InputError("executor: KV caches must belong to the same RequestTable");
}

void Executor::sort_by_id(const int32_t* slots, int32_t n, std::vector<int32_t>& out) const {
    out.assign(slots, slots + n);
    const RequestTable& t = *table_;
    auto by_id = [&t](int32_t a, int32_t b) { return t.request_id[a] < t.request_id[b]; };
    if (!std::is_sorted(out.begin(), out.end(), by_id)) std::sort(out.begin(), out.end(), by_id);
}

// ---------------------------------------------------------------- checks

void Executor::validate(const char* call, const int32_t* paused, int32_t np, const int32_t* disagg, int32_t nd,
                        const int32_t* execute, int32_t ne) const {
    const RequestTable& t = *table_;
    for (int32_t i = 0; i < np; ++i) t.check_slot(paused[i]);
    for (int32_t i = 0; i < nd; ++i) t.check_slot(disagg[i]);
    for (int32_t i = 0; i < ne; ++i) t.check_slot(execute[i]);
    std::vector<int32_t> all;
    all.reserve(static_cast<size_t>(np) + static_cast<size_t>(nd) + static_cast<size_t>(ne));
    auto appends = [&](int32_t s) {  // the step appends one token: it must fit the reserved storage
        if (t.tokens(s)->size >= t.tokens(s)->capacity)
            refuse(call, t, s, "has no room for another token (reserved capacity " + std::to_string(t.tokens(s)->capacity) + " reached)");
    };
    for (int32_t i = 0; i < np; ++i) {
        int32_t s = paused[i], st = t.state[s];
        if (!state::is_context_init(st) && !state::is_generation_in_progress(st))
            refuse(call, t, s, "cannot be paused in state " + std::to_string(st) + " (only running requests can)");
        all.push_back(s);
    }
    for (int32_t i = 0; i < nd; ++i) {
        int32_t s = disagg[i];
        if (!state::is_disagg_generation_init(t.state[s])) refuse(call, t, s, "is not in DISAGG_GENERATION_INIT");
        appends(s);
        all.push_back(s);
    }
    for (int32_t i = 0; i < ne; ++i) {
        int32_t s = execute[i], st = t.state[s];
        if (state::is_context_init(st)) {
            appends(s);  // it may finish its prompt this step (reuse can move its position)
        } else if (state::is_generation_in_progress(st)) {
            if (kv_ && !kv_->has_sequence(s)) refuse(call, t, s, "is generating but has no KV-cache sequence");
            appends(s);
        } else {
            refuse(call, t, s, "cannot be executed in state " + std::to_string(st));
        }
        all.push_back(s);
    }
    std::sort(all.begin(), all.end());
    auto dup = std::adjacent_find(all.begin(), all.end());
    if (dup != all.end()) refuse(call, t, *dup, "is listed twice among paused, disagg-gen-init and executed requests");
    for (const KVCacheManager* kv : {kv_.get(), cross_kv_.get()}) {
        if (!kv) continue;
        check_block_budget(call, *kv, kv == cross_kv_.get(), paused, np, disagg, nd, execute, ne);
    }
}

void Executor::check_block_budget(const char* call, const KVCacheManager& kv, bool cross, const int32_t* paused, int32_t np,
                                  const int32_t* disagg, int32_t nd, const int32_t* execute, int32_t ne) const {
    const RequestTable& t = *table_;
    const int64_t tpb = kv.tokens_per_block();
    const int64_t max_len = kv.config().max_seq_len;
    int64_t need = 0;
    auto new_sequence = [&](int32_t s) {
        int64_t len = cross ? std::max(t.encoder_output_len[s], 1) : t.prompt_len[s];
        if (len > max_len)
            refuse(call, t, s, "needs " + std::to_string(len) + " tokens, more than max_seq_len " + std::to_string(max_len));
        if (t.beam_width[s] != 1) refuse(call, t, s, "has beam width > 1, which KV allocation does not support");
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
        throw InputError(std::string(call) + ": the step may need " + std::to_string(need) + " " +
                         (cross ? "cross-cache" : "KV-cache") + " blocks and there would be " + std::to_string(free) +
                         " free blocks (none free for the rest); nothing was changed");
}

// ---------------------------------------------------------------- per-request operations
// allocate and commit_row run once per request and step: inlined into the step loops.

void Executor::add_sequences(int32_t s) {
    RequestTable& t = *table_;
    if (kv_) kv_->add_sequence(s, t.prompt_len[s], 1, &copies_);
    if (cross_kv_) cross_kv_->add_sequence(s, std::max(t.encoder_output_len[s], 1), 1);
}

void Executor::pause(int32_t s) {  // free without storing, then restart as a context
    if (kv_ && kv_->has_sequence(s)) kv_->remove_sequence(s, false);
    if (cross_kv_ && cross_kv_->has_sequence(s)) cross_kv_->remove_sequence(s, false);
    table_->pause(s, max_input_len_);
}

void Executor::allocate_disagg(int32_t s) { add_sequences(s); }

[[gnu::always_inline]] inline void Executor::allocate(int32_t s) {
    RequestTable& t = *table_;
    if (state::is_context_init(t.state[s])) {
        if (t.is_first_context_chunk(s) && !(kv_ && kv_->has_sequence(s))) add_sequences(s);
    } else if (kv_) {
        kv_->add_token(s);  // the slot of the token this step feeds
    }
}

void Executor::commit_disagg(int32_t s, int32_t token, std::vector<int32_t>& finished) {
    RequestTable& t = *table_;
    t.set_state(s, state::GENERATION_IN_PROGRESS);
    t.context_current_position[s] = t.prompt_len[s];
    t.add_new_token(s, token);
    ++tokens_appended_;
    complete_if_done(s, finished);
}

[[gnu::always_inline]] inline void Executor::commit_row(int32_t s, int32_t token, std::vector<int32_t>& finished) {
    RequestTable& t = *table_;
    if (state::is_context_init(t.state[s])) {
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
        t.add_new_token(s, token);
        ++tokens_appended_;
        t.advance_decoding_iteration(s);
    }
    complete_if_done(s, finished);
}

void Executor::complete_if_done(int32_t s, std::vector<int32_t>& finished) {
    RequestTable& t = *table_;
    if (t.num_tokens[s] != t.prompt_len[s] + t.max_new_tokens[s]) return;
    t.set_state(s, state::GENERATION_COMPLETE);
    if (kv_ && kv_->has_sequence(s)) kv_->remove_sequence(s, /*store_for_reuse=*/true);
    if (cross_kv_ && cross_kv_->has_sequence(s)) cross_kv_->remove_sequence(s, true);
    finished.push_back(s);
}

// ---------------------------------------------------------------- the replay loop's order

void Executor::apply_in_replay_order(const int32_t* paused, int32_t np, const int32_t* disagg, int32_t nd,
                                     const int32_t* execute, int32_t ne, int32_t token, std::vector<int32_t>& finished) {
    if (prepared_) throw InputError("SimExecutor.apply: a step is prepared and not committed");
    validate(kApply, paused, np, disagg, nd, execute, ne);  // phase 1: no change yet
    copies_.clear();
    for (int32_t i = 0; i < np; ++i) pause(paused[i]);  // step 4
    sort_by_id(disagg, nd, order_);
    for (int32_t s : order_) {  // step 5: generation-only requests get their KV and a first token
        allocate_disagg(s);
        commit_disagg(s, token, finished);
    }
    sort_by_id(execute, ne, order_);
    for (int32_t s : order_) {  // step 6
        allocate(s);
        commit_row(s, token, finished);
    }
}

// ---------------------------------------------------------------- a real loop

Executor::RowSnapshot Executor::snapshot(int32_t s) const {
    const RequestTable& t = *table_;
    return RowSnapshot{t.state[s], t.num_tokens[s], t.context_current_position[s], t.context_chunk_size[s], t.generation(s)};
}

void Executor::prepare(const int32_t* paused, int32_t np, const int32_t* disagg, int32_t nd, const int32_t* context,
                       int32_t nc, const int32_t* generation, int32_t ng) {
    const RequestTable& t = *table_;
    if (prepared_)
        throw InputError("Executor.prepare: the step prepared before was not committed; call commit(tokens) first");
    auto check_rows = [&](const int32_t* slots, int32_t n, bool (*in_state)(int32_t), const char* kind) {
        for (int32_t i = 0; i < n; ++i) {
            const int32_t s = slots[i];
            t.check_slot(s);
            if (t.num_draft_tokens[s] > 0)  // the step API writes one token per generation
                refuse("Executor.prepare", t, s, "has " + std::to_string(t.num_draft_tokens[s]) +
                                                     " draft tokens: speculative decoding is not supported by the step API");
            if (!in_state(t.state[s]))
                refuse("Executor.prepare", t, s, std::string("is listed as a ") + kind + " request but is in state " +
                                                     std::to_string(t.state[s]));
        }
    };
    check_rows(context, nc, state::is_context_init, "context");
    check_rows(generation, ng, state::is_generation_in_progress, "generation");
    scratch_.assign(context, context + nc);
    scratch_.insert(scratch_.end(), generation, generation + ng);
    validate("Executor.prepare", paused, np, disagg, nd, scratch_.data(), nc + ng);  // no change yet

    copies_.clear();
    rows_.swap(scratch_);
    num_context_rows_ = nc;
    disagg_.assign(disagg, disagg + nd);
    for (int32_t i = 0; i < np; ++i) pause(paused[i]);
    for (int32_t s : disagg_) allocate_disagg(s);
    for (int32_t s : rows_) allocate(s);
    snapshots_.clear();
    num_step_tokens_ = 0;
    max_blocks_per_row_ = 0;
    for (int32_t s : rows_) {  // one pass for what commit checks and what the buffers need
        snapshots_.push_back(snapshot(s));
        int32_t first, count;
        step_positions(t, s, &first, &count);
        num_step_tokens_ += count;
        if (kv_ && kv_->has_sequence(s))
            max_blocks_per_row_ = std::max(max_blocks_per_row_, static_cast<int32_t>(kv_->block_ids(s).size()));
    }
    for (int32_t s : disagg_) snapshots_.push_back(snapshot(s));
    prepared_ = true;
}

void Executor::commit(const int32_t* tokens, int64_t n, std::vector<int32_t>& finished) {
    const RequestTable& t = *table_;
    if (!prepared_) throw InputError("Executor.commit: no step is prepared; call prepare(scheduled) before the model runs");
    const size_t nr = rows_.size(), nd = disagg_.size();
    if (n != static_cast<int64_t>(nr + nd))
        throw InputError("Executor.commit: expected " + std::to_string(nr + nd) + " tokens (one per row: " +
                         std::to_string(num_context_rows_) + " context, " + std::to_string(nr - static_cast<size_t>(num_context_rows_)) +
                         " generation; then one per disagg-generation-init request: " + std::to_string(nd) + "), got " +
                         std::to_string(n));
    for (size_t i = 0; i < nr + nd; ++i) {
        int32_t s = i < nr ? rows_[i] : disagg_[i - nr];
        const RowSnapshot& was = snapshots_[i];
        RowSnapshot now = t.is_live(s) ? snapshot(s) : RowSnapshot{};
        if (!t.is_live(s) || now.generation != was.generation)
            throw InputError("Executor.commit: a request of the prepared step was removed from the table");
        if (now.state != was.state || now.num_tokens != was.num_tokens || now.position != was.position || now.chunk != was.chunk)
            refuse("Executor.commit", t, s, "changed between prepare and commit (state, tokens or context chunk); nothing was committed");
    }
    prepared_ = false;
    for (size_t i = 0; i < nd; ++i) commit_disagg(disagg_[i], tokens[nr + i], finished);
    for (size_t i = 0; i < nr; ++i) commit_row(rows_[i], tokens[i], finished);
}

}  // namespace tllm
