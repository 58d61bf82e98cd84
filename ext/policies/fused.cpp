// ext/policies/fused.cpp: TokenBudget (TensorRT-LLM's TokenBudgetTracker) and the fused loops.
#include "policies/fused.h"

#include "policies/guaranteed_no_evict.h"
#include "policies/registry.h"

namespace tllm {

TokenBudget::TokenBudget(RequestTable& t, const TokenBudgetLimits& limits, const int64_t* inflight,
                         int32_t num_inflight, std::vector<ChunkItem>& items, MicroBatchOutput& out)
    : table_(t), lim_(limits), chunked_(items), out_(out) {
    if (lim_.max_batch_size <= 0) throw InputError("max_batch_size must be positive");
    if (lim_.max_num_tokens && *lim_.max_num_tokens <= 0) throw InputError("max_num_tokens must be positive or None");
    if (num_inflight > 0) inflight_.insert(inflight, inflight + num_inflight);
    out_.clear();
}

TokenBudget::Added TokenBudget::add_context(int32_t s) {
    const RequestTable& t = table_;
    const std::optional<int32_t> max_ctx = lim_.max_context_length;
    if (!lim_.chunking) {
        int64_t tokens = int64_t{t.num_tokens[s]} + t.num_draft_tokens[s];
        if (max_ctx && tokens > *max_ctx) fail_context_too_long(t.request_id[s], tokens, *max_ctx);
        if (lim_.max_num_tokens && batch_tokens_ + tokens > *lim_.max_num_tokens) return Added::kOverBudget;
        out_.context.push_back(s);
        batch_tokens_ += tokens;
        return Added::kYes;
    }
    // Never over budget: finalize() fits the chunks into what the budget leaves.
    chunked_.add(t, s, max_ctx);
    return Added::kYes;
}

TokenBudget::Added TokenBudget::add_generation(int32_t s) {
    const RequestTable& t = table_;
    int32_t bw = t.beam_width_by_iter[s];
    int64_t tokens = int64_t{bw} + t.num_draft_tokens[s];
    if (lim_.max_num_tokens && batch_tokens_ + tokens > *lim_.max_num_tokens) return Added::kOverBudget;
    if (beam_ == 0) {
        beam_ = bw;
    } else if (beam_ != bw) {
        return Added::kSkipped;  // a different beam width waits; the capacity loop still admits it
    }
    out_.generation.push_back(s);
    batch_tokens_ += tokens;
    return Added::kYes;
}

void TokenBudget::count() {
    ++num_fitting_;
    if (++req_size_ >= lim_.max_batch_size) batch_full_ = true;
}

bool TokenBudget::try_add(int32_t s) {
    if (in_flight(s)) return true;
    const int32_t st = table_.state[s];
    if (state::is_disagg_generation_init(st)) return true;
    if (st < state::CONTEXT_INIT || st >= state::GENERATION_TO_COMPLETE) return true;
    // Exact-state test, as TensorRT-LLM's tracker: DISAGG_CONTEXT_INIT_AND_TRANS goes the generation way.
    Added a = st == state::CONTEXT_INIT ? add_context(s) : add_generation(s);
    if (a == Added::kOverBudget) return false;
    if (a == Added::kYes) count();
    return true;
}

int32_t TokenBudget::try_add_generation(int32_t s) {
    if (in_flight(s)) return kContinue;
    Added a = add_generation(s);
    if (a == Added::kOverBudget) return kOverBudget;
    if (a == Added::kSkipped) return kContinue;
    count();
    return batch_full_ ? kFull : kContinue;
}

bool TokenBudget::try_add_context(int32_t s) {
    if (in_flight(s) || state::is_disagg_generation_init(table_.state[s])) return true;
    if (add_context(s) == Added::kOverBudget) return false;
    count();
    return true;
}

int32_t TokenBudget::finalize() {
    chunked_.finish(table_, lim_.chunking, lim_.max_num_tokens, batch_tokens_, lim_.max_context_length, out_);
    return num_fitting_;
}

// ------------------------------------------------------------------ GUARANTEED_NO_EVICT's fused loop
// (MAX_UTILIZATION's and the max-requests path's are their two-stage loops with the budget inside:
// max_utilization.cpp, max_requests.cpp.)

namespace {

void schedule_fused_no_evict(const CapacityContext& c, TokenBudget& budget, bool static_batch, CapacityOutput& out) {
    RequestTable& t = *c.table;
    const int64_t max_pages = c.peft ? c.peft->max_device_pages() : INT32_MAX;
    int64_t claimed_pages = 0;
    std::unordered_set<int64_t> task_ids;
    std::vector<int32_t> pending_disagg, pending;
    auto count = [&] { return static_cast<int32_t>(out.scheduled.size()); };

    // Pass 1: classify; running generations are admitted while the token budget lasts. The state is
    // tested exactly (GENERATION_IN_PROGRESS), as TensorRT-LLM's fused loop does.
    for (int32_t i = 0; i < c.num_slots; ++i) {
        int32_t s = c.slots[i], st = t.state[s];
        bool disagg = state::is_disagg_generation_init(st);
        if (!disagg && !can_be_scheduled(c, st)) continue;
        if (count() >= c.max_num_requests) break;
        if (!disagg && st == state::GENERATION_IN_PROGRESS) {
            int32_t rc = budget.try_add_generation(s);
            if (rc == TokenBudget::kOverBudget) break;  // later requests are never classified
            out.scheduled.push_back(s);
            int64_t task = t.lora_task_id[s];
            if (task >= 0 && task_ids.insert(task).second) claimed_pages += c.peft ? c.peft->determine_num_pages(t, s) : 0;
            if (rc == TokenBudget::kFull) break;
        } else if (disagg) {
            pending_disagg.push_back(s);
        } else {
            pending.push_back(s);
        }
    }
    if (budget.batch_full() || count() >= c.max_num_requests) return;
    if (static_batch && !out.scheduled.empty()) return;

    // Pass 2, GUARANTEED_NO_EVICT's loop with the token budget inside: disagg-generation-init
    // first (the tracker passes them over), then the contexts, with reuse skipping (not
    // STATIC_BATCH). Only the generations pass 1 admitted reserve their blocks to completion.
    struct Budget {
        TokenBudget& b;
        bool accept(int32_t s) { return b.try_add_context(s); }
        bool full() const { return b.batch_full(); }
    };
    ReuseSkipper skipper(t, static_batch ? nullptr : c.kv, c.slots, c.num_slots);
    NoEvictAdmission pass{c, skipper, NoEvictBlocks(c.kv), NoEvictBlocks(c.cross_kv), max_pages - claimed_pages,
                          task_ids, count()};
    pass.reserve(out.scheduled);
    for (const std::vector<int32_t>* list : {&pending_disagg, &pending})
        pass.run(list->data(), static_cast<int32_t>(list->size()), [&](int32_t i) { out.scheduled.push_back((*list)[i]); },
                 Budget{budget});
}

}  // namespace

void schedule_fused_guaranteed_no_evict(const CapacityContext& c, TokenBudget& budget, CapacityOutput& out) {
    schedule_fused_no_evict(c, budget, false, out);
}
void schedule_fused_static_batch(const CapacityContext& c, TokenBudget& budget, CapacityOutput& out) {
    schedule_fused_no_evict(c, budget, true, out);
}

}  // namespace tllm
