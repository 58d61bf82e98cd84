// ext/micro_batch_scheduler.cpp: the micro-batch loop, chunking call, output sort and commit.
#include "micro_batch_scheduler.h"

#include <algorithm>
#include <string>
#include <unordered_set>

namespace tllm {

void fail_context_too_long(int64_t id, int64_t n, int32_t max_ctx) {
    throw SchedulingError("request " + std::to_string(id) + ": context of " + std::to_string(n) +
                          " tokens exceeds max_context_length " + std::to_string(max_ctx) +
                          " and chunking is disabled");
}

MicroBatchScheduler::MicroBatchScheduler(std::optional<ContextChunkingConfig> chunking,
                                         std::optional<int32_t> max_context_length, int32_t no_schedule_until_state,
                                         int32_t no_schedule_after_state)
    : chunking_(chunking),
      max_context_length_(max_context_length),
      no_schedule_until_state_(no_schedule_until_state),
      no_schedule_after_state_(no_schedule_after_state) {
    if (chunking && (static_cast<int32_t>(chunking->policy) < 0 || static_cast<int32_t>(chunking->policy) >= kNumChunkingPolicies))
        throw InputError("unknown context chunking policy " + std::to_string(static_cast<int32_t>(chunking->policy)));
    if (chunking && chunking->unit_size <= 0)
        throw InputError("chunk unit size must be positive, got " + std::to_string(chunking->unit_size));
    if (max_context_length && *max_context_length <= 0)
        throw InputError("max_context_length must be positive, got " + std::to_string(*max_context_length));
}

void MicroBatchScheduler::schedule(RequestTable& t, const int32_t* slots, int32_t n, const int64_t* inflight,
                                   int32_t num_inflight, int32_t max_batch_size, std::optional<int32_t> budget,
                                   MicroBatchOutput& out) {
    if (max_batch_size <= 0) throw InputError("max_batch_size must be positive");
    if (budget && *budget <= 0) throw InputError("max_num_tokens must be positive or None");
    out.clear();
    out.generation.reserve(static_cast<size_t>(n));
    ChunkedContexts chunked(items_);
    std::unordered_set<int64_t> inflight_set;
    if (num_inflight > 0) inflight_set.insert(inflight, inflight + num_inflight);
    const std::optional<int32_t> max_ctx = max_context_length_;
    int64_t batch_tokens = 0;
    int32_t batch_size = 0, beam = 0;

    for (int32_t i = 0; i < n; ++i) {
        int32_t s = slots[i], st = t.state[s];
        if (st < no_schedule_until_state_ || st >= no_schedule_after_state_) continue;
        if (num_inflight > 0 && inflight_set.count(t.request_id[s])) continue;
        if (state::is_encoder_init(st)) {
            int64_t tokens = t.encoder_output_len[s];
            if (max_ctx && tokens > *max_ctx) fail_context_too_long(t.request_id[s], tokens, *max_ctx);
            if (budget && batch_tokens + tokens > *budget) break;
            out.context.push_back(s);
            batch_tokens += tokens;
        } else if (state::is_context_init(st)) {
            if (!chunking_) {
                int64_t tokens = int64_t{t.num_tokens[s]} + t.num_draft_tokens[s];
                if (max_ctx && tokens > *max_ctx) fail_context_too_long(t.request_id[s], tokens, *max_ctx);
                if (budget && batch_tokens + tokens > *budget) break;
                out.context.push_back(s);
                batch_tokens += tokens;
            } else {
                chunked.add(t, s, max_ctx);
            }
        } else {
            int32_t bw = t.beam_width_by_iter[s];
            int64_t tokens = int64_t{bw} + t.num_draft_tokens[s];
            if (budget && batch_tokens + tokens > *budget) break;
            if (beam == 0) {
                beam = bw;
            } else if (beam != bw) {
                continue;  // a different beam width waits; it takes no batch slot
            }
            out.generation.push_back(s);
            batch_tokens += tokens;
        }
        if (++batch_size >= max_batch_size) break;
    }

    chunked.finish(t, chunking_, budget, batch_tokens, max_ctx, out);  // nothing above changed a request
}

void ChunkedContexts::add(const RequestTable& t, int32_t s, std::optional<int32_t> max_ctx) {
    int32_t remaining = t.context_remaining_length(s);
    int64_t tokens = int64_t{remaining} + t.num_draft_tokens[s];
    if (max_ctx && tokens > *max_ctx) {
        tokens = *max_ctx;
        all_fit_ = false;
    }
    items_.push_back(ChunkItem{s, remaining, t.num_draft_tokens[s], remaining, 0});
    tokens_ += tokens;
}

void ChunkedContexts::finish(RequestTable& t, const std::optional<ContextChunkingConfig>& chunking,
                             std::optional<int32_t> budget, int64_t batch_tokens, std::optional<int32_t> max_ctx,
                             MicroBatchOutput& out) {
    if (budget && tokens_ > *budget - batch_tokens) all_fit_ = false;
    if (!all_fit_) {  // only contexts added (so chunking is on) make this false
        std::optional<int32_t> capacity;
        if (budget) capacity = static_cast<int32_t>(*budget - batch_tokens);
        set_ctx_requests_chunk_size(items_, chunking->policy, capacity, chunking->unit_size, max_ctx);
    }
    commit_chunk_sizes(t, items_);
    for (const ChunkItem& it : items_)
        if (it.chunk > 0) out.context.push_back(it.slot);
    sort_requests(t, out.context, out.generation, !all_fit_);
}

void sort_requests(const RequestTable& t, std::vector<int32_t>& context, std::vector<int32_t>& generation,
                   bool chunks_present) {
    auto by_lora = [&t](int32_t a, int32_t b) { return t.lora_task_id[a] < t.lora_task_id[b]; };  // none (-1) first
    // Stable sorts allocate and merge; most batches are already in order (no LoRA at all).
    auto sort_range = [&](std::vector<int32_t>::iterator b, std::vector<int32_t>::iterator e) {
        if (!std::is_sorted(b, e, by_lora)) std::stable_sort(b, e, by_lora);
    };
    if (chunks_present) {
        auto mid = std::stable_partition(context.begin(), context.end(),
                                         [&t](int32_t s) { return !t.is_last_context_chunk(s); });
        sort_range(context.begin(), mid);
        sort_range(mid, context.end());
    } else {
        sort_range(context.begin(), context.end());
    }
    sort_range(generation.begin(), generation.end());
}

}  // namespace tllm
