// The safetensors header parser and its checks, the header JSON reader, and loads of
// safetensors records through the Loader (no per-tensor header phase).
#include <cstring>

#include "check.hpp"
#include "tensorstream/index_reader.hpp"
#include "tensorstream/errors.hpp"
#include "tensorstream/format/json.hpp"
#include "tensorstream/format/safetensors.hpp"
#include "tensorstream/io/source.hpp"
#include "tensorstream/loader.hpp"

using namespace ts;

namespace {

// A file: 8-byte length, `header`, then `data_len` bytes counting 0, 1, 2...
std::vector<uint8_t> file_of(const std::string& header, size_t data_len) {
  std::vector<uint8_t> f(8);
  uint64_t n = header.size();
  std::memcpy(f.data(), &n, 8);
  f.insert(f.end(), header.begin(), header.end());
  for (size_t i = 0; i < data_len; ++i) f.push_back(static_cast<uint8_t>(i));
  return f;
}

tz::Index parse(const std::vector<uint8_t>& f) {
  MemorySource src(f.data(), f.size(), nullptr);
  return read_any_index(src);
}

// The field a FormatError names, or "" when none is thrown.
std::string failing_field(const std::vector<uint8_t>& f, std::string* tensor = nullptr) {
  try {
    parse(f);
  } catch (const FormatError& e) {
    if (tensor) *tensor = e.tensor();
    return e.field();
  }
  return "";
}

const char* kTwo =
    R"({"b":{"dtype":"BF16","shape":[2],"data_offsets":[24,28]},)"
    R"("a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"__metadata__":{"format":"pt"}})";

}  // namespace

TEST(safetensors_header_gives_index_records) {
  auto f = file_of(kTwo, 28);
  auto idx = parse(f);
  CHECK(idx.format == tz::Format::kSafetensors && !idx.has_tensor_headers());
  CHECK(idx.entries.size() == 2);
  const uint64_t start = 8 + std::strlen(kTwo);
  CHECK(idx.entries[0].name == "a" && idx.entries[0].dtype == "<f4" && idx.entries[0].data_offset == start);
  CHECK(idx.entries[0].shape == std::vector<uint64_t>({2, 3}) && idx.entries[0].data_length == 24);
  CHECK(idx.entries[0].header_size() == 0);
  CHECK(idx.entries[1].name == "b" && idx.entries[1].dtype == std::string("<V2\0torch.bfloat16", 18));
  CHECK(idx.entries[1].data_offset == start + 24 && idx.entries[1].itemsize == 2);
  CHECK(idx.metadata.size() == 1 && idx.metadata[0].first == "format" && idx.metadata[0].second == "pt");
}

TEST(safetensors_dtypes_of_the_spec) {
  for (const char* n : {"BOOL", "U8", "I8", "U16", "I16", "F16", "BF16", "U32", "I32", "F32", "U64", "I64", "F64",
                        "C64", "F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F8_E8M0"})
    CHECK(tz::dtype_itemsize(st::dtype_string(n)) != 0);
  CHECK(st::dtype_string("F128").empty() && st::dtype_string("F4").empty());
  std::string t;
  CHECK(failing_field(file_of(R"({"x":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}})", 1), &t) == "dtype");
  CHECK(t == "x");
}

TEST(safetensors_empty_and_scalar_tensors) {
  auto idx = parse(file_of(R"({"e":{"dtype":"F32","shape":[0,4],"data_offsets":[0,0]},)"
                           R"("s":{"dtype":"I64","shape":[],"data_offsets":[0,8]}})",
                           8));
  CHECK(idx.entries.size() == 2 && idx.entries[0].name == "e" && idx.entries[0].data_length == 0);
  CHECK(!idx.entries[0].is_meta() && idx.entries[1].numel == 1);
  CHECK(parse(file_of("{}", 0)).entries.empty());
  CHECK(parse(file_of("{}    ", 0)).entries.empty());  // padding spaces, as writers align the data
}

