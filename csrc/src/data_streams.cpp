#include "tensorstream/data_streams.hpp"

#include <stdexcept>

#include "tensorstream/errors.hpp"

namespace ts {

namespace {

// Chunks of `cs` bytes in `n` bytes, counted without adding cs - 1 first: a file may give any
// chunk size up to 2^64 - 64.
uint64_t chunks_in(uint64_t n, uint64_t cs) { return n / cs + (n % cs != 0); }

}  // namespace

DecryptStream::DecryptStream(const tz::CryptInfo& ci, const crypto::SecretKey& key, uint64_t tensor_bytes,
                             uint64_t stretch_at, uint64_t stretch_len, std::string tensor, std::string file)
    : ci_(ci), key_(key), total_(tensor_bytes), at_(stretch_at), tensor_(std::move(tensor)), file_(std::move(file)) {
  const uint64_t cs = ci.chunk_size;
  // The parser guarantees one MAC per chunk of a non-empty tensor; the ring plan, stretches cut at
  // chunk boundaries.
  if (cs == 0 || tensor_bytes == 0 || ci.macs.size() != chunks_in(tensor_bytes, cs) || stretch_len == 0 ||
      stretch_at % cs != 0 || stretch_at > tensor_bytes || stretch_len > tensor_bytes - stretch_at ||
      ((stretch_at + stretch_len) % cs && stretch_at + stretch_len != tensor_bytes))
    throw std::logic_error("decrypt stream for an inconsistent crypt-info block or a stretch not cut at chunk ends");
  first_ = stretch_at / cs;
  arrived_.reset(new std::atomic<uint64_t>[chunks_in(stretch_len, cs)]());
}

void DecryptStream::open_chunk(uint64_t c, uint8_t* at) const {
  if (crypto::open(at, ci_.chunk_length(c, total_), crypto::nonce_at(ci_.nonce, c), ci_.macs[c], key_)) return;
  throw CryptographyError("decryption failed in '" + file_ + "' at chunk " + std::to_string(c + 1) + " of " +
                              std::to_string(ci_.macs.size()) + ": wrong key, or the data or its MAC was altered",
                          tensor_);
}

}  // namespace ts
