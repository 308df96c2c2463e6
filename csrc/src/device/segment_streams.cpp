#include "tensorstream/device/segment_streams.hpp"

#include <stdexcept>

#include "tensorstream/errors.hpp"

namespace ts {

SegmentCrypt::SegmentCrypt(const tz::CryptInfo& ci, const crypto::SecretKey& key, uint64_t tensor_bytes,
                           uint64_t seg_at, uint64_t seg_len)
    : ci_(ci), key_(key), total_(tensor_bytes), seg_at_(seg_at) {
  const uint64_t cs = ci.chunk_size;
  // The parser guarantees one MAC per chunk; the ring plan, chunk-aligned segments.
  if (cs == 0 || tensor_bytes == 0 || ci.macs.size() != (tensor_bytes + cs - 1) / cs || seg_len == 0 ||
      seg_at % cs != 0 || seg_at + seg_len > tensor_bytes ||
      ((seg_at + seg_len) % cs && seg_at + seg_len != tensor_bytes))
    throw std::logic_error("segment of an encrypted tensor not cut at chunk boundaries");
  first_ = seg_at / cs;
  const uint64_t chunks = (seg_len + cs - 1) / cs;
  arrived_.reset(new std::atomic<uint64_t>[chunks]());
}

void SegmentCrypt::open_chunk(uint64_t c, uint8_t* at, const std::string& tensor, const std::string& file) const {
  if (crypto::open(at, ci_.chunk_length(c, total_), crypto::nonce_at(ci_.nonce, c), ci_.macs[c], key_)) return;
  throw CryptographyError("decryption failed in '" + file + "' at chunk " + std::to_string(c + 1) + " of " +
                              std::to_string(ci_.macs.size()) + ": wrong key, or the data or its MAC was altered",
                          tensor);
}

}  // namespace ts
