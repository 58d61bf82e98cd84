// ext/block_tables.cpp: block tables, slot mapping, token inputs and lengths of a prepared step.
#include "block_tables.h"

#include <algorithm>
#include <string>

namespace tllm {

void fill_block_tables(const KVCacheManager& kv, const int32_t* rows, int32_t n, int32_t* out, int64_t row_stride,
                       int32_t width) {
    for (int32_t i = 0; i < n; ++i) {
        int32_t* row = out + i * row_stride;
        size_t k = 0;
        if (kv.has_sequence(rows[i])) {
            const std::vector<int32_t>& ids = kv.block_ids(rows[i]);
            std::copy(ids.begin(), ids.end(), row);
            k = ids.size();
        }
        std::fill(row + k, row + width, 0);
    }
}

template <class T>
void fill_slot_mapping(const KVCacheManager& kv, const int32_t* rows, int32_t n, T* out) {
    const RequestTable& t = kv.table();
    const int32_t tpb = kv.tokens_per_block();
    for (int32_t i = 0; i < n; ++i) {
        const int32_t s = rows[i];
        int32_t first, count;
        step_positions(t, s, &first, &count);
        const std::vector<int32_t>& ids = kv.block_ids(s);
        // The step's blocks were allocated by prepare: a gap here is a bug, not bad input.
        if (!kv.has_sequence(s) || int64_t{first} + count > static_cast<int64_t>(ids.size()) * tpb)
            fail_invariant("slot mapping: request " + std::to_string(t.request_id[s]) + " has no block for position " +
                           std::to_string(first + count - 1));
        for (int32_t p = first; p < first + count; ++p)
            *out++ = static_cast<T>(int64_t{ids[static_cast<size_t>(p / tpb)]} * tpb + p % tpb);
    }
}
template void fill_slot_mapping<int32_t>(const KVCacheManager&, const int32_t*, int32_t, int32_t*);
template void fill_slot_mapping<int64_t>(const KVCacheManager&, const int32_t*, int32_t, int64_t*);

void fill_token_inputs(const RequestTable& t, const int32_t* rows, int32_t n, int32_t* input_ids, int32_t* positions) {
    for (int32_t i = 0; i < n; ++i) {
        int32_t first, count;
        step_positions(t, rows[i], &first, &count);
        const int32_t* tokens = t.tokens(rows[i])->tokens.get();
        for (int32_t p = first; p < first + count; ++p) {
            if (input_ids) *input_ids++ = tokens[p];
            if (positions) *positions++ = p;
        }
    }
}

void fill_lengths(const RequestTable& t, const int32_t* rows, int32_t n, int32_t* query_lens, int32_t* seq_lens) {
    for (int32_t i = 0; i < n; ++i) {
        int32_t first, count;
        step_positions(t, rows[i], &first, &count);
        if (query_lens) query_lens[i] = count;
        if (seq_lens) seq_lens[i] = first + count;
    }
}

}  // namespace tllm
