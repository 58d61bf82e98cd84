// ext/block_pool.cpp: block keys, LRU free queues, the reuse tree and its allocation walk.
#include "block_pool.h"

#include <algorithm>
#include <string>

#include "errors.h"

namespace tllm {

BlockPool::BlockPool(int32_t num_primary, int32_t num_secondary, int32_t tokens_per_block, bool enable_partial_reuse,
                     bool copy_on_partial_reuse)
    : num_primary_(num_primary), num_total_(num_primary + num_secondary), tokens_per_block_(tokens_per_block),
      enable_partial_reuse_(enable_partial_reuse), copy_on_partial_reuse_(copy_on_partial_reuse) {
    blocks_.resize(static_cast<size_t>(num_total_));
    for (auto& h : head_) std::fill(std::begin(h), std::end(h), -1);
    for (auto& t : tail_) std::fill(std::begin(t), std::end(t), -1);
    // Initial order: ascending ids, primary first.
    for (int32_t b = 0; b < num_total_; ++b) {
        blocks_[static_cast<size_t>(b)].level = b < num_primary ? 0 : 1;
        release_block(b);
    }
}

// ---------------------------------------------------------------- free queues

void BlockPool::queue_push(int32_t b, bool to_front) {
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

void BlockPool::queue_unlink(int32_t b) {
    Block& k = blocks_[static_cast<size_t>(b)];
    int32_t lv = k.queue_level, pr = k.queue_priority;
    if (k.prev >= 0) blocks_[static_cast<size_t>(k.prev)].next = k.next; else head_[lv][pr] = k.next;
    if (k.next >= 0) blocks_[static_cast<size_t>(k.next)].prev = k.prev; else tail_[lv][pr] = k.prev;
    k.prev = k.next = -1;
    k.queue_level = -1;
    --num_free_[lv];
}

int32_t BlockPool::queue_front(int32_t level, int32_t* priority_out) const {
    for (int32_t p = 0; p < kNumPriorities; ++p) {
        if (head_[level][p] >= 0) {
            if (priority_out) *priority_out = p;
            return head_[level][p];
        }
    }
    return -1;
}

void BlockPool::release_block(int32_t b, bool to_front) { queue_push(b, to_front); }

void BlockPool::claim_block(int32_t b) {
    if (blocks_[static_cast<size_t>(b)].queue_level >= 0) queue_unlink(b);
}

void BlockPool::release(int32_t b) {
    Block& k = blocks_[static_cast<size_t>(b)];
    if (k.ref_count > 0 && --k.ref_count == 0) release_block(b);
}

int32_t BlockPool::get_free_block() {
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

void BlockPool::onboard(int32_t b) {
    if (blocks_[static_cast<size_t>(b)].level == 0) return;
    // Take a primary slot for the host block; the helper block takes over the host storage.
    int32_t helper = get_free_block();
    blocks_[static_cast<size_t>(b)].level = 0;
    blocks_[static_cast<size_t>(helper)].level = 1;
    release_block(helper);
}

// ---------------------------------------------------------------- reuse tree

void BlockPool::detach_subtree(int32_t b) {
    Block& k = blocks_[static_cast<size_t>(b)];
    if (!k.in_tree) return;
    // Unlink b from its parent's children, then take every block of its subtree out of the tree.
    if (k.prev_sibling >= 0) blocks_[static_cast<size_t>(k.prev_sibling)].next_sibling = k.next_sibling;
    else first_child_of(k.parent) = k.next_sibling;
    if (k.next_sibling >= 0) blocks_[static_cast<size_t>(k.next_sibling)].prev_sibling = k.prev_sibling;
    k.next_sibling = k.prev_sibling = -1;
    ++tree_version_;
    std::vector<int32_t> stack{b};
    while (!stack.empty()) {
        int32_t x = stack.back();
        stack.pop_back();
        Block& kx = blocks_[static_cast<size_t>(x)];
        index_.erase(kx.hash, x);
        kx.in_tree = false;
        kx.parent = kRoot;
        for (int32_t c = kx.first_child; c >= 0;) {
            Block& kc = blocks_[static_cast<size_t>(c)];
            stack.push_back(c);
            int32_t next = kc.next_sibling;
            kc.next_sibling = kc.prev_sibling = -1;
            c = next;
        }
        kx.first_child = -1;
    }
}

void BlockPool::insert_child(int32_t parent, int32_t b, const KeyView& key, uint64_t hash) {
    Block& k = blocks_[static_cast<size_t>(b)];
    k.key = BlockKey(key);
    k.hash = hash;
    k.parent = parent;
    k.in_tree = true;
    k.store_seq = ++store_counter_;
    int32_t& first = first_child_of(parent);
    k.prev_sibling = -1;
    k.next_sibling = first;
    if (first >= 0) blocks_[static_cast<size_t>(first)].prev_sibling = b;
    first = b;
    (parent == kRoot ? root_children_stamp_ : blocks_[static_cast<size_t>(parent)].children_stamp) = k.store_seq;
    index_.insert(hash, b);
    ++tree_version_;
}

int32_t BlockPool::tree_parent(int32_t b) const {
    const Block& k = blocks_[static_cast<size_t>(b)];
    return k.in_tree ? k.parent : -2;
}

BlockPool::Match BlockPool::find_matching_block(int32_t parent, const KeyView& key, uint64_t hash) const {
    Match m;
    if (key.size == 0) return m;
    int32_t exact = find_child(parent, key, hash);
    if (exact >= 0) {
        m.block = exact;
        m.num_matched = key.size;
        m.partial = static_cast<int32_t>(blocks_[static_cast<size_t>(exact)].key.tokens.size()) != tokens_per_block_;
        return m;
    }
    if (!enable_partial_reuse_) return m;
    uint64_t best_seq = 0;
    for (int32_t b = first_child_of(parent); b >= 0; b = blocks_[static_cast<size_t>(b)].next_sibling) {
        const Block& c = blocks_[static_cast<size_t>(b)];
        bool eligible = copy_on_partial_reuse_ || (c.ref_count == 0 && c.first_child < 0);
        if (!eligible) continue;
        int32_t n = num_matching_tokens(key, c.key.view());
        // Longest match wins; among equals, the earliest stored.
        if (n > 0 && (n > m.num_matched || (n == m.num_matched && c.store_seq < best_seq))) {
            m.block = b;
            m.num_matched = n;
            best_seq = c.store_seq;
        }
    }
    m.partial = m.block >= 0;
    return m;
}

void BlockPool::store_blocks(const KeyChain& keys, const std::vector<int32_t>& ids) {
    int32_t search = kRoot;
    bool need_match = true;
    size_t n = std::min(keys.keys.size(), ids.size());
    for (size_t i = 0; i < n; ++i) {
        int32_t b = ids[i];
        if (need_match) {
            int32_t cached = find_child(search, keys.keys[i], keys.hashes[i]);
            if (cached >= 0) {  // identical content already cached (maybe another block)
                search = cached;
                continue;
            }
            need_match = false;
        }
        detach_subtree(b);  // a block lives at one tree position at most
        insert_child(search, b, keys.keys[i], keys.hashes[i]);
        search = b;
    }
}

int32_t BlockPool::count_blocks_needed(const KeyChain& keys) const {
    // Free blocks the walk of allocate_with_reuse will take: every position costs one, except a
    // full match of a block another sequence holds. Without a host pool nothing is evicted
    // before the last match, so the count is exact. Onboarding a host block takes a primary
    // block, which may evict a cached parent and cut a held child out of the tree; after the
    // first onboarding every position is therefore charged one (a safe upper bound).
    int32_t needed = 0;
    int32_t search = kRoot;
    bool searching = true, onboarded = false;
    for (size_t i = 0; i < keys.keys.size(); ++i) {
        Match m = searching ? find_matching_block(search, keys.keys[i], keys.hashes[i]) : Match{};
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

int32_t BlockPool::allocate_with_reuse(const KeyChain& keys, std::vector<int32_t>& ids,
                                       std::vector<BlockCopy>* copies) {
    auto take = [&](int32_t b) {
        hold(b);
        ids.push_back(b);
    };
    int32_t matched_tokens = 0;
    int32_t search = kRoot;
    bool searching = true;
    for (size_t i = 0; i < keys.keys.size(); ++i) {
        const KeyView& key = keys.keys[i];
        Match m = searching ? find_matching_block(search, key, keys.hashes[i]) : Match{};
        if (m.block < 0) {
            int32_t b = get_free_block();
            blocks_[static_cast<size_t>(b)].key = BlockKey(key);
            take(b);
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
            take(m.block);
            search = m.block;
            continue;
        }
        if (mb.ref_count > 0 || mb.first_child >= 0) {
            // Copy the matched tokens into a fresh block; the original stays shared.
            int32_t b = get_free_block();
            blocks_[static_cast<size_t>(b)].key = BlockKey(key);
            take(b);
            if (copies) copies->push_back(BlockCopy{m.block, b, m.num_matched});
        } else {
            // Take over the unreferenced leaf.
            detach_subtree(m.block);
            claim_block(m.block);
            onboard(m.block);
            take(m.block);
        }
        searching = false;
    }
    return matched_tokens;
}

// ---------------------------------------------------------------- introspection

void BlockPool::check_block_id(int32_t b) const {
    if (b < 0 || b >= num_total_) fail_index("block id out of range");
}

int32_t BlockPool::num_cached_blocks() const {
    int32_t n = 0;
    for (const Block& b : blocks_) n += b.in_tree ? 1 : 0;
    return n;
}

std::vector<int32_t> BlockPool::free_queue(int32_t level) const {
    if (level != 0 && level != 1) fail_input("free_queue: level must be 0 (primary) or 1 (secondary)");
    std::vector<int32_t> out;
    for (int32_t p = 0; p < kNumPriorities; ++p)
        for (int32_t b = head_[level][p]; b >= 0; b = blocks_[static_cast<size_t>(b)].next) out.push_back(b);
    return out;
}

void BlockPool::check_invariants(const std::vector<int32_t>& holders) const {
    int32_t in_queue[2] = {0, 0}, primary = 0, in_tree = 0;
    for (int32_t b = 0; b < num_total_; ++b) {
        const Block& k = blocks_[static_cast<size_t>(b)];
        const std::string id = "block " + std::to_string(b);
        if (k.ref_count < 0) fail_invariant(id + ": negative ref count");
        if (k.ref_count != holders[static_cast<size_t>(b)]) fail_invariant(id + ": ref count differs from sequence holdings");
        if ((k.ref_count == 0) != (k.queue_level >= 0)) fail_invariant(id + ": free iff unreferenced is broken");
        if (k.queue_level >= 0) {
            if (k.queue_level != k.level) fail_invariant(id + ": in the free queue of the wrong level");
            ++in_queue[k.queue_level];
        }
        primary += k.level == 0 ? 1 : 0;
        if (k.in_tree) {
            ++in_tree;
            if (k.hash != chain_hash(hash_of(k.parent), k.key.view())) fail_invariant(id + ": hash is not its key's chained hash");
            if (index_.find(k.hash, [&](int32_t x) { return x == b; }) != b) fail_invariant(id + ": missing from the hash index");
            auto same_place = [&](int32_t x) {
                const Block& kx = blocks_[static_cast<size_t>(x)];
                return kx.parent == k.parent && same_key(kx.key.view(), k.key.view());
            };
            if (index_.find(k.hash, same_place) != b) fail_invariant(id + ": another cached sibling has its key");
            if (k.parent != kRoot && !blocks_[static_cast<size_t>(k.parent)].in_tree) fail_invariant(id + ": parent left the tree");
            int32_t sib = first_child_of(k.parent);
            while (sib >= 0 && sib != b) sib = blocks_[static_cast<size_t>(sib)].next_sibling;
            if (sib != b) fail_invariant(id + ": not in its parent's child list");
            int32_t next = k.next_sibling;
            if (next >= 0 && blocks_[static_cast<size_t>(next)].store_seq >= k.store_seq)
                fail_invariant(id + ": its parent's children are not listed newest first");
        } else if (k.first_child >= 0) {
            fail_invariant(id + ": detached block keeps children");
        }
    }
    if (primary != num_primary_) fail_invariant("number of primary blocks changed");
    if (in_tree != index_.size()) fail_invariant("the hash index holds blocks that left the tree");
    for (int32_t lv = 0; lv < 2; ++lv) {
        if (in_queue[lv] != num_free_[lv]) fail_invariant("free count differs from queue contents");
        if (static_cast<int32_t>(free_queue(lv).size()) != num_free_[lv]) fail_invariant("free queue links broken");
    }
}

}  // namespace tllm
