// CRC32 (zlib) and SHA-256 (OpenSSL) over a tensor's header and data, in one pass.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

namespace ts {

// zlib-compatible CRC32 continuation: crc32_update(crc32_update(0, a), b) == zlib.crc32(a + b).
uint32_t crc32_update(uint32_t crc, const void* data, size_t n);

class TensorHasher {
 public:
  TensorHasher();
  ~TensorHasher();
  TensorHasher(const TensorHasher&) = delete;
  TensorHasher& operator=(const TensorHasher&) = delete;

  // Feeds bytes to both hashes, in cache-sized blocks so each block is read from memory once.
  void update(const void* data, size_t n);
  uint32_t crc32() const { return crc_; }
  std::array<uint8_t, 32> sha256();

 private:
  uint32_t crc_;
  struct Sha;
  std::unique_ptr<Sha> sha_;
};

// What a tensor's stored hashes cover besides its data: its per-tensor header with the hash values
// zeroed and the crypt-info block left out; with the stored values, enough to check any copy of
// the tensor's bytes later (verify_module), with no access to the file.
struct HeaderDigest {
  size_t entry = 0;  // position in the index
  std::optional<uint32_t> crc32;
  std::optional<std::array<uint8_t, 32>> sha256;
  std::vector<uint8_t> hashed_header;
  // Whether header + `n` bytes at `data` give the stored hashes (true when none are stored).
  bool matches(const void* data, size_t n) const;
};

}  // namespace ts
