// Parsing and building of crypt-info blocks. Every length and count is checked before use.
#include "tensorstream/format/crypt_info.hpp"

#include <cstring>

#include "tensorstream/bytes.hpp"

namespace ts::tz {

namespace {

void parse_key_derivation(ByteReader& r, CryptInfo& ci, const std::string& n) {
  TS_FORMAT_CHECK(!ci.kdf, "more than one key-derivation chunk", n, "chunk_type");
  uint16_t method = r.get<uint16_t>("derivation_method");
  TS_FORMAT_CHECK(method == kDerivationPwHash, "unknown key-derivation method " + std::to_string(method), n,
                  "derivation_method");
  crypto::PwHash p;
  p.opslimit = r.get<uint64_t>("opslimit");
  p.memlimit = r.get<uint64_t>("memlimit");
  p.alg = r.get<int32_t>("alg");
  uint16_t salt_len = r.get<uint16_t>("salt_len");
  TS_FORMAT_CHECK(salt_len == crypto::kSaltBytes,
                  "salt is " + std::to_string(salt_len) + " bytes, not " + std::to_string(crypto::kSaltBytes), n,
                  "salt_len");
  std::memcpy(p.salt.data(), r.bytes(salt_len, "salt").data(), salt_len);
  ci.kdf = p;
}

void read_nonce(ByteReader& r, crypto::Nonce& nonce) {
  std::string b = r.bytes(crypto::kNonceBytes, "nonce");
  std::memcpy(nonce.data(), b.data(), b.size());
}

void read_macs(ByteReader& r, std::vector<crypto::Mac>& macs, uint64_t count) {
  r.need(count * crypto::kMacBytes, "macs");  // count is bounded by the data length: no overflow
  macs.resize(count);
  for (auto& m : macs) std::memcpy(m.data(), r.bytes(crypto::kMacBytes, "macs").data(), crypto::kMacBytes);
}

void parse_parallel(ByteReader& r, CryptInfo& ci, uint64_t data_length, const std::string& n) {
  ci.chunk_size = r.get<uint64_t>("chunk_size");
  TS_FORMAT_CHECK(ci.chunk_size >= kMinCryptChunk && ci.chunk_size % kCryptChunkQuantum == 0,
                  "encryption chunk size " + std::to_string(ci.chunk_size) + " is not a multiple of " +
                      std::to_string(kCryptChunkQuantum) + " of at least " + std::to_string(kMinCryptChunk),
                  n, "chunk_size");
  read_nonce(r, ci.nonce);
  uint64_t num_macs = r.get<uint64_t>("num_macs");
  uint64_t expected = data_length / ci.chunk_size + (data_length % ci.chunk_size != 0);
  TS_FORMAT_CHECK(num_macs == expected,
                  std::to_string(num_macs) + " MACs for " + std::to_string(data_length) + " bytes in chunks of " +
                      std::to_string(ci.chunk_size) + " (expected " + std::to_string(expected) + ")",
                  n, "num_macs");
  read_macs(r, ci.macs, num_macs);
}

void parse_sequential(ByteReader& r, CryptInfo& ci, uint64_t data_length) {
  read_nonce(r, ci.nonce);
  read_macs(r, ci.macs, 1);
  ci.chunk_size = data_length;  // one chunk: the whole data
}

}  // namespace

CryptInfo parse_crypt_info(const uint8_t* data, size_t size, uint64_t data_length, const std::string& n) {
  ByteReader r(data, size, n);
  CryptInfo ci;
  ci.present = true;
  uint16_t count = r.get<uint16_t>("num_chunks");
  for (uint16_t i = 0; i < count; ++i) {
    uint64_t len = r.get<uint64_t>("chunk_len");
    TS_FORMAT_CHECK(len >= 2 && len <= r.remaining(),
                    "crypt-info chunk of " + std::to_string(len) + " bytes does not fit its block (" +
                        std::to_string(r.remaining()) + " bytes left)",
                    n, "chunk_len");
    ByteReader cr(data + r.pos(), static_cast<size_t>(len), n);
    r.skip(static_cast<size_t>(len), "chunk");
    uint16_t type = cr.get<uint16_t>("chunk_type");
    if (type == kChunkKeyDerivation) {
      parse_key_derivation(cr, ci, n);
    } else if (type == kChunkXSalsa20Parallel || type == kChunkXSalsa20Sequential) {
      TS_FORMAT_CHECK(!ci.encrypted, "more than one encryption chunk", n, "chunk_type");
      ci.encrypted = true;
      if (type == kChunkXSalsa20Parallel) parse_parallel(cr, ci, data_length, n);
      else parse_sequential(cr, ci, data_length);
    } else {
      throw FormatError("unknown crypt-info chunk type " + std::to_string(type), n, "chunk_type");
    }
    TS_FORMAT_CHECK(cr.remaining() == 0,
                    "crypt-info chunk of type " + std::to_string(type) + " has " + std::to_string(cr.remaining()) +
                        " bytes left over",
                    n, "chunk_len");
  }
  TS_FORMAT_CHECK(r.remaining() == 0,
                  "crypt-info block has " + std::to_string(r.remaining()) + " bytes after its chunks", n,
                  "crypt_info_len");
  return ci;
}

std::vector<uint8_t> build_crypt_info(const CryptInfo& ci, size_t* macs_at) {
  ByteWriter w;
  w.put<uint64_t>(0);  // block length, patched below
  uint16_t count = ci.encrypted ? (ci.kdf ? 2 : 1) : 0;
  w.put<uint16_t>(count);
  if (ci.encrypted && ci.kdf) {
    size_t at = w.size();
    w.put<uint64_t>(0);
    w.put<uint16_t>(kChunkKeyDerivation);
    w.put<uint16_t>(kDerivationPwHash);
    w.put<uint64_t>(ci.kdf->opslimit);
    w.put<uint64_t>(ci.kdf->memlimit);
    w.put<int32_t>(ci.kdf->alg);
    w.put<uint16_t>(static_cast<uint16_t>(ci.kdf->salt.size()));
    w.bytes(ci.kdf->salt.data(), ci.kdf->salt.size());
    w.patch<uint64_t>(at, w.size() - at - 8);
  }
  if (ci.encrypted) {
    size_t at = w.size();
    w.put<uint64_t>(0);
    w.put<uint16_t>(kChunkXSalsa20Parallel);
    w.put<uint64_t>(ci.chunk_size);
    w.bytes(ci.nonce.data(), ci.nonce.size());
    w.put<uint64_t>(ci.macs.size());
    if (macs_at) *macs_at = w.size();
    for (const auto& m : ci.macs) w.bytes(m.data(), m.size());
    w.patch<uint64_t>(at, w.size() - at - 8);
  } else if (macs_at) {
    *macs_at = w.size();
  }
  w.patch<uint64_t>(0, w.size() - 8);
  return std::move(w.buffer());
}

}  // namespace ts::tz
