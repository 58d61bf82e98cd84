// ext/sim_executor.cpp: the executor step of the replay harness and the benchmark.
#include "sim_executor.h"

#include <algorithm>

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
    for (int32_t i = 0; i < n; ++i) table_->check_slot(slots[i]);
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
    t.set_state(s, state::GEN_COMPLETE);
    if (kv_ && kv_->has_sequence(s)) kv_->remove_sequence(s, /*store_for_reuse=*/true);
    if (cross_kv_ && cross_kv_->has_sequence(s)) cross_kv_->remove_sequence(s, true);
    finished.push_back(s);
}

void SimExecutor::apply(const int32_t* paused, int32_t num_paused, const int32_t* disagg, int32_t num_disagg,
                        const int32_t* execute, int32_t num_execute, int32_t token, std::vector<int32_t>& finished) {
    RequestTable& t = *table_;
    for (int32_t i = 0; i < num_paused; ++i) {  // step 4: free without storing, then restart
        int32_t s = paused[i];
        t.check_slot(s);
        if (kv_ && kv_->has_sequence(s)) kv_->remove_sequence(s, false);
        if (cross_kv_ && cross_kv_->has_sequence(s)) cross_kv_->remove_sequence(s, false);
        t.pause(s, max_input_len_);
    }
    sort_by_id(disagg, num_disagg, order_);
    for (int32_t s : order_) {  // step 5: generation-only requests get their KV and a first token
        add_sequences(s);
        t.set_state(s, state::GEN_IN_PROGRESS);
        t.context_position[s] = t.prompt_len[s];
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
                t.set_state(s, state::GEN_IN_PROGRESS);
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
