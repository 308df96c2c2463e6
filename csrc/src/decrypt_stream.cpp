#include "tensorstream/decrypt_stream.hpp"

#include <stdexcept>

#include "tensorstream/errors.hpp"

namespace ts {

DecryptStream::DecryptStream(const tz::CryptInfo& ci, const crypto::SecretKey& key, uint8_t* base, uint64_t total,
                             std::string tensor, std::string file)
    : ci_(ci), key_(key), base_(base), total_(total), tensor_(std::move(tensor)), file_(std::move(file)) {
  // The parser guarantees one MAC per chunk of a non-empty tensor. (Counted without adding
  // chunk_size - 1 first: a file may give any chunk size up to 2^64 - 64.)
  if (total == 0 || ci.chunk_size == 0 || ci.macs.size() != total / ci.chunk_size + (total % ci.chunk_size != 0))
    throw std::logic_error("decrypt stream for an inconsistent crypt-info block");
  arrived_.reset(new std::atomic<uint64_t>[ci.macs.size()]());
}

void DecryptStream::open_chunk(uint64_t c) {
  const uint64_t len = ci_.chunk_length(c, total_);
  if (crypto::open(base_ + c * ci_.chunk_size, len, crypto::nonce_at(ci_.nonce, c), ci_.macs[c], key_)) return;
  throw CryptographyError("decryption failed in '" + file_ + "' at chunk " + std::to_string(c + 1) + " of " +
                              std::to_string(ci_.macs.size()) +
                              ": wrong key, or the data or its MAC was altered",
                          tensor_);
}

}  // namespace ts
