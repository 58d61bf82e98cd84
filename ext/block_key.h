// ext/block_key.h: what a KV block holds (its key) and the chained hash the reuse tree finds it by.
//
// A block's key is its tokens, their extra ids and the LoRA task id (TensorRT-LLM's BlockKey,
// without multimodal keys and cache salt). Its chained hash folds in the hash of the block before
// it, so one hash names a whole prefix (vLLM's block hashes). A hash only finds candidates: every
// match is confirmed by comparing keys, so a collision can never change a decision.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

namespace tllm {

/// A block's key, viewed in a request's token storage (no copy).
struct KeyView {
    const int32_t* tokens = nullptr;
    const uint64_t* extra_ids = nullptr;  ///< per token; null unless the request's prompt had extra ids
    int32_t size = 0;                     ///< tokens in the block (at most tpb)
    int64_t lora_task_id = -1;            ///< -1: none
    bool uses_extra_ids() const { return extra_ids != nullptr; }
};

/// A block's key, owned (what a cached block remembers).
struct BlockKey {
    int64_t lora_task_id = -1;        ///< -1: none
    bool uses_extra_ids = false;      ///< the request's prompt carried extra ids
    std::vector<int32_t> tokens;      ///< at most tpb token ids
    std::vector<uint64_t> extra_ids;  ///< per token, empty unless uses_extra_ids

    BlockKey() = default;
    explicit BlockKey(const KeyView& k)
        : lora_task_id(k.lora_task_id), uses_extra_ids(k.uses_extra_ids()), tokens(k.tokens, k.tokens + k.size),
          extra_ids(k.extra_ids ? std::vector<uint64_t>(k.extra_ids, k.extra_ids + k.size) : std::vector<uint64_t>()) {}
    KeyView view() const {
        return {tokens.data(), uses_extra_ids ? extra_ids.data() : nullptr, static_cast<int32_t>(tokens.size()),
                lora_task_id};
    }
};

inline bool same_key(const KeyView& a, const KeyView& b) {
    if (a.size != b.size || a.lora_task_id != b.lora_task_id || a.uses_extra_ids() != b.uses_extra_ids()) return false;
    const size_t n = static_cast<size_t>(a.size);
    return std::memcmp(a.tokens, b.tokens, n * sizeof(int32_t)) == 0 &&
           (!a.extra_ids || std::memcmp(a.extra_ids, b.extra_ids, n * sizeof(uint64_t)) == 0);
}

/// Common leading tokens of `a` and `b` when everything but the tokens is equal, else 0.
inline int32_t num_matching_tokens(const KeyView& a, const KeyView& b) {
    if (a.lora_task_id != b.lora_task_id || a.uses_extra_ids() != b.uses_extra_ids()) return 0;
    int32_t n = a.size < b.size ? a.size : b.size, i = 0;
    while (i < n && a.tokens[i] == b.tokens[i] && (!a.extra_ids || a.extra_ids[i] == b.extra_ids[i])) ++i;
    return i;
}

/// The chained hash of the (empty) prefix before a request's first block.
constexpr uint64_t kRootHash = 0x9e3779b97f4a7c15ULL;

/// Every chained hash is masked with this (all ones). Tests narrow it so that hashes collide,
/// which must never change a decision (tllm_sched._core._set_block_hash_mask).
inline uint64_t& block_hash_mask() {
    static uint64_t mask = ~uint64_t{0};
    return mask;
}

namespace detail {
inline uint64_t mum(uint64_t a, uint64_t b) {
    const __uint128_t r = static_cast<__uint128_t>(a) * b;
    return static_cast<uint64_t>(r) ^ static_cast<uint64_t>(r >> 64);
}
/// Folds `n` bytes into `h`, 16 at a time (wyhash's step: one 64x64->128 multiply per 16 bytes).
inline uint64_t fold_bytes(uint64_t h, const unsigned char* p, size_t n) {
    constexpr uint64_t k1 = 0xa0761d6478bd642fULL, k2 = 0xe7037ed1a0b428dbULL;
    uint64_t a, b;
    for (; n >= 16; p += 16, n -= 16) {
        std::memcpy(&a, p, 8);
        std::memcpy(&b, p + 8, 8);
        h = mum(a ^ k1, b ^ h);
    }
    a = b = 0;
    if (n >= 8) {
        std::memcpy(&a, p, 8);
        p += 8;
        n -= 8;
    }
    if (n) std::memcpy(&b, p, n);  // n is 4 or 0 for token bytes
    return mum(a ^ k2 ^ n, b ^ h);
}
}  // namespace detail

/// The hash of block `k` after the prefix whose chained hash is `parent`.
inline uint64_t chain_hash(uint64_t parent, const KeyView& k) {
    const uint64_t shape = (static_cast<uint64_t>(k.size) << 1) | (k.uses_extra_ids() ? 1u : 0u);
    uint64_t h = detail::mum(parent ^ 0x8ebc6af09c88c6e3ULL, static_cast<uint64_t>(k.lora_task_id) ^ (shape << 40));
    h = detail::fold_bytes(h, reinterpret_cast<const unsigned char*>(k.tokens), static_cast<size_t>(k.size) * sizeof(int32_t));
    if (k.extra_ids)
        h = detail::fold_bytes(h, reinterpret_cast<const unsigned char*>(k.extra_ids), static_cast<size_t>(k.size) * sizeof(uint64_t));
    return detail::mum(h ^ 0x589965cc75374cc3ULL, h ^ 0x1d8e4e27c47d124fULL) & block_hash_mask();
}

}  // namespace tllm
