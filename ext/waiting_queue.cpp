// ext/waiting_queue.cpp: the waiting queue's heap, membership and fetch step.
#include "waiting_queue.h"

#include <algorithm>
#include <string>
#include <unordered_set>

namespace tllm {

WaitingQueue::WaitingQueue(std::shared_ptr<RequestTable> table, WaitingQueuePolicy policy)
    : table_(std::move(table)), policy_(policy) {
    if (!table_) throw InputError("WaitingQueue: table must not be None");
    const int32_t index = static_cast<int32_t>(policy);
    if (index < 0 || index >= kNumWaitingQueuePolicies)
        throw InputError("unknown waiting queue policy " + std::to_string(index));
    member_.assign(static_cast<size_t>(table_->capacity()), 0);
}

WaitingQueue::~WaitingQueue() {
    for (const Entry& e : heap_) --table_->list_refs[e.slot];
}

void WaitingQueue::check_new(const int32_t* slots, int32_t n) const {
    for (int32_t i = 0; i < n; ++i) {
        table_->check_slot(slots[i]);
        if (member_[static_cast<size_t>(slots[i])])
            throw InputError("request " + std::to_string(table_->request_id[slots[i]]) + " is already waiting");
    }
    int32_t dup = first_repeated_slot(slots, n);
    if (dup >= 0) throw InputError("request " + std::to_string(table_->request_id[dup]) + " is listed twice");
}

void WaitingQueue::push(int32_t slot, int64_t ticket) {
    // FCFS ignores priorities, as TensorRT-LLM's FCFSWaitingQueue does.
    float key = by_priority() ? -table_->priority[slot] : 0.0f;
    heap_.push_back(Entry{key, ticket, slot});
    std::push_heap(heap_.begin(), heap_.end(), later);
    member_[static_cast<size_t>(slot)] = 1;
    ++table_->list_refs[slot];  // the table refuses to remove a waiting request
    size_ = static_cast<int64_t>(heap_.size());
}

void WaitingQueue::add_requests(const int32_t* slots, int32_t n) {
    check_new(slots, n);
    for (int32_t i = 0; i < n; ++i) push(slots[i], next_ticket_++);
}

void WaitingQueue::prepend_requests(const int32_t* slots, int32_t n) {
    check_new(slots, n);
    for (int32_t i = n - 1; i >= 0; --i) push(slots[i], next_prepend_--);  // the first gets the smallest
}

int32_t WaitingQueue::peek_request() const {
    if (heap_.empty()) throw InputError("peek from an empty waiting queue");
    return heap_.front().slot;
}

WaitingQueue::Entry WaitingQueue::pop_entry() {
    std::pop_heap(heap_.begin(), heap_.end(), later);
    Entry e = heap_.back();
    heap_.pop_back();
    size_ = static_cast<int64_t>(heap_.size());
    return e;
}

void WaitingQueue::release(int32_t slot) {
    member_[static_cast<size_t>(slot)] = 0;
    --table_->list_refs[slot];
}

int32_t WaitingQueue::pop_request() {
    if (heap_.empty()) throw InputError("pop from an empty waiting queue");
    Entry e = pop_entry();
    release(e.slot);
    return e.slot;
}

void WaitingQueue::remove_by_ids(const int64_t* ids, int32_t n) {
    if (n == 0 || heap_.empty()) return;
    std::unordered_set<int64_t> drop(ids, ids + n);
    auto gone = [&](const Entry& e) { return drop.count(table_->request_id[e.slot]) > 0; };
    for (const Entry& e : heap_)
        if (gone(e)) release(e.slot);
    heap_.erase(std::remove_if(heap_.begin(), heap_.end(), gone), heap_.end());
    std::make_heap(heap_.begin(), heap_.end(), later);
    size_ = static_cast<int64_t>(heap_.size());
}

int32_t WaitingQueue::fetch(RequestList& active, int32_t max_num_active) {
    active.check_table(*table_);
    int32_t room = std::min(max_num_active - active.size(), size());
    if (room <= 0) return 0;
    std::vector<Entry> taken;
    taken.reserve(static_cast<size_t>(room));
    for (int32_t k = 0; k < room; ++k) taken.push_back(pop_entry());
    for (const Entry& e : taken) {
        if (active.contains(e.slot)) {
            for (const Entry& back : taken) {  // restore: the keys put every entry back in place
                heap_.push_back(back);
                std::push_heap(heap_.begin(), heap_.end(), later);
            }
            size_ = static_cast<int64_t>(heap_.size());
            throw InputError("request " + std::to_string(table_->request_id[e.slot]) + " is waiting and already active");
        }
    }
    for (const Entry& e : taken) {
        release(e.slot);
        active.append(e.slot);
    }
    return room;
}

std::vector<int32_t> WaitingQueue::slots() const {
    std::vector<Entry> sorted = heap_;
    std::sort(sorted.begin(), sorted.end(), [](const Entry& a, const Entry& b) { return later(b, a); });
    std::vector<int32_t> out;
    out.reserve(sorted.size());
    for (const Entry& e : sorted) out.push_back(e.slot);
    return out;
}

}  // namespace tllm
