// ext/request_table.h: request state as structure-of-arrays (TensorRT-LLM's LlmRequest, by slot).
//
// Seen from Python through the `RequestTable` and `LlmRequest` bindings and zero-copy views of its
// columns (RequestTable.columns). Every scalar the schedulers read is a column of fixed
// capacity, so numpy views of a column never dangle and never see a reallocation. A request lives
// in one slot from add_request to remove_request; its tokens live in a TokenStore shared with any
// view taken of them, so a view survives the request.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "errors.h"
#include "int_math.h"
#include "request_state.h"

namespace tllm {

/// Tokens of one request (beam 0). Size: fixed at creation; never reallocated.
struct TokenStore {
    std::unique_ptr<int32_t[]> tokens;     ///< owned; capacity entries, first `size` valid
    std::unique_ptr<uint64_t[]> extra_ids;  ///< owned; null unless the prompt had extra ids
    int32_t capacity = 0;                   ///< reserved: prompt + max new tokens + draft tokens
    int32_t size = 0;                       ///< tokens currently held
};

/// Options of a new request (the binding's keyword arguments).
struct RequestOptions {
    int64_t lora_task_id = -1;        ///< -1: no LoRA task
    float priority = 0.5f;            ///< executor priority in [0, 1]
    int32_t beam_width = 1;           ///< sampling beam width
    int32_t num_draft_tokens = 0;     ///< speculative draft tokens of the next step
    int32_t encoder_output_len = 0;   ///< encoder output length (cross attention); 0: none
    int32_t state = state::CONTEXT_INIT;
    std::vector<int32_t> beam_width_schedule;  ///< beam width per decoding iteration (empty: fixed)
    std::vector<uint64_t> extra_ids;            ///< per-prompt-token extra ids (empty: none)
};

/// The smallest slot listed more than once in `slots`, or -1.
int32_t first_repeated_slot(const int32_t* slots, int32_t n);

/// Limits that keep a bad size a ValueError instead of an allocation of gigabytes.
constexpr int32_t kMaxTableCapacity = 1 << 22;   ///< request slots (~100 bytes of columns each)
constexpr int64_t kMaxRequestTokens = 1 << 24;   ///< prompt + max new + draft tokens of one request
constexpr int32_t kMaxBeamWidth = 1024;          ///< beam width (and each scheduled beam width)

/// What a KV cache of the table can ever hold. KVCacheManager registers one, and a RequestList (the
/// active list every scheduler step reads) refuses a request beyond it, so no backend can schedule
/// it into a failure or leave it waiting forever.
struct CacheLimit {
    const void* cache = nullptr;   ///< the registering cache (identity only)
    int32_t max_seq_len = 0;       ///< longest sequence
    int32_t num_blocks = 0;        ///< primary blocks
    int32_t tokens_per_block = 0;
    bool cross = false;            ///< a cross cache: sized by encoder_output_len
};

/// The columns. Every pointer addresses `capacity` entries owned by RequestTable.
/// Layout claim: one int32/int64/float array per field, indexed by slot (structure-of-arrays).
class RequestTable {
public:
    explicit RequestTable(int32_t capacity);
    RequestTable(const RequestTable&) = delete;
    RequestTable& operator=(const RequestTable&) = delete;

    int32_t capacity() const { return capacity_; }
    int32_t size() const { return size_; }

