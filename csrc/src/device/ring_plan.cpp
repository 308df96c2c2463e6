#include "tensorstream/device/ring_plan.hpp"

#include <stdexcept>
#include <string>

namespace ts {

namespace {

// A plain tensor is split at the end of a slot, unless less than this (64 KiB, or an eighth of a
// small slot) is left there: then it starts a fresh slot instead of adding a tiny copy.
constexpr uint64_t kMinSplit = 64u << 10;

uint64_t align_up(uint64_t v) { return (v + kRingAlign - 1) / kRingAlign * kRingAlign; }

// Bytes of `t` to place from `at` with `avail` bytes free in the slot (`fresh`: nothing else in
// it yet); 0: start a new slot.
uint64_t take(const RingTensor& t, uint64_t at, uint64_t avail, bool fresh, uint64_t min_split) {
  const uint64_t rest = t.length - at;
  if (rest <= avail) return rest;
  if (t.crypt_chunk) return avail / t.crypt_chunk * t.crypt_chunk;
  return fresh || avail >= min_split ? avail : 0;
}

}  // namespace

std::vector<RingTurn> plan_ring(const std::vector<RingTensor>& tensors, uint64_t slot_bytes) {
  if (slot_bytes == 0 || slot_bytes % kRingAlign)
    throw std::invalid_argument("ring slot size must be a positive multiple of " + std::to_string(kRingAlign));
  const uint64_t min_split = slot_bytes / 8 < kMinSplit ? slot_bytes / 8 : kMinSplit;
  std::vector<RingTurn> turns;
  RingTurn cur;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const RingTensor& t = tensors[i];
    if (t.crypt_chunk > slot_bytes)
      throw std::invalid_argument("a crypto chunk of " + std::to_string(t.crypt_chunk) +
                                  " bytes does not fit in a ring slot of " + std::to_string(slot_bytes));
    for (uint64_t at = 0; at < t.length;) {
      const uint64_t start = align_up(cur.used);
      const bool fresh = cur.segments.empty();
      const uint64_t n = start < slot_bytes ? take(t, at, slot_bytes - start, fresh, min_split) : 0;
      if (n == 0) {
        if (fresh) throw std::logic_error("ring plan: an empty slot took nothing");
        turns.push_back(std::move(cur));
        cur = RingTurn{};
        continue;
      }
      cur.segments.push_back(RingSegment{i, at, n, start});
      cur.used = start + n;
      at += n;
    }
  }
  if (!cur.segments.empty()) turns.push_back(std::move(cur));
  return turns;
}

}  // namespace ts
