// Encrypting records for the writer: the plaintext is hashed, then sealed chunk by chunk into a
// bounded scratch buffer and written from there, so the caller's memory is never modified.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>

#include "tensorstream/crypto.hpp"
#include "tensorstream/format/tensorizer.hpp"
#include "tensorstream/hash.hpp"

namespace ts {

// Feeds `h` the header bytes the hashes cover: all but the crypt-info block.
void hash_built_header(TensorHasher& h, const tz::BuiltHeader& b);

// The crypt-info block of one record: for data, a fresh random nonce, 2 MiB chunks and zeroed MACs
// to fill in; for no data (meta or empty tensors), an empty block.
tz::CryptInfo plan_encryption(uint64_t data_length, const std::optional<crypto::PwHash>& kdf);

// Hashes `n` bytes of plaintext into `h`, encrypts them as `ci` plans, records the MACs in `ci`,
// and hands each sealed chunk to `write(bytes, length, offset_in_data)` (if set).
using ChunkWrite = std::function<void(const uint8_t* bytes, size_t length, uint64_t at)>;
void encrypt_data(const uint8_t* data, uint64_t n, tz::CryptInfo& ci, const crypto::SecretKey& key, TensorHasher& h,
                  const ChunkWrite& write);
// Seals the same data again with the nonces and MACs already in `ci` (for writers that must send
// the header, which carries the MACs, before the data); throws std::runtime_error if the data
// changed since, as its MACs would no longer match.
void reseal_data(const uint8_t* data, uint64_t n, const tz::CryptInfo& ci, const crypto::SecretKey& key,
                 const ChunkWrite& write);

}  // namespace ts
