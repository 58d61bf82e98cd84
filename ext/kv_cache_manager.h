// ext/kv_cache_manager.h: paged KV-cache block manager (TensorRT-LLM's KVCacheManager, G1, one window).
//
// Python twin: the `KVCacheManager` binding (tllm_sched/_core) used by tllm_sched/policies/*.py.
// Mirrors kvcache.md §6.1: block pool with ref counts, LRU free queues by priority level, the reuse
// tree with full and partial matching, add_sequence with reuse, store/release, and the
// scheduling-time accounting with the G1 estimates of §1.12. Sequences are indexed by request
// slot of one RequestTable, so every per-request query is an array access, not a hash lookup.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

#include "request_table.h"

namespace tllm {

struct KvCacheConfig {
    int32_t tokens_per_block = 0;      ///< tokens per block (tpb)
    int32_t num_blocks = 0;            ///< primary blocks
    int32_t max_seq_len = 0;           ///< also the single attention window
    bool enable_block_reuse = false;   ///< prefix reuse through the reuse tree
    bool enable_partial_reuse = true;  ///< match a block's leading tokens
    bool copy_on_partial_reuse = true; ///< copy a partially matched block instead of taking it over
    int32_t num_secondary_blocks = 0;  ///< host blocks (moved logically, no data)
    bool cross_kv = false;             ///< cross-attention cache: sized by encoder_output_len
};

/// Content key of one block (kvcache.md §4.1, without multimodal keys and cache salt).
struct BlockKey {
    int64_t lora_task_id = -1;        ///< -1: none
    bool uses_extra_ids = false;      ///< the request's prompt carried extra ids
    std::vector<int32_t> tokens;      ///< at most tpb token ids
    std::vector<uint64_t> extra_ids;  ///< per token, empty unless uses_extra_ids
    bool operator==(const BlockKey& o) const {
        return lora_task_id == o.lora_task_id && uses_extra_ids == o.uses_extra_ids && tokens == o.tokens &&
               extra_ids == o.extra_ids;
    }
    /// Common leading tokens with `o` when everything but the tokens is equal, else 0.
    int32_t num_matching_tokens(const BlockKey& o) const;
};

struct BlockKeyHash {
    size_t operator()(const BlockKey& k) const;
};

/// Block statistics (kvcache.md §1.4).
struct KvCacheStats {
    int64_t alloc_total_blocks = 0;  ///< every block taken from a free queue
    int64_t alloc_new_blocks = 0;    ///< ... of which held no tokens
    int64_t reused_blocks = 0;       ///< context blocks matched in the reuse tree (full or partial)
    int64_t missed_blocks = 0;       ///< context blocks allocated fresh
};

class KVCacheManager {
public:
    static constexpr int32_t kMaxBlocks = 1 << 22;  ///< primary + secondary (~170 bytes of metadata each)
    static constexpr int32_t kDefaultPriority = 35;
    static constexpr int32_t kNumPriorities = 101;
    static constexpr int32_t kSecondaryOffloadMinPriority = 30;

    KVCacheManager(std::shared_ptr<RequestTable> table, const KvCacheConfig& cfg);
    ~KVCacheManager();
    KVCacheManager(const KVCacheManager&) = delete;
    KVCacheManager& operator=(const KVCacheManager&) = delete;

    const KvCacheConfig& config() const { return cfg_; }
    const RequestTable& table() const { return *table_; }

    // --- sequences (harness / executor side) ---
    /// Allocates ceil(input_length / tpb) blocks, reusing cached ones when reuse is on. All checks
    /// happen before any change: on InputError the cache and the request are as before.
    void add_sequence(int32_t slot, int32_t input_length, int32_t beam_width);
    /// One more KV token; allocates a block at a block boundary.
    void add_token(int32_t slot);
    /// Inserts the full blocks of the first (tokens - 1) tokens into the reuse tree.
    void store_context_blocks(int32_t slot);
    /// Releases the sequence's blocks in reverse order, storing them for reuse first if asked.
    void remove_sequence(int32_t slot, bool store_for_reuse);
    bool has_sequence(int32_t slot) const { return seq_live_[static_cast<size_t>(slot)] != 0; }
    const std::vector<int32_t>& block_ids(int32_t slot) const { return seq_blocks_[static_cast<size_t>(slot)]; }
    int32_t sequence_num_tokens(int32_t slot) const { return seq_tokens_[static_cast<size_t>(slot)]; }

