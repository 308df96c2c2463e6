// What the read workers do with a tensor's bytes as they arrive, for every load: to CPU memory
// (the stretch is the whole tensor) and through the GPU ring (a stretch is the tensor's part in
// one slot). Pieces of a stretch arrive in any order and size, from several threads at once.
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

// Feeds a stretch's bytes to its tensor's hasher in order, whatever order they arrive in.
class HashFeed {
 public:
  // Records bytes [at, at+n) of the stretch at `base` (`total` bytes) and hashes every piece now
  // next in line; `before(pos)` runs before the piece at `pos` is hashed (it may wait, e.g. for
  // the tensor's earlier stretches, or throw, e.g. Cancelled: the feed stays usable). Returns
  // true for exactly one call: the one after which the whole stretch has been hashed.
  template <typename Before>
  bool add(uint64_t at, uint64_t n, const uint8_t* base, uint64_t total, TensorHasher& h, Before&& before) {
    std::unique_lock<std::mutex> lock(mu_);
    ready_.emplace(at, n);
    if (busy_) return false;  // the thread already hashing this stretch will take it
    busy_ = true;
    try {
      while (!ready_.empty() && ready_.begin()->first == next_) {
        const uint64_t len = ready_.begin()->second;
        ready_.erase(ready_.begin());
        lock.unlock();
        before(next_);
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

// Opens, in place, the crypto chunks of a stretch of an encrypted tensor, each by the worker whose
// piece completes it. The stretch starts at a chunk boundary and ends at one or at the tensor's
// end (the whole tensor, or a segment the ring plan cut so).
class DecryptStream {
 public:
  // `ci` and `key` must outlive the stream; `tensor` and `file` name it in errors.
  DecryptStream(const tz::CryptInfo& ci, const crypto::SecretKey& key, uint64_t tensor_bytes, uint64_t stretch_at,
                uint64_t stretch_len, std::string tensor, std::string file);

  // Bytes [at, at+n) of the stretch (at `base`) have arrived. Every chunk this completes is
  // decrypted, then `ready(at, len)` is called with its place in the stretch. Thread-safe; throws
  // CryptographyError naming the tensor and file when a MAC does not match.
  template <typename F>
  void add(uint64_t at, uint64_t n, uint8_t* base, F&& ready) {
    const uint64_t cs = ci_.chunk_size, abs = at_ + at;
    for (uint64_t c = abs / cs; c * cs < abs + n; ++c) {
      const uint64_t begin = c * cs, len = ci_.chunk_length(c, total_);
      const uint64_t lo = abs > begin ? abs : begin;
      const uint64_t hi = abs + n < begin + len ? abs + n : begin + len;
      // acq_rel: the worker that completes a chunk sees the bytes the other workers wrote.
      if (arrived_[c - first_].fetch_add(hi - lo, std::memory_order_acq_rel) + (hi - lo) != len) continue;
      open_chunk(c, base + (begin - at_));
      ready(begin - at_, len);
    }
  }

 private:
  void open_chunk(uint64_t c, uint8_t* at) const;

  const tz::CryptInfo& ci_;
  const crypto::SecretKey& key_;
  uint64_t total_, at_, first_;
  std::string tensor_, file_;
  std::unique_ptr<std::atomic<uint64_t>[]> arrived_;
};

}  // namespace ts
