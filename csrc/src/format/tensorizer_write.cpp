// Building the parts of a tensorizer file, byte for byte as tensorizer 2.12 writes them.
#include <cstring>

#include "tensorstream/bytes.hpp"
#include "tensorstream/format/tensorizer.hpp"

namespace ts::tz {

bool has_long_dim(const std::vector<uint64_t>& shape) {
  for (uint64_t d : shape)
    if (d > 0xffffffffull) return true;
  return false;
}

uint32_t record_version(const RecordSpec& r) {
  if (has_long_dim(r.shape)) return 5;
  if (r.is_meta) return 4;
  if (r.dtype.find('\0') != std::string::npos) return 2;
  return 1;
}

namespace {
void put_shape(ByteWriter& w, const std::vector<uint64_t>& shape, bool long_shape) {
  w.put<uint8_t>(static_cast<uint8_t>(shape.size()));
  for (uint64_t d : shape) {
    if (long_shape) w.put<uint64_t>(d);
    else w.put<uint32_t>(static_cast<uint32_t>(d));
  }
}

void check_spec(const RecordSpec& r) {
  if (r.name.size() > 0xffff) throw std::invalid_argument("tensor name longer than 65535 bytes");
  if (r.dtype.size() > 0xff) throw std::invalid_argument("dtype string longer than 255 bytes");
  if (r.shape.size() > 0xff) throw std::invalid_argument("tensor has more than 255 dimensions");
  if (r.tensor_type > kStateDict) throw std::invalid_argument("unknown tensor type");
}
}  // namespace

BuiltHeader build_tensor_header(const RecordSpec& r, bool long_shape, const CryptInfo* crypt) {
  check_spec(r);
  const bool with_crc = !(crypt && crypt->encrypted);
  ByteWriter w;
  w.put<uint64_t>(0);  // header_size, patched below
  w.put<uint16_t>(r.module_idx);
  w.put<uint8_t>(r.tensor_type);
  w.put<uint16_t>(static_cast<uint16_t>(r.name.size()));
  w.bytes(r.name);
  w.put<uint8_t>(static_cast<uint8_t>(r.dtype.size()));
  w.bytes(r.dtype);
  put_shape(w, r.shape, long_shape);
  w.put<uint16_t>(1 + (with_crc ? 2 + 4 : 0) + (2 + 32));  // hash section length, counting the count byte
  w.put<uint8_t>(with_crc ? 2 : 1);
  BuiltHeader h;
  if (with_crc) {
    w.put<uint8_t>(kCrc32);
    w.put<uint8_t>(4);
    h.crc_at = w.size();
    w.put<uint32_t>(0);
  }
  w.put<uint8_t>(kSha256);
  w.put<uint8_t>(32);
  h.sha_at = w.size();
  for (int i = 0; i < 4; ++i) w.put<uint64_t>(0);
  if (crypt) {
    h.crypt_begin = w.size();
    auto block = build_crypt_info(*crypt, &h.macs_at);
    h.macs_at += h.crypt_begin;
    w.bytes(block.data(), block.size());
    h.crypt_end = w.size();
  }
  w.put<int64_t>(r.is_meta ? 0 : static_cast<int64_t>(r.data_length));
  w.patch<uint64_t>(0, w.size());
  h.bytes = std::move(w.buffer());
  return h;
}

void set_header_hashes(BuiltHeader& h, uint32_t crc, const uint8_t sha[32]) {
  if (h.crc_at) std::memcpy(h.bytes.data() + h.crc_at, &crc, 4);
  std::memcpy(h.bytes.data() + h.sha_at, sha, 32);
}

void set_header_macs(BuiltHeader& h, const std::vector<crypto::Mac>& macs) {
  for (size_t i = 0; i < macs.size(); ++i)
    std::memcpy(h.bytes.data() + h.macs_at + i * crypto::kMacBytes, macs[i].data(), crypto::kMacBytes);
}

std::vector<uint8_t> build_file_header(const FileHeader& fh) {
  ByteWriter w;
  w.bytes(kMagic, 5);
  w.put<uint32_t>(fh.version);
  w.put<uint64_t>(fh.version >= 4 ? fh.feature_flags : 0);
  for (int i = 0; i < 3; ++i) w.put<uint64_t>(0);
  w.put<uint64_t>(fh.tensor_size);
  w.put<uint64_t>(0);
  w.put<uint64_t>(fh.tensor_count);
  w.put<uint64_t>(fh.metadata_len);
  return std::move(w.buffer());
}

void append_index_entry(std::vector<uint8_t>& out, const IndexEntry& e, bool tagged) {
  ByteWriter w;
  if (tagged) w.put<uint32_t>(e.entry_version);
  w.put<uint16_t>(static_cast<uint16_t>(e.name.size()));
  w.bytes(e.name);
  w.put<uint8_t>(e.tensor_type);
  w.put<uint8_t>(static_cast<uint8_t>(e.dtype.size()));
  w.bytes(e.dtype);
  put_shape(w, e.shape, e.entry_version >= 5);
  w.put<uint64_t>(e.header_offset);
  w.put<uint64_t>(e.data_offset);
  w.put<uint64_t>(e.data_length);
  out.insert(out.end(), w.buffer().begin(), w.buffer().end());
}

}  // namespace ts::tz
