// ext/kv_cache_manager.cpp: block pool, LRU free queues, reuse tree, sequences, scheduling accounting.
#include "kv_cache_manager.h"

#include <algorithm>
#include <climits>
#include <stdexcept>
#include <string>

namespace tllm {

namespace {
[[gnu::noinline, noreturn]] void fail_input(const std::string& msg) { throw InputError(msg); }
[[gnu::noinline, noreturn]] void fail_invariant(const std::string& msg) { throw std::logic_error(msg); }
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
/// Block counts as int32 without wrapping: a demand beyond int32 can never fit anyway.
inline int32_t saturate(int64_t v) {
    return static_cast<int32_t>(std::clamp<int64_t>(v, INT32_MIN, INT32_MAX));
}
inline uint64_t mix64(uint64_t x) {
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}
}  // namespace

int32_t BlockKey::num_matching_tokens(const BlockKey& o) const {
    if (lora_task_id != o.lora_task_id || uses_extra_ids != o.uses_extra_ids) return 0;
    size_t n = std::min(tokens.size(), o.tokens.size());
    size_t i = 0;
    while (i < n && tokens[i] == o.tokens[i] && (!uses_extra_ids || extra_ids[i] == o.extra_ids[i])) ++i;
    return static_cast<int32_t>(i);
}

size_t BlockKeyHash::operator()(const BlockKey& k) const {
    uint64_t h = mix64(static_cast<uint64_t>(k.tokens.size()) ^ (static_cast<uint64_t>(k.lora_task_id) << 1));
    for (int32_t t : k.tokens) h = mix64(h ^ static_cast<uint32_t>(t));
    for (uint64_t e : k.extra_ids) h = mix64(h ^ e);
    return static_cast<size_t>(h);
}

KVCacheManager::KVCacheManager(std::shared_ptr<RequestTable> table, const KvCacheConfig& cfg)
    : table_(std::move(table)), cfg_(cfg) {
    if (!table_) fail_input("KVCacheManager: request table must not be None");
    if (cfg.tokens_per_block <= 0) fail_input("tokens_per_block must be positive, got " + std::to_string(cfg.tokens_per_block));
    if (cfg.num_blocks <= 0) fail_input("num_blocks must be positive, got " + std::to_string(cfg.num_blocks));
    if (cfg.max_seq_len <= 0) fail_input("max_seq_len must be positive, got " + std::to_string(cfg.max_seq_len));
    if (cfg.num_secondary_blocks < 0) fail_input("num_secondary_blocks must be >= 0");
    if (int64_t{cfg.num_blocks} + cfg.num_secondary_blocks > kMaxBlocks)
        fail_input("num_blocks + num_secondary_blocks must be at most " + std::to_string(kMaxBlocks) + ", got " +
                   std::to_string(int64_t{cfg.num_blocks} + cfg.num_secondary_blocks));
    if (cfg.cross_kv && cfg.enable_block_reuse)
        fail_input("block reuse on a cross-attention cache is not supported (no encoder tokens are modelled)");
    num_total_ = cfg.num_blocks + cfg.num_secondary_blocks;
    blocks_.resize(static_cast<size_t>(num_total_));
    for (auto& h : head_) std::fill(std::begin(h), std::end(h), -1);
    for (auto& t : tail_) std::fill(std::begin(t), std::end(t), -1);
    // Initial order: ascending ids, primary first (kvcache.md §1.3).
    for (int32_t b = 0; b < num_total_; ++b) {
        blocks_[static_cast<size_t>(b)].level = b < cfg.num_blocks ? 0 : 1;
        release_block(b);
    }
    size_t cap = static_cast<size_t>(table_->capacity());
    seq_live_.assign(cap, 0);
    seq_tokens_.assign(cap, 0);
    seq_blocks_.resize(cap);
    seq_sched_removed_.assign(cap, 0);
    epoch_ = 1;
}

KVCacheManager::~KVCacheManager() {
    // Let the requests go: the table outlives us through table_.
    for (size_t s = 0; s < seq_live_.size(); ++s)
        if (seq_live_[s]) --table_->kv_refs[s];
}

// ---------------------------------------------------------------- free queues

void KVCacheManager::queue_push(int32_t b, bool to_front) {
    Block& k = blocks_[static_cast<size_t>(b)];
    int32_t lv = k.level, pr = k.priority;
    k.queue_level = static_cast<int8_t>(lv);
    k.queue_priority = static_cast<int16_t>(pr);
    int32_t& head = head_[lv][pr];
    int32_t& tail = tail_[lv][pr];
    if (head < 0) {
        k.prev = k.next = -1;
        head = tail = b;
    } else if (to_front) {
        k.prev = -1;
        k.next = head;
        blocks_[static_cast<size_t>(head)].prev = b;
        head = b;
    } else {
        k.next = -1;
        k.prev = tail;
        blocks_[static_cast<size_t>(tail)].next = b;
        tail = b;
    }
    ++num_free_[lv];
}

void KVCacheManager::queue_unlink(int32_t b) {
    Block& k = blocks_[static_cast<size_t>(b)];
    int32_t lv = k.queue_level, pr = k.queue_priority;
    if (k.prev >= 0) blocks_[static_cast<size_t>(k.prev)].next = k.next; else head_[lv][pr] = k.next;
    if (k.next >= 0) blocks_[static_cast<size_t>(k.next)].prev = k.prev; else tail_[lv][pr] = k.prev;
    k.prev = k.next = -1;
    k.queue_level = -1;
    --num_free_[lv];
}

int32_t KVCacheManager::queue_front(int32_t level, int32_t* priority_out) const {
    for (int32_t p = 0; p < kNumPriorities; ++p) {
        if (head_[level][p] >= 0) {
            if (priority_out) *priority_out = p;
            return head_[level][p];
        }
    }
    return -1;
}

void KVCacheManager::release_block(int32_t b, bool to_front) { queue_push(b, to_front); }

void KVCacheManager::claim_block(int32_t b) {
    if (blocks_[static_cast<size_t>(b)].queue_level >= 0) queue_unlink(b);
}

int32_t KVCacheManager::get_free_block() {
    int32_t prio = 0;
    int32_t b = queue_front(0, &prio);
    if (b < 0) fail_invariant("KVCacheManager: no free primary block (callers check first)");
    ++stats_.alloc_total_blocks;
    bool has_tokens = !blocks_[static_cast<size_t>(b)].key.tokens.empty();
    if (!has_tokens) ++stats_.alloc_new_blocks;
    if (has_tokens && prio >= kSecondaryOffloadMinPriority && num_free_[1] > 0) {
        // Offload: the cached block keeps its key and tree place but moves to host storage; the
        // host block object it swapped storage with is handed out instead.
        int32_t host = queue_front(1, nullptr);
        claim_block(host);
        claim_block(b);
        blocks_[static_cast<size_t>(b)].level = 1;
        blocks_[static_cast<size_t>(host)].level = 0;
        release_block(b);
        b = host;
    }
    detach_subtree(b);
    claim_block(b);
    blocks_[static_cast<size_t>(b)].priority = kDefaultPriority;
    return b;
}

void KVCacheManager::onboard(int32_t b) {
    if (blocks_[static_cast<size_t>(b)].level == 0) return;
    // Take a primary slot for the host block; the helper block takes over the host storage.
    int32_t helper = get_free_block();
    blocks_[static_cast<size_t>(b)].level = 0;
    blocks_[static_cast<size_t>(helper)].level = 1;
    release_block(helper);
}

// ---------------------------------------------------------------- reuse tree

void KVCacheManager::detach_subtree(int32_t b) {
    Block& k = blocks_[static_cast<size_t>(b)];
    if (!k.in_tree) return;
    children_of(k.parent).erase(k.key);
    std::vector<int32_t> stack{b};
    while (!stack.empty()) {
        int32_t x = stack.back();
        stack.pop_back();
        Block& kx = blocks_[static_cast<size_t>(x)];
        kx.in_tree = false;
        kx.parent = kRoot;
        for (auto& kv : kx.children) stack.push_back(kv.second);
        kx.children.clear();
    }
}

void KVCacheManager::insert_child(int32_t parent, int32_t b, BlockKey key) {
    Block& k = blocks_[static_cast<size_t>(b)];
    k.key = std::move(key);
    k.parent = parent;
    k.in_tree = true;
    k.store_seq = ++store_counter_;
    children_of(parent).emplace(k.key, b);
}

int32_t KVCacheManager::tree_parent(int32_t b) const {
    const Block& k = blocks_[static_cast<size_t>(b)];
    return k.in_tree ? k.parent : -2;
}

KVCacheManager::Match KVCacheManager::find_matching_block(int32_t parent, const BlockKey& key) const {
    Match m;
    if (key.tokens.empty()) return m;
    const Children& ch = children_of(parent);
    auto it = ch.find(key);
    int32_t tpb = cfg_.tokens_per_block;
    if (it != ch.end()) {
        m.block = it->second;
        m.num_matched = static_cast<int32_t>(key.tokens.size());
        m.partial = static_cast<int32_t>(blocks_[static_cast<size_t>(m.block)].key.tokens.size()) != tpb;
        return m;
    }
    if (!cfg_.enable_partial_reuse) return m;
    uint64_t best_seq = 0;
    for (const auto& kv : ch) {
        const Block& c = blocks_[static_cast<size_t>(kv.second)];
        bool eligible = cfg_.copy_on_partial_reuse || (c.ref_count == 0 && c.children.empty());
        if (!eligible) continue;
        int32_t n = key.num_matching_tokens(c.key);
        // Longest match wins; among equals, the earliest stored.
        if (n > 0 && (n > m.num_matched || (n == m.num_matched && c.store_seq < best_seq))) {
            m.block = kv.second;
            m.num_matched = n;
            best_seq = c.store_seq;
        }
    }
    m.partial = m.block >= 0;
    return m;
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

void KVCacheManager::store_blocks(const std::vector<BlockKey>& keys, const std::vector<int32_t>& ids) {
    int32_t search = kRoot;
    bool need_match = true;
    size_t n = std::min(keys.size(), ids.size());
    for (size_t i = 0; i < n; ++i) {
        int32_t b = ids[i];
        if (need_match) {
            const Children& ch = children_of(search);
            auto it = ch.find(keys[i]);
            if (it != ch.end()) {  // identical content already cached (maybe another block)
                search = it->second;
                continue;
            }
            need_match = false;
        }
        detach_subtree(b);  // a block lives at one tree position at most
        insert_child(search, b, keys[i]);
        search = b;
    }
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
    int32_t search = kRoot;
    for (int32_t i = 0; i < full_blocks; ++i) {
        const int32_t* b = ts.tokens.get() + static_cast<size_t>(i) * static_cast<size_t>(tpb);
        key.tokens.assign(b, b + tpb);
        if (key.uses_extra_ids) {
            const uint64_t* e = ts.extra_ids.get() + static_cast<size_t>(i) * static_cast<size_t>(tpb);
            key.extra_ids.assign(e, e + tpb);
        }
        const Children& ch = children_of(search);
        auto it = ch.find(key);
        if (it == ch.end()) {
            BlockKey out;  // the tokens through the first uncached block, and the LoRA id
            out.lora_task_id = t.lora_task_id[slot];
            out.tokens.assign(static_cast<const int32_t*>(ts.tokens.get()), b + tpb);
            return out;
        }
        search = it->second;
    }
    return std::nullopt;
}

int64_t KVCacheManager::find_new_context_block_id(int32_t slot, bool new_pass) {
    if (new_pass) key_ids_.clear();
    auto key = find_new_context_block(slot);
    if (!key) return -1;
    return key_ids_.emplace(std::move(*key), static_cast<int64_t>(key_ids_.size())).first->second;
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
        int32_t search = kRoot, matched = 0;
        for (int64_t start = 0; start + tpb <= usable; start += tpb) {
            const int32_t* b = tokens + begin + start;
            key.tokens.assign(b, b + tpb);
            const Children& ch = children_of(search);
            auto it = ch.find(key);
            if (it == ch.end()) break;
            search = it->second;
            matched += tpb;
        }
        out[i] = matched;
    }
}

// ---------------------------------------------------------------- sequences

void KVCacheManager::check_slot_has_sequence(int32_t slot, const char* what) const {
    table_->check_slot(slot);
    if (!seq_live_[static_cast<size_t>(slot)])
        fail_input(std::string(what) + ": request " + std::to_string(table_->request_id[slot]) +
                   " has no sequence in this KV cache");
}

void KVCacheManager::add_block_to_sequence(int32_t slot, int32_t b) {
    ++blocks_[static_cast<size_t>(b)].ref_count;
    seq_blocks_[static_cast<size_t>(slot)].push_back(b);
}

int32_t KVCacheManager::count_blocks_needed(int32_t slot, const std::vector<BlockKey>& keys) const {
    (void)slot;
    // Free blocks the walk of allocate_with_reuse will take: every position costs one, except a
    // full match of a block another sequence holds. Without a host pool nothing is evicted
    // before the last match, so the count is exact. Onboarding a host block takes a primary
    // block, which may evict a cached parent and cut a held child out of the tree; after the
    // first onboarding every position is therefore charged one (a safe upper bound).
    int32_t needed = 0;
    int32_t search = kRoot;
    bool searching = true, onboarded = false;
    for (const BlockKey& key : keys) {
        Match m = searching ? find_matching_block(search, key) : Match{};
        if (m.block < 0 || m.partial) {
            searching = false;
            ++needed;
            continue;
        }
        const Block& b = blocks_[static_cast<size_t>(m.block)];
        if (b.ref_count == 0 || onboarded) ++needed;
        onboarded = onboarded || b.level != 0;
        search = m.block;
    }
    return needed;
}

int32_t KVCacheManager::allocate_with_reuse(int32_t slot, const std::vector<BlockKey>& keys) {
    int32_t matched_tokens = 0;
    int32_t search = kRoot;
    bool searching = true;
    for (const BlockKey& key : keys) {
        Match m = searching ? find_matching_block(search, key) : Match{};
        if (m.block < 0) {
            int32_t b = get_free_block();
            blocks_[static_cast<size_t>(b)].key = key;
            add_block_to_sequence(slot, b);
            searching = false;
            ++stats_.missed_blocks;
            continue;
        }
        matched_tokens += m.num_matched;
        ++stats_.reused_blocks;
        Block& mb = blocks_[static_cast<size_t>(m.block)];
        if (!m.partial) {
            claim_block(m.block);
            onboard(m.block);
            add_block_to_sequence(slot, m.block);
            search = m.block;
            continue;
        }
        if (mb.ref_count > 0 || !mb.children.empty()) {
            // Copy the matched tokens into a fresh block; the original stays shared.
            int32_t b = get_free_block();
            blocks_[static_cast<size_t>(b)].key = key;
            add_block_to_sequence(slot, b);
        } else {
            // Take over the unreferenced leaf.
            detach_subtree(m.block);
            claim_block(m.block);
            onboard(m.block);
            add_block_to_sequence(slot, m.block);
        }
        searching = false;
    }
    return matched_tokens;
}

void KVCacheManager::add_sequence(int32_t slot, int32_t input_length, int32_t beam_width) {
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
        needed = count_blocks_needed(slot, keys);
    }
    if (needed > num_free_[0])
        fail_input(who + " needs " + std::to_string(needed) + " free blocks, " + std::to_string(num_free_[0]) + " free");

