// pool/address_map.h: live blocks by address, an open-addressing hash map (linear probing, deletion by
// backward shift). O(1) on the hot path; it allocates only when it grows, which the pool's steady
// state never makes it do. Keys are non-zero addresses.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "pool/driver.h"

namespace glake::pool {

template <class V>
class AddressMap {
 public:
  AddressMap() : slots_(64) {}

  V* find(DevPtr key) {
    if (key == 0) return nullptr;
    for (std::size_t i = index(key);; i = (i + 1) & mask()) {
      if (slots_[i].key == key) return &slots_[i].value;
      if (slots_[i].key == 0) return nullptr;
    }
  }
  const V* find(DevPtr key) const { return const_cast<AddressMap*>(this)->find(key); }

  void insert(DevPtr key, V value) {
    if ((size_ + 1) * 2 > slots_.size()) grow();
    std::size_t i = index(key);
    while (slots_[i].key != 0 && slots_[i].key != key) i = (i + 1) & mask();
    if (slots_[i].key == 0) ++size_;
    slots_[i] = {key, value};
  }

  bool erase(DevPtr key) {
    if (key == 0) return false;
    std::size_t i = index(key);
    while (slots_[i].key != key) {
      if (slots_[i].key == 0) return false;
      i = (i + 1) & mask();
    }
    // Backward shift: pull later entries of the probe run into the hole so lookups stay correct.
    std::size_t hole = i;
    for (std::size_t j = (i + 1) & mask(); slots_[j].key != 0; j = (j + 1) & mask()) {
      std::size_t home = index(slots_[j].key);
      bool movable = hole <= j ? (home <= hole || home > j) : (home <= hole && home > j);
      if (movable) {
        slots_[hole] = slots_[j];
        hole = j;
      }
    }
    slots_[hole] = {};
    --size_;
    return true;
  }

  std::size_t size() const { return size_; }
  // Room for n keys: inserting up to n asks the heap for nothing (grow() allocates before it changes
  // anything, so a failure there leaves the map as it was).
  void reserve(std::size_t n) {
    while (n * 2 > slots_.size()) grow();
  }

  template <class F>
  void for_each(F&& f) const {
    for (const auto& s : slots_)
      if (s.key != 0) f(s.key, s.value);
  }

 private:
  struct Slot {
    DevPtr key = 0;
    V value{};
  };
  std::size_t mask() const { return slots_.size() - 1; }
  std::size_t index(DevPtr key) const {
    return static_cast<std::size_t>(((key >> 9) * 0x9E3779B97F4A7C15ull) >> 20) & mask();
  }
  void grow() {
    std::vector<Slot> old(slots_.size() * 2);
    old.swap(slots_);
    size_ = 0;
    for (const auto& s : old)
      if (s.key != 0) insert(s.key, s.value);
  }

  std::vector<Slot> slots_;
  std::size_t size_ = 0;
};

}  // namespace glake::pool
