// ext/peft_cache_manager.h: LoRA weight pages per task (TensorRT-LLM's PeftCacheManager, as the
// capacity scheduler sees it: pages a task needs and the device page capacity).
#pragma once

#include <cstdint>
#include <unordered_map>

#include "request_table.h"

namespace tllm {

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
