// The per-tensor header parser (ts::tz::parse_tensor_header), crypt-info blocks included.
//
// Input: one mode byte, then the header. The mode picks the file's data version and flags; the
// index entry the header is checked against is read leniently from the header itself, so that most
// mutations get past the comparison with the index and reach the hash and crypt-info sections.
// An accepted header must keep every range the loader later uses inside the header.
#include <cstring>

#include "fuzz_util.hpp"
#include "tensorstream/bytes.hpp"
#include "tensorstream/errors.hpp"
#include "tensorstream/format/tensorizer.hpp"
#include "tensorstream/hash.hpp"

using namespace ts;

namespace {

tz::FileHeader file_header(uint8_t mode) {
  tz::FileHeader fh;
  fh.version = 1 + mode % tz::kMaxVersion;
  if (fh.version >= 4 && (mode & 0x08)) fh.feature_flags |= tz::kFlagEncrypted;
  if (fh.version >= 5 && (mode & 0x10)) fh.feature_flags |= tz::kFlagVersionedHeaders;
  return fh;
}

// The entry this header would have in the index, read as far as the header allows.
tz::IndexEntry entry_from(const uint8_t* p, size_t n, const tz::FileHeader& fh, uint8_t mode) {
  tz::IndexEntry e;
  e.entry_version = fh.versioned_headers() && (mode & 0x20) ? 5 : 1;
  if (n >= 8) std::memcpy(&e.data_length, p + n - 8, 8);
  ByteReader r(p, n);
  try {
    r.skip(8 + 2, "header_size, module_idx");
    e.tensor_type = r.get<uint8_t>("tensor_type");
    e.name = r.bytes(r.get<uint16_t>("name_len"), "name");
    e.dtype = r.bytes(r.get<uint8_t>("dtype_len"), "dtype");
    uint8_t ndim = r.get<uint8_t>("ndim");
    for (uint8_t i = 0; i < ndim; ++i)
      e.shape.push_back(e.entry_version >= 5 ? r.get<uint64_t>("shape") : r.get<uint32_t>("shape"));
  } catch (const FormatError&) {
    // a short header: the parser must refuse it on its own
  }
  return e;
}

void check_header(const tz::TensorHeader& h, size_t size, const tz::IndexEntry& e, const tz::FileHeader& fh) {
  FUZZ_CHECK(static_cast<uint64_t>(h.data_length) == e.data_length);
  for (auto [b, end] : h.hash_value_ranges) FUZZ_CHECK(b <= end && end <= size);
  if (fh.encrypted()) {
    FUZZ_CHECK(h.crypt.present);
    FUZZ_CHECK(h.crypt_begin + 8 <= h.crypt_end && h.crypt_end == size - 8);
  } else {
    FUZZ_CHECK(!h.crypt.present && h.crypt_begin == 0 && h.crypt_end == 0);
  }
  const auto& ci = h.crypt;
  if (ci.encrypted && e.data_length > 0) {  // what DecryptStream requires
    FUZZ_CHECK(ci.chunk_size > 0);
    FUZZ_CHECK(ci.macs.size() == e.data_length / ci.chunk_size + (e.data_length % ci.chunk_size != 0));
  }
}

// What the loader hashes: the header with hash values zeroed and the crypt-info block left out.
void hash_like_loader(const uint8_t* p, size_t size, const tz::TensorHeader& h) {
  std::vector<uint8_t> copy(p, p + size);
  for (auto [b, end] : h.hash_value_ranges) std::memset(copy.data() + b, 0, end - b);
  TensorHasher hasher;
  if (h.crypt_end > h.crypt_begin) {
    hasher.update(copy.data(), h.crypt_begin);
    hasher.update(copy.data() + h.crypt_end, size - h.crypt_end);
  } else {
    hasher.update(copy.data(), size);
  }
  (void)hasher.sha256();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t mode = data[0];
  // The header in its own allocation, so that reading past its end is caught.
  std::vector<uint8_t> header(data + 1, data + size);
  const tz::FileHeader fh = file_header(mode);
  const tz::IndexEntry e = entry_from(header.data(), header.size(), fh, mode);
  tz::TensorHeader h;
  try {
    h = tz::parse_tensor_header(header.data(), header.size(), e, fh);
  } catch (const FormatError&) {
    return 0;
  }
  check_header(h, header.size(), e, fh);
  hash_like_loader(header.data(), header.size(), h);
  return 0;
}
