// ext/request_list.h: an ordered list of request slots (the executor's active list).
//
// Python twin: the `RequestList` binding. Capacity is the table's, reserved once, so a view of
// the slots never sees a reallocation. A slot is in a list at most once.
#pragma once

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "request_table.h"

namespace tllm {

class RequestList {
public:
    explicit RequestList(std::shared_ptr<RequestTable> table) : table_(std::move(table)) {
        if (!table_) throw InputError("RequestList: table must not be None");
        slots_.reserve(static_cast<size_t>(table_->capacity()));
        member_.assign(static_cast<size_t>(table_->capacity()), 0);
    }
    ~RequestList() { clear(); }
    RequestList(const RequestList&) = delete;
    RequestList& operator=(const RequestList&) = delete;

    const std::shared_ptr<RequestTable>& table() const { return table_; }
    /// Throws InputError unless this list holds slots of `t`.
    void check_table(const RequestTable& t) const {
        if (table_.get() != &t) throw InputError("the RequestList belongs to another RequestTable");
    }
    int32_t size() const { return static_cast<int32_t>(slots_.size()); }
    const int32_t* data() const { return slots_.data(); }
    bool contains(int32_t slot) const { return member_[static_cast<size_t>(slot)] != 0; }

    void append(int32_t slot) { insert_at(slots_.end(), slot); }
    /// After every request whose priority is >= its own (descending priority, FIFO among equals).
    void insert_by_priority(int32_t slot) {
        table_->check_slot(slot);
        float p = table_->priority[slot];
        auto pos = std::find_if(slots_.begin(), slots_.end(), [&](int32_t s) { return table_->priority[s] < p; });
        insert_at(pos, slot);
    }
    void remove(int32_t slot) {
        table_->check_slot(slot);
        if (!contains(slot)) throw InputError("request " + std::to_string(table_->request_id[slot]) + " is not in the list");
        slots_.erase(std::find(slots_.begin(), slots_.end(), slot));
        unmark(slot);
    }
    /// Removes every listed slot that is present, keeping the order of the rest.
    void remove_many(const int32_t* slots, int32_t n) {
        for (int32_t i = 0; i < n; ++i) table_->check_slot(slots[i]);
        for (int32_t i = 0; i < n; ++i)
            if (contains(slots[i])) unmark(slots[i]);
        slots_.erase(std::remove_if(slots_.begin(), slots_.end(), [&](int32_t s) { return !contains(s); }), slots_.end());
    }
    void clear() {
        for (int32_t s : slots_) unmark(s);
        slots_.clear();
    }

private:
    void insert_at(std::vector<int32_t>::iterator pos, int32_t slot) {
        table_->check_slot(slot);
        if (contains(slot)) throw InputError("request " + std::to_string(table_->request_id[slot]) + " is already in the list");
        table_->check_fits_caches(slot);  // a request that could never run does not enter
        slots_.insert(pos, slot);  // never reallocates: capacity reserved for every slot
        member_[static_cast<size_t>(slot)] = 1;
        ++table_->list_refs[slot];
    }
    void unmark(int32_t slot) {
        member_[static_cast<size_t>(slot)] = 0;
        --table_->list_refs[slot];
    }

    std::shared_ptr<RequestTable> table_;  ///< shared; the list holds slots of this table
    std::vector<int32_t> slots_;            ///< owned; capacity = table capacity, reserved once
    std::vector<uint8_t> member_;           ///< 1 if the slot is in the list
};

}  // namespace tllm
