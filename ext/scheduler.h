// ext/scheduler.h: one scheduling step in one call: capacity, then micro-batch over its fitting list
// (two-stage mode), or the fused single pass (policies/fused.h); first, with a waiting queue, the
// waiting requests it has room for join the active list.
//
// Python twin: tllm_sched/scheduler.py (`Scheduler`; its backend "cpp" wraps this class).
#pragma once

#include <memory>

#include "capacity_scheduler.h"
#include "micro_batch_scheduler.h"
#include "request_list.h"
#include "waiting_queue.h"

namespace tllm {

struct SchedulerOutput {
    CapacityOutput capacity;  ///< fitting, fitting_disagg_gen_init, paused
    MicroBatchOutput micro;   ///< context, generation
    /// TensorRT-LLM's num_fitting_requests: two-stage, the fitting list's length; fused, the
    /// requests that passed both checks (TokenBudget::finalize).
    int32_t num_fitting = 0;
};

/// The step's optional parts: the fused pass and the waiting queue.
struct StepOptions {
    bool fused = false;                     ///< one pass with the token budget inside the capacity loop
    std::shared_ptr<WaitingQueue> waiting;  ///< shared; null: requests join the active list by other means
    int32_t max_num_active_requests = 0;    ///< with `waiting`: the active list's size limit (> 0)
};

class Scheduler {
public:
    Scheduler(CapacityScheduler capacity, MicroBatchScheduler micro, std::shared_ptr<RequestTable> table,
                  std::shared_ptr<KVCacheManager> kv, std::shared_ptr<KVCacheManager> cross_kv,
                  std::shared_ptr<PeftCacheManager> peft, int32_t max_batch_size, std::optional<int32_t> max_num_tokens,
                  StepOptions options = {})
        : capacity_(std::move(capacity)), micro_(std::move(micro)), table_(std::move(table)), kv_(std::move(kv)),
          cross_kv_(std::move(cross_kv)), peft_(std::move(peft)), max_batch_size_(max_batch_size),
          max_num_tokens_(max_num_tokens), options_(std::move(options)) {
        if (max_batch_size <= 0) throw InputError("max_batch_size must be positive");
        if (max_num_tokens && *max_num_tokens <= 0) throw InputError("max_num_tokens must be positive");
        if (kv_ && &kv_->table() != table_.get()) throw InputError("kv_cache_manager belongs to another RequestTable");
        if (cross_kv_ && &cross_kv_->table() != table_.get())
            throw InputError("cross_kv_cache_manager belongs to another RequestTable");
        if (options_.waiting && options_.waiting->table().get() != table_.get())
            throw InputError("the waiting queue belongs to another RequestTable");
        if (options_.waiting && options_.max_num_active_requests <= 0)
            throw InputError("max_num_active_requests must be positive");
    }

    /// The waiting requests there is room for join `active`, then one step over it. The output
    /// is reused by the next call.
    const SchedulerOutput& schedule(RequestList& active, const int64_t* inflight, int32_t num_inflight) {
        active.check_table(*table_);
        fetch_new_requests(active);
        schedule(active.data(), active.size(), inflight, num_inflight, last_);
        return last_;
    }
    void schedule(const int32_t* slots, int32_t n, const int64_t* inflight, int32_t num_inflight, SchedulerOutput& out) {
        if (options_.fused) {
            schedule_fused(slots, n, inflight, num_inflight, out);
            return;
        }
        capacity_.schedule(*table_, slots, n, kv_.get(), peft_.get(), cross_kv_.get(), out.capacity);
        const std::vector<int32_t>& fit = out.capacity.fitting;
        micro_.schedule(*table_, fit.data(), static_cast<int32_t>(fit.size()), inflight, num_inflight, max_batch_size_,
                        max_num_tokens_, out.micro);
        out.num_fitting = static_cast<int32_t>(fit.size());
    }
    /// Moves waiting requests to the end of `active` (none without a waiting queue); how many.
    int32_t fetch_new_requests(RequestList& active) {
        return options_.waiting ? options_.waiting->fetch(active, options_.max_num_active_requests) : 0;
    }

    const std::shared_ptr<RequestTable>& table() const { return table_; }
    CapacityScheduler& capacity() { return capacity_; }
    MicroBatchScheduler& micro() { return micro_; }
    int32_t max_batch_size() const { return max_batch_size_; }
    std::optional<int32_t> max_num_tokens() const { return max_num_tokens_; }
    const StepOptions& options() const { return options_; }

private:
    void schedule_fused(const int32_t* slots, int32_t n, const int64_t* inflight, int32_t num_inflight,
                        SchedulerOutput& out) {
        TokenBudgetLimits limits{max_batch_size_, max_num_tokens_,
                                 fused_max_context_length(micro_.max_context_length(), max_num_tokens_), micro_.chunking()};
        TokenBudget budget(*table_, limits, inflight, num_inflight, chunk_items_, out.micro);
        capacity_.schedule_fused(*table_, slots, n, kv_.get(), peft_.get(), cross_kv_.get(), budget, out.capacity);
        out.num_fitting = budget.finalize();
    }

    CapacityScheduler capacity_;
    MicroBatchScheduler micro_;
    std::shared_ptr<RequestTable> table_;
    std::shared_ptr<KVCacheManager> kv_, cross_kv_;  ///< shared; may be null
    std::shared_ptr<PeftCacheManager> peft_;         ///< shared; may be null
    int32_t max_batch_size_;
    std::optional<int32_t> max_num_tokens_;
    StepOptions options_;
    SchedulerOutput last_;  ///< reused across steps so its vectors keep their capacity
    std::vector<ChunkItem> chunk_items_;  ///< fused scratch: contexts to be chunked (reused)
};

}  // namespace tllm
