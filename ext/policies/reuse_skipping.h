// ext/policies/reuse_skipping.h: delay new requests whose uncached prefix another request computes.
//
// Python twin: tllm_sched/policies/reuse_skipping.py. Mirrors CapacityScheduler's
// prefillWithChunkedContextsAlreadyExecuting (step A) and beneficialToSkip (step B), on the self
// cache only (cross-cache reuse is not supported).
#pragma once

#include <unordered_set>

#include "policies/common.h"

namespace tllm {

class ReuseSkipper {
public:
    /// Step A: collect the first-new-block keys of chunked contexts already in progress among
    /// `slots`. A null `kv`, or one without block reuse, never skips.
    ReuseSkipper(const RequestTable& table, const KVCacheManager* kv, const int32_t* slots, int32_t num_slots);
    /// Step B: true if a first-chunk context's key is already claimed; otherwise claims it.
    /// Inline: without reuse (the common case) the per-request call costs nothing.
    bool beneficial_to_skip(int32_t slot) { return kv_ != nullptr && claim_or_skip(slot); }

private:
    bool claim_or_skip(int32_t slot);
    const RequestTable& table_;
    const KVCacheManager* kv_;  ///< null when reuse is off: nothing is ever skipped
    std::unordered_set<BlockKey, BlockKeyHash> contributed_;  ///< keys being computed
};

}  // namespace tllm
