// ext/bindings/schedulers.cpp: the capacity, micro-batch and step schedulers and the chunk-size
// function.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <string>

#include "bindings/arrays.h"
#include "bindings/common.h"
#include "capacity_scheduler.h"
#include "micro_batch_scheduler.h"
#include "policies/guaranteed_no_evict.h"
#include "policies/max_utilization.h"
#include "policies/registry.h"
#include "request_list.h"
#include "scheduler.h"

namespace tllm::bindings {

using namespace nb::literals;

namespace {

std::pair<const int32_t*, int32_t> list_or_slots(const RequestTable& t, nb::handle active) {
    if (nb::isinstance<RequestList>(active)) {
        RequestList& l = nb::cast<RequestList&>(active);
        l.check_table(t);
        return {l.data(), l.size()};
    }
    if (nb::isinstance<AnyArray>(active)) {
        auto [p, n] = checked_slots(t, ArrayArg{active}, "active_requests");
        int32_t dup = first_repeated_slot(p, n);
        if (dup >= 0) throw InputError("active_requests: slot " + std::to_string(dup) + " is listed twice");
        return {p, n};
    }
    throw TypeInputError("active_requests: expected a RequestList or an int32 array of slots, got " + describe(active));
}

/// The C++ loops' list for the Python backend: a RequestList read in place (no view made), or an
/// int32 array of live slots the caller has checked to be distinct.
std::pair<const int32_t*, int32_t> listed_slots(const RequestTable& t, nb::handle obj) {
    if (nb::isinstance<RequestList>(obj)) {
        RequestList& l = nb::cast<RequestList&>(obj);
        l.check_table(t);
        return {l.data(), l.size()};
    }
    return checked_slots(t, ArrayArg{obj}, "slots");
}

std::pair<const int64_t*, int32_t> inflight_ids(nb::handle obj) {
    if (obj.is_none()) return {nullptr, 0};
    if (!nb::isinstance<AnyArray>(obj))
        throw TypeInputError("inflight_request_ids: expected an int64 numpy array or None, got " + describe(obj));
    return checked<int64_t>(nb::cast<AnyArray>(obj, false), "inflight_request_ids");
}

}  // namespace

void bind_policy_enums(nb::module_& m) {
    nb::enum_<CapacitySchedulerPolicy> capacity(m, "CapacitySchedulerPolicy", nb::is_arithmetic());
    for (int32_t i = 0; i < kNumCapacityPolicies; ++i)
        capacity.value(kCapacityPolicies[i].name, static_cast<CapacitySchedulerPolicy>(i));

    nb::enum_<ContextChunkingPolicy> chunking(m, "ContextChunkingPolicy", nb::is_arithmetic());
    for (int32_t i = 0; i < kNumChunkingPolicies; ++i)
        chunking.value(kChunkingPolicies[i].name, static_cast<ContextChunkingPolicy>(i));
}

void bind_schedulers(nb::module_& m) {
    // ------------------------------------------------------------------ schedulers
    nb::class_<CapacityScheduler>(m, "CapacityScheduler", "Reference C++ capacity scheduler.")
        .def(nb::init<int32_t, CapacitySchedulerPolicy, bool, bool, int32_t, int32_t>(), "max_num_requests"_a,
             "capacity_scheduler_policy"_a, "has_kv_cache_manager"_a = true, "two_steps_look_ahead"_a = false,
             "no_schedule_until_state"_a = static_cast<int32_t>(LlmRequestState::kCONTEXT_INIT),
             "no_schedule_after_state"_a = static_cast<int32_t>(LlmRequestState::kGENERATION_COMPLETE))
        .def("schedule", [](const CapacityScheduler& c, RequestTable& t, nb::handle active, KVCacheManager* kv,
                            PeftCacheManager* peft, KVCacheManager* cross) {
                auto [p, n] = list_or_slots(t, active);
                CapacityOutput out;
                c.schedule(t, p, n, kv, peft, cross, out);
                return nb::make_tuple(to_numpy(std::move(out.fitting)), to_numpy(std::move(out.fitting_disagg_gen_init)),
                                      to_numpy(std::move(out.paused)));
            }, "table"_a, "active_requests"_a, "kv_cache_manager"_a = nb::none(), "peft_cache_manager"_a = nb::none(),
            "cross_kv_cache_manager"_a = nb::none(), "Returns slot arrays (fitting, fitting_disagg_gen_init, paused).");

    m.def("no_evict_split_fitting", [](KVCacheManager& kv, nb::handle slots, int32_t max_num_requests,
                                       int32_t until, int32_t after) {
            auto [p, n] = listed_slots(kv.table(), slots);
            CapacityContext c{kv.table_ptr().get(), p, n, &kv, nullptr, nullptr, max_num_requests, false, until, after};
            std::vector<int32_t> fitting;
            int32_t num_generations = 0;
            if (!no_evict_split_fitting(c, fitting, num_generations)) return nb::object(nb::none());
            return nb::object(nb::make_tuple(to_numpy(std::move(fitting)), num_generations));
        }, "kv_cache_manager"_a, "slots"_a.noconvert(), "max_num_requests"_a,
        "no_schedule_until_state"_a = static_cast<int32_t>(LlmRequestState::kCONTEXT_INIT),
        "no_schedule_after_state"_a = static_cast<int32_t>(LlmRequestState::kGENERATION_COMPLETE),
        "GUARANTEED_NO_EVICT as the C++ policy runs it (reuse skipping, head-of-line admission) over a list of "
        "running generations and contexts (`slots`: a RequestList, read in place, or an int32 array of distinct live slots); self cache only, no PEFT. Returns (fitting slots: the running "
        "generations in list order, then the admitted contexts; the number of generations), or None, having "
        "changed nothing, when the list is not of that shape or the generations reach max_num_requests.");

    m.def("max_utilization_fitting", [](KVCacheManager& kv, nb::handle slots, int32_t max_num_requests,
                                        bool two_steps_look_ahead, int32_t until, int32_t after) {
            auto [p, n] = listed_slots(kv.table(), slots);
            CapacityContext c{kv.table_ptr().get(), p, n, &kv, nullptr, nullptr, max_num_requests, two_steps_look_ahead,
                              until, after};
            CapacityOutput out;
            std::vector<int32_t> generations, contexts;
            nb::object split = nb::none();
            if (max_utilization_fitting(c, out, generations, contexts)) {
                // Generations first (the usual list order): their count, so no arrays are made for it.
                if (std::equal(generations.begin(), generations.end(), out.fitting.begin()))
                    split = nb::int_(generations.size());
                else
                    split = nb::make_tuple(to_numpy(std::move(generations)), to_numpy(std::move(contexts)));
            }
            // Usually empty: None, not an array (each array made costs a cold step microseconds).
            auto or_none = [](std::vector<int32_t>&& v) { return v.empty() ? nb::none() : nb::cast(to_numpy(std::move(v))); };
            return nb::make_tuple(to_numpy(std::move(out.fitting)), or_none(std::move(out.fitting_disagg_gen_init)),
                                  or_none(std::move(out.paused)), split);
        }, "kv_cache_manager"_a, "slots"_a.noconvert(), "max_num_requests"_a, "two_steps_look_ahead"_a = false,
        "no_schedule_until_state"_a = static_cast<int32_t>(LlmRequestState::kCONTEXT_INIT),
        "no_schedule_after_state"_a = static_cast<int32_t>(LlmRequestState::kGENERATION_COMPLETE),
        "MAX_UTILIZATION as the C++ policy runs it (reuse skipping, pausing from the tail; no PEFT) over the list "
        "`slots` (a RequestList, read in place, or an int32 array of distinct live slots): (fitting, "
        "fitting_disagg_gen_init, paused) as CapacityScheduler.schedule returns them, except that an empty "
        "fitting_disagg_gen_init or paused is None, and fitting's split for the micro-batch stage: the number of its "
        "running generations when they come first and only contexts follow, else (its running generations, its "
        "contexts), both in list order, or None when an entry is neither. Starts the cache's scheduling pass.");

    nb::class_<MicroBatchScheduler>(m, "MicroBatchScheduler", "Reference C++ micro-batch scheduler.")
        .def("__init__", [](MicroBatchScheduler* self, std::optional<std::pair<ContextChunkingPolicy, int32_t>> chunking,
                            std::optional<int32_t> max_context_length, int32_t no_schedule_until_state,
                            int32_t no_schedule_after_state) {
                std::optional<ContextChunkingConfig> cfg;
                if (chunking) cfg = ContextChunkingConfig{chunking->first, chunking->second};
                new (self) MicroBatchScheduler(cfg, max_context_length, no_schedule_until_state, no_schedule_after_state);
            }, "ctx_chunk_config"_a = nb::none(), "max_context_length"_a = nb::none(),
            "no_schedule_until_state"_a = static_cast<int32_t>(LlmRequestState::kCONTEXT_INIT),
            "no_schedule_after_state"_a = static_cast<int32_t>(LlmRequestState::kGENERATION_TO_COMPLETE),
            "ctx_chunk_config: None (no chunking) or (ContextChunkingPolicy, chunk_unit_size).")
        .def("schedule", [](MicroBatchScheduler& m, RequestTable& t, nb::handle active, nb::handle inflight,
                            int32_t max_batch_size, std::optional<int32_t> max_num_tokens) {
                auto [p, n] = list_or_slots(t, active);
                auto [ip, in] = inflight_ids(inflight);
                MicroBatchOutput out;
                m.schedule(t, p, n, ip, in, max_batch_size, max_num_tokens, out);
                return nb::make_tuple(to_numpy(std::move(out.context)), to_numpy(std::move(out.generation)));
            }, "table"_a, "active_requests"_a, "inflight_request_ids"_a = nb::none(), "max_batch_size"_a,
            "max_num_tokens"_a = nb::none(), "Returns slot arrays (context, generation).");

    m.def("set_ctx_requests_chunk_size", [](RequestTable& t, const ArrayArg& slots, ContextChunkingPolicy policy,
                                            std::optional<int32_t> capacity, int32_t unit, std::optional<int32_t> max_ctx) {
            auto [p, n] = checked_slots(t, slots);
            set_ctx_requests_chunk_size(t, p, n, policy, capacity, unit, max_ctx);
        }, "table"_a, "slots"_a.noconvert(), "policy"_a, "capacity"_a.none(), "chunk_unit_size"_a, "max_context_length"_a = nb::none(),
        "Sets chunk sizes directly (TensorRT-LLM's setCtxRequestsChunkSize), discarding draft tokens that do not fit.");

    nb::class_<Scheduler>(m, "Scheduler", "One scheduling step in one call (reference C++): capacity then "
                          "micro-batch, or the fused single pass; first the waiting requests it has room for.")
        .def("__init__", [](Scheduler* self, const CapacityScheduler& cap, const MicroBatchScheduler& micro,
                            std::shared_ptr<RequestTable> table, std::shared_ptr<KVCacheManager> kv,
                            std::shared_ptr<KVCacheManager> cross, std::shared_ptr<PeftCacheManager> peft,
                            int32_t max_batch_size, std::optional<int32_t> max_num_tokens, bool fused,
                            std::shared_ptr<WaitingQueue> waiting, int32_t max_num_active_requests) {
                new (self) Scheduler(cap, micro, std::move(table), std::move(kv), std::move(cross), std::move(peft),
                                     max_batch_size, max_num_tokens,
                                     StepOptions{fused, std::move(waiting), max_num_active_requests});
            }, "capacity_scheduler"_a, "micro_batch_scheduler"_a, "table"_a, "kv_cache_manager"_a.none(),
            "cross_kv_cache_manager"_a.none(), "peft_cache_manager"_a.none(), "max_batch_size"_a, "max_num_tokens"_a.none(),
            "fused"_a = false, "waiting_queue"_a.none() = nb::none(), "max_num_active_requests"_a = 0)
        .def("schedule", [](Scheduler& s, RequestList& active, nb::handle inflight, bool with_num_fitting) {
                auto [ip, in] = inflight_ids(inflight);
                const SchedulerOutput& out = s.schedule(active, ip, in);
                nb::tuple arrays = nb::make_tuple(to_numpy(out.capacity.fitting),
                                                  to_numpy(out.capacity.fitting_disagg_gen_init),
                                                  to_numpy(out.capacity.paused), to_numpy(out.micro.context),
                                                  to_numpy(out.micro.generation));
                return with_num_fitting ? nb::make_tuple(arrays[0], arrays[1], arrays[2], arrays[3], arrays[4],
                                                         out.num_fitting)
                                        : arrays;
            }, "active_requests"_a, "inflight_request_ids"_a = nb::none(), "with_num_fitting"_a = false,
            "Returns slot arrays (fitting, fitting_disagg_gen_init, paused, context, generation), and "
            "num_fitting sixth when asked.")
        .def("fetch_new_requests", &Scheduler::fetch_new_requests, "active_requests"_a,
             "Moves the waiting requests there is room for to the end of the list (none without a waiting queue).");
}

}  // namespace tllm::bindings