    // --- scheduling-time accounting (kvcache.md §2.1) ---
    void start_scheduling();
    bool scheduling_has_free_blocks(int64_t n) const { return sched_free_ >= n; }
    int32_t scheduling_free_blocks() const { return sched_free_; }
    /// Simulates releasing the sequence in the snapshot; returns the snapshot's free count after.
    int32_t scheduling_remove_sequence(int32_t slot);
    /// G1 estimates (kvcache.md §1.12), one window; the schedulers call them per request.
    int32_t get_remaining_blocks_to_completion(int32_t slot) const;
    int32_t get_needed_blocks_one_step(int32_t slot, bool two_steps_look_ahead) const;
    /// First uncached full-block prefix key of the request's tokens, or nullopt (kvcache.md §1.11).
    std::optional<BlockKey> find_new_context_block(int32_t slot) const;
    /// The same key as an integer id, -1 for none. Equal ids mean equal keys among all calls since
    /// the last `new_pass` call (the ids are interned in scratch state; the tree is not touched).
    int64_t find_new_context_block_id(int32_t slot, bool new_pass);
    /// Attention-DP routing (TensorRT-LLM's probe_prefix_match_length, for many prompts at once): the
    /// leading tokens of each prompt found in the reuse tree, in whole blocks. The full blocks of the
    /// prompt without its last token (never reused, as in add_sequence) are matched exactly from the
    /// root. Prompt i is tokens[offsets[i], offsets[i + 1]) with LoRA task lora_task_ids[i] (-1 or a
    /// null array: none). A dry run: changes nothing, not even statistics. 0 without block reuse.
    void probe_prefix_match_lengths(const int32_t* tokens, const int64_t* offsets, int32_t n,
                                    const int64_t* lora_task_ids, int32_t* out) const;

    // --- counts ---
    int32_t num_free_blocks() const { return num_free_[0]; }  ///< primary, cached blocks included
    int32_t num_free_secondary_blocks() const { return num_free_[1]; }
    /// [primary, secondary] free counts in fixed storage, for a zero-copy view.
    const int32_t* free_block_counts() const { return num_free_; }
    int32_t max_num_blocks() const { return num_total_; }      ///< primary + secondary
    int32_t num_used_blocks() const { return num_total_ - num_free_[0]; }
    int32_t num_cached_blocks() const;  ///< blocks in the reuse tree
    const KvCacheStats& stats() const { return stats_; }
    int64_t num_key_walks() const { return key_walks_; }  ///< find_new_context_block calls so far
    int32_t tokens_per_block() const { return cfg_.tokens_per_block; }

    // --- introspection for tests and invariant checks (cold) ---
    int32_t ref_count(int32_t block) const { return blocks_[static_cast<size_t>(block)].ref_count; }
    bool is_primary(int32_t block) const { return blocks_[static_cast<size_t>(block)].level == 0; }
    bool in_free_queue(int32_t block) const { return blocks_[static_cast<size_t>(block)].queue_level >= 0; }
    bool in_tree(int32_t block) const { return blocks_[static_cast<size_t>(block)].in_tree; }
    /// Tree parent of a cached block: -1 for the root, -2 when not in the tree.
    int32_t tree_parent(int32_t block) const;
    /// Free-queue contents, front first, per level (0 primary, 1 secondary).
    std::vector<int32_t> free_queue(int32_t level) const;
    /// Throws std::logic_error describing the first broken invariant.
    void check_invariants() const;

private:
    static constexpr int32_t kRoot = -1;
    struct Block {
        int32_t ref_count = 0;         ///< beams of live sequences holding the block
        int32_t sched_ref_count = 0;   ///< scratch copy of ref_count, valid when sched_epoch == epoch
        uint64_t sched_epoch = 0;      ///< start_scheduling pass that last touched sched_ref_count
        int32_t parent = kRoot;        ///< tree parent (kRoot) when in_tree
        int32_t prev = -1, next = -1;  ///< free-queue links
        int16_t priority = kDefaultPriority;  ///< retention priority (0..100)
        int8_t level = 0;              ///< 0 primary, 1 secondary storage
        int8_t queue_level = -1;       ///< free queue level it sits in, -1 when claimed
        int16_t queue_priority = 0;    ///< free queue priority it sits in
        bool in_tree = false;          ///< reachable from the reuse-tree root
        uint64_t store_seq = 0;        ///< order of insertion into the tree (earliest wins ties)
        BlockKey key;                  ///< content; empty tokens: never filled
        std::unordered_map<BlockKey, int32_t, BlockKeyHash> children;  ///< tree children by key
    };
    using Children = std::unordered_map<BlockKey, int32_t, BlockKeyHash>;

