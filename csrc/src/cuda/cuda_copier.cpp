// The CUDA copier: pinned slots (cuMemHostAlloc), cuMemcpyHtoDAsync on non-blocking streams of the
// device's primary context, and one event per slot. Every call makes the context current on the
// calling thread for its duration, so any thread may drive it.
#include <vector>

#include "tensorstream/cuda/copier.hpp"
#include "tensorstream/cuda/driver.hpp"

namespace ts {

namespace {

using namespace cuda;

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

  void* alloc_host(size_t bytes) override {
    ScopedContext scope(ctx_);
    void* p = nullptr;
    check(d_.MemHostAlloc(&p, bytes, kMemHostAllocPortable), "cuMemHostAlloc (pinned ring slot)");
    return p;
  }
  void free_host(void* p) noexcept override {
    if (!p) return;
    try {
      ScopedContext scope(ctx_);
      d_.MemFreeHost(p);
    } catch (...) {
    }
  }

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
