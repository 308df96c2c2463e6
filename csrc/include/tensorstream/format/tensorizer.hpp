// The tensorizer `.tensors` format (data versions 1-5): parsing and building of its parts.
// All parsing of file bytes happens here; see the format spec for the layout.
#pragma once
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "tensorstream/format/crypt_info.hpp"
#include "tensorstream/format/names.hpp"

namespace ts::tz {

inline constexpr char kMagic[5] = {'|', 'T', 'Z', 'R', '|'};
inline constexpr uint64_t kFileHeaderSize = 73;         // magic .. metadata_len
inline constexpr uint64_t kWriterMetadataLen = 262144;  // what writers reserve for the index
inline constexpr uint32_t kMaxVersion = 5;
inline constexpr uint64_t kFlagEncrypted = 1;
inline constexpr uint64_t kFlagVersionedHeaders = 2;
// Sanity limits applied before allocating.
inline constexpr uint64_t kMaxTensorHeaderSize = 64ull << 20;
inline constexpr uint64_t kMaxMetadataLen = 1ull << 30;

enum TensorType : uint8_t { kParam = 0, kBuffer = 1, kStateDict = 2 };

struct FileHeader {
  uint32_t version = 0;
  uint64_t feature_flags = 0;  // low 64 bits of the 32-byte field (higher bits must be zero)
  uint64_t tensor_size = 0;
  uint64_t tensor_count = 0;
  uint64_t metadata_len = 0;
  // Per-tensor headers carry crypt info: v3, or v4+ with the encrypted flag.
  bool encrypted() const { return version == 3 || (version >= 4 && (feature_flags & kFlagEncrypted)); }
  bool versioned_headers() const { return feature_flags & kFlagVersionedHeaders; }
};

struct IndexEntry {
  uint32_t entry_version = 1;  // 1, or 5 for u64 shapes (tag present only with versioned_headers)
  std::string name;            // raw bytes
  uint8_t tensor_type = 0;
  std::string dtype;  // may contain '\0' (opaque types)
  std::vector<uint64_t> shape;
  uint64_t header_offset = 0;
  uint64_t data_offset = 0;
  uint64_t data_length = 0;
  uint32_t itemsize = 0;  // from the dtype string
  uint64_t numel = 0;
  NamePath path;            // the name, decoded (names.hpp)
  std::string torch_dtype;  // torch's name of the dtype ("float32", "bfloat16")
  bool is_meta() const { return data_length == 0 && numel != 0; }
  uint64_t header_size() const { return data_offset - header_offset; }
};

// Which format the index was read from. Safetensors records have no per-tensor header (their
// header_offset equals data_offset) and no hashes.
enum class Format : uint8_t { kTensorizer, kSafetensors };

struct Index {
  FileHeader header;
  uint64_t file_size = 0;
  std::vector<IndexEntry> entries;
  Format format = Format::kTensorizer;
  std::vector<std::pair<std::string, std::string>> metadata;  // safetensors' __metadata__, in file order
  bool has_tensor_headers() const { return format == Format::kTensorizer; }
};

enum HashType : uint8_t { kCrc32 = 0, kSha256 = 1 };

// A parsed per-tensor header. Offsets are relative to the header's first byte.
struct TensorHeader {
  uint16_t module_idx = 0;
  uint8_t tensor_type = 0;
  std::optional<uint32_t> crc32;
  std::optional<std::array<uint8_t, 32>> sha256;
  std::vector<std::pair<size_t, size_t>> hash_value_ranges;  // [begin, end) zeroed for hashing
  size_t crypt_begin = 0, crypt_end = 0;                     // crypt-info block, left out of hashes
  CryptInfo crypt;                                           // parsed block, when the file has them
  int64_t data_length = 0;
};

// Itemsize of a numpy-style dtype string ("<f4", "|b1", "<V2\0torch.bfloat16"), 0 if unknown.
uint32_t dtype_itemsize(const std::string& dtype);

// Parses the 73-byte file header. Throws FormatError.
FileHeader parse_file_header(const uint8_t* data, size_t size, uint64_t file_size);

// Parses the index that follows the file header and checks every entry against the file size.
// `data` holds the metadata_len bytes that start at offset kFileHeaderSize.
std::vector<IndexEntry> parse_index_entries(const FileHeader& fh, const uint8_t* data, size_t size,
                                            uint64_t file_size);

// Parses one per-tensor header (`size` bytes = entry.header_size()) and checks it against its entry.
TensorHeader parse_tensor_header(const uint8_t* data, size_t size, const IndexEntry& entry,
                                 const FileHeader& fh);

// What a writer needs to know about one record.
struct RecordSpec {
  std::string name;
  uint8_t tensor_type = 0;
  uint16_t module_idx = 0;
  std::string dtype;
  std::vector<uint64_t> shape;
  uint64_t data_length = 0;  // 0 for meta tensors
  bool is_meta = false;
};

// The lowest data version one record needs (1, 2 opaque, 4 meta, 5 long dimension).
uint32_t record_version(const RecordSpec& r);
bool has_long_dim(const std::vector<uint64_t>& shape);

// Serialized per-tensor header with zeroed hash values, and where those values go.
struct BuiltHeader {
  std::vector<uint8_t> bytes;
  size_t crc_at = 0, sha_at = 0;          // crc_at 0: no CRC32 (encrypted tensors carry SHA-256 only)
  size_t crypt_begin = 0, crypt_end = 0;  // crypt-info block, left out of the hashes
  size_t macs_at = 0;                     // first MAC in the block
};
// `crypt`: the tensor's crypt-info block in a file that has them (encrypted, or empty), else null.
BuiltHeader build_tensor_header(const RecordSpec& r, bool long_shape, const CryptInfo* crypt = nullptr);
void set_header_hashes(BuiltHeader& h, uint32_t crc, const uint8_t sha[32]);
void set_header_macs(BuiltHeader& h, const std::vector<crypto::Mac>& macs);

std::vector<uint8_t> build_file_header(const FileHeader& fh);
// One index entry; `tagged` writes the u32 entry version first.
void append_index_entry(std::vector<uint8_t>& out, const IndexEntry& e, bool tagged);

}  // namespace ts::tz
