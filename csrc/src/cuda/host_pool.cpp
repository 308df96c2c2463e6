#include "tensorstream/cuda/host_pool.hpp"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "tensorstream/per_process.hpp"
#include "tensorstream/settings.hpp"

namespace ts {

namespace {

using Clock = std::chrono::steady_clock;

struct Block {
  std::shared_ptr<HostAllocator> alloc;
  void* p = nullptr;
  size_t bytes = 0;
  bool in_use = false;
  Clock::time_point idle_since{};
};

class Pool {
 public:
  void* take(const std::shared_ptr<HostAllocator>& alloc, size_t bytes, const HostPoolLimits& lim) {
    std::vector<Block> doomed;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++takes_;
      Block* best = nullptr;  // the smallest idle block of the kind that fits
      for (Block& b : blocks_)
        if (!b.in_use && b.bytes >= bytes && b.bytes / 2 <= bytes && same_kind(b, *alloc) &&
            (!best || b.bytes < best->bytes))
          best = &b;
      if (best) {
        best->in_use = true;
        return best->p;
      }
      // Room for a new block: idle ones go first, the longest idle first.
      while (total() + bytes > lim.bytes && drop_oldest_idle(doomed)) {
      }
    }
    free_all(doomed);
    Block b{alloc, alloc->alloc(bytes), bytes, true, {}};  // outside the lock: pinning is slow
    std::lock_guard<std::mutex> lock(mu_);
    ++made_;
    blocks_.push_back(b);
    return b.p;
  }

  void give_back(void* p, const HostPoolLimits& lim) noexcept {
    if (!p) return;
    std::vector<Block> doomed;
    bool wake = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = std::find_if(blocks_.begin(), blocks_.end(), [&](const Block& b) { return b.p == p; });
      if (it == blocks_.end()) return;  // not ours (a parent's, in a child of fork())
      it->in_use = false;
      it->idle_since = Clock::now();
      if (total() > lim.bytes) {  // over the cap (another ring took more): this one goes
        doomed.push_back(*it);
        blocks_.erase(it);
      } else {
        start_reaper(lim.idle_s);
      }
      // A reaper asleep with nothing to time, or timing with another idle time, looks again; one
      // already timing the oldest idle block needs no wake-up per load.
      wake = reaper_asleep_ || lim.idle_s != reaper_idle_s_;
    }
    if (wake) reap_cv_.notify_all();
    free_all(doomed);
  }

  uint64_t release_idle(double older_than_s) noexcept {
    std::vector<Block> doomed;
    {
      std::lock_guard<std::mutex> lock(mu_);
      const auto now = Clock::now();
      for (auto it = blocks_.begin(); it != blocks_.end();) {
        if (!it->in_use && std::chrono::duration<double>(now - it->idle_since).count() >= older_than_s) {
          doomed.push_back(*it);
          it = blocks_.erase(it);
        } else {
          ++it;
        }
      }
    }
    uint64_t bytes = 0;
    for (const Block& b : doomed) bytes += b.bytes;
    free_all(doomed);
    return bytes;
  }

  HostPoolInfo info() {
    HostPoolInfo i;
    try {
      const HostPoolLimits lim = HostPoolLimits::from_settings();
      i.limit_bytes = lim.bytes;
      i.idle_seconds = lim.idle_s;
    } catch (...) {
    }
    std::lock_guard<std::mutex> lock(mu_);
    i.blocks_made = made_;
    i.blocks_freed = freed_;
    i.takes = takes_;
    for (const Block& b : blocks_) (b.in_use ? i.in_use_bytes : i.idle_bytes) += b.bytes;
    return i;
  }

 private:
  static bool same_kind(const Block& b, const HostAllocator& a) {
    return b.alloc.get() == &a || std::strcmp(b.alloc->kind(), a.kind()) == 0;
  }
  uint64_t total() const {  // caller holds mu_
    uint64_t t = 0;
    for (const Block& b : blocks_) t += b.bytes;
    return t;
  }
  bool drop_oldest_idle(std::vector<Block>& doomed) {  // caller holds mu_
    auto oldest = blocks_.end();
    for (auto it = blocks_.begin(); it != blocks_.end(); ++it)
      if (!it->in_use && (oldest == blocks_.end() || it->idle_since < oldest->idle_since)) oldest = it;
    if (oldest == blocks_.end()) return false;
    doomed.push_back(*oldest);
    blocks_.erase(oldest);
    return true;
  }
  void free_all(std::vector<Block>& doomed) noexcept {
    for (Block& b : doomed) b.alloc->free(b.p);
    std::lock_guard<std::mutex> lock(mu_);
    freed_ += doomed.size();
  }

  // One thread per process that frees blocks once they were idle long enough. Started with the
  // first block given back; never joined (it sleeps while nothing is idle, and dies with the
  // process).
  void start_reaper(double idle_s) {  // caller holds mu_
    if (reaper_started_ || idle_s <= 0) return;
    try {
      std::thread([this] { reap(); }).detach();
      reaper_started_ = true;
    } catch (...) {  // no thread: idle blocks stay until a take needs room or a release call
    }
  }
  void reap() {
    for (;;) {
      double idle_s = 60;
      try {
        idle_s = HostPoolLimits::from_settings().idle_s;  // the setting now
      } catch (...) {
      }
      {
        std::unique_lock<std::mutex> lock(mu_);
        reaper_idle_s_ = idle_s;
        const auto oldest = oldest_idle();
        if (!oldest || idle_s <= 0) {  // nothing idle, or never freed for idleness: sleep till woken
          reaper_asleep_ = true;
          reap_cv_.wait(lock);
          reaper_asleep_ = false;
          continue;
        }
        const auto due = *oldest + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(idle_s));
        if (Clock::now() < due) {
          reap_cv_.wait_until(lock, due);
          continue;
        }
      }
      release_idle(idle_s);
    }
  }
  std::optional<Clock::time_point> oldest_idle() const {  // caller holds mu_
    std::optional<Clock::time_point> t;
    for (const Block& b : blocks_)
      if (!b.in_use && (!t || b.idle_since < *t)) t = b.idle_since;
    return t;
  }

  std::mutex mu_;
  std::condition_variable reap_cv_;
  std::vector<Block> blocks_;
  uint64_t made_ = 0, freed_ = 0, takes_ = 0;
  bool reaper_started_ = false;
  bool reaper_asleep_ = false;  // waiting with no deadline
  double reaper_idle_s_ = -1;   // the idle time the reaper is timing with
};

Pool& pool() { return PerProcess<Pool>::get(); }

}  // namespace

HostPoolLimits HostPoolLimits::from_settings() {
  const Settings s = settings();
  return {uint64_t{s.pinned_mb} << 20, s.pinned_idle_s};
}

void* take_host_block(const std::shared_ptr<HostAllocator>& alloc, size_t bytes, const HostPoolLimits& limits) {
  return pool().take(alloc, bytes, limits);
}

void give_back_host_block(void* p, const HostPoolLimits& limits) noexcept { pool().give_back(p, limits); }

uint64_t release_idle_host_blocks() noexcept { return pool().release_idle(0); }

HostPoolInfo host_pool_info() { return pool().info(); }

}  // namespace ts
