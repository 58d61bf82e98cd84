// ext/executor.h: the executor's side of a step: what a serving loop calls around its model.
//
// Python twin: none (the `Executor` and `SimExecutor` bindings, ext/bindings/executor.cpp).
// A step of a real loop is two calls, because the KV blocks a step writes must exist before the
// model runs (the slot mapping names them) while the tokens exist only after it:
//   prepare(scheduled)  before the model: pause the paused requests (their blocks go back, they
//                       restart as contexts), give KV blocks to new sequences (prefix reuse may
//                       move a context's position past the cached tokens), and extend every
//                       generation by the block its next token needs;
//   commit(tokens)      after the model: advance context chunks, store finished prompts for reuse,
//                       append the sampled tokens, move states, complete finished requests and
//                       release their blocks.
// Each call checks everything before it changes anything. SimExecutor (sim_executor.h) runs the
// same per-request operations in the replay loop's order (scenario-format.md steps 4-6: request by
// request, each allocated and committed before the next), fed with a synthetic token.
#pragma once

#include <memory>
#include <vector>

#include "kv_cache_manager.h"

namespace tllm {

class Executor {
public:
    Executor(std::shared_ptr<RequestTable> table, std::shared_ptr<KVCacheManager> kv,
             std::shared_ptr<KVCacheManager> cross_kv, int32_t max_input_len);

    // --- a real loop: prepare before the model, commit after it ---
    /// Pauses, allocates and extends for the scheduled step and records its rows (context, then
    /// generation, in the given order). Throws InputError (nothing changed) on any problem.
    void prepare(const int32_t* paused, int32_t num_paused, const int32_t* disagg, int32_t num_disagg,
                 const int32_t* context, int32_t num_context, const int32_t* generation, int32_t num_generation);
    /// Commits the prepared step: `tokens` holds one sampled token per row (entries of rows that
    /// do not finish their prompt are ignored), then one per disagg-generation-init request (its
    /// first token, from the context server). Appends completed slots to `finished`.
    void commit(const int32_t* tokens, int64_t num_tokens, std::vector<int32_t>& finished);
    bool has_prepared_step() const { return prepared_; }
    /// The prepared step's rows: its context requests, then its generation requests.
    const std::vector<int32_t>& rows() const { return rows_; }
    int32_t num_context_rows() const { return num_context_rows_; }
    int32_t num_disagg() const { return static_cast<int32_t>(disagg_.size()); }
    /// Partially reused blocks the prepared step copies: apply them to the KV data before the model.
    const std::vector<BlockCopy>& block_copies() const { return copies_; }
    /// Tokens the prepared step writes (block_tables.h, step_positions).
    int64_t num_step_tokens() const { return num_step_tokens_; }
    /// The most KV blocks a row of the prepared step holds.
    int32_t max_blocks_per_row() const { return max_blocks_per_row_; }

    // --- the replay loop's order (SimExecutor) ---
    /// One step in scenario-format.md's order with `token` as every sampled token: pauses, then
    /// each disagg-generation-init request and each executed request (by ascending id) allocated
    /// and committed in turn. Appends completed slots to `finished` (completion order).
    void apply_in_replay_order(const int32_t* paused, int32_t num_paused, const int32_t* disagg, int32_t num_disagg,
                               const int32_t* execute, int32_t num_execute, int32_t token, std::vector<int32_t>& finished);

    int64_t tokens_appended() const { return tokens_appended_; }
    const RequestTable& table() const { return *table_; }
    const KVCacheManager* kv() const { return kv_.get(); }

private:
    /// Every check of a step, no change. Throws InputError naming the first problem.
    void validate(const char* call, const int32_t* paused, int32_t np, const int32_t* disagg, int32_t nd, const int32_t* execute,
                  int32_t ne) const;
    /// Throws unless the blocks this step may take from `kv` fit its free blocks plus those the
    /// pauses release.
    void check_block_budget(const char* call, const KVCacheManager& kv, bool cross, const int32_t* paused, int32_t np,
                            const int32_t* disagg, int32_t nd, const int32_t* execute, int32_t ne) const;
    /// The per-request operations, in the order a step runs them.
    void pause(int32_t slot);
    void allocate_disagg(int32_t slot);  ///< before the model: its sequence (a transferred context)
    void allocate(int32_t slot);         ///< before the model: a new sequence, or a generation's next slot
    void commit_disagg(int32_t slot, int32_t token, std::vector<int32_t>& finished);
    void commit_row(int32_t slot, int32_t token, std::vector<int32_t>& finished);
    void add_sequences(int32_t slot);
    void complete_if_done(int32_t slot, std::vector<int32_t>& finished);
    void sort_by_id(const int32_t* slots, int32_t n, std::vector<int32_t>& out) const;

    /// What a row looked like after prepare: commit refuses a table changed in between.
    struct RowSnapshot {
        int32_t state, num_tokens, position, chunk;
        uint32_t generation;
    };
    RowSnapshot snapshot(int32_t slot) const;

    std::shared_ptr<RequestTable> table_;
    std::shared_ptr<KVCacheManager> kv_, cross_kv_;  ///< shared; may be null
    int32_t max_input_len_;
    int64_t tokens_appended_ = 0;  ///< statistics: tokens appended over the run
    // The prepared step (owned; reused across steps, never shrunk).
    bool prepared_ = false;
    std::vector<int32_t> rows_, disagg_;
    int32_t num_context_rows_ = 0;
    std::vector<RowSnapshot> snapshots_;  ///< rows, then disagg
    std::vector<BlockCopy> copies_;
    int64_t num_step_tokens_ = 0;
    int32_t max_blocks_per_row_ = 0;
    std::vector<int32_t> order_, scratch_;  ///< scratch
};

}  // namespace tllm
