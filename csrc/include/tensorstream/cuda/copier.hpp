// The device side of the ring pipeline: host buffers for the ring's slots, asynchronous copies
// from a slot to device addresses on one of several streams, and one event per slot that tells
// when the slot's copies are done. Two implementations: CUDA (pinned memory, cuMemcpyHtoDAsync)
// and a host stand-in that copies into ordinary memory, so the pipeline runs and is tested
// without a GPU.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "tensorstream/cuda/host_pool.hpp"

namespace ts {

class DeviceCopier {
 public:
  virtual ~DeviceCopier() = default;
  virtual const char* name() const = 0;  // "cuda" or "host"
  virtual unsigned streams() const = 0;
  virtual unsigned slots() const = 0;

  // What makes ring slots (pinned memory for CUDA); rings take them through the process's pool
  // (host_pool.hpp), which may free them after this copier is gone.
  virtual std::shared_ptr<HostAllocator> host_allocator() = 0;

  // Queues a copy of n bytes from host memory `src` (a slot) to device address `dst` on `stream`.
  // Errors may surface here or at a later query / wait.
  virtual void copy_async(uint64_t dst, const void* src, size_t n, unsigned stream) = 0;
  // Marks the end of `slot`'s copies on `stream`: query / wait then follow that mark.
  virtual void record(unsigned slot, unsigned stream) = 0;
  // Whether every copy before the slot's last mark has finished (true before any mark).
  // Both throw the first copy error seen.
  virtual bool query(unsigned slot) = 0;
  virtual void wait(unsigned slot) = 0;
  // Waits for every copy queued so far; never throws (for cleanup after an error).
  virtual void drain() noexcept = 0;
};

// CUDA on device `ordinal`, in its primary context: `streams` non-blocking streams, one event per
// slot. Throws CudaUnavailableError when there is no driver or no such device.
std::unique_ptr<DeviceCopier> make_cuda_copier(int ordinal, unsigned streams, unsigned slots);

// The host stand-in's knobs (tests and CPU dry runs).
struct HostCopierOptions {
  bool background = true;       // copy on a worker thread (asynchronous, like a device)
  unsigned delay_us = 0;        // extra time per copy, to make copies the slow stage
  uint64_t fail_copy_at = 0;    // the n-th copy (1-based) fails; 0: none
  bool discard = false;         // do not write the destinations (they need not be memory)
};

// Copies with memcpy into ordinary memory: `dst` is a host address.
std::unique_ptr<DeviceCopier> make_host_copier(unsigned streams, unsigned slots, const HostCopierOptions& opts);

// The copier for a device name: "cuda" (with the ordinal) or "host".
std::unique_ptr<DeviceCopier> make_copier(const std::string& kind, int ordinal, unsigned streams, unsigned slots,
                                          const HostCopierOptions& host_opts);

}  // namespace ts