    seq_blocks_[static_cast<size_t>(slot)].clear();
    seq_blocks_[static_cast<size_t>(slot)].reserve(static_cast<size_t>(num_ctx_blocks) + 1);
    if (cfg_.enable_block_reuse) {
        int32_t matched = allocate_with_reuse(slot, keys);
        t.set_prepopulated_prompt_len(slot, std::min(matched, t.prompt_len[slot] - 1), tpb);
    } else {
        for (int32_t i = 0; i < num_ctx_blocks; ++i) add_block_to_sequence(slot, get_free_block());
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
        if (num_free_[0] < 1)
            fail_input("add_token: request " + std::to_string(table_->request_id[slot]) + " needs a new block, none free");
        add_block_to_sequence(slot, get_free_block());
    }
    seq_tokens_[static_cast<size_t>(slot)] = next;
}

void KVCacheManager::store_context_blocks(int32_t slot) {
    check_slot_has_sequence(slot, "store_context_blocks");
    if (!cfg_.enable_block_reuse) return;
    store_blocks(build_keys(slot, table_->num_tokens[slot] - 1, /*full_only=*/true), seq_blocks_[static_cast<size_t>(slot)]);
}

void KVCacheManager::remove_sequence(int32_t slot, bool store_for_reuse) {
    check_slot_has_sequence(slot, "remove_sequence");
    std::vector<int32_t>& ids = seq_blocks_[static_cast<size_t>(slot)];
    if (store_for_reuse && cfg_.enable_block_reuse)
        store_blocks(build_keys(slot, table_->num_tokens[slot] - 1, /*full_only=*/false), ids);
    // Reverse order: tail blocks, the least likely to be reused, enter the LRU queue first.
    for (auto it = ids.rbegin(); it != ids.rend(); ++it) {
        Block& k = blocks_[static_cast<size_t>(*it)];
        if (k.ref_count > 0 && --k.ref_count == 0) release_block(*it);
    }
    ids.clear();
    seq_live_[static_cast<size_t>(slot)] = 0;
    seq_tokens_[static_cast<size_t>(slot)] = 0;
    --table_->kv_refs[slot];
}