    Children& children_of(int32_t parent) { return parent == kRoot ? root_children_ : blocks_[static_cast<size_t>(parent)].children; }
    const Children& children_of(int32_t parent) const {
        return parent == kRoot ? root_children_ : blocks_[static_cast<size_t>(parent)].children;
    }
    // free queues
    void queue_push(int32_t b, bool to_front);
    void queue_unlink(int32_t b);
    int32_t queue_front(int32_t level, int32_t* priority_out) const;
    void release_block(int32_t b, bool to_front = false);
    void claim_block(int32_t b);
    int32_t get_free_block();
    void onboard(int32_t b);
    // tree
    void detach_subtree(int32_t b);
    void insert_child(int32_t parent, int32_t b, BlockKey key);
    struct Match {
        int32_t block = -1;
        int32_t num_matched = 0;
        bool partial = false;
    };
    Match find_matching_block(int32_t parent, const BlockKey& key) const;
    std::vector<BlockKey> build_keys(int32_t slot, int32_t num_tokens, bool full_only) const;
    void store_blocks(const std::vector<BlockKey>& keys, const std::vector<int32_t>& ids);
    // sequences
    int32_t count_blocks_needed(int32_t slot, const std::vector<BlockKey>& keys) const;
    void add_block_to_sequence(int32_t slot, int32_t b);
    int32_t allocate_with_reuse(int32_t slot, const std::vector<BlockKey>& keys);
    void check_slot_has_sequence(int32_t slot, const char* what) const;

    std::shared_ptr<RequestTable> table_;  ///< shared; requests are read by slot
    KvCacheConfig cfg_;
    int32_t num_total_;                    ///< primary + secondary blocks
    std::vector<Block> blocks_;            ///< owned; indexed by block id
    Children root_children_;               ///< the tree root's children (root id -1)
    int32_t head_[2][kNumPriorities];      ///< free-queue fronts per level and priority
    int32_t tail_[2][kNumPriorities];      ///< free-queue backs
    int32_t num_free_[2] = {0, 0};         ///< blocks in free queues per level
    int32_t sched_free_ = 0;               ///< scheduling snapshot of free primary blocks
    uint64_t epoch_ = 0;                   ///< current start_scheduling pass
    uint64_t store_counter_ = 0;           ///< tree insertion counter
    KvCacheStats stats_;
    // Sequences by request slot (table capacity entries; owned).
    std::vector<uint8_t> seq_live_;                 ///< 1 if the slot has a sequence here
    std::vector<int32_t> seq_tokens_;               ///< KV tokens of the sequence
    std::vector<std::vector<int32_t>> seq_blocks_;  ///< block ids in allocation order (beam 0)
    std::vector<uint64_t> seq_sched_removed_;       ///< pass (epoch) that scheduling-removed it
    std::unordered_map<BlockKey, int64_t, BlockKeyHash> key_ids_;  ///< scratch: interned skip keys of a pass
    mutable int64_t key_walks_ = 0;  ///< statistics: reuse-tree walks for skip keys
};

/// LoRA weight pages (kvcache.md §2.7 / scheduler.md §4.3).
class PeftCacheManager {
public:
    PeftCacheManager(int32_t pages_per_task, int32_t max_device_pages);
    int32_t max_device_pages() const { return max_device_pages_; }
    /// Pages of the request's LoRA task (0 without one).
    int32_t determine_num_pages(const RequestTable& t, int32_t slot) const {
        int64_t task = t.lora_task_id[slot];
        if (task < 0) return 0;
        if (!task_pages_.empty()) {
            auto it = task_pages_.find(task);
            if (it != task_pages_.end()) return it->second;
        }
        return pages_per_task_;
    }
    void set_task_pages(int64_t task_id, int32_t pages);
    int32_t pages_per_task() const { return pages_per_task_; }

private:
    int32_t pages_per_task_;   ///< default pages of a task
    int32_t max_device_pages_; ///< device page capacity
    std::unordered_map<int64_t, int32_t> task_pages_;  ///< per-task overrides
};

}  // namespace tllm
