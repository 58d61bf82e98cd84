// ext/policies/reuse_skipping.h: delay new requests whose uncached prefix another request computes.
//
// Python twin: tllm_sched/policies/reuse_skipping.py. Mirrors CapacityScheduler's
// prefillWithChunkedContextsAlreadyExecuting (step A) and beneficialToSkip (step B), on the self
// cache only (cross-cache reuse is not supported).
#pragma once

#include "policies/common.h"

namespace tllm {

class ReuseSkipper {
public:
    /// Step A: claim the first-new-block keys of chunked contexts already in progress among
    /// `slots`. A null `kv`, or one without block reuse, never skips.
    ReuseSkipper(const RequestTable& table, KVCacheManager* kv, const int32_t* slots, int32_t num_slots);
    /// Step B: true if a first-chunk context's key is already claimed; otherwise claims it.
    /// Inline: without reuse (the common case) the per-request call costs nothing.
    bool beneficial_to_skip(int32_t slot) { return kv_ != nullptr && claim_or_skip(slot); }

private:
    bool claim_or_skip(int32_t slot);
    /// Claims the slot's key in the cache's pass (opened by the first call); true if another
    /// request had claimed it already.
    bool claimed_before(int32_t slot) {
        const bool first = !pass_open_;
        pass_open_ = true;
        return kv_->claim_new_context_block(slot, first) == KVCacheManager::kClaimedBefore;
    }
    const RequestTable& table_;
    KVCacheManager* kv_;      ///< null when reuse is off: nothing is ever skipped
    bool pass_open_ = false;  ///< the cache's pass of keys and claims is this skipper's
};

}  // namespace tllm
