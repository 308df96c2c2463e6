// How a load's tensor data is laid out in the turns of a ring of fixed-size slots: tensors are
// taken in the order given and packed into consecutive turns; a tensor larger than what a slot
// has left continues in the next turn, and many small tensors share one. Encrypted tensors are
// cut only at their crypto-chunk boundaries, so every chunk can be opened inside one slot.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace ts {

inline constexpr uint64_t kRingAlign = 256;  // slot offset alignment of each segment

struct RingTensor {
  uint64_t offset = 0;       // of its data in the source
  uint64_t length = 0;       // > 0
  uint64_t crypt_chunk = 0;  // bytes per crypto chunk (<= slot size); 0: not encrypted
};

// Bytes [at, at + length) of tensor `tensor`, at `slot_offset` in the turn's slot.
struct RingSegment {
  size_t tensor = 0;
  uint64_t at = 0;
  uint64_t length = 0;
  uint64_t slot_offset = 0;
};

struct RingTurn {
  std::vector<RingSegment> segments;
  uint64_t used = 0;  // end of the last segment in the slot
};

// Turns for `tensors` with slots of `slot_bytes` (a multiple of kRingAlign, > 0). Throws
// std::invalid_argument if an encrypted tensor's chunk does not fit in a slot.
std::vector<RingTurn> plan_ring(const std::vector<RingTensor>& tensors, uint64_t slot_bytes);

}  // namespace ts
