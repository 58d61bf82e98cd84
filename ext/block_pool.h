// ext/block_pool.h: the KV-cache blocks: ref counts, LRU free queues by priority, the reuse tree.
//
// Part of TensorRT-LLM's BlockManager (one window): blocks with ref counts, LRU free queues per
// storage level (primary, secondary) and retention priority, and the reuse tree of cached block
// contents with full and partial matching. The tree finds a child by its chained hash
// (block_key.h) in one flat index and confirms it by comparing keys. Which request holds which
// blocks is the sequence manager's (kv_cache_manager.h); the pool only counts holders.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "block_key.h"
#include "hash_index.h"

namespace tllm {

/// A partially reused block copied into a fresh one: the executor copies the KV data of the first
/// `num_tokens` token positions of block `src` into block `dst` before the model runs.
struct BlockCopy {
    int32_t src = -1;
    int32_t dst = -1;
    int32_t num_tokens = 0;
};

/// Block statistics (TensorRT-LLM's KvCacheStats counters).
struct KvCacheStats {
    int64_t alloc_total_blocks = 0;  ///< every block taken from a free queue
    int64_t alloc_new_blocks = 0;    ///< ... of which held no tokens
    int64_t reused_blocks = 0;       ///< context blocks matched in the reuse tree (full or partial)
    int64_t missed_blocks = 0;       ///< context blocks allocated fresh
    /// Reused among the context blocks looked up in the tree (0 before any).
    double cache_hit_rate() const {
        int64_t looked = reused_blocks + missed_blocks;
        return looked ? static_cast<double>(reused_blocks) / static_cast<double>(looked) : 0.0;
    }
};

/// A request's blocks as the pool's walks take them: keys in order, each with its chained hash
/// (the hash of an empty key is never used: an empty key never matches).
struct KeyChain {
    std::vector<KeyView> keys;
    std::vector<uint64_t> hashes;
};

class BlockPool {
public:
    static constexpr int32_t kMaxBlocks = 1 << 22;  ///< primary + secondary (~170 bytes of metadata each)
    static constexpr int32_t kDefaultPriority = 35;
    static constexpr int32_t kNumPriorities = 101;
    static constexpr int32_t kSecondaryOffloadMinPriority = 30;
    static constexpr int32_t kRoot = -1;  ///< the reuse tree's root, parent of the first blocks

    /// Sizes are checked by the caller (KVCacheManager). Every block starts free, primary first.
    BlockPool(int32_t num_primary, int32_t num_secondary, int32_t tokens_per_block, bool enable_partial_reuse,
              bool copy_on_partial_reuse);

    // --- holding blocks ---
    /// Takes the front free primary block (evicting its cached content) for a new holder-to-be.
    /// The caller has checked that one is free.
    int32_t get_free_block();
    /// One more holder (a beam of a sequence).
    void hold(int32_t b) { ++blocks_[static_cast<size_t>(b)].ref_count; }
    /// One holder fewer; the block joins the back of its free queue when none is left.
    void release(int32_t b);

    // --- reuse tree ---
    /// The cached child of `parent` (kRoot for the root) with exactly this key, or -1. `hash` is
    /// the key's chained hash after `parent` (the request's own chain when the walk follows it);
    /// a candidate with that hash is confirmed by comparing keys.
    int32_t find_child(int32_t parent, const KeyView& key, uint64_t hash) const {
        return index_.find(hash, [&](int32_t b) {
            ++blocks_compared_;
            return is_child(b, parent, key);
        });
    }
    /// find_child for dry runs (the attention-DP probe): the comparisons are not counted.
    int32_t peek_child(int32_t parent, const KeyView& key, uint64_t hash) const {
        return index_.find(hash, [&](int32_t b) { return is_child(b, parent, key); });
    }
    /// Names a node's current place in the tree: equal stamps mean it has stayed there (with its
    /// whole path to the root) since. The root's is 0; a block out of the tree has none (-1).
    uint64_t placement(int32_t node) const {
        if (node == kRoot) return 0;
        const Block& k = blocks_[static_cast<size_t>(node)];
        return k.in_tree ? k.store_seq : ~uint64_t{0};
    }
    /// Changes whenever a child is inserted under the node.
    uint64_t children_stamp(int32_t node) const {
        return node == kRoot ? root_children_stamp_ : blocks_[static_cast<size_t>(node)].children_stamp;
    }
    /// Whether a child inserted under `node` after its children stamp was `stamp` has this
    /// chained hash. A node's children are listed newest first, so only those are looked at.
    bool child_added_since(int32_t node, uint64_t stamp, uint64_t hash) const {
        for (int32_t c = first_child_of(node); c >= 0; c = blocks_[static_cast<size_t>(c)].next_sibling) {
            const Block& k = blocks_[static_cast<size_t>(c)];
            if (k.store_seq <= stamp) return false;
            if (k.hash == hash) return true;
        }
        return false;
    }
    /// Changes whenever a block enters or leaves the tree.
    uint64_t tree_version() const { return tree_version_; }
    /// Free blocks allocate_with_reuse(keys, ...) would take (an upper bound once it onboards).
    int32_t count_blocks_needed(const KeyChain& keys) const;
    /// Holds one block per key, reusing cached ones along the tree walk; appends them to `ids`.
    /// An empty key never matches. Returns the tokens matched. The caller checked the free count.
    /// A partial match copied into a fresh block is appended to `copies` when given.
    int32_t allocate_with_reuse(const KeyChain& keys, std::vector<int32_t>& ids,
                                std::vector<BlockCopy>* copies = nullptr);
    /// Inserts blocks `ids` under the contents `keys` (pairwise) into the tree.
    void store_blocks(const KeyChain& keys, const std::vector<int32_t>& ids);
    /// Block keys compared to confirm a hash match, so far (work statistics).
    int64_t blocks_compared() const { return blocks_compared_; }

