// ext/peft_cache_manager.cpp: the checked setters of the LoRA page counts.
#include "peft_cache_manager.h"

#include <string>

namespace tllm {

PeftCacheManager::PeftCacheManager(int32_t pages_per_task, int32_t max_device_pages)
    : pages_per_task_(pages_per_task), max_device_pages_(max_device_pages) {
    if (pages_per_task <= 0) fail_input("pages_per_task must be positive, got " + std::to_string(pages_per_task));
    if (max_device_pages <= 0) fail_input("max_device_pages must be positive, got " + std::to_string(max_device_pages));
}

void PeftCacheManager::set_task_pages(int64_t task_id, int32_t pages) {
    if (task_id < 0) fail_input("task id must be >= 0");
    if (pages < 0) fail_input("pages must be >= 0");
    task_pages_[task_id] = pages;
}

}  // namespace tllm
