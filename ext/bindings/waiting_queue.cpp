// ext/bindings/waiting_queue.cpp: WaitingQueue and its policy enum.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/vector.h>

#include "bindings/arrays.h"
#include "bindings/common.h"
#include "waiting_queue.h"

namespace tllm::bindings {

using namespace nb::literals;

namespace {
/// Slots of `requests`: one LlmRequest or an int32 array of slots, of the queue's table.
std::vector<int32_t> request_slots(const WaitingQueue& q, nb::handle requests) {
    if (nb::isinstance<PyRequest>(requests)) return {nb::cast<const PyRequest&>(requests).slot_in(*q.table())};
    if (nb::isinstance<AnyArray>(requests)) {
        auto [p, n] = checked<int32_t>(nb::cast<AnyArray>(requests, false), "requests");
        return std::vector<int32_t>(p, p + n);
    }
    throw TypeInputError("requests: expected an LlmRequest or an int32 array of slots");
}
}  // namespace

void bind_waiting_queue(nb::module_& m) {
    nb::enum_<WaitingQueuePolicy> policy(m, "WaitingQueuePolicy", nb::is_arithmetic());
    for (int32_t i = 0; i < kNumWaitingQueuePolicies; ++i)
        policy.value(kWaitingQueuePolicies[i], static_cast<WaitingQueuePolicy>(i));

    nb::class_<WaitingQueue>(m, "WaitingQueue",
                             "Requests waiting to become active: first-come-first-served, or by priority (higher "
                             "first, first-come among equals). A request returned with prepend_requests comes out "
                             "before every request of its priority added normally.")
        .def(nb::init<std::shared_ptr<RequestTable>, WaitingQueuePolicy>(), "table"_a, "policy"_a)
        .def("add_requests", [](WaitingQueue& q, nb::handle requests) {
                std::vector<int32_t> s = request_slots(q, requests);
                q.add_requests(s.data(), static_cast<int32_t>(s.size()));
            }, "requests"_a, "Adds an LlmRequest or an int32 array of slots, in order (all checked first).")
        .def("prepend_requests", [](WaitingQueue& q, nb::handle requests) {
                std::vector<int32_t> s = request_slots(q, requests);
                q.prepend_requests(s.data(), static_cast<int32_t>(s.size()));
            }, "requests"_a, "Returns requests to the queue ahead of those of their priority added normally.")
        .def("peek_request", [](const WaitingQueue& q) { return make_request(q.table(), q.peek_request()); })
        .def("pop_request", [](WaitingQueue& q) { return make_request(q.table(), q.pop_request()); })
        .def("remove_by_ids", [](WaitingQueue& q, const AnyArray& ids) {
                auto [p, n] = checked<int64_t>(ids, "ids");
                q.remove_by_ids(p, n);
            }, "ids"_a.noconvert(), "Removes the waiting requests with these ids (int64 array); others are ignored.")
        .def("fetch", &WaitingQueue::fetch, "active_requests"_a, "max_num_active_requests"_a,
             "Moves the next requests to the end of the list until it holds max_num_active_requests; how many.")
        .def("__len__", &WaitingQueue::size)
        .def_prop_ro("slots", [](const WaitingQueue& q) { return to_numpy(q.slots()); }, nb::rv_policy::automatic,
                     "The waiting slots in the order they come out (a fresh array).")
        .def_prop_ro("size_view", [](nb::handle self) {
                const WaitingQueue& q = nb::cast<const WaitingQueue&>(self);
                return view(q.size_storage(), 1, self);
            }, nb::rv_policy::automatic, "Zero-copy read-only view of the queue's length (one int64).")
        .def_prop_ro("policy", &WaitingQueue::policy)
        .def_prop_ro("table", &WaitingQueue::table);
}

}  // namespace tllm::bindings
