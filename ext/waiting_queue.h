// ext/waiting_queue.h: requests waiting to become active, in first-come or priority order.
//
// Python side: tllm_sched/waiting_queue.py (the policy names and the fetch step of the Python
// backends). Mirrors TensorRT-LLM's FCFSWaitingQueue and PriorityWaitingQueue (waiting_queue.py)
// and get_from_waiting_queue: each step moves the first waiting requests to the end of the active
// list, up to max_num_active_requests, before capacity scheduling.
//
// One ordered heap serves both policies. An entry's key is (-priority, ticket): FCFS uses
// priority 0 for everyone; a normal add takes the next ticket 0, 1, 2, ...; a request returned to
// the queue (prepend) takes -1, -2, ..., so it comes out before every request added normally of
// its priority, and prepend_requests keeps the order it is given.
#pragma once

#include <cstdint>
#include <iterator>
#include <memory>
#include <vector>

#include "request_list.h"
#include "request_table.h"

namespace tllm {

/// A waiting-queue policy: its index in kWaitingQueuePolicies.
enum class WaitingQueuePolicy : int32_t {};

/// The policies, listed once: TensorRT-LLM's WaitingQueuePolicy member names, in its order.
inline constexpr const char* kWaitingQueuePolicies[] = {"FCFS", "PRIORITY"};
inline constexpr int32_t kNumWaitingQueuePolicies = static_cast<int32_t>(std::size(kWaitingQueuePolicies));
inline constexpr int32_t kPriorityPolicy = 1;  ///< the index of "PRIORITY"; FCFS ignores priorities

class WaitingQueue {
public:
    WaitingQueue(std::shared_ptr<RequestTable> table, WaitingQueuePolicy policy);
    ~WaitingQueue();
    WaitingQueue(const WaitingQueue&) = delete;
    WaitingQueue& operator=(const WaitingQueue&) = delete;

    /// Adds requests in order (each after every request added before). All checked first: live,
    /// not queued already, not listed twice.
    void add_requests(const int32_t* slots, int32_t n);
    /// Returns requests that could not be scheduled: before every request added normally of the
    /// same priority, the first of `slots` first. Checked as add_requests.
    void prepend_requests(const int32_t* slots, int32_t n);
    /// The next request; throws InputError when empty.
    int32_t peek_request() const;
    int32_t pop_request();
    /// Removes the queued requests with these ids (others are ignored); the rest keep their order.
    void remove_by_ids(const int64_t* ids, int32_t n);
    /// Moves the next requests, in order, to the end of `active` until it holds max_num_active
    /// requests or the queue is empty. All or nothing: a request already in `active` is refused
    /// before anything moves. Returns how many moved.
    int32_t fetch(RequestList& active, int32_t max_num_active);

    int32_t size() const { return static_cast<int32_t>(heap_.size()); }
    /// The queued slots in the order they would come out.
    std::vector<int32_t> slots() const;
    WaitingQueuePolicy policy() const { return policy_; }
    const std::shared_ptr<RequestTable>& table() const { return table_; }
    /// Fixed storage of the size, for a zero-copy view (the Python backends skip an empty queue
    /// without a call).
    const int64_t* size_storage() const { return &size_; }

private:
    struct Entry {
        float neg_priority;  ///< -priority (0 under FCFS)
        int64_t ticket;      ///< order among equal priorities; prepends are negative
        int32_t slot;
    };
    /// Heap order: the entry that comes out first is the top (the smallest key).
    static bool later(const Entry& a, const Entry& b) {
        return a.neg_priority != b.neg_priority ? a.neg_priority > b.neg_priority : a.ticket > b.ticket;
    }
    bool by_priority() const { return static_cast<int32_t>(policy_) == kPriorityPolicy; }
    void check_new(const int32_t* slots, int32_t n) const;
    void push(int32_t slot, int64_t ticket);
    Entry pop_entry();
    void release(int32_t slot);

    std::shared_ptr<RequestTable> table_;  ///< shared; the queue holds slots of this table
    WaitingQueuePolicy policy_;
    std::vector<Entry> heap_;        ///< owned; a binary heap by `later`
    std::vector<uint8_t> member_;    ///< 1 if the slot is queued
    int64_t next_ticket_ = 0;        ///< the next normal add's ticket
    int64_t next_prepend_ = -1;      ///< the next prepend's ticket
    int64_t size_ = 0;               ///< == heap_.size(); fixed storage for size_storage()
};

}  // namespace tllm
