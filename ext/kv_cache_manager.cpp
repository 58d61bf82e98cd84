// ext/kv_cache_manager.cpp: sequences on the block pool, the scheduling snapshot, the estimates.
#include "kv_cache_manager.h"

#include <algorithm>
#include <cstring>
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
    request_keys_.resize(cap);
    epoch_ = 1;
    ++live_managers_;
    table_->add_cache_limit(CacheLimit{this, cfg_.max_seq_len, cfg_.num_blocks, cfg_.tokens_per_block, cfg_.cross_kv});
}

int64_t KVCacheManager::live_managers_ = 0;

void KVCacheManager::set_block_hash_mask(uint64_t mask) {
    if (live_managers_ != 0)
        fail_input("set_block_hash_mask: " + std::to_string(live_managers_) + " KVCacheManager(s) alive; set it before creating any");
    block_hash_mask() = mask;
}

KVCacheManager::~KVCacheManager() {
    table_->remove_cache_limit(this);
    // Let the requests go: the table outlives us through table_.
    for (size_t s = 0; s < seq_live_.size(); ++s)
        if (seq_live_[s]) --table_->kv_refs[s];
    --live_managers_;
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
    KeyChain keys;
    int32_t needed = num_ctx_blocks;
    if (cfg_.enable_block_reuse) {
        if (input_length > t.num_tokens[slot])
            fail_input(who + ": input length exceeds the request's " + std::to_string(t.num_tokens[slot]) + " tokens");
        // Only input_length - 1 tokens can be reused: the last one must be computed.
        keys = key_chain(slot, input_length - 1, /*full_only=*/false);
        while (static_cast<int32_t>(keys.keys.size()) < num_ctx_blocks) {  // an empty key never matches
            keys.keys.emplace_back();
            keys.hashes.push_back(0);
        }
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
    pool_.store_blocks(key_chain(slot, table_->num_tokens[slot] - 1, /*full_only=*/true), seq_blocks_[static_cast<size_t>(slot)]);
}

void KVCacheManager::remove_sequence(int32_t slot, bool store_for_reuse) {
    check_slot_has_sequence(slot, "remove_sequence");
    std::vector<int32_t>& ids = seq_blocks_[static_cast<size_t>(slot)];
    if (store_for_reuse && cfg_.enable_block_reuse)
        pool_.store_blocks(key_chain(slot, table_->num_tokens[slot] - 1, /*full_only=*/false), ids);
    // Reverse order: tail blocks, the least likely to be reused, enter the LRU queue first.
    for (auto it = ids.rbegin(); it != ids.rend(); ++it) pool_.release(*it);
    ids.clear();
    seq_live_[static_cast<size_t>(slot)] = 0;
    seq_tokens_[static_cast<size_t>(slot)] = 0;
    --table_->kv_refs[slot];
}

// ---------------------------------------------------------------- block keys and skip keys

KVCacheManager::RequestKeys& KVCacheManager::request_keys(int32_t slot) const {
    RequestKeys& r = request_keys_[static_cast<size_t>(slot)];
    const uint32_t g = table_->generation(slot), v = table_->tokens_version(slot);
    if (r.generation != g || r.tokens_version != v) {
        r.generation = g;
        r.tokens_version = v;
        r.hashes.clear();
        r.walked = false;
        r.node = BlockPool::kRoot;
        r.depth = 0;
    }
    return r;
}

KeyView KVCacheManager::block_view(int32_t slot, int32_t block, int32_t size) const {
    const TokenStore& ts = *table_->tokens(slot);
    const size_t start = static_cast<size_t>(block) * static_cast<size_t>(cfg_.tokens_per_block);
    return {ts.tokens.get() + start, ts.extra_ids ? ts.extra_ids.get() + start : nullptr, size, table_->lora_task_id[slot]};
}

const uint64_t* KVCacheManager::block_hashes(int32_t slot, RequestKeys& r, int32_t n) const {
    size_t have = r.hashes.size();
    if (have < static_cast<size_t>(n)) {
        r.hashes.resize(static_cast<size_t>(n));
        uint64_t h = have ? r.hashes[have - 1] : kRootHash;
        for (size_t i = have; i < static_cast<size_t>(n); ++i) {
            h = chain_hash(h, block_view(slot, static_cast<int32_t>(i), cfg_.tokens_per_block));
            r.hashes[i] = h;
        }
        blocks_hashed_ += static_cast<int64_t>(static_cast<size_t>(n) - have);
    }
    return r.hashes.data();
}

KeyChain KVCacheManager::key_chain(int32_t slot, int32_t n, bool full_only) const {
    const int32_t tpb = cfg_.tokens_per_block;
    n = std::min(n, table_->tokens(slot)->size);
    KeyChain c;
    if (n <= 0) return c;
    const int32_t full = n / tpb;
    const uint64_t* h = block_hashes(slot, request_keys(slot), full);
    c.keys.reserve(static_cast<size_t>(full) + 1);
    c.hashes.assign(h, h + full);
    for (int32_t i = 0; i < full; ++i) c.keys.push_back(block_view(slot, i, tpb));
    if (!full_only && n % tpb) {
        KeyView last = block_view(slot, full, n % tpb);
        c.keys.push_back(last);
        c.hashes.push_back(chain_hash(full ? c.hashes.back() : kRootHash, last));
        ++blocks_hashed_;
    }
    return c;
}

const KVCacheManager::RequestKeys& KVCacheManager::walk(int32_t slot) const {
    RequestKeys& r = request_keys(slot);
    const int32_t tpb = cfg_.tokens_per_block;
    const int32_t full = table_->tokens(slot)->size / tpb;
    if (r.walked) {
        if (pool_.placement(r.node) != r.placement) {
            r.node = BlockPool::kRoot;  // a block of the path left the tree: walk again
            r.depth = 0;
        } else {
            // The path stands. A walk that ended at a miss changes only if a child with the
            // missed block's hash was inserted under its end since; one that matched every full
            // block, only if the tokens grew by a full block.
            const uint64_t stamp = pool_.children_stamp(r.node);
            const bool same = r.depth < r.full_blocks
                                  ? stamp == r.children ||
                                        !pool_.child_added_since(r.node, r.children, r.hashes[static_cast<size_t>(r.depth)])
                                  : full == r.full_blocks;
            r.children = stamp;
            if (same) return r;
        }
    }
    int32_t node = r.node, depth = r.depth;
    while (depth < full) {
        const uint64_t* h = block_hashes(slot, r, depth + 1);  // one block at a time: most walks stop early
        const int32_t child = pool_.find_child(node, block_view(slot, depth, tpb), h[depth]);
        if (child < 0) break;
        node = child;
        ++depth;
    }
    r.walked = true;
    r.node = node;
    r.depth = depth;
    r.full_blocks = full;
    r.placement = pool_.placement(node);
    r.children = pool_.children_stamp(node);
    r.key_hash = 0;
    if (depth < full) {
        if (!table_->has_extra_ids(slot)) {
            r.key_hash = r.hashes[static_cast<size_t>(depth)];  // tokens + LoRA only already
        } else {  // a skip key leaves extra ids out: hash the prefix again without them
            uint64_t h = kRootHash;
            for (int32_t i = 0; i <= depth; ++i) {
                KeyView k = block_view(slot, i, tpb);
                k.extra_ids = nullptr;
                h = chain_hash(h, k);
            }
            r.key_hash = h;
            blocks_hashed_ += depth + 1;
        }
    }
    return r;
}

std::optional<BlockKey> KVCacheManager::find_new_context_block(int32_t slot) const {
    table_->check_slot(slot);
    if (!cfg_.enable_block_reuse) return std::nullopt;
    ++key_walks_;
    const RequestKeys& r = walk(slot);
    if (r.depth >= r.full_blocks) return std::nullopt;
    BlockKey out;  // the tokens through the first uncached block, and the LoRA id
    out.lora_task_id = table_->lora_task_id[slot];
    const int32_t* tokens = table_->tokens(slot)->tokens.get();
    out.tokens.assign(tokens, tokens + static_cast<size_t>(r.depth + 1) * static_cast<size_t>(cfg_.tokens_per_block));
    return out;
}

bool KVCacheManager::same_pass_key(int32_t slot, const RequestKeys& r, const PassKey& p) const {
    const RequestTable& t = *table_;
    if (p.depth != r.depth || t.lora_task_id[slot] != t.lora_task_id[p.slot]) return false;
    const TokenStore& a = *t.tokens(slot);
    const TokenStore& b = *t.tokens(p.slot);
    const size_t tpb = static_cast<size_t>(cfg_.tokens_per_block), end = (static_cast<size_t>(r.depth) + 1) * tpb;
    size_t from = 0;
    if (p.node == r.node) {
        from = end - tpb;  // the same tree path: equal tokens and LoRA id before the new block
    } else if (!a.extra_ids && !b.extra_ids) {
        return false;  // without extra ids the path is a function of the tokens and LoRA id
    }
    ++pass_compared_;
    return std::memcmp(a.tokens.get() + from, b.tokens.get() + from, (end - from) * sizeof(int32_t)) == 0;
}

int64_t KVCacheManager::find_new_context_block_id(int32_t slot, bool new_pass) {
    table_->check_slot(slot);
    if (new_pass) {
        pass_index_.clear(static_cast<int32_t>(pass_keys_.size()));  // keeps room for as many as last time
        pass_keys_.clear();
        pass_tree_version_ = pool_.tree_version();
        pass_tokens_epoch_ = table_->tokens_epoch();
    } else if (pass_tree_version_ != pool_.tree_version() || pass_tokens_epoch_ != table_->tokens_epoch()) {
        fail_input("find_new_context_block_batch: continue_pass=True after the KV cache's reuse tree or a request's "
                   "tokens changed; start a new pass");
    }
    if (!cfg_.enable_block_reuse) return -1;
    ++key_walks_;
    const RequestKeys& r = walk(slot);
    if (r.depth >= r.full_blocks) return -1;
    int32_t id = pass_index_.find(r.key_hash, [&](int32_t k) { return same_pass_key(slot, r, pass_keys_[static_cast<size_t>(k)]); });
    if (id >= 0) return id;
    id = static_cast<int32_t>(pass_keys_.size());
    pass_keys_.push_back({slot, r.node, r.depth, r.key_hash, false});
    pass_index_.insert(r.key_hash, id);
    return id;
}

KVCacheManager::Claim KVCacheManager::claim_new_context_block(int32_t slot, bool new_pass) {
    const int64_t id = find_new_context_block_id(slot, new_pass);
    if (id < 0) return kNoKey;
    bool& claimed = pass_keys_[static_cast<size_t>(id)].claimed;
    if (claimed) return kClaimedBefore;
    claimed = true;
    return kClaimed;
}

void KVCacheManager::find_new_context_block_ids(const int32_t* slots, int32_t n, bool continue_pass, int64_t* ids) {
    for (int32_t i = 0; i < n; ++i) ids[i] = find_new_context_block_id(slots[i], i == 0 && !continue_pass);
}

void KVCacheManager::probe_prefix_match_lengths(const int32_t* tokens, const int64_t* offsets, int32_t n,
                                                const int64_t* lora_task_ids, int32_t* out) const {
    const int32_t tpb = cfg_.tokens_per_block;
    for (int32_t i = 0; i < n; ++i) {
        out[i] = 0;
        if (!cfg_.enable_block_reuse) continue;
        const int64_t begin = offsets[i], usable = offsets[i + 1] - begin - 1;
        const int64_t lora = lora_task_ids ? lora_task_ids[i] : -1;
        // The prompt's own chained hashes, computed here: a dry run touches no memo or counter.
        uint64_t hash = kRootHash;
        int32_t node = BlockPool::kRoot, matched = 0;
        for (int64_t start = 0; start + tpb <= usable; start += tpb) {
            const KeyView key{tokens + begin + start, nullptr, tpb, lora};
            hash = chain_hash(hash, key);
            node = pool_.peek_child(node, key, hash);
            if (node < 0) break;
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
