#include "tensorstream/hash.hpp"

#include <openssl/evp.h>
#include <zlib.h>

#include <stdexcept>

namespace ts {

struct TensorHasher::Sha {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  ~Sha() { EVP_MD_CTX_free(ctx); }
};

TensorHasher::TensorHasher() : crc_(static_cast<uint32_t>(::crc32(0L, Z_NULL, 0))), sha_(new Sha) {
  if (!sha_->ctx || EVP_DigestInit_ex(sha_->ctx, EVP_sha256(), nullptr) != 1)
    throw std::runtime_error("cannot initialise SHA-256");
}

TensorHasher::~TensorHasher() = default;

void TensorHasher::update(const void* data, size_t n) {
  constexpr size_t kBlock = 64 * 1024;
  const auto* p = static_cast<const unsigned char*>(data);
  while (n) {
    size_t m = n < kBlock ? n : kBlock;
    crc_ = crc32_update(crc_, p, m);
    EVP_DigestUpdate(sha_->ctx, p, m);
    p += m;
    n -= m;
  }
}

std::array<uint8_t, 32> TensorHasher::sha256() {
  std::array<uint8_t, 32> out{};
  unsigned int len = 0;
  EVP_DigestFinal_ex(sha_->ctx, out.data(), &len);
  return out;
}

bool HeaderDigest::matches(const void* data, size_t n) const {
  TensorHasher h;
  h.update(hashed_header.data(), hashed_header.size());
  h.update(data, n);
  return (!crc32 || *crc32 == h.crc32()) && (!sha256 || *sha256 == h.sha256());
}

}  // namespace ts