    /// Adds a request; returns its slot. Throws InputError (state unchanged) on bad input.
    int32_t add_request(int64_t request_id, const int32_t* prompt, int32_t prompt_len,
                        int32_t max_new_tokens, const RequestOptions& opts);
    /// Registers a cache's limit (checked for the requests that enter a RequestList from now on).
    void add_cache_limit(const CacheLimit& limit);
    void remove_cache_limit(const void* cache);
    /// Throws InputError naming the limit when the request could never run in a registered cache.
    void check_fits_caches(int32_t s) const {
        for (const CacheLimit& l : cache_limits_) check_fits(l, request_id[s], prompt_len[s], max_new_tokens[s], encoder_output_len[s]);
    }
    /// Frees the slot. Throws if a KV cache still holds the request's sequence.
    void remove_request(int32_t slot);
    /// Frees many slots, all or nothing: every slot is checked (live, not held by a KV cache or a
    /// RequestList, listed once) before the first is freed.
    void remove_slots(const int32_t* slots, int32_t n);
    /// Slot of a live request id, or -1.
    int32_t find(int64_t request_id) const {
        auto it = slot_of_id_.find(request_id);
        return it == slot_of_id_.end() ? -1 : it->second;
    }
    /// Slot of a live request id; throws InputError naming the id otherwise.
    int32_t slot_of(int64_t request_id) const;
    bool is_live(int32_t slot) const { return slot >= 0 && slot < capacity_ && live_[idx(slot)] != 0; }
    /// Throws InputError unless `slot` holds a live request.
    void check_slot(int32_t slot) const {  // inline: batch queries check every slot
        if (!is_live(slot)) [[unlikely]] fail_dead_slot(slot);
    }
    [[noreturn]] void fail_dead_slot(int32_t slot) const;
    uint32_t generation(int32_t slot) const { return generation_[idx(slot)]; }
    /// Changes whenever the slot's tokens change other than by appending (a new request, a pause).
    uint32_t tokens_version(int32_t slot) const { return tokens_version_[idx(slot)]; }
    /// Changes whenever any slot's tokens_version does, or a request is removed.
    uint64_t tokens_epoch() const { return tokens_epoch_; }

    // --- TensorRT-LLM's LlmRequest methods, by slot ---
    int32_t context_remaining_length(int32_t s) const { return prompt_len[s] - context_current_position[s]; }
    bool is_first_context_chunk(int32_t s) const { return context_current_position[s] == prepopulated_prompt_len[s]; }
    bool is_last_context_chunk(int32_t s) const {
        int32_t st = state[s];
        return st == state::DISAGG_GENERATION_INIT || st == state::DISAGG_GENERATION_TRANS_COMPLETE ||
               context_current_position[s] + context_chunk_size[s] == prompt_len[s];
    }
    /// Clamping setter: stores min(n, remaining). Requires n >= 0 and a context/disagg-init state.
    void set_context_chunk_size(int32_t s, int32_t n);
    /// set_context_chunk_size for many slots, and (when `discards` is not null) drops that many
    /// trailing draft tokens of each (>= 0 each): all checked before anything is written.
    void set_context_chunk_sizes(const int32_t* slots, const int32_t* sizes, const int32_t* discards, int32_t n);
    /// pos += chunk; chunk := 0.
    void move_to_next_context_chunk(int32_t s);
    /// Sets the reused prefix length and aligns the current chunk to a block boundary.
    void set_prepopulated_prompt_len(int32_t s, int32_t len, int32_t tokens_per_block);
    void set_context_current_position(int32_t s, int32_t pos);
    void set_state(int32_t s, int32_t st);
    /// Appends one generated token (extra id 0). Throws past the reserved capacity.
    void add_new_token(int32_t s, int32_t token);
    /// Drops n trailing draft tokens, 0 < n <= count.
    void discard_draft_tokens(int32_t s, int32_t n);
    /// discard_draft_tokens for many slots, all checked before the first is changed.
    void discard_draft_tokens(const int32_t* slots, const int32_t* counts, int32_t n);
    /// Sets the draft token count: 0 <= n <= the request's reserved token storage (TokenStore::capacity).
    void set_num_draft_tokens(int32_t s, int32_t n);
    /// Folds generated tokens into the prompt (beam 1) and restarts the request (a pause).
    void pause(int32_t s, int32_t max_input_len);
    /// Advances the decoding iteration (selects the beam width of a variable-beam schedule).
    void advance_decoding_iteration(int32_t s);
    int32_t max_num_generated_tokens(int32_t s) const { return num_tokens[s] - prompt_len[s]; }

    const std::shared_ptr<TokenStore>& tokens(int32_t s) const { return token_store_[idx(s)]; }
    bool has_extra_ids(int32_t s) const { return token_store_[idx(s)]->extra_ids != nullptr; }
    uint64_t extra_id(int32_t s, int32_t i) const {
        const TokenStore& t = *token_store_[idx(s)];
        return t.extra_ids ? t.extra_ids[idx(i)] : 0;
    }

