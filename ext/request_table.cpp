// ext/request_table.cpp: request slots, token stores and the LlmRequest state methods.
#include "request_table.h"

#include <algorithm>
#include <limits>

namespace tllm {

namespace {
std::string id_str(int64_t id) { return "request " + std::to_string(id); }
}  // namespace

RequestTable::RequestTable(int32_t capacity) : capacity_(capacity) {
    if (capacity <= 0 || capacity > kMaxTableCapacity)
        fail_input("RequestTable: capacity must be in [1, " + std::to_string(kMaxTableCapacity) + "], got " +
                   std::to_string(capacity));
    request_id = column(c_request_id_);
    lora_task_id = column(c_lora_);
    state = column(c_state_);
    prompt_len = column(c_prompt_len_);
    orig_prompt_len = column(c_orig_prompt_len_);
    max_new_tokens = column(c_max_new_);
    num_tokens = column(c_num_tokens_);
    context_position = column(c_pos_);
    context_chunk_size = column(c_chunk_);
    prepopulated_prompt_len = column(c_prepop_);
    num_draft_tokens = column(c_draft_);
    beam_width = column(c_beam_);
    beam_width_by_iter = column(c_beam_iter_);
    encoder_output_len = column(c_enc_);
    decoding_iter = column(c_dec_iter_);
    kv_refs = column(c_kv_refs_);
    list_refs = column(c_list_refs_);
    priority = column(c_priority_);
    live_.assign(static_cast<size_t>(capacity), 0);
    generation_.assign(static_cast<size_t>(capacity), 0);
    tokens_version_.assign(static_cast<size_t>(capacity), 0);
    token_store_.resize(static_cast<size_t>(capacity));
    beam_schedule_.resize(static_cast<size_t>(capacity));
    free_slots_.reserve(static_cast<size_t>(capacity));
    for (int32_t s = capacity - 1; s >= 0; --s) free_slots_.push_back(s);  // slot 0 is taken first
    for (int32_t s = 0; s < capacity; ++s) request_id[s] = -1;
}

int32_t RequestTable::add_request(int64_t id, const int32_t* prompt, int32_t plen, int32_t max_new,
                                  const RequestOptions& o) {
    // Validate everything first: a failed call changes nothing.
    if (id < 0) fail_input("request_id must be >= 0, got " + std::to_string(id));
    if (slot_of_id_.count(id)) fail_input("duplicate request id " + std::to_string(id));
    if (plen <= 0) fail_input(id_str(id) + ": prompt must not be empty");
    if (max_new <= 0) fail_input(id_str(id) + ": max_new_tokens must be positive, got " + std::to_string(max_new));
    if (o.beam_width <= 0 || o.beam_width > kMaxBeamWidth)
        fail_input(id_str(id) + ": beam_width must be in [1, " + std::to_string(kMaxBeamWidth) + "], got " +
                   std::to_string(o.beam_width));
    if (o.num_draft_tokens < 0) fail_input(id_str(id) + ": num_draft_tokens must be >= 0");
    if (o.encoder_output_len < 0) fail_input(id_str(id) + ": encoder_output_len must be >= 0");
    if (o.lora_task_id < -1) fail_input(id_str(id) + ": lora_task_id must be >= 0 or None");
    if (!(o.priority >= 0.0f && o.priority <= 1.0f)) fail_input(id_str(id) + ": priority must be in [0, 1]");
    if (!state::is_valid(o.state)) fail_input(id_str(id) + ": unknown state value " + std::to_string(o.state));
    if (!o.extra_ids.empty() && static_cast<int64_t>(o.extra_ids.size()) != plen)
        fail_input(id_str(id) + ": input_token_extra_ids must have one entry per prompt token");
    for (int32_t bw : o.beam_width_schedule)
        if (bw <= 0 || bw > kMaxBeamWidth)
            fail_input(id_str(id) + ": beam_width_schedule entries must be in [1, " + std::to_string(kMaxBeamWidth) + "]");
    int64_t cap = int64_t{plen} + max_new + o.num_draft_tokens;
    if (cap > kMaxRequestTokens)
        fail_input(id_str(id) + ": prompt + max_new_tokens + draft tokens = " + std::to_string(cap) +
                   " exceeds the limit of " + std::to_string(kMaxRequestTokens) + " tokens per request");
    if (free_slots_.empty())
        fail_input("RequestTable is full (capacity " + std::to_string(capacity_) + "); remove finished requests");

    auto store = std::make_shared<TokenStore>();
    store->capacity = static_cast<int32_t>(cap);
    store->tokens.reset(new int32_t[static_cast<size_t>(cap)]);
    std::copy(prompt, prompt + plen, store->tokens.get());
    if (!o.extra_ids.empty()) {
        store->extra_ids.reset(new uint64_t[static_cast<size_t>(cap)]());
        std::copy(o.extra_ids.begin(), o.extra_ids.end(), store->extra_ids.get());
    }
    store->size = plen;

    int32_t s = free_slots_.back();
    free_slots_.pop_back();
    slot_of_id_.emplace(id, s);
    live_[idx(s)] = 1;
    ++generation_[idx(s)];
    ++tokens_version_[idx(s)];
    ++tokens_epoch_;
    ++size_;
    token_store_[idx(s)] = std::move(store);
    beam_schedule_[idx(s)] = o.beam_width_schedule;
    request_id[s] = id;
    state[s] = o.state;
    prompt_len[s] = plen;
    orig_prompt_len[s] = plen;
    max_new_tokens[s] = max_new;
    num_tokens[s] = plen;
    context_position[s] = 0;
    context_chunk_size[s] = plen;
    prepopulated_prompt_len[s] = 0;
    num_draft_tokens[s] = o.num_draft_tokens;
    lora_task_id[s] = o.lora_task_id;
    beam_width[s] = o.beam_width;
    beam_width_by_iter[s] = o.beam_width_schedule.empty() ? o.beam_width : o.beam_width_schedule[0];
    priority[s] = o.priority;
    encoder_output_len[s] = o.encoder_output_len;
    decoding_iter[s] = 0;
    kv_refs[s] = 0;
    list_refs[s] = 0;
    tally(s, +1);
    return s;
}

void RequestTable::remove_request(int32_t s) {
    check_slot(s);
    if (kv_refs[s] != 0)
        fail_input(id_str(request_id[s]) + ": still holds a KV-cache sequence; remove_sequence first");
    if (list_refs[s] != 0)
        fail_input(id_str(request_id[s]) + ": still in a RequestList; remove it from the list first");
    tally(s, -1);
    slot_of_id_.erase(request_id[s]);
    token_store_[idx(s)].reset();  // views keep their own reference
    beam_schedule_[idx(s)].clear();
    live_[idx(s)] = 0;
    ++generation_[idx(s)];
    ++tokens_epoch_;
    --size_;
    request_id[s] = -1;
    state[s] = 0;
    free_slots_.push_back(s);
}

int32_t RequestTable::slot_of(int64_t id) const {
    int32_t s = find(id);
    if (s < 0) fail_input("unknown request id " + std::to_string(id));
    return s;
}

void RequestTable::fail_dead_slot(int32_t s) const {
    fail_input("slot " + std::to_string(s) + " holds no live request");
}

void RequestTable::check_context_state(int32_t s, const char* what) const {
    int32_t st = state[s];
    if (!(state::is_context_init(st) || st == state::DISAGG_GENERATION_INIT || st == state::DISAGG_GENERATION_TRANS_COMPLETE))
        fail_input(id_str(request_id[s]) + ": " + what + " needs a context or disagg-init state, state is " +
                   std::to_string(st));
}

void RequestTable::set_context_chunk_size(int32_t s, int32_t n) {
    check_context_state(s, "set_context_chunk_size");
    if (n < 0) fail_input(id_str(request_id[s]) + ": context chunk size must be >= 0, got " + std::to_string(n));
    context_chunk_size[s] = std::min(n, context_remaining_length(s));
}

void RequestTable::move_to_next_context_chunk(int32_t s) {
    check_context_state(s, "move_to_next_context_chunk");
    context_position[s] += context_chunk_size[s];
    context_chunk_size[s] = 0;
}

void RequestTable::set_prepopulated_prompt_len(int32_t s, int32_t len, int32_t tpb) {
    if (len < 0 || len >= prompt_len[s])
        fail_input(id_str(request_id[s]) + ": prepopulated length must be in [0, prompt_len)");
    if (tpb <= 0) fail_input("tokens_per_block must be positive");
    prepopulated_prompt_len[s] = len;
    if (len == 0) return;
    int32_t chunk = context_chunk_size[s];
    if (int64_t{len} + chunk < prompt_len[s]) {  // 64-bit: len + chunk may exceed int32
        // End the (shifted) first chunk on a block boundary.
        chunk = std::max(0, (len + chunk) / tpb * tpb - len);
    }
    context_position[s] = len;
    context_chunk_size[s] = std::min(chunk, context_remaining_length(s));
}

void RequestTable::set_context_current_position(int32_t s, int32_t pos) {
    if (pos < 0 || pos > prompt_len[s])
        fail_input(id_str(request_id[s]) + ": context position must be in [0, prompt_len]");
    context_position[s] = pos;
    context_chunk_size[s] = std::min(context_chunk_size[s], context_remaining_length(s));
}

void RequestTable::set_state(int32_t s, int32_t st) {
    if (!state::is_valid(st)) fail_input("unknown state value " + std::to_string(st));
    state[s] = st;
}

void RequestTable::add_new_token(int32_t s, int32_t token) {
    TokenStore& t = *token_store_[idx(s)];
    if (t.size >= t.capacity)
        fail_input(id_str(request_id[s]) + ": appending past the reserved capacity of " +
                   std::to_string(t.capacity) + " tokens");
    t.tokens[idx(t.size)] = token;
    if (t.extra_ids) t.extra_ids[idx(t.size)] = 0;
    ++t.size;
    num_tokens[s] = t.size;
}

void RequestTable::discard_draft_tokens(int32_t s, int32_t n) {
    if (n <= 0 || n > num_draft_tokens[s])
        fail_input(id_str(request_id[s]) + ": discard_draft_tokens needs 0 < n <= " +
                   std::to_string(num_draft_tokens[s]) + ", got " + std::to_string(n));
    tally(s, -1);
    num_draft_tokens[s] -= n;
    tally(s, +1);
}

void RequestTable::set_num_draft_tokens(int32_t s, int32_t n) {
    if (n < 0) fail_input(id_str(request_id[s]) + ": draft token count must be >= 0");
    tally(s, -1);
    num_draft_tokens[s] = n;
    tally(s, +1);
}

void RequestTable::pause(int32_t s, int32_t max_input_len) {
    if (max_input_len <= 0) fail_input("pause: max_input_len must be positive");
    TokenStore& t = *token_store_[idx(s)];
    if (beam_width[s] == 1) {
        int32_t new_prompt = std::min(max_input_len, prompt_len[s] + max_num_generated_tokens(s));
        max_new_tokens[s] -= new_prompt - prompt_len[s];
        prompt_len[s] = new_prompt;
    }
    t.size = prompt_len[s];  // truncation never reallocates
    ++tokens_version_[idx(s)];
    ++tokens_epoch_;
    num_tokens[s] = t.size;
    state[s] = encoder_output_len[s] > 0 ? state::ENCODER_INIT : state::CONTEXT_INIT;
    context_position[s] = 0;
    prepopulated_prompt_len[s] = 0;
    context_chunk_size[s] = prompt_len[s];
    decoding_iter[s] = 0;
    const auto& sched = beam_schedule_[idx(s)];
    tally(s, -1);
    beam_width_by_iter[s] = sched.empty() ? beam_width[s] : sched[0];
    tally(s, +1);
}

void RequestTable::advance_decoding_iteration(int32_t s) {
    ++decoding_iter[s];
    const auto& sched = beam_schedule_[idx(s)];
    if (sched.empty()) return;
    tally(s, -1);
    beam_width_by_iter[s] = sched[std::min<size_t>(static_cast<size_t>(decoding_iter[s]), sched.size() - 1)];
    tally(s, +1);
}

}  // namespace tllm
