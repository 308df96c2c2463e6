// Per-segment helpers of the ring pipeline, used from the read workers: pieces of one segment
// (a tensor's bytes in one slot) arrive in any order from several threads; these hash them in
// order and open each crypto chunk once all its bytes are there.
#pragma once
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "tensorstream/crypto.hpp"
#include "tensorstream/format/crypt_info.hpp"
#include "tensorstream/hash.hpp"

namespace ts {

// Feeds a segment's bytes to its tensor's hasher in order, whatever order they arrive in.
class OrderedFeed {
 public:
  // Records bytes [at, at+n) of the segment at `base` (`total` bytes) and hashes every piece now
  // next in line; `first()` runs once, before the segment's first byte is hashed (it may wait
  // for the tensor's earlier segments, or throw). Returns true for exactly one call: the one
  // after which the whole segment has been hashed.
  template <typename First>
  bool add(uint64_t at, uint64_t n, const uint8_t* base, uint64_t total, TensorHasher& h, First&& first) {
    std::unique_lock<std::mutex> lock(mu_);
    ready_.emplace(at, n);
    if (busy_) return false;  // the thread already hashing this segment will take it
    busy_ = true;
    try {
      while (!ready_.empty() && ready_.begin()->first == next_) {
        const uint64_t len = ready_.begin()->second;
        ready_.erase(ready_.begin());
        lock.unlock();
        if (next_ == 0) first();
        h.update(base + next_, len);
        lock.lock();
        next_ += len;
      }
    } catch (...) {
      if (!lock.owns_lock()) lock.lock();
      busy_ = false;
      throw;
    }
    busy_ = false;
    if (done_ || next_ != total) return false;
    done_ = true;
    return true;
  }

 private:
  std::mutex mu_;
  std::map<uint64_t, uint64_t> ready_;
  uint64_t next_ = 0;
  bool busy_ = false, done_ = false;
};

// Opens, in place, the crypto chunks of one segment of an encrypted tensor. The segment starts
// at a chunk boundary and ends at one or at the tensor's end (the ring plan cuts it so).
class SegmentCrypt {
 public:
  SegmentCrypt(const tz::CryptInfo& ci, const crypto::SecretKey& key, uint64_t tensor_bytes, uint64_t seg_at,
               uint64_t seg_len);

  // Bytes [at, at+n) of the segment (at `base`) have arrived. Every chunk this completes is
  // decrypted, then `ready(at, len)` is called with its place in the segment. Thread-safe;
  // throws CryptographyError naming `tensor` and `file` when a MAC does not match.
  template <typename F>
  void add(uint64_t at, uint64_t n, uint8_t* base, F&& ready, const std::string& tensor, const std::string& file) {
    const uint64_t cs = ci_.chunk_size, abs = seg_at_ + at;
    for (uint64_t c = abs / cs; c * cs < abs + n; ++c) {
      const uint64_t begin = c * cs, len = ci_.chunk_length(c, total_);
      const uint64_t lo = abs > begin ? abs : begin;
      const uint64_t hi = abs + n < begin + len ? abs + n : begin + len;
      // acq_rel: the worker that completes a chunk sees the bytes the other workers wrote.
      if (arrived_[c - first_].fetch_add(hi - lo, std::memory_order_acq_rel) + (hi - lo) != len) continue;
      open_chunk(c, base + (begin - seg_at_), tensor, file);
      ready(begin - seg_at_, len);
    }
  }

 private:
  void open_chunk(uint64_t c, uint8_t* at, const std::string& tensor, const std::string& file) const;

  const tz::CryptInfo& ci_;
  const crypto::SecretKey& key_;
  uint64_t total_, seg_at_, first_;
  std::unique_ptr<std::atomic<uint64_t>[]> arrived_;
};

}  // namespace ts