    /// Table-wide tallies over live requests, kept exact by every write of the columns they
    /// count, so a scheduler can skip a whole column when nothing in the table uses it.
    enum Tally : int { kWithLora = 0, kWithDraftTokens = 1, kBeamWidthNotOne = 2, kNumTallies = 3 };
    const int64_t* tallies() const { return tallies_; }

    // --- columns (public for the schedulers' hot loops; written only through methods above) ---
    int64_t* request_id;               ///< id of the request in the slot
    int32_t* state;                    ///< LlmRequestState value
    int32_t* prompt_len;               ///< current prompt length (grows on pause)
    int32_t* orig_prompt_len;          ///< prompt length at creation
    int32_t* max_new_tokens;           ///< remaining generation budget (shrinks on pause)
    int32_t* num_tokens;               ///< tokens of beam 0 (prompt + generated)
    int32_t* context_current_position; ///< prompt tokens processed or reused
    int32_t* context_chunk_size;       ///< tokens to process this step
    int32_t* prepopulated_prompt_len;  ///< prompt tokens found in the KV cache at add_sequence
    int32_t* num_draft_tokens;         ///< draft tokens of the next step
    int64_t* lora_task_id;             ///< LoRA task id, -1 for none
    int32_t* beam_width;               ///< sampling beam width (KV formulas)
    int32_t* beam_width_by_iter;       ///< beam width of the current decoding iteration
    float* priority;                   ///< executor priority
    int32_t* encoder_output_len;       ///< encoder output length, 0 for none
    int32_t* decoding_iter;            ///< decoding iterations completed
    int32_t* kv_refs;                  ///< KV caches holding a sequence of this request (owned by them)
    int32_t* list_refs;                ///< RequestLists holding this request (owned by them)

private:
    template <class T>
    T* column(std::vector<T>& storage) {
        storage.assign(static_cast<size_t>(capacity_), T{});
        return storage.data();
    }
    void check_context_state(int32_t s, const char* what) const;
    /// Throws unless min_n <= n <= the request's draft tokens (batch discards name both counts).
    void check_draft_discard(int32_t s, int32_t n, int32_t min_n) const;
    /// Throws InputError naming the limit when a request of these sizes could never run in `l`.
    static void check_fits(const CacheLimit& l, int64_t id, int64_t prompt_len, int64_t max_new, int32_t encoder_output_len);
    /// Adds `sign` (+1 or -1) to every tally slot `s` counts in, by its current column values.
    void tally(int32_t s, int64_t sign) {
        tallies_[kWithLora] += sign * (lora_task_id[s] >= 0);
        tallies_[kWithDraftTokens] += sign * (num_draft_tokens[s] > 0);
        tallies_[kBeamWidthNotOne] += sign * (beam_width_by_iter[s] != 1);
    }

    int32_t capacity_;
    int32_t size_ = 0;
    int64_t tallies_[kNumTallies] = {0, 0, 0};  ///< fixed storage: views of it never dangle
    std::vector<int64_t> c_request_id_, c_lora_;
    std::vector<int32_t> c_state_, c_prompt_len_, c_orig_prompt_len_, c_max_new_, c_num_tokens_, c_pos_,
        c_chunk_, c_prepop_, c_draft_, c_beam_, c_beam_iter_, c_enc_, c_dec_iter_, c_kv_refs_, c_list_refs_;
    std::vector<float> c_priority_;
    std::vector<uint8_t> live_;                         ///< 1 if the slot holds a request
    std::vector<uint32_t> generation_;                  ///< bumped on every add/remove of the slot
    std::vector<uint32_t> tokens_version_;              ///< bumped when tokens change but by appending
    uint64_t tokens_epoch_ = 0;                         ///< bumped with any tokens_version_ and on removal
    std::vector<std::shared_ptr<TokenStore>> token_store_;  ///< per slot; shared with views
    std::vector<std::vector<int32_t>> beam_schedule_;  ///< per slot; usually empty (cold)
    std::vector<int32_t> free_slots_;                  ///< stack of free slots
    std::unordered_map<int64_t, int32_t> slot_of_id_;  ///< live request id -> slot
    std::vector<CacheLimit> cache_limits_;             ///< of the caches built on this table
};

}  // namespace tllm
