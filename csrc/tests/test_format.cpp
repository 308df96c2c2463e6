// Building and parsing a file in memory, and the checks that reject broken ones.
#include <cstring>

#include "check.hpp"
#include "tensorstream/index_reader.hpp"
#include "tensorstream/errors.hpp"
#include "tensorstream/format/tensorizer.hpp"
#include "tensorstream/io/source.hpp"

using namespace ts;

namespace {
// One-tensor file: name "w", <f4, shape (2, 3), no hashes filled in.
std::vector<uint8_t> one_tensor_file() {
  tz::RecordSpec r{"w", tz::kStateDict, 0, "<f4", {2, 3}, 24, false};
  auto h = tz::build_tensor_header(r, false);
  tz::IndexEntry e;
  e.name = r.name;
  e.tensor_type = r.tensor_type;
  e.dtype = r.dtype;
  e.shape = r.shape;
  e.header_offset = tz::kFileHeaderSize + 1024;
  e.data_offset = e.header_offset + h.bytes.size();
  e.data_length = 24;
  tz::FileHeader fh;
  fh.version = 1;
  fh.tensor_count = 1;
  fh.tensor_size = 24;
  fh.metadata_len = 1024;
  auto out = tz::build_file_header(fh);
  std::vector<uint8_t> index;
  tz::append_index_entry(index, e, false);
  index.resize(1024);
  out.insert(out.end(), index.begin(), index.end());
  out.insert(out.end(), h.bytes.begin(), h.bytes.end());
  out.resize(out.size() + 24 + 8);
  return out;
}

tz::Index parse(const std::vector<uint8_t>& f) {
  MemorySource src(f.data(), f.size(), nullptr);
  return tz::read_index(src);
}
}  // namespace

TEST(header_size_matches_spec_example) {
  tz::RecordSpec r{"w", tz::kStateDict, 0, "<f4", {2, 3}, 24, false};
  auto h = tz::build_tensor_header(r, false);
  CHECK(h.bytes.size() == 78);
}

TEST(round_trip_index_and_header) {
  auto f = one_tensor_file();
  auto idx = parse(f);
  CHECK(idx.entries.size() == 1);
  const auto& e = idx.entries[0];
  CHECK(e.name == "w" && e.itemsize == 4 && e.numel == 6 && e.data_length == 24);
  auto th = tz::parse_tensor_header(f.data() + e.header_offset, e.header_size(), e, idx.header);
  CHECK(th.data_length == 24);
  CHECK(th.crc32.has_value() && th.sha256.has_value());
  CHECK(th.hash_value_ranges.size() == 2);
}

TEST(rejects_bad_magic_version_and_truncation) {
  auto f = one_tensor_file();
  auto bad = f;
  bad[0] = 'X';
  CHECK_THROWS(parse(bad), FormatError);
  bad = f;
  bad[5] = 9;  // version 9
  CHECK_THROWS(parse(bad), FormatError);
  for (size_t cut : {size_t(0), size_t(10), size_t(72), size_t(500)}) {
    std::vector<uint8_t> t(f.begin(), f.begin() + cut);
    CHECK_THROWS(parse(t), FormatError);
  }
}

TEST(rejects_data_past_end_and_huge_counts) {
  auto f = one_tensor_file();
  auto bad = f;
  uint64_t count = 1ull << 40;
  std::memcpy(bad.data() + 57, &count, 8);
  CHECK_THROWS(parse(bad), FormatError);
  bad = f;
  bad.resize(bad.size() - 20);  // data runs past the end
  CHECK_THROWS(parse(bad), FormatError);
}

TEST(header_mismatch_names_the_tensor) {
  auto f = one_tensor_file();
  auto idx = parse(f);
  const auto& e = idx.entries[0];
  auto bad = f;
  bad[e.header_offset + 8 + 2 + 1 + 2] = 'x';  // the name inside the per-tensor header
  try {
    tz::parse_tensor_header(bad.data() + e.header_offset, e.header_size(), e, idx.header);
    CHECK(false);
  } catch (const FormatError& err) {
    CHECK(err.tensor() == "w" && err.field() == "name");
  }
}

TEST(dtype_itemsize) {
  CHECK(tz::dtype_itemsize("<f4") == 4);
  CHECK(tz::dtype_itemsize("|b1") == 1);
  CHECK(tz::dtype_itemsize(std::string("<V2\0torch.bfloat16", 18)) == 2);
  CHECK(tz::dtype_itemsize("<c16") == 16);
  CHECK(tz::dtype_itemsize("xyz") == 0);
  CHECK(tz::dtype_itemsize("<f") == 0);
}

TEST(versions) {
  CHECK(tz::record_version({"a", 2, 0, "<f4", {3}, 12, false}) == 1);
  CHECK(tz::record_version({"a", 2, 0, std::string("<V2\0torch.bfloat16", 18), {3}, 6, false}) == 2);
  CHECK(tz::record_version({"a", 2, 0, "<f4", {3}, 0, true}) == 4);
  CHECK(tz::record_version({"a", 2, 0, "|u1", {1ull << 32}, 0, true}) == 5);
}