TEST(safetensors_hostile_headers_name_the_field) {
  std::string t;
  auto field = [&](const std::string& h, size_t n) { return failing_field(file_of(h, n), &t); };
  const std::string a = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":)";
  CHECK(field(a + "[0,8]}}", 7) == "data_offsets" && t == "a");  // truncated data
  CHECK(field(a + "[0,8]}}", 9) == "data_offsets");               // bytes nobody owns
  CHECK(field(a + "[4,12]}}", 12) == "data_offsets");             // a gap
  CHECK(field(a + "[0,12]}}", 12) == "data_offsets");             // length and shape disagree
  CHECK(field(a + R"([0,8]},"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})", 8) == "data_offsets");
  CHECK(t == "b");  // overlaps a
  CHECK(field(a + "[8,0]}}", 0) == "data_offsets");
  CHECK(field(a + "[0]}}", 8) == "data_offsets");
  CHECK(field(a + "[0,-8]}}", 8) == "data_offsets");
  CHECK(field(a + "[0,8.0]}}", 8) == "data_offsets");
  CHECK(field(R"({"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", 8) == "dtype" && t == "a");
  CHECK(field(R"({"a":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", 8) == "dtype");
  CHECK(field(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", 8) == "dtype");
  CHECK(field(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})", 8) == "shape");
  CHECK(field(R"({"a":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})", 8) == "shape");
  CHECK(field(R"({"a":[1]})", 0) == "info");
  CHECK(field(R"({"__metadata__":{"k":1}})", 0) == "__metadata__");
  CHECK(field(R"({"__metadata__":[]})", 0) == "__metadata__");
  CHECK(field(a + R"([0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", 16) == "header");
  CHECK(field(R"({"a":)", 0) == "header");
  CHECK(field("{\"a\xff\":{}}", 0) == "header");  // not UTF-8
  CHECK(field(" {}", 0) == "file_header");  // not '{' at byte 8: read as a (short) tensorizer file
  CHECK(field(std::string(80, ' '), 0) == "magic");
}

TEST(safetensors_header_length_is_checked_before_reading) {
  std::vector<uint8_t> f = file_of("{}", 0);
  uint64_t huge = st::kMaxHeaderSize + 1;
  std::memcpy(f.data(), &huge, 8);
  CHECK(failing_field(f) == "header_len");
  uint64_t past = 3;  // the file holds only 2 header bytes
  std::memcpy(f.data(), &past, 8);
  CHECK(failing_field(f) == "header_len");
  CHECK(failing_field(std::vector<uint8_t>(f.begin(), f.begin() + 4)) != "");
}

TEST(json_reader_decodes_escapes_and_refuses_bad_text) {
  const std::string text =
      R"({"k\u00e9\ud83d\ude00\n":["a\"b", 18446744073709551615, 18446744073709551616, -1, 1e3, true, null]})";
  auto v = json::parse(text.data(), text.size());
  CHECK(v.kind == json::Value::kObject && v.members.size() == 1);
  CHECK(v.members[0].first == "k\xc3\xa9\xf0\x9f\x98\x80\n");
  const auto& items = v.members[0].second.items;
  CHECK(items.size() == 7 && items[0].text == "a\"b");
  CHECK(items[1].is_uint && items[1].uint == UINT64_MAX && !items[2].is_uint && !items[3].is_uint);
  CHECK(!items[4].is_uint && items[5].boolean && items[6].kind == json::Value::kNull);
  for (std::string bad : {R"({"a":01})", R"({"a":"\ud800"})", R"({"a":"\q"})", "{\"a\":\"\x01\"}", R"({"a":1,})",
                          R"({"a" 1})", R"([1] 2)", R"({"a":tru})", R"("abc)"})
    CHECK_THROWS(json::parse(bad.data(), bad.size()), FormatError);
  std::string deep(json::kMaxDepth + 2, '[');
  deep += std::string(json::kMaxDepth + 2, ']');
  CHECK_THROWS(json::parse(deep.data(), deep.size()), FormatError);
}

TEST(safetensors_records_load_without_a_header_phase) {
  auto f = file_of(kTwo, 28);
  auto src = std::make_shared<MemorySource>(f.data(), f.size(), nullptr);
  auto idx = read_any_index(*src);
  Loader loader(src, EngineOptions{});
  std::vector<uint8_t> a(24), b(4);
  auto modules = loader.load(idx, {LoadRequest{1, b.data(), 4}, LoadRequest{0, a.data(), 24}}, false);
  CHECK(modules.size() == 2 && modules[0] == 0);
  for (size_t i = 0; i < 24; ++i) CHECK(a[i] == i);
  for (size_t i = 0; i < 4; ++i) CHECK(b[i] == 24 + i);
  CHECK(loader.stats().reads == 2);  // data only: no header reads
  CHECK_THROWS(loader.load(idx, {LoadRequest{0, a.data(), 24}}, true), std::invalid_argument);
}
