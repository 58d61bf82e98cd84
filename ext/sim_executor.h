// ext/sim_executor.h: a GPU-less executor step: the executor's step (executor.h) in the replay
// loop's order, fed with a synthetic token.
//
// No Python twin: the scenario replay (tllm_sched/replay.py) and the benchmark
// (tllm_sched/bench_workloads.py) both call it after the scheduler, as the executor half of a
// step: free and restart the paused, allocate and advance the scheduled, append one token each.
#pragma once

#include <memory>
#include <vector>

#include "executor.h"

namespace tllm {

class SimExecutor {
public:
    SimExecutor(std::shared_ptr<RequestTable> table, std::shared_ptr<KVCacheManager> kv,
                std::shared_ptr<KVCacheManager> cross_kv, int32_t max_input_len)
        : executor_(std::move(table), std::move(kv), std::move(cross_kv), max_input_len) {}

    /// Applies one step's decisions; appends completed slots to `finished` (completion order).
    /// `generated_token` is the token id appended for every request that produces one.
    void apply(const int32_t* paused, int32_t num_paused, const int32_t* disagg, int32_t num_disagg,
               const int32_t* execute, int32_t num_execute, int32_t generated_token, std::vector<int32_t>& finished) {
        executor_.apply_in_replay_order(paused, num_paused, disagg, num_disagg, execute, num_execute, generated_token,
                                        finished);
    }

    int64_t tokens_appended() const { return executor_.tokens_appended(); }
    const RequestTable& table() const { return executor_.table(); }

private:
    Executor executor_;
};

}  // namespace tllm
