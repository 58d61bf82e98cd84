// ext/hash_index.h: a flat multimap from 64-bit hashes to int32 values.
//
// Open addressing with linear probing and backward-shift deletion: a lookup is one probe run in
// one array, not a bucket list of heap nodes. Several values may share a hash (a collision, or
// equal keys the caller tells apart): `find` hands each candidate to the caller to confirm.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace tllm {

class HashIndex {
public:
    int32_t size() const { return size_; }

    void insert(uint64_t hash, int32_t value) {
        if (2 * (static_cast<size_t>(size_) + 1) > slots_.size()) grow();
        size_t i = hash & mask_;
        while (slots_[i].value >= 0) i = (i + 1) & mask_;
        slots_[i] = {hash, value};
        ++size_;
    }

    /// The first value stored under `hash` for which `confirm(value)` holds, or -1.
    template <class Confirm>
    int32_t find(uint64_t hash, Confirm&& confirm) const {
        if (size_ == 0) return -1;
        for (size_t i = hash & mask_; slots_[i].value >= 0; i = (i + 1) & mask_)
            if (slots_[i].hash == hash && confirm(slots_[i].value)) return slots_[i].value;
        return -1;
    }

    /// Removes the entry (hash, value); it must be present.
    void erase(uint64_t hash, int32_t value) {
        size_t i = hash & mask_;
        while (!(slots_[i].hash == hash && slots_[i].value == value)) i = (i + 1) & mask_;
        // Backward shift: pull later entries of the probe run into the hole when their home
        // position allows it, so no tombstones are needed.
        for (size_t j = (i + 1) & mask_; slots_[j].value >= 0; j = (j + 1) & mask_) {
            size_t home = slots_[j].hash & mask_;
            if (((j - home) & mask_) >= ((j - i) & mask_)) {
                slots_[i] = slots_[j];
                i = j;
            }
        }
        slots_[i].value = -1;
        --size_;
    }

    /// Empties the index; keeps at most a small multiple of `expected` slots.
    void clear(int32_t expected = 0) {
        size_ = 0;
        size_t want = 16;
        while (want < 4 * static_cast<size_t>(expected)) want *= 2;
        if (slots_.size() > 4 * want) {
            slots_.assign(want, Slot{});
            mask_ = want - 1;
        } else {
            for (Slot& s : slots_) s.value = -1;
        }
    }

private:
    struct Slot {
        uint64_t hash = 0;
        int32_t value = -1;  ///< -1: empty
    };
    void grow() {
        std::vector<Slot> old;
        old.swap(slots_);
        slots_.assign(old.empty() ? 16 : 2 * old.size(), Slot{});
        mask_ = slots_.size() - 1;
        size_ = 0;
        for (const Slot& s : old)
            if (s.value >= 0) insert(s.hash, s.value);
    }

    std::vector<Slot> slots_;
    size_t mask_ = 0;
    int32_t size_ = 0;
};

}  // namespace tllm
