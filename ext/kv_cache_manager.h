// ext/kv_cache_manager.h: the sequences of a paged KV cache (TensorRT-LLM's KVCacheManager, one window).
//
// Python twin: the `KVCacheManager` binding (tllm_sched._core) used by tllm_sched/policies/*.py.
// Which blocks each request holds, on top of the block pool (block_pool.h): add_sequence with
// reuse, add_token, store/remove; the scheduling-time snapshot of free blocks; and the estimates
// the schedulers ask per request. Sequences are indexed by request slot of one RequestTable, so
// every per-request query is an array access, not a hash lookup.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "block_pool.h"
#include "hash_index.h"
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
    /// TensorRT-LLM's per-layer windows: when given, every entry must be max_seq_len (one window).
    std::optional<std::vector<int32_t>> max_attention_window_vec;
    int32_t sink_token_length = 0;     ///< must be 0: sink tokens are not modelled
};

class KVCacheManager {
public:
    KVCacheManager(std::shared_ptr<RequestTable> table, const KvCacheConfig& cfg);
    ~KVCacheManager();
    KVCacheManager(const KVCacheManager&) = delete;
    KVCacheManager& operator=(const KVCacheManager&) = delete;

    const KvCacheConfig& config() const { return cfg_; }
    const RequestTable& table() const { return *table_; }
    const std::shared_ptr<RequestTable>& table_ptr() const { return table_; }
    const BlockPool& pool() const { return pool_; }
    /// Throws InputError unless `window` is absent or this cache's one window (max_seq_len).
    void check_window(std::optional<int32_t> window) const;

    // --- sequences (harness / executor side) ---
    /// Allocates ceil(input_length / tpb) blocks, reusing cached ones when reuse is on. All checks
    /// happen before any change: on InputError the cache and the request are as before. A partially
    /// reused block copied into a fresh one is appended to `copies` when given (the data to copy).
    void add_sequence(int32_t slot, int32_t input_length, int32_t beam_width, std::vector<BlockCopy>* copies = nullptr);
    /// One more KV token; allocates a block at a block boundary.
    void add_token(int32_t slot);
    /// Inserts the full blocks of the first (tokens - 1) tokens into the reuse tree.
    void store_context_blocks(int32_t slot);
    /// Releases the sequence's blocks in reverse order, storing them for reuse first if asked.
    void remove_sequence(int32_t slot, bool store_for_reuse);
    bool has_sequence(int32_t slot) const { return seq_live_[static_cast<size_t>(slot)] != 0; }
    const std::vector<int32_t>& block_ids(int32_t slot) const { return seq_blocks_[static_cast<size_t>(slot)]; }
    int32_t sequence_num_tokens(int32_t slot) const { return seq_tokens_[static_cast<size_t>(slot)]; }
    /// Blocks the slot's sequence holds, 0 without one.
    int32_t sequence_num_blocks(int32_t slot) const {
        return has_sequence(slot) ? static_cast<int32_t>(block_ids(slot).size()) : 0;
    }

    // --- scheduling-time accounting ---
    void start_scheduling();
    bool scheduling_has_free_blocks(int64_t n) const { return sched_free_ >= n; }
    int32_t scheduling_free_blocks() const { return sched_free_; }
    /// Simulates releasing the sequence in the snapshot; returns the snapshot's free count after.
    int32_t scheduling_remove_sequence(int32_t slot);
    /// The estimates (one window); the schedulers call them per request.
    int32_t get_remaining_blocks_to_completion(int32_t slot) const;
    int32_t get_needed_blocks_one_step(int32_t slot, bool two_steps_look_ahead) const;
    /// First uncached full-block prefix key of the request's tokens, or nullopt.
    std::optional<BlockKey> find_new_context_block(int32_t slot) const;
    /// The same key as an integer id, -1 for none. Equal ids mean equal keys among all calls since
    /// the last `new_pass` call (the ids are interned in scratch state; the tree is not touched).
    /// Continuing a pass after the tree or any request's tokens changed (other than by appending)
    /// is an InputError: ids are compared through tree nodes, which must still mean the same.
    int64_t find_new_context_block_id(int32_t slot, bool new_pass);
    /// Step B of reuse skipping on the pass's interned keys: claims the request's key if no
    /// request of the pass claimed it yet. Returns kNoKey, kClaimed or kClaimedBefore (skip).
    enum Claim : int8_t { kNoKey = 0, kClaimed = 1, kClaimedBefore = 2 };
    Claim claim_new_context_block(int32_t slot, bool new_pass);
    /// find_new_context_block_id of `n` slots into `ids`; the first starts a new pass unless
    /// `continue_pass` (then the ids compare with those of the calls since the last new pass).
    void find_new_context_block_ids(const int32_t* slots, int32_t n, bool continue_pass, int64_t* ids);
    /// Attention-DP routing (TensorRT-LLM's probe_prefix_match_length, for many prompts at once): the
    /// leading tokens of each prompt found in the reuse tree, in whole blocks. The full blocks of the
    /// prompt without its last token (never reused, as in add_sequence) are matched exactly from the
    /// root. Prompt i is tokens[offsets[i], offsets[i + 1]) with LoRA task lora_task_ids[i] (-1 or a
    /// null array: none). A dry run: changes nothing, not even statistics. 0 without block reuse.
    void probe_prefix_match_lengths(const int32_t* tokens, const int64_t* offsets, int32_t n,
                                    const int64_t* lora_task_ids, int32_t* out) const;

