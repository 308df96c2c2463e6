// The crypt-info block of a per-tensor header (format spec §8): how a tensor's data was encrypted.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "tensorstream/crypto.hpp"

namespace ts::tz {

inline constexpr uint16_t kChunkKeyDerivation = 1;
inline constexpr uint16_t kChunkXSalsa20Parallel = 2;
inline constexpr uint16_t kChunkXSalsa20Sequential = 3;  // read only
inline constexpr uint16_t kDerivationPwHash = 1;
inline constexpr uint64_t kCryptChunkQuantum = 64;
inline constexpr uint64_t kMinCryptChunk = 1024;

struct CryptInfo {
  bool present = false;               // the header has a block (even an empty one)
  std::optional<crypto::PwHash> kdf;  // key-derivation chunk, for passphrase keys
  bool encrypted = false;             // an encryption chunk is present
  uint64_t chunk_size = 0;            // bytes per MAC (the sequential form: the whole data)
  crypto::Nonce nonce{};              // chunk i uses nonce + i
  std::vector<crypto::Mac> macs;      // one per chunk

  // Bytes of chunk i of a tensor with `data_length` bytes.
  uint64_t chunk_length(uint64_t i, uint64_t data_length) const {
    uint64_t at = i * chunk_size;
    return data_length - at < chunk_size ? data_length - at : chunk_size;
  }
};

// Parses a block's contents (the `size` bytes after its u64 length) for a tensor of
// `data_length` bytes. Every count and length is checked against the block before use;
// FormatError names the tensor and field.
CryptInfo parse_crypt_info(const uint8_t* data, size_t size, uint64_t data_length, const std::string& tensor);

// The whole block, u64 length first, as tensorizer writes it: [key derivation] + parallel chunk,
// or an empty block (no chunks) when `ci.encrypted` is false. `*macs_at` receives the offset of the
// first MAC in the returned bytes.
std::vector<uint8_t> build_crypt_info(const CryptInfo& ci, size_t* macs_at);

}  // namespace ts::tz
