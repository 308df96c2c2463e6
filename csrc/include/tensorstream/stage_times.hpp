// Busy time of a load's check stages (hashing, decryption), summed over the threads that run them.
#pragma once
#include <atomic>
#include <chrono>
#include <cstdint>

namespace ts {

// Adds the nanoseconds it lives to `out` (a per-call local: no locking).
class ScopedNs {
 public:
  explicit ScopedNs(uint64_t& out) : out_(out), t0_(std::chrono::steady_clock::now()) {}
  ~ScopedNs() {
    out_ += static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0_).count());
  }
  ScopedNs(const ScopedNs&) = delete;
  ScopedNs& operator=(const ScopedNs&) = delete;

 private:
  uint64_t& out_;
  std::chrono::steady_clock::time_point t0_;
};

// Totals for one load, fed by every worker. Decryption calls the hasher on its plaintext, so a
// piece's decrypt time is its whole check time less the hashing inside it.
class StageTimes {
 public:
  void add(uint64_t hash_ns, uint64_t decrypt_ns) {
    hash_ns_.fetch_add(hash_ns, std::memory_order_relaxed);
    decrypt_ns_.fetch_add(decrypt_ns, std::memory_order_relaxed);
  }
  double hash_seconds() const { return hash_ns_.load(std::memory_order_relaxed) * 1e-9; }
  double decrypt_seconds() const { return decrypt_ns_.load(std::memory_order_relaxed) * 1e-9; }

 private:
  std::atomic<uint64_t> hash_ns_{0}, decrypt_ns_{0};
};

}  // namespace ts
