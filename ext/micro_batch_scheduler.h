// ext/micro_batch_scheduler.h: batch size, token budget and chunked prefill (MicroBatchScheduler).
//
// Python twin: tllm_sched/micro_batch_scheduler.py. Mirrors TensorRT-LLM's MicroBatchScheduler.
// Decisions are made on scratch arrays and committed at the end, so a
// SchedulingError leaves every request as it was.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "policies/chunking.h"
#include "policies/common.h"

namespace tllm {

struct MicroBatchOutput {
    std::vector<int32_t> context;     ///< context (and encoder) slots, in output order
    std::vector<int32_t> generation;  ///< generation slots, in output order
    void clear() {
        context.clear();
        generation.clear();
    }
};

class MicroBatchScheduler {
public:
    MicroBatchScheduler(std::optional<ContextChunkingConfig> chunking, std::optional<int32_t> max_context_length,
                        int32_t no_schedule_until_state = state::CONTEXT_INIT,
                        int32_t no_schedule_after_state = state::GENERATION_TO_COMPLETE);

    /// Schedules `slots` (the capacity scheduler's fitting list) skipping `inflight_ids`.
    /// Sets chunk sizes and discards draft tokens of the requests it chunks. Throws InputError
    /// unless max_batch_size > 0 and max_num_tokens is absent or > 0.
    void schedule(RequestTable& t, const int32_t* slots, int32_t num_slots, const int64_t* inflight_ids,
                  int32_t num_inflight, int32_t max_batch_size, std::optional<int32_t> max_num_tokens,
                  MicroBatchOutput& out);

    const std::optional<ContextChunkingConfig>& chunking() const { return chunking_; }
    std::optional<int32_t> max_context_length() const { return max_context_length_; }

private:
    std::optional<ContextChunkingConfig> chunking_;
    std::optional<int32_t> max_context_length_;
    int32_t no_schedule_until_state_, no_schedule_after_state_;
    std::vector<ChunkItem> items_;   ///< scratch: contexts to be chunked (reused across calls)
    std::vector<int32_t> scratch_;   ///< scratch: sort buffer
};

/// The contexts a micro-batch step chunks, in both modes (this loop and the fused TokenBudget):
/// each is added with its whole remainder, so as its last chunk (its draft tokens count); `finish`
/// fits them into what the budget leaves when they do not all fit whole, commits the chunk sizes
/// (the step's first write), appends those that got a chunk to `out.context` and orders the output.
class ChunkedContexts {
public:
    explicit ChunkedContexts(std::vector<ChunkItem>& items) : items_(items) { items_.clear(); }
    void add(const RequestTable& t, int32_t s, std::optional<int32_t> max_context_length);
    /// `batch_tokens`: the budget the other requests of the step took.
    void finish(RequestTable& t, const std::optional<ContextChunkingConfig>& chunking, std::optional<int32_t> budget,
                int64_t batch_tokens, std::optional<int32_t> max_context_length, MicroBatchOutput& out);

private:
    std::vector<ChunkItem>& items_;  ///< borrowed scratch
    int64_t tokens_ = 0;             ///< tentative tokens (not budgeted until `finish`)
    bool all_fit_ = true;            ///< no context is cut to max_context_length
};

/// Throws the SchedulingError of a context longer than max_context_length without chunking.
[[gnu::noinline, noreturn]] void fail_context_too_long(int64_t request_id, int64_t tokens, int32_t max_context_length);

/// Stable partition (non-last chunks first, if `chunks_present`) then stable sort by LoRA task id.
void sort_requests(const RequestTable& t, std::vector<int32_t>& context, std::vector<int32_t>& generation,
                   bool chunks_present);

}  // namespace tllm
