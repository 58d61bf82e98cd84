// ext/kv_cache_manager.cpp: sequences on the block pool, the scheduling snapshot, the estimates.
#include "kv_cache_manager.h"

#include <algorithm>
#include <string>

namespace tllm {

namespace {
/// The configuration, checked before the pool is built from it.
const KvCacheConfig& checked(const RequestTable* table, const KvCacheConfig& cfg) {
    if (cfg.max_attention_window_vec) {
        if (cfg.max_attention_window_vec->empty())
            fail_input("max_attention_window_vec must hold the one window (max_seq_len), got none");
        for (int32_t w : *cfg.max_attention_window_vec)
            if (w != cfg.max_seq_len)
                fail_input("only one attention window, equal to max_seq_len, is supported; got window " + std::to_string(w));
    }
    if (cfg.sink_token_length != 0) fail_input("sink tokens are not supported (sink_token_length must be 0)");
    if (!table) fail_input("KVCacheManager: request table must not be None");
    if (cfg.tokens_per_block <= 0) fail_input("tokens_per_block must be positive, got " + std::to_string(cfg.tokens_per_block));
    if (cfg.num_blocks <= 0) fail_input("num_blocks must be positive, got " + std::to_string(cfg.num_blocks));
    if (cfg.max_seq_len <= 0) fail_input("max_seq_len must be positive, got " + std::to_string(cfg.max_seq_len));
    if (cfg.num_secondary_blocks < 0) fail_input("num_secondary_blocks must be >= 0");
    if (int64_t{cfg.num_blocks} + cfg.num_secondary_blocks > BlockPool::kMaxBlocks)
        fail_input("num_blocks + num_secondary_blocks must be at most " + std::to_string(BlockPool::kMaxBlocks) + ", got " +
                   std::to_string(int64_t{cfg.num_blocks} + cfg.num_secondary_blocks));
    if (cfg.cross_kv && cfg.enable_block_reuse)
        fail_input("block reuse on a cross-attention cache is not supported (no encoder tokens are modelled)");
    return cfg;
}
}  // namespace

KVCacheManager::KVCacheManager(std::shared_ptr<RequestTable> table, const KvCacheConfig& cfg)
    : table_(std::move(table)),
      cfg_(checked(table_.get(), cfg)),
      pool_(cfg.num_blocks, cfg.num_secondary_blocks, cfg.tokens_per_block, cfg.enable_partial_reuse,
            cfg.copy_on_partial_reuse) {
    sched_refs_.resize(static_cast<size_t>(pool_.max_num_blocks()));
    size_t cap = static_cast<size_t>(table_->capacity());
    seq_live_.assign(cap, 0);
    seq_tokens_.assign(cap, 0);
    seq_blocks_.resize(cap);
    seq_sched_removed_.assign(cap, 0);
    epoch_ = 1;
    table_->add_cache_limit(CacheLimit{this, cfg_.max_seq_len, cfg_.num_blocks, cfg_.tokens_per_block, cfg_.cross_kv});
}

KVCacheManager::~KVCacheManager() {
    table_->remove_cache_limit(this);
    // Let the requests go: the table outlives us through table_.
    for (size_t s = 0; s < seq_live_.size(); ++s)
        if (seq_live_[s]) --table_->kv_refs[s];
}

void KVCacheManager::check_window(std::optional<int32_t> window) const {
    if (window && *window != cfg_.max_seq_len)
        fail_input("window_size " + std::to_string(*window) + " is not this cache's single window " +
                   std::to_string(cfg_.max_seq_len));
}

// ---------------------------------------------------------------- sequences

void KVCacheManager::check_slot_has_sequence(int32_t slot, const char* what) const {
    table_->check_slot(slot);
    if (!seq_live_[static_cast<size_t>(slot)])
        fail_input(std::string(what) + ": request " + std::to_string(table_->request_id[slot]) +
                   " has no sequence in this KV cache");
}

void KVCacheManager::add_block_to_sequence(int32_t slot, int32_t b) {
    pool_.hold(b);
    seq_blocks_[static_cast<size_t>(slot)].push_back(b);
}

void KVCacheManager::add_sequence(int32_t slot, int32_t input_length, int32_t beam_width, std::vector<BlockCopy>* copies) {
    table_->check_slot(slot);
    RequestTable& t = *table_;
    const std::string who = "add_sequence: request " + std::to_string(t.request_id[slot]);
    if (seq_live_[static_cast<size_t>(slot)]) fail_input(who + " already has a sequence in this KV cache");
    if (beam_width != 1) fail_input(who + ": beam width " + std::to_string(beam_width) + " > 1 is not supported for KV allocation");
    if (input_length <= 0) fail_input(who + ": input length must be positive, got " + std::to_string(input_length));
    if (input_length > cfg_.max_seq_len)
        fail_input(who + ": input length " + std::to_string(input_length) + " exceeds max_seq_len " +
                   std::to_string(cfg_.max_seq_len));
    int32_t tpb = cfg_.tokens_per_block;
    int32_t num_ctx_blocks = static_cast<int32_t>(ceil_div(input_length, tpb));
    std::vector<BlockKey> keys;
    int32_t needed = num_ctx_blocks;
    if (cfg_.enable_block_reuse) {
        if (input_length > t.num_tokens[slot])
            fail_input(who + ": input length exceeds the request's " + std::to_string(t.num_tokens[slot]) + " tokens");
        // Only input_length - 1 tokens can be reused: the last one must be computed.
        keys = build_keys(slot, input_length - 1, /*full_only=*/false);
        while (static_cast<int32_t>(keys.size()) < num_ctx_blocks) keys.emplace_back();
        needed = pool_.count_blocks_needed(keys);
    }
    if (needed > pool_.num_free_blocks())
        fail_input(who + " needs " + std::to_string(needed) + " free blocks, " + std::to_string(pool_.num_free_blocks()) + " free");

    seq_blocks_[static_cast<size_t>(slot)].clear();
    seq_blocks_[static_cast<size_t>(slot)].reserve(static_cast<size_t>(num_ctx_blocks) + 1);
    if (cfg_.enable_block_reuse) {
        int32_t matched = pool_.allocate_with_reuse(keys, seq_blocks_[static_cast<size_t>(slot)], copies);
        t.set_prepopulated_prompt_len(slot, std::min(matched, t.prompt_len[slot] - 1), tpb);
    } else {
        for (int32_t i = 0; i < num_ctx_blocks; ++i) add_block_to_sequence(slot, pool_.get_free_block());
    }
    seq_live_[static_cast<size_t>(slot)] = 1;
    seq_tokens_[static_cast<size_t>(slot)] = input_length;
    seq_sched_removed_[static_cast<size_t>(slot)] = 0;  // a new sequence in a reused slot
    ++t.kv_refs[slot];
}

void KVCacheManager::add_token(int32_t slot) {
    check_slot_has_sequence(slot, "add_token");
    int32_t next = seq_tokens_[static_cast<size_t>(slot)] + 1;
    if (next > cfg_.max_seq_len)
        fail_input("add_token: request " + std::to_string(table_->request_id[slot]) + " would hold " +
                   std::to_string(next) + " tokens, more than max_seq_len " + std::to_string(cfg_.max_seq_len));
    if ((next - 1) % cfg_.tokens_per_block == 0) {
        if (pool_.num_free_blocks() < 1)
            fail_input("add_token: request " + std::to_string(table_->request_id[slot]) + " needs a new block, none free");
        add_block_to_sequence(slot, pool_.get_free_block());
    }
    seq_tokens_[static_cast<size_t>(slot)] = next;
}

void KVCacheManager::store_context_blocks(int32_t slot) {
    check_slot_has_sequence(slot, "store_context_blocks");
    if (!cfg_.enable_block_reuse) return;
    pool_.store_blocks(build_keys(slot, table_->num_tokens[slot] - 1, /*full_only=*/true), seq_blocks_[static_cast<size_t>(slot)]);
}

void KVCacheManager::remove_sequence(int32_t slot, bool store_for_reuse) {
    check_slot_has_sequence(slot, "remove_sequence");
    std::vector<int32_t>& ids = seq_blocks_[static_cast<size_t>(slot)];
    if (store_for_reuse && cfg_.enable_block_reuse)
        pool_.store_blocks(build_keys(slot, table_->num_tokens[slot] - 1, /*full_only=*/false), ids);
    // Reverse order: tail blocks, the least likely to be reused, enter the LRU queue first.
    for (auto it = ids.rbegin(); it != ids.rend(); ++it) pool_.release(*it);
    ids.clear();
    seq_live_[static_cast<size_t>(slot)] = 0;
    seq_tokens_[static_cast<size_t>(slot)] = 0;
    --table_->kv_refs[slot];
}

std::vector<BlockKey> KVCacheManager::build_keys(int32_t slot, int32_t n, bool full_only) const {
    const RequestTable& t = *table_;
    const TokenStore& ts = *t.tokens(slot);
    int32_t tpb = cfg_.tokens_per_block;
    n = std::min(n, ts.size);
    std::vector<BlockKey> keys;
    keys.reserve(static_cast<size_t>(ceil_div(std::max(n, 0), tpb)));
    bool extra = ts.extra_ids != nullptr;
    for (int32_t start = 0; start < n; start += tpb) {
        int32_t end = std::min(start + tpb, n);
        if (full_only && end - start < tpb) break;
        BlockKey k;
        k.lora_task_id = t.lora_task_id[slot];
        k.uses_extra_ids = extra;
        k.tokens.assign(ts.tokens.get() + start, ts.tokens.get() + end);
        if (extra) k.extra_ids.assign(ts.extra_ids.get() + start, ts.extra_ids.get() + end);
        keys.push_back(std::move(k));
    }
    return keys;
}

std::optional<BlockKey> KVCacheManager::find_new_context_block(int32_t slot) const {
    table_->check_slot(slot);
    if (!cfg_.enable_block_reuse) return std::nullopt;
    ++key_walks_;
    // Build one full-block key at a time and stop at the first miss: most queued prompts miss
    // within a few blocks, so this costs the matched prefix, not the whole prompt.
    const RequestTable& t = *table_;
    const TokenStore& ts = *t.tokens(slot);
    const int32_t tpb = cfg_.tokens_per_block;
    const int32_t full_blocks = ts.size / tpb;
    BlockKey key;
    key.lora_task_id = t.lora_task_id[slot];
    key.uses_extra_ids = ts.extra_ids != nullptr;
    int32_t search = BlockPool::kRoot;
    for (int32_t i = 0; i < full_blocks; ++i) {
        const int32_t* b = ts.tokens.get() + static_cast<size_t>(i) * static_cast<size_t>(tpb);
        key.tokens.assign(b, b + tpb);
        if (key.uses_extra_ids) {
            const uint64_t* e = ts.extra_ids.get() + static_cast<size_t>(i) * static_cast<size_t>(tpb);
            key.extra_ids.assign(e, e + tpb);
        }
        const int32_t cached = pool_.find_child(search, key);
        if (cached < 0) {
            BlockKey out;  // the tokens through the first uncached block, and the LoRA id
            out.lora_task_id = t.lora_task_id[slot];
            out.tokens.assign(static_cast<const int32_t*>(ts.tokens.get()), b + tpb);
            return out;
        }
        search = cached;
    }
    return std::nullopt;
}

int64_t KVCacheManager::find_new_context_block_id(int32_t slot, bool new_pass) {
    if (new_pass) key_ids_.clear();
    auto key = find_new_context_block(slot);
    if (!key) return -1;
    return key_ids_.emplace(std::move(*key), static_cast<int64_t>(key_ids_.size())).first->second;
}

void KVCacheManager::find_new_context_block_ids(const int32_t* slots, int32_t n, bool continue_pass, int64_t* ids) {
    for (int32_t i = 0; i < n; ++i) ids[i] = find_new_context_block_id(slots[i], i == 0 && !continue_pass);
}

void KVCacheManager::probe_prefix_match_lengths(const int32_t* tokens, const int64_t* offsets, int32_t n,
                                                const int64_t* lora_task_ids, int32_t* out) const {
    const int32_t tpb = cfg_.tokens_per_block;
    BlockKey key;
    for (int32_t i = 0; i < n; ++i) {
        out[i] = 0;
        if (!cfg_.enable_block_reuse) continue;
        const int64_t begin = offsets[i], usable = offsets[i + 1] - begin - 1;
        key.lora_task_id = lora_task_ids ? lora_task_ids[i] : -1;
        int32_t search = BlockPool::kRoot, matched = 0;
        for (int64_t start = 0; start + tpb <= usable; start += tpb) {
            const int32_t* b = tokens + begin + start;
            key.tokens.assign(b, b + tpb);
            search = pool_.find_child(search, key);
            if (search < 0) break;
            matched += tpb;
        }
        out[i] = matched;
    }
}

// ---------------------------------------------------------------- scheduling accounting

void KVCacheManager::start_scheduling() {
    // Lazy snapshot: a block's scheduling ref count is (re)initialised from its ref count the
    // first time this pass touches it, so starting a pass is O(1) instead of O(allocated blocks).
    ++epoch_;
    sched_free_ = pool_.num_free_blocks();
}

int32_t KVCacheManager::scheduling_remove_sequence(int32_t slot) {
    check_slot_has_sequence(slot, "scheduling_remove_sequence");
    if (seq_sched_removed_[static_cast<size_t>(slot)] == epoch_)
        fail_input("scheduling_remove_sequence: request " + std::to_string(table_->request_id[slot]) +
                   " was already removed in this scheduling pass");
    seq_sched_removed_[static_cast<size_t>(slot)] = epoch_;
    for (int32_t b : seq_blocks_[static_cast<size_t>(slot)]) {
        SchedulingRef& r = sched_refs_[static_cast<size_t>(b)];
        if (r.epoch != epoch_) {
            r.epoch = epoch_;
            r.ref_count = pool_.ref_count(b);
        }
        if (--r.ref_count == 0) ++sched_free_;
    }
    return sched_free_;
}

int32_t KVCacheManager::get_remaining_blocks_to_completion(int32_t slot) const {
    const RequestTable& t = *table_;
    const int64_t tpb = cfg_.tokens_per_block;
    if (cfg_.cross_kv) {
        bool fresh = state::is_context_init(t.state[slot]) && t.context_current_position[slot] == 0;
        return fresh ? static_cast<int32_t>(ceil_div(t.encoder_output_len[slot], tpb)) : 0;
    }
    const int64_t w = cfg_.max_seq_len;
    const int64_t prompt = t.prompt_len[slot], total_len = prompt + t.max_new_tokens[slot];
    const int64_t beams = t.beam_width[slot];
    // Unsigned 32-bit divisions (cheaper than 64-bit): lengths fit int32, so x + tpb - 1 < 2^32.
    const uint32_t tpb32 = static_cast<uint32_t>(cfg_.tokens_per_block);
    const int64_t ctx = static_cast<uint32_t>(std::min(prompt, w)) / tpb32;
    const int64_t total_per_beam = (static_cast<uint32_t>(std::min(total_len, w)) + tpb32 - 1) / tpb32;
    const int64_t gen = total_per_beam - ctx;
    const int64_t alloc = seq_live_[static_cast<size_t>(slot)] ? static_cast<int64_t>(seq_blocks_[static_cast<size_t>(slot)].size()) : 0;
    const int64_t extra = (total_len > w && ceil_div(total_len, tpb) > ceil_div(t.num_tokens[slot], tpb) &&
                           ceil_div(total_len, tpb) > total_per_beam) ? 1 : 0;  // never with one window
    int64_t r = alloc < ctx ? (ctx - alloc) + (gen + extra) * beams : (total_per_beam - alloc + extra) * beams;
    return saturate(r);
}

int32_t KVCacheManager::get_needed_blocks_one_step(int32_t slot, bool two_steps) const {
    const RequestTable& t = *table_;
    const int32_t st = t.state[slot];
    const int64_t tpb = cfg_.tokens_per_block, beams = t.beam_width[slot];
    if ((state::is_context_init(st) && t.is_first_context_chunk(slot)) || state::is_disagg_generation_init(st)) {
        int64_t base = cfg_.cross_kv ? t.encoder_output_len[slot] : t.prompt_len[slot];
        int64_t len = std::min(base + t.num_draft_tokens[slot], int64_t{cfg_.max_seq_len} + t.max_new_tokens[slot]);
        return saturate(len / tpb + (len % tpb > 0 ? beams : 0));
    }
    if (!state::is_generation_in_progress(st) || cfg_.cross_kv) return 0;
    if (!seq_live_[static_cast<size_t>(slot)])
        fail_input("get_needed_blocks_one_step: generation request " + std::to_string(t.request_id[slot]) +
                   " has no sequence in this KV cache");
    const int64_t cur = seq_tokens_[static_cast<size_t>(slot)];
    const int64_t generated = cur - t.prompt_len[slot];
    const int64_t add = std::min<int64_t>((two_steps ? 2 : 1) * (int64_t{t.num_draft_tokens[slot]} + 1),
                                          t.max_new_tokens[slot] - generated);
    const int64_t next = cur + add;
    if (next > cfg_.max_seq_len) return 0;
    // ceil(cur / tpb) is the block count the (beam-1) sequence already holds (an invariant that
    // check_invariants verifies), so the division is only paid when a boundary is crossed.
    const int64_t room = static_cast<int64_t>(seq_blocks_[static_cast<size_t>(slot)].size()) * tpb;
    return next <= room ? 0 : saturate(ceil_div(next - room, tpb) * beams);
}

// ---------------------------------------------------------------- invariants

void KVCacheManager::check_invariants() const {
    std::vector<int32_t> holders(static_cast<size_t>(pool_.max_num_blocks()), 0);
    for (size_t s = 0; s < seq_live_.size(); ++s) {
        if (!seq_live_[s]) {
            if (!seq_blocks_[s].empty()) fail_invariant("dead sequence holds blocks");
            continue;
        }
        for (int32_t b : seq_blocks_[s]) ++holders[static_cast<size_t>(b)];
        if (static_cast<int64_t>(seq_blocks_[s].size()) != ceil_div(seq_tokens_[s], cfg_.tokens_per_block))
            fail_invariant("sequence of slot " + std::to_string(s) + " holds a block count other than ceil(tokens / tpb)");
    }
    pool_.check_invariants(holders);
}

}  // namespace tllm
