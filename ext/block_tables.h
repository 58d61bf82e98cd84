// ext/block_tables.h: where a step's tokens live in a paged KV cache, written into caller-owned
// buffers for a paged-attention kernel (one call per buffer, no per-request call).
//
// `rows` are a prepared step's requests (Executor::rows(): its context requests, then its
// generation requests). The tokens a row writes this step: a context row its chunk, positions
// [context_current_position, + context_chunk_size); a generation row one token, at position
// num_tokens - 1 (the last sampled token, fed back). The layouts:
//   block table   [rows, width] int32: row r lists the blocks of row r's sequence in order (block i
//                 holds positions [i * tpb, (i + 1) * tpb)), then 0 up to the step's widest row
//                 (Executor::max_blocks_per_row); columns past it are left as they are (a kernel reads a row
//                 only up to its sequence length). This is vLLM's block_table, and what
//                 TensorRT-LLM's copy_batch_block_offsets writes per pool and sequence for K and for
//                 V (there scaled to page offsets, absent blocks 0).
//   slot mapping  [tokens] int32 or int64: for each token written, row by row and position by
//                 position, block_id * tpb + position % tpb (vLLM's slot_mapping).
//   token inputs  [tokens] int32 each: the token ids fed and their positions, in the same order.
//   lengths       [rows] int32 each: query length (tokens written this step) and sequence length
//                 (tokens in the KV cache after the step: last position + 1).
#pragma once

#include <cstdint>

#include "kv_cache_manager.h"

namespace tllm {

/// The tokens row `s` writes this step: positions [*first, *first + *count).
inline void step_positions(const RequestTable& t, int32_t s, int32_t* first, int32_t* count) {
    if (state::is_context_init(t.state[s])) {
        *first = t.context_current_position[s];
        *count = t.context_chunk_size[s];
    } else {
        *first = t.num_tokens[s] - 1;
        *count = 1;
    }
}

/// Rows of `width` = max_blocks_per_row entries, `row_stride` apart (the caller checked the room).
void fill_block_tables(const KVCacheManager& kv, const int32_t* rows, int32_t n, int32_t* out, int64_t row_stride,
                       int32_t width);
/// One entry per token the rows write; the caller checked the room and that slot ids fit T.
template <class T>
void fill_slot_mapping(const KVCacheManager& kv, const int32_t* rows, int32_t n, T* out);
/// One entry per token the rows write, each; either pointer may be null.
void fill_token_inputs(const RequestTable& t, const int32_t* rows, int32_t n, int32_t* input_ids, int32_t* positions);
/// n entries each; either pointer may be null.
void fill_lengths(const RequestTable& t, const int32_t* rows, int32_t n, int32_t* query_lens, int32_t* seq_lens);

}  // namespace tllm