// ---------------------------------------------------------------- scheduling accounting

void KVCacheManager::start_scheduling() {
    // Lazy snapshot: a block's scheduling ref count is (re)initialised from its ref count the
    // first time this pass touches it, so starting a pass is O(1) instead of O(allocated blocks).
    ++epoch_;
    sched_free_ = num_free_[0];
}

int32_t KVCacheManager::scheduling_remove_sequence(int32_t slot) {
    check_slot_has_sequence(slot, "scheduling_remove_sequence");
    if (seq_sched_removed_[static_cast<size_t>(slot)] == epoch_)
        fail_input("scheduling_remove_sequence: request " + std::to_string(table_->request_id[slot]) +
                   " was already removed in this scheduling pass");
    seq_sched_removed_[static_cast<size_t>(slot)] = epoch_;
    for (int32_t b : seq_blocks_[static_cast<size_t>(slot)]) {
        Block& k = blocks_[static_cast<size_t>(b)];
        if (k.sched_epoch != epoch_) {
            k.sched_epoch = epoch_;
            k.sched_ref_count = k.ref_count;
        }
        if (--k.sched_ref_count == 0) ++sched_free_;
    }
    return sched_free_;
}

int32_t KVCacheManager::get_remaining_blocks_to_completion(int32_t slot) const {
    const RequestTable& t = *table_;
    const int64_t tpb = cfg_.tokens_per_block;
    if (cfg_.cross_kv) {
        bool fresh = state::is_context_init(t.state[slot]) && t.context_position[slot] == 0;
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

// ---------------------------------------------------------------- introspection

int32_t KVCacheManager::num_cached_blocks() const {
    int32_t n = 0;
    for (const Block& b : blocks_) n += b.in_tree ? 1 : 0;
    return n;
}

std::vector<int32_t> KVCacheManager::free_queue(int32_t level) const {
    if (level != 0 && level != 1) fail_input("free_queue: level must be 0 (primary) or 1 (secondary)");
    std::vector<int32_t> out;
    for (int32_t p = 0; p < kNumPriorities; ++p)
        for (int32_t b = head_[level][p]; b >= 0; b = blocks_[static_cast<size_t>(b)].next) out.push_back(b);
    return out;
}

void KVCacheManager::check_invariants() const {
    std::vector<int32_t> refs(static_cast<size_t>(num_total_), 0);
    for (size_t s = 0; s < seq_live_.size(); ++s) {
        if (!seq_live_[s]) {
            if (!seq_blocks_[s].empty()) fail_invariant("dead sequence holds blocks");
            continue;
        }
        for (int32_t b : seq_blocks_[s]) ++refs[static_cast<size_t>(b)];
        if (static_cast<int64_t>(seq_blocks_[s].size()) != ceil_div(seq_tokens_[s], cfg_.tokens_per_block))
            fail_invariant("sequence of slot " + std::to_string(s) + " holds a block count other than ceil(tokens / tpb)");
    }
    int32_t in_queue[2] = {0, 0}, primary = 0;
    for (int32_t b = 0; b < num_total_; ++b) {
        const Block& k = blocks_[static_cast<size_t>(b)];
        const std::string id = "block " + std::to_string(b);
        if (k.ref_count < 0) fail_invariant(id + ": negative ref count");
        if (k.ref_count != refs[static_cast<size_t>(b)]) fail_invariant(id + ": ref count differs from sequence holdings");
        if ((k.ref_count == 0) != (k.queue_level >= 0)) fail_invariant(id + ": free iff unreferenced is broken");
        if (k.queue_level >= 0) {
            if (k.queue_level != k.level) fail_invariant(id + ": in the free queue of the wrong level");
            ++in_queue[k.queue_level];
        }
        primary += k.level == 0 ? 1 : 0;
        if (k.in_tree) {
            const Children& ch = children_of(k.parent);
            auto it = ch.find(k.key);
            if (it == ch.end() || it->second != b) fail_invariant(id + ": tree parent does not list it");
            if (k.parent != kRoot && !blocks_[static_cast<size_t>(k.parent)].in_tree) fail_invariant(id + ": parent left the tree");
        } else if (!k.children.empty()) {
            fail_invariant(id + ": detached block keeps children");
        }
    }
    if (primary != cfg_.num_blocks) fail_invariant("number of primary blocks changed");
    for (int32_t lv = 0; lv < 2; ++lv) {
        if (in_queue[lv] != num_free_[lv]) fail_invariant("free count differs from queue contents");
        if (static_cast<int32_t>(free_queue(lv).size()) != num_free_[lv]) fail_invariant("free queue links broken");
    }
}

// ---------------------------------------------------------------- PEFT

PeftCacheManager::PeftCacheManager(int32_t pages_per_task, int32_t max_device_pages)
    : pages_per_task_(pages_per_task), max_device_pages_(max_device_pages) {
    if (pages_per_task <= 0) fail_input("pages_per_task must be positive, got " + std::to_string(pages_per_task));
    if (max_device_pages <= 0) fail_input("max_device_pages must be positive, got " + std::to_string(max_device_pages));
}

void PeftCacheManager::set_task_pages(int64_t task_id, int32_t pages) {
    if (task_id < 0) fail_input("task id must be >= 0");
    if (pages < 0) fail_input("pages must be >= 0");
    task_pages_[task_id] = pages;
}

}  // namespace tllm
