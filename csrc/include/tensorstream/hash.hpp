// CRC32 (zlib) and SHA-256 (OpenSSL) over a tensor's header and data, in one pass.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>

namespace ts {

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
