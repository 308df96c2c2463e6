// The file header and index parsers (ts::tz::read_index) over arbitrary bytes. A refused file must
// raise FormatError; an accepted one must hold every invariant the loader relies on, and the
// writer's functions must rebuild its header and index byte for byte.
#include <cstring>

#include "fuzz_util.hpp"
#include "tensorstream/index_reader.hpp"
#include "tensorstream/errors.hpp"
#include "tensorstream/format/tensorizer.hpp"
#include "tensorstream/io/source.hpp"

using namespace ts;

namespace {

void check_entries(const tz::Index& idx) {
  const uint64_t records = tz::kFileHeaderSize + idx.header.metadata_len;
  for (const auto& e : idx.entries) {
    FUZZ_CHECK(e.itemsize > 0);
    FUZZ_CHECK(e.data_length == 0 || e.data_length == e.numel * e.itemsize);
    FUZZ_CHECK(e.header_offset >= records);
    FUZZ_CHECK(e.data_offset > e.header_offset);
    FUZZ_CHECK(e.header_size() <= tz::kMaxTensorHeaderSize);
    FUZZ_CHECK(e.data_offset <= idx.file_size && e.data_length <= idx.file_size - e.data_offset);
  }
}

// Rebuilds the file header and the index from what was parsed; both must equal the input bytes
// (the file header's reserved field is not kept, so it is left out of the comparison).
void check_rebuild(const tz::Index& idx, const uint8_t* data) {
  auto header = tz::build_file_header(idx.header);
  FUZZ_CHECK(header.size() == tz::kFileHeaderSize);
  const size_t reserved = 5 + 4 + 32 + 8;
  FUZZ_CHECK(std::memcmp(header.data(), data, reserved) == 0);
  FUZZ_CHECK(std::memcmp(header.data() + reserved + 8, data + reserved + 8, tz::kFileHeaderSize - reserved - 8) == 0);
  std::vector<uint8_t> index;
  for (const auto& e : idx.entries) tz::append_index_entry(index, e, idx.header.versioned_headers());
  FUZZ_CHECK(index.size() <= idx.header.metadata_len);
  FUZZ_CHECK(index.empty() || std::memcmp(index.data(), data + tz::kFileHeaderSize, index.size()) == 0);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  MemorySource src(data, size, nullptr);
  tz::Index idx;
  try {
    idx = tz::read_index(src);
  } catch (const FormatError&) {
    return 0;
  }
  FUZZ_CHECK(idx.entries.size() == idx.header.tensor_count);
  check_entries(idx);
  check_rebuild(idx, data);
  return 0;
}
