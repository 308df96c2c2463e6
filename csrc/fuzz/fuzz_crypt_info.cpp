// The crypt-info block parser (ts::tz::parse_crypt_info) and the key-derivation limits.
//
// Input: the tensor's data length (u64, little-endian), then the block's contents. An accepted
// block must have one MAC per chunk of the data, and the writer must rebuild a block that parses
// back to the same values.
#include <cstring>
#include <stdexcept>

#include "fuzz_util.hpp"
#include "tensorstream/crypto.hpp"
#include "tensorstream/errors.hpp"
#include "tensorstream/format/crypt_info.hpp"

using namespace ts;

namespace {

void check_macs(const tz::CryptInfo& ci, uint64_t data_length) {
  if (!ci.encrypted || data_length == 0) return;
  FUZZ_CHECK(ci.chunk_size > 0);
  FUZZ_CHECK(ci.macs.size() == data_length / ci.chunk_size + (data_length % ci.chunk_size != 0));
  const uint64_t last = ci.macs.size() - 1;
  FUZZ_CHECK(ci.chunk_length(last, data_length) > 0 && ci.chunk_length(last, data_length) <= ci.chunk_size);
}

// The limits a loader applies before deriving a key: refused parameters never reach Argon2id.
void check_kdf(const tz::CryptInfo& ci) {
  if (!ci.kdf) return;
  try {
    crypto::check_pwhash(*ci.kdf);
  } catch (const std::invalid_argument&) {
    return;
  }
  FUZZ_CHECK(ci.kdf->opslimit <= crypto::kMaxOpslimit && ci.kdf->memlimit <= crypto::kMaxMemlimit);
}

// What the writer builds from these values must parse back to them (writers always use the
// parallel form, which any accepted chunk size also satisfies).
void check_rebuild(const tz::CryptInfo& ci, uint64_t data_length) {
  if (!ci.encrypted || ci.chunk_size < tz::kMinCryptChunk || ci.chunk_size % tz::kCryptChunkQuantum) return;
  auto block = tz::build_crypt_info(ci, nullptr);
  tz::CryptInfo again = tz::parse_crypt_info(block.data() + 8, block.size() - 8, data_length, "rebuilt");
  FUZZ_CHECK(again.encrypted && again.chunk_size == ci.chunk_size && again.nonce == ci.nonce);
  FUZZ_CHECK(again.macs == ci.macs);
  FUZZ_CHECK(again.kdf.has_value() == ci.kdf.has_value());
  if (ci.kdf) FUZZ_CHECK(!(*again.kdf < *ci.kdf) && !(*ci.kdf < *again.kdf));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 8) return 0;
  uint64_t data_length;
  std::memcpy(&data_length, data, 8);
  std::vector<uint8_t> block(data + 8, data + size);  // its own allocation: overreads are caught
  tz::CryptInfo ci;
  try {
    ci = tz::parse_crypt_info(block.data(), block.size(), data_length, "fuzz");
  } catch (const FormatError&) {
    return 0;
  }
  FUZZ_CHECK(ci.present);
  check_macs(ci, data_length);
  check_kdf(ci);
  check_rebuild(ci, data_length);
  return 0;
}