    // --- counts ---
    int32_t num_free_blocks() const { return num_free_[0]; }  ///< primary, cached blocks included
    int32_t num_free_secondary_blocks() const { return num_free_[1]; }
    /// [primary, secondary] free counts in fixed storage, for a zero-copy view.
    const int32_t* free_block_counts() const { return num_free_; }
    int32_t max_num_blocks() const { return num_total_; }  ///< primary + secondary
    int32_t num_cached_blocks() const;                      ///< blocks in the reuse tree
    const KvCacheStats& stats() const { return stats_; }

    // --- introspection for tests and invariant checks (cold) ---
    /// Throws std::out_of_range (IndexError) unless 0 <= block < max_num_blocks().
    void check_block_id(int32_t block) const;
    int32_t ref_count(int32_t block) const { return blocks_[static_cast<size_t>(block)].ref_count; }
    bool is_primary(int32_t block) const { return blocks_[static_cast<size_t>(block)].level == 0; }
    bool in_free_queue(int32_t block) const { return blocks_[static_cast<size_t>(block)].queue_level >= 0; }
    bool in_tree(int32_t block) const { return blocks_[static_cast<size_t>(block)].in_tree; }
    /// Tree parent of a cached block: -1 for the root, -2 when not in the tree.
    int32_t tree_parent(int32_t block) const;
    /// Free-queue contents, front first, per level (0 primary, 1 secondary).
    std::vector<int32_t> free_queue(int32_t level) const;
    /// Throws std::logic_error describing the first broken invariant; `holders[b]` is the number
    /// of sequence beams that hold block b.
    void check_invariants(const std::vector<int32_t>& holders) const;

private:
    struct Block {
        int32_t ref_count = 0;         ///< beams of live sequences holding the block
        int32_t parent = kRoot;        ///< tree parent (kRoot) when in_tree
        int32_t prev = -1, next = -1;  ///< free-queue links
        int16_t priority = kDefaultPriority;  ///< retention priority (0..100)
        int8_t level = 0;              ///< 0 primary, 1 secondary storage
        int8_t queue_level = -1;       ///< free queue level it sits in, -1 when claimed
        int16_t queue_priority = 0;    ///< free queue priority it sits in
        bool in_tree = false;          ///< reachable from the reuse-tree root
        int32_t first_child = -1;      ///< tree children, newest first: a list through next/prev_sibling
        int32_t next_sibling = -1, prev_sibling = -1;
        uint64_t store_seq = 0;        ///< order of insertion into the tree (earliest wins ties)
        uint64_t children_stamp = 0;   ///< store_seq of the last child inserted under it
        uint64_t hash = 0;             ///< chained hash of its key, valid when in_tree
        BlockKey key;                  ///< content; empty tokens: never filled
    };

    int32_t& first_child_of(int32_t parent) {
        return parent == kRoot ? root_first_child_ : blocks_[static_cast<size_t>(parent)].first_child;
    }
    int32_t first_child_of(int32_t parent) const {
        return parent == kRoot ? root_first_child_ : blocks_[static_cast<size_t>(parent)].first_child;
    }
    bool is_child(int32_t b, int32_t parent, const KeyView& key) const {
        const Block& k = blocks_[static_cast<size_t>(b)];
        return k.parent == parent && same_key(k.key.view(), key);
    }
    uint64_t hash_of(int32_t node) const { return node == kRoot ? kRootHash : blocks_[static_cast<size_t>(node)].hash; }
    // free queues
    void queue_push(int32_t b, bool to_front);
    void queue_unlink(int32_t b);
    int32_t queue_front(int32_t level, int32_t* priority_out) const;
    void release_block(int32_t b, bool to_front = false);
    void claim_block(int32_t b);
    void onboard(int32_t b);
    // tree
    void detach_subtree(int32_t b);
    void insert_child(int32_t parent, int32_t b, const KeyView& key, uint64_t hash);
    struct Match {
        int32_t block = -1;
        int32_t num_matched = 0;
        bool partial = false;
    };
    Match find_matching_block(int32_t parent, const KeyView& key, uint64_t hash) const;

    int32_t num_primary_;                ///< primary blocks (ids 0 .. num_primary - 1 at start)
    int32_t num_total_;                  ///< primary + secondary blocks
    int32_t tokens_per_block_;
    bool enable_partial_reuse_;          ///< match a block's leading tokens
    bool copy_on_partial_reuse_;         ///< copy a partially matched block instead of taking it over
    std::vector<Block> blocks_;          ///< owned; indexed by block id
    int32_t root_first_child_ = -1;      ///< the tree root's children (root id -1)
    uint64_t root_children_stamp_ = 0;
    HashIndex index_;                    ///< the blocks in the tree by chained hash
    uint64_t tree_version_ = 0;          ///< bumped whenever a block enters or leaves the tree
    mutable int64_t blocks_compared_ = 0;
    int32_t head_[2][kNumPriorities];    ///< free-queue fronts per level and priority
    int32_t tail_[2][kNumPriorities];    ///< free-queue backs
    int32_t num_free_[2] = {0, 0};       ///< blocks in free queues per level
    uint64_t store_counter_ = 0;         ///< tree insertion counter
    KvCacheStats stats_;
};

}  // namespace tllm
