// ext/policies/chunking.cpp: EQUAL_PROGRESS, FIRST_COME_FIRST_SERVED and draft-token fitting.
#include "policies/chunking.h"

#include <algorithm>
#include <string>

namespace tllm {

void chunk_equal_progress(std::vector<ChunkItem>& items, std::optional<int32_t> cap, int32_t unit,
                          std::optional<int32_t> max_ctx) {
    int64_t num = 0, progress = 1;
    while ((!cap || num < *cap) && progress > 0) {
        progress = 0;
        for (ChunkItem& it : items) {
            // 64-bit: chunk + unit may exceed int32 for a huge unit. The setter clamps.
            int64_t grown = std::min<int64_t>(int64_t{it.chunk} + unit, it.remaining);
            int64_t inc = grown - it.chunk;
            if ((cap && num + inc > *cap) || (max_ctx && grown > *max_ctx)) continue;
            it.chunk = static_cast<int32_t>(grown);
            num += inc;
            progress += inc;
        }
    }
}

void chunk_first_come_first_served(std::vector<ChunkItem>& items, std::optional<int32_t> cap, int32_t unit,
                                   std::optional<int32_t> max_ctx) {
    const bool capped = cap.has_value();
    int64_t left = capped ? *cap : 0;  // capacity left, when there is a capacity
    for (ChunkItem& it : items) {
        int64_t want = it.remaining, act = want;
        if (capped) act = std::min(left, act);
        if (max_ctx) act = std::min<int64_t>(*max_ctx, act);
        if (act != want) act = act / unit * unit;  // a truncated chunk ends on a unit
        it.chunk = static_cast<int32_t>(act);
        left -= act;
    }
}

namespace {

/// Draft tokens may only fill the last chunk's partial unit: they never open a new one.
void fit_draft_tokens(std::vector<ChunkItem>& items, std::optional<int32_t> cap, int32_t unit,
                      std::optional<int32_t> max_ctx) {
    int64_t num = 0;
    for (const ChunkItem& it : items) num += it.chunk;
    for (ChunkItem& it : items) {
        if (it.chunk != it.remaining || it.draft <= 0) continue;  // not the last chunk, or no drafts
        int64_t space = it.chunk % unit == 0 ? 0 : unit - it.chunk % unit;
        if (max_ctx) space = std::min<int64_t>(space, *max_ctx - it.chunk);
        if (cap) {
            space = std::min<int64_t>(space, *cap - num);
            num += space;
        }
        int64_t discard = it.draft - space;
        it.discard = discard > 0 ? static_cast<int32_t>(discard) : 0;
    }
}

}  // namespace

void set_ctx_requests_chunk_size(std::vector<ChunkItem>& items, ContextChunkingPolicy policy,
                                 std::optional<int32_t> capacity, int32_t unit, std::optional<int32_t> max_ctx) {
    for (ChunkItem& it : items) {
        it.chunk = 0;
        it.discard = 0;
    }
    const int32_t index = static_cast<int32_t>(policy);
    if (index < 0 || index >= kNumChunkingPolicies) fail_input("unknown context chunking policy " + std::to_string(index));
    kChunkingPolicies[index].chunk(items, capacity, unit, max_ctx);
    fit_draft_tokens(items, capacity, unit, max_ctx);
}

void commit_chunk_sizes(RequestTable& t, const std::vector<ChunkItem>& items) {
    for (const ChunkItem& it : items) {
        t.context_chunk_size[it.slot] = std::min(it.chunk, t.context_remaining_length(it.slot));
        if (it.discard > 0) t.discard_draft_tokens(it.slot, it.discard);
    }
}

void set_ctx_requests_chunk_size(RequestTable& t, const int32_t* slots, int32_t n, ContextChunkingPolicy policy,
                                 std::optional<int32_t> capacity, int32_t unit, std::optional<int32_t> max_ctx) {
    for (int32_t i = 0; i < n; ++i) t.check_slot(slots[i]);
    if (unit <= 0) fail_input("chunk_unit_size must be positive");
    if (capacity && *capacity < 0) fail_input("capacity must be >= 0 or None");
    if (max_ctx && *max_ctx <= 0) fail_input("max_context_length must be positive or None");
    std::vector<ChunkItem> items;
    items.reserve(static_cast<size_t>(n));
    for (int32_t i = 0; i < n; ++i) {
        int32_t s = slots[i];
        if (!state::is_context_init(t.state[s]))
            fail_input("request " + std::to_string(t.request_id[s]) + " is not in a context state");
        items.push_back(ChunkItem{s, t.context_remaining_length(s), t.num_draft_tokens[s]});
    }
    set_ctx_requests_chunk_size(items, policy, capacity, unit, max_ctx);
    commit_chunk_sizes(t, items);
}

}  // namespace tllm
