#include "tensorstream/encryptor.hpp"

#include <algorithm>
#include <stdexcept>
#include <vector>

namespace ts {

void hash_built_header(TensorHasher& h, const tz::BuiltHeader& b) {
  if (b.crypt_end > b.crypt_begin) {
    h.update(b.bytes.data(), b.crypt_begin);
    h.update(b.bytes.data() + b.crypt_end, b.bytes.size() - b.crypt_end);
  } else {
    h.update(b.bytes.data(), b.bytes.size());
  }
}

tz::CryptInfo plan_encryption(uint64_t data_length, const std::optional<crypto::PwHash>& kdf) {
  tz::CryptInfo ci;
  ci.present = true;
  if (data_length == 0) return ci;  // tensorizer writes no chunks for tensors without data
  ci.encrypted = true;
  ci.kdf = kdf;
  ci.chunk_size = crypto::kChunkBytes;
  crypto::random_bytes(ci.nonce.data(), ci.nonce.size());
  ci.macs.resize(data_length / ci.chunk_size + (data_length % ci.chunk_size != 0));
  return ci;
}

void encrypt_data(const uint8_t* data, uint64_t n, tz::CryptInfo& ci, const crypto::SecretKey& key, TensorHasher& h,
                  const ChunkWrite& write) {
  std::vector<uint8_t> scratch(static_cast<size_t>(std::min<uint64_t>(n, ci.chunk_size)));
  for (uint64_t c = 0; c < ci.macs.size(); ++c) {
    const uint64_t at = c * ci.chunk_size;
    const size_t len = static_cast<size_t>(ci.chunk_length(c, n));
    h.update(data + at, len);
    ci.macs[c] = crypto::seal(scratch.data(), data + at, len, crypto::nonce_at(ci.nonce, c), key);
    if (write) write(scratch.data(), len, at);
  }
}

void reseal_data(const uint8_t* data, uint64_t n, const tz::CryptInfo& ci, const crypto::SecretKey& key,
                 const ChunkWrite& write) {
  std::vector<uint8_t> scratch(static_cast<size_t>(std::min<uint64_t>(n, ci.chunk_size)));
  for (uint64_t c = 0; c < ci.macs.size(); ++c) {
    const uint64_t at = c * ci.chunk_size;
    const size_t len = static_cast<size_t>(ci.chunk_length(c, n));
    if (crypto::seal(scratch.data(), data + at, len, crypto::nonce_at(ci.nonce, c), key) != ci.macs[c])
      throw std::runtime_error("tensor data changed while it was being written");
    write(scratch.data(), len, at);
  }
}

}  // namespace ts
