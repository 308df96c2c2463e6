// Host memory for ring slots, kept per process. Pinning memory is slow (1-2 GB/s with
// cuMemHostAlloc), so a ring takes its slots from this pool and gives them back at the end of
// each load: the second deserializer of a process pins nothing. The pool keeps at most
// TENSORSTREAM_PINNED_MB of memory, in use and idle together where it can (a ring that needs more
// while others hold the rest still gets it, and gives it back freed); blocks idle for
// TENSORSTREAM_PINNED_IDLE_S seconds are freed by a background thread, and
// release_idle_host_blocks() frees every idle one at once. A child of fork() starts with an
// empty pool and never frees the parent's blocks.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

namespace ts {

// Makes and frees one kind of host block; independent of any copier's lifetime, so a pool may
// free a block after the copier that asked for it is gone.
class HostAllocator {
 public:
  virtual ~HostAllocator() = default;
  virtual const char* kind() const = 0;  // blocks of the same kind serve one another
  virtual void* alloc(size_t bytes) = 0;  // throws on failure
  virtual void free(void* p) noexcept = 0;
};

// What the pool may keep: TENSORSTREAM_PINNED_MB and TENSORSTREAM_PINNED_IDLE_S, read once by a
// user of the pool (a ring reads them when it is made, as it reads its own size).
struct HostPoolLimits {
  uint64_t bytes = 0;
  double idle_s = 0;
  static HostPoolLimits from_settings();  // std::invalid_argument for a bad value
};

// A block of at least `bytes` from `alloc`'s kind: an idle one when the pool has one that fits
// (not more than twice the size), else a new one from `alloc` (idle blocks are freed first to
// keep the pool within `limits`).
void* take_host_block(const std::shared_ptr<HostAllocator>& alloc, size_t bytes, const HostPoolLimits& limits);
// Returns a block from take_host_block to the pool: kept idle, or freed when the pool holds more
// than `limits` allow.
void give_back_host_block(void* p, const HostPoolLimits& limits) noexcept;
// Frees every idle block; returns the bytes freed.
uint64_t release_idle_host_blocks() noexcept;

struct HostPoolInfo {
  uint64_t blocks_made = 0;   // allocations this process made (cuMemHostAlloc calls for CUDA)
  uint64_t blocks_freed = 0;
  uint64_t takes = 0;         // take_host_block calls
  uint64_t in_use_bytes = 0;  // handed out now
  uint64_t idle_bytes = 0;    // kept for the next ring
  uint64_t limit_bytes = 0;   // TENSORSTREAM_PINNED_MB
  double idle_seconds = 0;    // TENSORSTREAM_PINNED_IDLE_S
};
HostPoolInfo host_pool_info();

}  // namespace ts
