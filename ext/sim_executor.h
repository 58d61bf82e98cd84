// ext/sim_executor.h: a GPU-less executor step: pause, allocate, advance chunks, append, complete.
//
// No Python twin: the scenario replay (tllm_sched/replay.py) and the benchmark
// (tllm_sched/bench_workloads.py) both call it after the scheduler, as the executor half of a
// step: free and restart the paused, allocate and advance the scheduled, append one token each.
#pragma once

#include <memory>
#include <vector>

#include "kv_cache_manager.h"

namespace tllm {

class SimExecutor {
public:
    SimExecutor(std::shared_ptr<RequestTable> table, std::shared_ptr<KVCacheManager> kv,
                std::shared_ptr<KVCacheManager> cross_kv, int32_t max_input_len);

    /// Applies one step's decisions; appends completed slots to `finished` (completion order).
    /// `generated_token` is the token id appended for every request that produces one.
    void apply(const int32_t* paused, int32_t num_paused, const int32_t* disagg, int32_t num_disagg,
               const int32_t* execute, int32_t num_execute, int32_t generated_token, std::vector<int32_t>& finished);

    int64_t tokens_appended() const { return tokens_appended_; }
    const RequestTable& table() const { return *table_; }

private:
    /// Phase 1 of apply: every check, no change. Throws InputError naming the first problem.
    void validate(const int32_t* paused, int32_t num_paused, const int32_t* disagg, int32_t num_disagg,
                  const int32_t* execute, int32_t num_execute) const;
    /// Blocks this step may take from `kv` at most, and the blocks the pauses release exactly.
    void block_budget(const KVCacheManager& kv, bool cross, const int32_t* paused, int32_t num_paused,
                      const int32_t* disagg, int32_t num_disagg, const int32_t* execute, int32_t num_execute) const;
    void add_sequences(int32_t slot);
    void complete_if_done(int32_t slot, std::vector<int32_t>& finished);
    void sort_by_id(const int32_t* slots, int32_t n, std::vector<int32_t>& out) const;

    std::shared_ptr<RequestTable> table_;
    std::shared_ptr<KVCacheManager> kv_, cross_kv_;  ///< shared; may be null
    int32_t max_input_len_;
    int64_t tokens_appended_ = 0;  ///< statistics: tokens appended over the run
    std::vector<int32_t> order_;   ///< scratch
};

}  // namespace tllm
