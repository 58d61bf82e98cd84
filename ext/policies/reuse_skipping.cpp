// ext/policies/reuse_skipping.cpp: steps A and B of block-reuse-aware skipping.
#include "policies/reuse_skipping.h"

namespace tllm {

ReuseSkipper::ReuseSkipper(const RequestTable& table, KVCacheManager* kv, const int32_t* slots, int32_t num_slots)
    : table_(table), kv_(kv && kv->config().enable_block_reuse ? kv : nullptr) {
    if (!kv_) return;
    for (int32_t i = 0; i < num_slots; ++i) {  // no gating in step A
        int32_t s = slots[i];
        if (state::is_context_init(table_.state[s]) && !table_.is_first_context_chunk(s)) claimed_before(s);
    }
}

bool ReuseSkipper::claim_or_skip(int32_t s) {
    if (!state::is_context_init(table_.state[s]) || !table_.is_first_context_chunk(s)) return false;
    return claimed_before(s);  // the first request with a key claims it, even if it then fails to fit
}

}  // namespace tllm
