// CRC32 (zlib) and SHA-256 (OpenSSL) over a tensor's header and data, in one pass.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>

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

}  // namespace ts