    // --- counts ---
    int32_t num_free_blocks() const { return pool_.num_free_blocks(); }  ///< primary, cached blocks included
    int32_t num_free_secondary_blocks() const { return pool_.num_free_secondary_blocks(); }
    /// [primary, secondary] free counts in fixed storage, for a zero-copy view.
    const int32_t* free_block_counts() const { return pool_.free_block_counts(); }
    int32_t max_num_blocks() const { return pool_.max_num_blocks(); }  ///< primary + secondary
    int32_t num_used_blocks() const { return pool_.max_num_blocks() - pool_.num_free_blocks(); }
    int32_t num_cached_blocks() const { return pool_.num_cached_blocks(); }  ///< blocks in the reuse tree
    const KvCacheStats& stats() const { return pool_.stats(); }
    int64_t num_key_walks() const { return key_walks_; }  ///< skip-key questions so far (remembered walks too)
    int64_t num_blocks_hashed() const { return blocks_hashed_; }  ///< chained block hashes computed so far
    /// Block keys (and skip keys) compared to confirm a hash match, so far.
    int64_t num_blocks_compared() const { return pool_.blocks_compared() + pass_compared_; }
    int32_t tokens_per_block() const { return cfg_.tokens_per_block; }

    /// Throws std::logic_error describing the first broken invariant.
    void check_invariants() const;

    /// Tests only: masks every chained block hash (block_key.h) so that hashes collide. Refused
    /// (InputError) while a KVCacheManager lives: their hashes would no longer be recomputable.
    static void set_block_hash_mask(uint64_t mask);

private:
    /// Per block, its scheduling ref count of the current pass (initialised on first touch).
    struct SchedulingRef {
        int32_t ref_count = 0;  ///< scratch copy of the pool's ref count, valid when epoch == epoch_
        uint64_t epoch = 0;     ///< start_scheduling pass that last touched ref_count
    };

    /// Per request slot: its chained block hashes, computed once and extended as needed, and
    /// where its last skip-key walk ended. Valid while the slot holds the same request and its
    /// tokens only grew (generation, tokens_version); a walk result is valid while its end node
    /// keeps its place in the tree and gets no new child.
    struct RequestKeys {
        uint32_t generation = 0, tokens_version = 0;  ///< of the request these belong to
        std::vector<uint64_t> hashes;                 ///< chained hashes of its first full blocks
        bool walked = false;                          ///< the fields below hold a walk
        int32_t node = BlockPool::kRoot;              ///< deepest cached block matched
        int32_t depth = 0;                            ///< full blocks matched
        int32_t full_blocks = 0;                      ///< full blocks of the tokens when walked
        uint64_t placement = 0, children = 0;         ///< the node's placement and children stamps
        uint64_t key_hash = 0;  ///< tokens + LoRA chained hash through the first new block
    };
    /// One interned skip key of the current pass: the request that first had it.
    struct PassKey {
        int32_t slot, node, depth;
        uint64_t hash;
        bool claimed;  ///< by a request of the pass (claim_new_context_block)
    };

    /// The slot's hash and walk memo, reset first if it belongs to an earlier request or tokens.
    RequestKeys& request_keys(int32_t slot) const;
    /// Ensures the chained hashes of the first `n` full blocks (n <= full blocks of the tokens).
    const uint64_t* block_hashes(int32_t slot, RequestKeys& r, int32_t n) const;
    KeyView block_view(int32_t slot, int32_t block, int32_t size) const;
    /// The slot's first `num_tokens` tokens as block keys with their hashes (a partial last
    /// block unless `full_only`).
    KeyChain key_chain(int32_t slot, int32_t num_tokens, bool full_only) const;
    /// The skip-key walk: resumes from the memo when it may, else from the root.
    const RequestKeys& walk(int32_t slot) const;
    bool same_pass_key(int32_t slot, const RequestKeys& r, const PassKey& p) const;
    void add_block_to_sequence(int32_t slot, int32_t b);
    void check_slot_has_sequence(int32_t slot, const char* what) const;

    std::shared_ptr<RequestTable> table_;  ///< shared; requests are read by slot
    KvCacheConfig cfg_;                    ///< checked
    BlockPool pool_;
    int32_t sched_free_ = 0;               ///< scheduling snapshot of free primary blocks
    uint64_t epoch_ = 0;                   ///< current start_scheduling pass
    std::vector<SchedulingRef> sched_refs_;  ///< by block id
    // Sequences by request slot (table capacity entries; owned).
    std::vector<uint8_t> seq_live_;                 ///< 1 if the slot has a sequence here
    std::vector<int32_t> seq_tokens_;               ///< KV tokens of the sequence
    std::vector<std::vector<int32_t>> seq_blocks_;  ///< block ids in allocation order (beam 0)
    std::vector<uint64_t> seq_sched_removed_;       ///< pass (epoch) that scheduling-removed it
    mutable std::vector<RequestKeys> request_keys_;  ///< by slot (memo: only ever recomputable data)
    std::vector<PassKey> pass_keys_;                 ///< scratch: interned skip keys of a pass, by id
    HashIndex pass_index_;                           ///< pass_keys_ ids by key hash
    uint64_t pass_tree_version_ = 0, pass_tokens_epoch_ = 0;  ///< the world the pass's ids refer to
    mutable int64_t key_walks_ = 0;      ///< statistics: find_new_context_block calls
    mutable int64_t blocks_hashed_ = 0;  ///< statistics: chained block hashes computed
    mutable int64_t pass_compared_ = 0;  ///< statistics: skip keys compared to confirm a hash
    static int64_t live_managers_;       ///< KVCacheManagers alive (set_block_hash_mask's guard)
};

}  // namespace tllm
