// The CUDA copier: pinned slots (cuMemHostAlloc, through the process's pool), cuMemcpyHtoDAsync on
// non-blocking streams of the device's primary context, and one event per slot. Every call makes
// the context current on the calling thread for its duration, so any thread may drive it.
#include <memory>
#include <mutex>
#include <vector>

#include "tensorstream/cuda/copier.hpp"
#include "tensorstream/cuda/driver.hpp"

namespace ts {

namespace {

using namespace cuda;

// Page-locked memory that every context may use (portable), made in the primary context of the
// device first asked for; the allocator keeps that context alive while it lives, so the pool can
// free blocks after every copier is gone.
class PinnedAllocator final : public HostAllocator {
 public:
  explicit PinnedAllocator(int ordinal) : d_(driver()), ctx_(ordinal) {}
  const char* kind() const override { return "cuda"; }
  void* alloc(size_t bytes) override {
    ScopedContext scope(ctx_);
    void* p = nullptr;
    check(d_.MemHostAlloc(&p, bytes, kMemHostAllocPortable), "cuMemHostAlloc (pinned ring slot)");
    return p;
  }
  void free(void* p) noexcept override {
    if (!p) return;
    try {
      ScopedContext scope(ctx_);
      d_.MemFreeHost(p);
    } catch (...) {
    }
  }

 private:
  const Driver& d_;
  PrimaryContext ctx_;
};

std::shared_ptr<HostAllocator> pinned_allocator(int ordinal) {
  static std::mutex mu;
  static std::shared_ptr<HostAllocator> made;  // one per process: the pool matches blocks by kind
  std::lock_guard<std::mutex> lock(mu);
  if (!made) made = std::make_shared<PinnedAllocator>(ordinal);
  return made;
}

class CudaCopier final : public DeviceCopier {
 public:
  CudaCopier(int ordinal, unsigned streams, unsigned slots) : d_(driver()), ctx_(ordinal) {
    ScopedContext scope(ctx_);
    try {
      for (unsigned i = 0; i < streams; ++i) {
        CUstream s = nullptr;
        check(d_.StreamCreate(&s, kStreamNonBlocking), "cuStreamCreate");
        streams_.push_back(s);
      }
      for (unsigned i = 0; i < slots; ++i) {
        CUevent e = nullptr;
        check(d_.EventCreate(&e, kEventBlockingSync | kEventDisableTiming), "cuEventCreate");
        events_.push_back(e);
      }
    } catch (...) {
      release();
      throw;
    }
  }
  ~CudaCopier() override {
    try {
      ScopedContext scope(ctx_);
      release();
    } catch (...) {
    }
  }

  const char* name() const override { return "cuda"; }
  unsigned streams() const override { return static_cast<unsigned>(streams_.size()); }
  unsigned slots() const override { return static_cast<unsigned>(events_.size()); }

  std::shared_ptr<HostAllocator> host_allocator() override { return pinned_allocator(ctx_.ordinal()); }

  void copy_async(uint64_t dst, const void* src, size_t n, unsigned stream) override {
    ScopedContext scope(ctx_);
    check(d_.MemcpyHtoDAsync(dst, src, n, streams_.at(stream)), "cuMemcpyHtoDAsync");
  }
  void record(unsigned slot, unsigned stream) override {
    ScopedContext scope(ctx_);
    check(d_.EventRecord(events_.at(slot), streams_.at(stream)), "cuEventRecord");
  }
  bool query(unsigned slot) override {
    ScopedContext scope(ctx_);
    CUresult rc = d_.EventQuery(events_.at(slot));
    if (rc == kErrorNotReady) return false;
    check(rc, "cuEventQuery (a copy to the device)");
    return true;
  }
  void wait(unsigned slot) override {
    ScopedContext scope(ctx_);
    check(d_.EventSynchronize(events_.at(slot)), "cuEventSynchronize (a copy to the device)");
  }
  void drain() noexcept override {
    try {
      ScopedContext scope(ctx_);
      for (CUstream s : streams_) d_.StreamSynchronize(s);
    } catch (...) {
    }
  }

 private:
  void release() noexcept {
    for (CUstream s : streams_) d_.StreamSynchronize(s);
    for (CUevent e : events_) d_.EventDestroy(e);
    for (CUstream s : streams_) d_.StreamDestroy(s);
    events_.clear();
    streams_.clear();
  }

  const Driver& d_;
  PrimaryContext ctx_;
  std::vector<CUstream> streams_;
  std::vector<CUevent> events_;
};

}  // namespace

std::unique_ptr<DeviceCopier> make_cuda_copier(int ordinal, unsigned streams, unsigned slots) {
  return std::make_unique<CudaCopier>(ordinal, streams ? streams : 1, slots ? slots : 1);
}

}  // namespace ts
