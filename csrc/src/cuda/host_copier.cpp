// The host stand-in for the device copy: the same queue-and-mark contract as CUDA streams and
// events, served by one worker thread (or at once, without it) with memcpy into host memory.
// An injected failure behaves like an asynchronous device error: the failing copy and every
// later one are skipped, marks still complete, and query / wait report the error.
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <new>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "tensorstream/cuda/copier.hpp"
#include "tensorstream/cuda/driver.hpp"

namespace ts {

namespace {

constexpr size_t kAlign = 4096;

// Ordinary page-aligned memory standing in for pinned memory (the pool counts what it makes).
class PlainAllocator final : public HostAllocator {
 public:
  const char* kind() const override { return "host"; }
  void* alloc(size_t bytes) override {
    void* p = std::aligned_alloc(kAlign, (bytes + kAlign - 1) / kAlign * kAlign);
    if (!p) throw std::bad_alloc();
    return p;
  }
  void free(void* p) noexcept override { std::free(p); }
};

struct Op {
  uint64_t dst = 0;  // 0 with src null: a slot mark
  const void* src = nullptr;
  size_t n = 0;
  unsigned slot = 0;
  uint64_t copy_no = 0;  // 1-based number of the copy
  uint64_t mark = 0;     // the slot's mark number, for marks
};

class HostCopier final : public DeviceCopier {
 public:
  HostCopier(unsigned streams, unsigned slots, const HostCopierOptions& o)
      : streams_(streams), opts_(o), marked_(slots, 0), done_(slots, 0) {
    if (opts_.background) worker_ = std::thread([this] { serve(); });
  }
  ~HostCopier() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (worker_.joinable()) worker_.join();
  }

  const char* name() const override { return "host"; }
  unsigned streams() const override { return streams_; }
  unsigned slots() const override { return static_cast<unsigned>(marked_.size()); }

  std::shared_ptr<HostAllocator> host_allocator() override {
    static const auto plain = std::make_shared<PlainAllocator>();
    return plain;
  }

  void copy_async(uint64_t dst, const void* src, size_t n, unsigned stream) override {
    if (stream >= streams_) throw std::out_of_range("no such stream");
    Op op{dst, src, n, 0, 0, 0};
    std::unique_lock<std::mutex> lock(mu_);
    op.copy_no = ++copies_;
    submit(std::move(lock), op);
  }
  void record(unsigned slot, unsigned stream) override {
    if (stream >= streams_ || slot >= marked_.size()) throw std::out_of_range("no such stream or slot");
    std::unique_lock<std::mutex> lock(mu_);
    Op op{0, nullptr, 0, slot, 0, ++marked_[slot]};
    submit(std::move(lock), op);
  }
  bool query(unsigned slot) override {
    std::lock_guard<std::mutex> lock(mu_);
    raise_if_failed();
    return done_.at(slot) == marked_.at(slot);
  }
  void wait(unsigned slot) override {
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t want = marked_.at(slot);
    cv_.wait(lock, [&] { return done_[slot] >= want || !error_.empty(); });
    raise_if_failed();
  }
  void drain() noexcept override {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return queue_.empty() && !busy_; });
  }

 private:
  void submit(std::unique_lock<std::mutex> lock, const Op& op) {
    if (!opts_.background) {  // at once, under the lock: serialised like one stream
      finish(op, op.src && error_.empty() ? perform(op) : std::string());
      return;
    }
    queue_.push_back(op);
    lock.unlock();
    cv_.notify_all();
  }

  void raise_if_failed() const {
    if (!error_.empty()) throw cuda::CudaError(0, error_);
  }

  // The copy itself (no lock needed); the error it stands in for, or "".
  std::string perform(const Op& op) const {
    if (opts_.fail_copy_at && op.copy_no == opts_.fail_copy_at)
      return "copy " + std::to_string(op.copy_no) + " to the device failed (injected by the host stand-in)";
    if (opts_.delay_us) std::this_thread::sleep_for(std::chrono::microseconds(opts_.delay_us));
    if (!opts_.discard) std::memcpy(reinterpret_cast<void*>(static_cast<uintptr_t>(op.dst)), op.src, op.n);
    return {};
  }

  // Under the lock: a mark completes its slot; the first error sticks, later copies are skipped.
  void finish(const Op& op, const std::string& err) {
    if (!op.src) done_[op.slot] = op.mark;
    else if (!err.empty() && error_.empty()) error_ = err;
  }

  void serve() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, nothing left
      Op op = queue_.front();
      queue_.pop_front();
      busy_ = true;
      std::string err;
      if (op.src && error_.empty()) {
        lock.unlock();  // a device copies while the host queues more
        err = perform(op);
        lock.lock();
      }
      finish(op, err);
      busy_ = false;
      cv_.notify_all();
    }
  }

  const unsigned streams_;
  const HostCopierOptions opts_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Op> queue_;
  std::vector<uint64_t> marked_, done_;
  uint64_t copies_ = 0;
  std::string error_;
  bool stop_ = false, busy_ = false;
  std::thread worker_;
};

}  // namespace

std::unique_ptr<DeviceCopier> make_host_copier(unsigned streams, unsigned slots, const HostCopierOptions& opts) {
  return std::make_unique<HostCopier>(streams ? streams : 1, slots ? slots : 1, opts);
}

std::unique_ptr<DeviceCopier> make_copier(const std::string& kind, int ordinal, unsigned streams, unsigned slots,
                                          const HostCopierOptions& host_opts) {
  if (kind == "cuda") return make_cuda_copier(ordinal, streams, slots);
  if (kind == "host") return make_host_copier(streams, slots, host_opts);
  throw std::invalid_argument("unknown device copier '" + kind + "' (expected cuda or host)");
}

}  // namespace ts
