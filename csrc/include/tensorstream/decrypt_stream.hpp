// Decrypts one tensor in the read workers: each crypto chunk is opened by the worker whose read
// completes it, whatever order and size the read pieces come in.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "tensorstream/crypto.hpp"
#include "tensorstream/format/crypt_info.hpp"

namespace ts {

class DecryptStream {
 public:
  // `base` holds the tensor's `total` bytes of ciphertext as they arrive (decrypted in place).
  // `ci` and `key` must outlive the stream; `file` and `tensor` name it in errors.
  DecryptStream(const tz::CryptInfo& ci, const crypto::SecretKey& key, uint8_t* base, uint64_t total,
                std::string tensor, std::string file);

  // Records that bytes [at, at+n) have arrived. Every chunk this completes is decrypted here,
  // then `ready(chunk_at, chunk_len)` is called for it. Thread-safe; throws CryptographyError
  // when a chunk's MAC does not match.
  template <typename F>
  void add(uint64_t at, uint64_t n, F&& ready) {
    const uint64_t cs = ci_.chunk_size;
    for (uint64_t c = at / cs; c * cs < at + n; ++c) {
      const uint64_t begin = c * cs, len = ci_.chunk_length(c, total_);
      const uint64_t lo = at > begin ? at : begin;
      const uint64_t hi = at + n < begin + len ? at + n : begin + len;
      // acq_rel: the worker that completes a chunk sees the bytes the other workers wrote.
      if (arrived_[c].fetch_add(hi - lo, std::memory_order_acq_rel) + (hi - lo) != len) continue;
      open_chunk(c);
      ready(begin, len);
    }
  }

 private:
  void open_chunk(uint64_t c);

  const tz::CryptInfo& ci_;
  const crypto::SecretKey& key_;
  uint8_t* base_;
  uint64_t total_;
  std::string tensor_, file_;
  std::unique_ptr<std::atomic<uint64_t>[]> arrived_;
};

}  // namespace ts
