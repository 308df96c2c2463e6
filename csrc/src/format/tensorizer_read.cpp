// Parsing of tensorizer files. Every length, offset and count is checked before it is used.
#include <algorithm>
#include <cstring>

#include "tensorstream/bytes.hpp"
#include "tensorstream/format/tensorizer.hpp"

namespace ts::tz {

namespace {

// Smallest possible index entry: name_len, type, dtype_len, ndim, three u64.
constexpr uint64_t kMinEntrySize = 2 + 1 + 1 + 1 + 3 * 8;
// Smallest possible per-tensor header: size, module_idx, type, name_len, dtype_len, ndim,
// hash_section_len, hash_count, data_length.
constexpr uint64_t kMinTensorHeader = 8 + 2 + 1 + 2 + 1 + 1 + 2 + 1 + 8;

std::vector<uint64_t> read_shape(ByteReader& r, bool long_dims) {
  uint8_t ndim = r.get<uint8_t>("ndim");
  r.need(static_cast<size_t>(ndim) * (long_dims ? 8 : 4), "shape");
  std::vector<uint64_t> shape(ndim);
  for (auto& d : shape) d = long_dims ? r.get<uint64_t>("shape") : r.get<uint32_t>("shape");
  return shape;
}

std::string shape_str(const std::vector<uint64_t>& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + ")";
}

void check_entry(IndexEntry& e, const FileHeader& fh, uint64_t file_size) {
  const std::string& n = e.name;
  TS_FORMAT_CHECK(e.tensor_type <= kStateDict, "unknown tensor type " + std::to_string(e.tensor_type), n,
                  "tensor_type");
  e.path = decode_name(n);
  std::string why;
  e.torch_dtype = torch_dtype_name(e.dtype, &why);
  TS_FORMAT_CHECK(!e.torch_dtype.empty(), why, n, "dtype");
  e.itemsize = dtype_itemsize(e.dtype);
  TS_FORMAT_CHECK(e.itemsize != 0, "unrecognised dtype string", n, "dtype");
  uint64_t numel = 1;
  for (uint64_t d : e.shape)
    TS_FORMAT_CHECK(mul_ok(numel, d, &numel), "shape " + shape_str(e.shape) + " overflows", n, "shape");
  e.numel = numel;
  uint64_t nbytes = 0;
  TS_FORMAT_CHECK(mul_ok(numel, e.itemsize, &nbytes), "shape " + shape_str(e.shape) + " overflows", n,
                  "shape");
  TS_FORMAT_CHECK(e.data_length == 0 || e.data_length == nbytes,
                  "data_length " + std::to_string(e.data_length) + " does not match shape " +
                      shape_str(e.shape) + " of itemsize " + std::to_string(e.itemsize),
                  n, "data_length");
  const uint64_t records_start = kFileHeaderSize + fh.metadata_len;
  TS_FORMAT_CHECK(e.header_offset >= records_start && e.header_offset < file_size,
                  "header_offset " + std::to_string(e.header_offset) + " lies outside the record area",
                  n, "header_offset");
  TS_FORMAT_CHECK(e.data_offset > e.header_offset && e.data_offset <= file_size,
                  "data_offset " + std::to_string(e.data_offset) + " is not after its header or past the end",
                  n, "data_offset");
  uint64_t hsize = e.header_size();
  TS_FORMAT_CHECK(hsize >= kMinTensorHeader && hsize <= kMaxTensorHeaderSize,
                  "per-tensor header size " + std::to_string(hsize) + " is out of range", n, "header_size");
  uint64_t end = 0;
  TS_FORMAT_CHECK(add_ok(e.data_offset, e.data_length, &end) && end <= file_size,
                  "data (" + std::to_string(e.data_length) + " bytes at " + std::to_string(e.data_offset) +
                      ") runs past the end of the file (" + std::to_string(file_size) + " bytes)",
                  n, "data_length");
}

void check_no_overlap(std::vector<IndexEntry>& entries) {
  std::vector<const IndexEntry*> order;
  order.reserve(entries.size());
  for (const auto& e : entries) order.push_back(&e);
  std::sort(order.begin(), order.end(),
            [](const IndexEntry* a, const IndexEntry* b) { return a->header_offset < b->header_offset; });
  for (size_t i = 1; i < order.size(); ++i) {
    const IndexEntry* prev = order[i - 1];
    TS_FORMAT_CHECK(prev->data_offset + prev->data_length <= order[i]->header_offset,
                    "record overlaps the record of " + printable_name(prev->name), order[i]->name,
                    "header_offset");
  }
  check_paths(entries);
}

}  // namespace

uint32_t dtype_itemsize(const std::string& dtype) {
  // "<f4", "|u1", "<V2\0torch.bfloat16": byte order, kind letter, decimal itemsize.
  std::string base = dtype.substr(0, dtype.find('\0'));
  if (base.size() < 3 || base.size() > 6) return 0;
  if (std::strchr("<>|=", base[0]) == nullptr || std::strchr("fiubcV", base[1]) == nullptr) return 0;
  uint32_t n = 0;
  for (size_t i = 2; i < base.size(); ++i) {
    if (base[i] < '0' || base[i] > '9') return 0;
    n = n * 10 + static_cast<uint32_t>(base[i] - '0');
  }
  return n <= 64 ? n : 0;
}

FileHeader parse_file_header(const uint8_t* data, size_t size, uint64_t file_size) {
  TS_FORMAT_CHECK(file_size >= kFileHeaderSize,
                  "file is " + std::to_string(file_size) + " bytes, too short for a tensorizer header", "",
                  "file_header");
  TS_FORMAT_CHECK(size >= kFileHeaderSize, "file header was not read whole", "", "file_header");
  TS_FORMAT_CHECK(std::memcmp(data, kMagic, 5) == 0, "not a tensorizer file (bad magic)", "", "magic");
  ByteReader r(data + 5, kFileHeaderSize - 5);
  FileHeader fh;
  fh.version = r.get<uint32_t>("version");
  TS_FORMAT_CHECK(fh.version >= 1 && fh.version <= kMaxVersion,
                  "unsupported data version " + std::to_string(fh.version) + " (supported: 1-5)", "",
                  "version");
  fh.feature_flags = r.get<uint64_t>("feature_flags");
  for (int i = 0; i < 3; ++i)
    TS_FORMAT_CHECK(r.get<uint64_t>("feature_flags") == 0, "unknown feature flags set", "", "feature_flags");
  TS_FORMAT_CHECK((fh.feature_flags & ~(kFlagEncrypted | kFlagVersionedHeaders)) == 0,
                  "unknown feature flags set", "", "feature_flags");
  TS_FORMAT_CHECK(fh.version >= 4 || fh.feature_flags == 0,
                  "feature flags are set in a version " + std::to_string(fh.version) + " file", "",
                  "feature_flags");
  TS_FORMAT_CHECK(!fh.versioned_headers() || fh.version >= 5,
                  "versioned headers need data version 5", "", "feature_flags");
  fh.tensor_size = r.get<uint64_t>("tensor_size");
  r.skip(8, "reserved");
  fh.tensor_count = r.get<uint64_t>("tensor_count");
  fh.metadata_len = r.get<uint64_t>("metadata_len");
  TS_FORMAT_CHECK(fh.metadata_len <= kMaxMetadataLen && fh.metadata_len <= file_size - kFileHeaderSize,
                  "index length " + std::to_string(fh.metadata_len) + " runs past the end of the file", "",
                  "metadata_len");
  uint64_t min_entry = kMinEntrySize + (fh.versioned_headers() ? 4 : 0);
  TS_FORMAT_CHECK(fh.tensor_count <= fh.metadata_len / min_entry,
                  "tensor count " + std::to_string(fh.tensor_count) + " cannot fit in an index of " +
                      std::to_string(fh.metadata_len) + " bytes",
                  "", "tensor_count");
  return fh;
}

std::vector<IndexEntry> parse_index_entries(const FileHeader& fh, const uint8_t* data, size_t size,
                                            uint64_t file_size) {
  TS_FORMAT_CHECK(size >= fh.metadata_len, "index was not read whole", "", "metadata");
  ByteReader r(data, fh.metadata_len);
  std::vector<IndexEntry> entries(fh.tensor_count);
  for (uint64_t i = 0; i < fh.tensor_count; ++i) {
    IndexEntry& e = entries[i];
    r.set_tensor("#" + std::to_string(i));
    if (fh.versioned_headers()) {
      e.entry_version = r.get<uint32_t>("entry_version");
      TS_FORMAT_CHECK(e.entry_version == 1 || e.entry_version == 5,
                      "unknown index entry version " + std::to_string(e.entry_version), "#" + std::to_string(i),
                      "entry_version");
    }
    uint16_t name_len = r.get<uint16_t>("name_len");
    e.name = r.bytes(name_len, "name");
    r.set_tensor(e.name);
    e.tensor_type = r.get<uint8_t>("tensor_type");
    uint8_t dtype_len = r.get<uint8_t>("dtype_len");
    e.dtype = r.bytes(dtype_len, "dtype");
    e.shape = read_shape(r, e.entry_version >= 5);
    e.header_offset = r.get<uint64_t>("header_offset");
    e.data_offset = r.get<uint64_t>("data_offset");
    e.data_length = r.get<uint64_t>("data_length");
    check_entry(e, fh, file_size);
  }
  check_no_overlap(entries);
  return entries;
}

TensorHeader parse_tensor_header(const uint8_t* data, size_t size, const IndexEntry& e, const FileHeader& fh) {
  const std::string& n = e.name;
  ByteReader r(data, size, n);
  TensorHeader h;
  uint64_t header_size = r.get<uint64_t>("header_size");
  TS_FORMAT_CHECK(header_size == size,
                  "per-tensor header says " + std::to_string(header_size) + " bytes, the index says " +
                      std::to_string(size),
                  n, "header_size");
  h.module_idx = r.get<uint16_t>("module_idx");
  h.tensor_type = r.get<uint8_t>("tensor_type");
  TS_FORMAT_CHECK(h.tensor_type == e.tensor_type, "tensor type differs from the index", n, "tensor_type");
  uint16_t name_len = r.get<uint16_t>("name_len");
  TS_FORMAT_CHECK(r.bytes(name_len, "name") == e.name, "name differs from the index", n, "name");
  uint8_t dtype_len = r.get<uint8_t>("dtype_len");
  TS_FORMAT_CHECK(r.bytes(dtype_len, "dtype") == e.dtype, "dtype differs from the index", n, "dtype");
  TS_FORMAT_CHECK(read_shape(r, e.entry_version >= 5) == e.shape, "shape differs from the index", n, "shape");

  uint16_t hash_len = r.get<uint16_t>("hash_section_len");
  r.need(hash_len, "hashes");
  TS_FORMAT_CHECK(hash_len >= 1, "empty hash section", n, "hash_section_len");
  const size_t hash_base = r.pos();
  ByteReader hr(data + hash_base, hash_len, n);
  uint8_t count = hr.get<uint8_t>("hash_count");
  for (uint8_t i = 0; i < count; ++i) {
    uint8_t type = hr.get<uint8_t>("hash_type");
    uint8_t len = hr.get<uint8_t>("hash_length");
    size_t at = hash_base + hr.pos();
    std::string value = hr.bytes(len, "hash");
    h.hash_value_ranges.emplace_back(at, at + len);
    if (type == kCrc32) {
      TS_FORMAT_CHECK(len == 4, "CRC32 hash must be 4 bytes", n, "hash");
      uint32_t crc;
      std::memcpy(&crc, value.data(), 4);
      h.crc32 = crc;
    } else if (type == kSha256) {
      TS_FORMAT_CHECK(len == 32, "SHA-256 hash must be 32 bytes", n, "hash");
      std::array<uint8_t, 32> sha;
      std::memcpy(sha.data(), value.data(), 32);
      h.sha256 = sha;
    }  // unknown hash types are skipped
  }
  r.skip(hash_len, "hashes");

  if (fh.encrypted()) {
    h.crypt_begin = r.pos();
    uint64_t crypt_len = r.get<uint64_t>("crypt_info_len");
    TS_FORMAT_CHECK(crypt_len <= r.remaining() && r.remaining() - crypt_len >= 8,
                    "crypt info block runs past the header", n, "crypt_info_len");
    h.crypt = parse_crypt_info(data + r.pos(), static_cast<size_t>(crypt_len), e.data_length, n);
    r.skip(crypt_len, "crypt_info");
  }
  TS_FORMAT_CHECK(r.remaining() >= 8, "no room for data_length at the end of the header", n, "data_length");
  if (fh.encrypted()) h.crypt_end = size - 8;  // unknown bytes before data_length go with the block
  std::memcpy(&h.data_length, data + size - 8, 8);
  TS_FORMAT_CHECK(h.data_length >= 0 && static_cast<uint64_t>(h.data_length) == e.data_length,
                  "per-tensor data_length " + std::to_string(h.data_length) + " differs from the index (" +
                      std::to_string(e.data_length) + ")",
                  n, "data_length");
  return h;
}

}  // namespace ts::tz
