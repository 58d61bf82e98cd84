// ext/int_math.h: the integer helpers the core shares (sizes, block counts, indices).
#pragma once

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>

namespace tllm {

/// ceil(a / b) for a >= 0, b > 0.
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/// A count as int32 without wrapping: a demand beyond int32 can never fit anyway.
inline int32_t saturate(int64_t v) { return static_cast<int32_t>(std::clamp<int64_t>(v, INT32_MIN, INT32_MAX)); }

/// A slot or count (checked non-negative) as a container index.
inline size_t idx(int32_t i) { return static_cast<size_t>(i); }

}  // namespace tllm
