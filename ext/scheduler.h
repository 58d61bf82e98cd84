// ext/scheduler.h: one scheduling step in one call: capacity, then micro-batch over its fitting list.
//
// Python twin: tllm_sched/scheduler.py (`Scheduler`; its backend "cpp" wraps this class).
#pragma once

#include <memory>

#include "capacity_scheduler.h"
#include "micro_batch_scheduler.h"
#include "request_list.h"

namespace tllm {

struct SchedulerOutput {
    CapacityOutput capacity;  ///< fitting, fitting_disagg_gen_init, paused
    MicroBatchOutput micro;   ///< context, generation
};

class Scheduler {
public:
    Scheduler(CapacityScheduler capacity, MicroBatchScheduler micro, std::shared_ptr<RequestTable> table,
                  std::shared_ptr<KVCacheManager> kv, std::shared_ptr<KVCacheManager> cross_kv,
                  std::shared_ptr<PeftCacheManager> peft, int32_t max_batch_size, std::optional<int32_t> max_num_tokens)
        : capacity_(std::move(capacity)), micro_(std::move(micro)), table_(std::move(table)), kv_(std::move(kv)),
          cross_kv_(std::move(cross_kv)), peft_(std::move(peft)), max_batch_size_(max_batch_size),
          max_num_tokens_(max_num_tokens) {
        if (max_batch_size <= 0) throw InputError("max_batch_size must be positive");
        if (max_num_tokens && *max_num_tokens <= 0) throw InputError("max_num_tokens must be positive");
        if (kv_ && &kv_->table() != table_.get()) throw InputError("kv_cache_manager belongs to another RequestTable");
        if (cross_kv_ && &cross_kv_->table() != table_.get())
            throw InputError("cross_kv_cache_manager belongs to another RequestTable");
    }

    /// Capacity over the active list, then micro-batch over the fitting list. The output is
    /// reused by the next call.
    const SchedulerOutput& schedule(const RequestList& active, const int64_t* inflight, int32_t num_inflight) {
        active.check_table(*table_);
        schedule(active.data(), active.size(), inflight, num_inflight, last_);
        return last_;
    }
    void schedule(const int32_t* slots, int32_t n, const int64_t* inflight, int32_t num_inflight, SchedulerOutput& out) {
        capacity_.schedule(*table_, slots, n, kv_.get(), peft_.get(), cross_kv_.get(), out.capacity);
        const std::vector<int32_t>& fit = out.capacity.fitting;
        micro_.schedule(*table_, fit.data(), static_cast<int32_t>(fit.size()), inflight, num_inflight, max_batch_size_,
                        max_num_tokens_, out.micro);
    }

    const std::shared_ptr<RequestTable>& table() const { return table_; }
    CapacityScheduler& capacity() { return capacity_; }
    MicroBatchScheduler& micro() { return micro_; }
    int32_t max_batch_size() const { return max_batch_size_; }
    std::optional<int32_t> max_num_tokens() const { return max_num_tokens_; }

private:
    CapacityScheduler capacity_;
    MicroBatchScheduler micro_;
    std::shared_ptr<RequestTable> table_;
    std::shared_ptr<KVCacheManager> kv_, cross_kv_;  ///< shared; may be null
    std::shared_ptr<PeftCacheManager> peft_;         ///< shared; may be null
    int32_t max_batch_size_;
    std::optional<int32_t> max_num_tokens_;
    SchedulerOutput last_;  ///< reused across steps so its vectors keep their capacity
};

}  // namespace tllm
