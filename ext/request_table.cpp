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
    context_current_position = column(c_pos_);
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
    context_current_position[s] = 0;
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

void RequestTable::check_fits(const CacheLimit& l, int64_t id, int64_t plen, int64_t max_new, int32_t enc) {
    const std::string cache = l.cross ? "the cross KV cache's " : "the KV cache's ";
    const int64_t tokens = l.cross ? std::max(enc, 1) : plen + max_new;
    const std::string what = l.cross ? "encoder_output_len " + std::to_string(enc)
                                     : "prompt length " + std::to_string(plen) + " + max_new_tokens " +
                                           std::to_string(max_new) + " = " + std::to_string(tokens) + " tokens";
    if (tokens > l.max_seq_len)
        fail_input(id_str(id) + ": " + what + " exceeds " + cache + "max_seq_len " + std::to_string(l.max_seq_len) +
                   ": it could never run (remove it from the table, or size the cache for it)");
    const int64_t blocks = ceil_div(tokens, l.tokens_per_block);
    if (blocks > l.num_blocks)
        fail_input(id_str(id) + ": " + what + " need " + std::to_string(blocks) + " blocks of " +
                   std::to_string(l.tokens_per_block) + " tokens, more than " + cache + "num_blocks " +
                   std::to_string(l.num_blocks) + ": it could never run (remove it from the table, or size the cache for it)");
}

void RequestTable::add_cache_limit(const CacheLimit& l) { cache_limits_.push_back(l); }

void RequestTable::remove_cache_limit(const void* cache) {
    cache_limits_.erase(std::remove_if(cache_limits_.begin(), cache_limits_.end(),
                                       [cache](const CacheLimit& l) { return l.cache == cache; }),
                        cache_limits_.end());
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

void RequestTable::remove_slots(const int32_t* slots, int32_t n) {
    for (int32_t i = 0; i < n; ++i) check_slot(slots[i]);
    for (int32_t i = 0; i < n; ++i)
        if (kv_refs[slots[i]] != 0 || list_refs[slots[i]] != 0)
            fail_input(id_str(request_id[slots[i]]) + " is still held by a KV cache or a RequestList");
    int32_t dup = first_repeated_slot(slots, n);
    if (dup >= 0) fail_input("slot " + std::to_string(dup) + " is listed twice");
    for (int32_t i = 0; i < n; ++i) remove_request(slots[i]);
}

int32_t first_repeated_slot(const int32_t* slots, int32_t n) {
    std::vector<int32_t> sorted(slots, slots + n);
    std::sort(sorted.begin(), sorted.end());
    auto dup = std::adjacent_find(sorted.begin(), sorted.end());
    return dup == sorted.end() ? -1 : *dup;
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
    if (!state::takes_context_chunk(st))
        fail_input(id_str(request_id[s]) + ": " + what + " needs a context or disagg-init state, state is " +
                   std::to_string(st));
}

void RequestTable::set_context_chunk_size(int32_t s, int32_t n) {
    check_context_state(s, "set_context_chunk_size");
    if (n < 0) fail_input(id_str(request_id[s]) + ": context chunk size must be >= 0, got " + std::to_string(n));
    context_chunk_size[s] = std::min(n, context_remaining_length(s));
}

void RequestTable::set_context_chunk_sizes(const int32_t* slots, const int32_t* sizes, const int32_t* discards,
                                           int32_t n) {
    for (int32_t i = 0; i < n; ++i) check_slot(slots[i]);
    for (int32_t i = 0; i < n; ++i) {  // validate all, then write: all or nothing
        int32_t s = slots[i];
        if (sizes[i] < 0) fail_input("chunk sizes must be >= 0");
        if (!state::takes_context_chunk(state[s])) fail_input(id_str(request_id[s]) + " is not in a context state");
        if (discards) check_draft_discard(s, discards[i], 0);
    }
    for (int32_t i = 0; i < n; ++i) {
        set_context_chunk_size(slots[i], sizes[i]);
        if (discards && discards[i] > 0) discard_draft_tokens(slots[i], discards[i]);
    }
}

void RequestTable::move_to_next_context_chunk(int32_t s) {
    check_context_state(s, "move_to_next_context_chunk");
    context_current_position[s] += context_chunk_size[s];
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
    context_current_position[s] = len;
    context_chunk_size[s] = std::min(chunk, context_remaining_length(s));
}

void RequestTable::set_context_current_position(int32_t s, int32_t pos) {
    if (pos < 0 || pos > prompt_len[s])
        fail_input(id_str(request_id[s]) + ": context position must be in [0, prompt_len]");
    context_current_position[s] = pos;
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

void RequestTable::check_draft_discard(int32_t s, int32_t n, int32_t min_n) const {
    if (n < min_n || n > num_draft_tokens[s])
        fail_input(id_str(request_id[s]) + ": cannot discard " + std::to_string(n) + " of " +
                   std::to_string(num_draft_tokens[s]) + " draft tokens");
}

void RequestTable::discard_draft_tokens(const int32_t* slots, const int32_t* counts, int32_t n) {
    for (int32_t i = 0; i < n; ++i) check_slot(slots[i]);
    for (int32_t i = 0; i < n; ++i) check_draft_discard(slots[i], counts[i], 1);
    for (int32_t i = 0; i < n; ++i) discard_draft_tokens(slots[i], counts[i]);
}

void RequestTable::set_num_draft_tokens(int32_t s, int32_t n) {
    if (n < 0) fail_input(id_str(request_id[s]) + ": draft token count must be >= 0");
    // A count within the reserved storage keeps every per-request token sum far inside int32.
    const int32_t reserved = token_store_[idx(s)]->capacity;
    if (n > reserved)
        fail_input(id_str(request_id[s]) + ": " + std::to_string(n) + " draft tokens exceed the request's reserved " +
                   "token storage of " + std::to_string(reserved) + " tokens");
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
    context_current_position[s] = 0;
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
