// Parsing of safetensors headers. The length, the JSON and every record are checked against
// the file size before anything is allocated for the data.
#include <algorithm>
#include <cstring>

#include "tensorstream/bytes.hpp"
#include "tensorstream/format/json.hpp"
#include "tensorstream/format/safetensors.hpp"

namespace ts::st {

namespace {

constexpr const char* kMetadataKey = "__metadata__";

struct DtypeName {
  const char* name;
  const char* dtype;  // as tensorizer files spell it
  size_t dtype_len;   // opaque strings hold a NUL
};

#define TS_OPAQUE(n, w, t) {n, w "\0torch." t, sizeof(w "\0torch." t) - 1}
#define TS_PLAIN(n, s) {n, s, sizeof(s) - 1}
const DtypeName kDtypes[] = {
    TS_PLAIN("BOOL", "|b1"), TS_PLAIN("U8", "|u1"), TS_PLAIN("I8", "|i1"), TS_PLAIN("U16", "<u2"),
    TS_PLAIN("I16", "<i2"), TS_PLAIN("F16", "<f2"), TS_OPAQUE("BF16", "<V2", "bfloat16"), TS_PLAIN("U32", "<u4"),
    TS_PLAIN("I32", "<i4"), TS_PLAIN("F32", "<f4"), TS_PLAIN("U64", "<u8"), TS_PLAIN("I64", "<i8"),
    TS_PLAIN("F64", "<f8"), TS_PLAIN("C64", "<c8"), TS_OPAQUE("F8_E4M3", "|V1", "float8_e4m3fn"),
    TS_OPAQUE("F8_E5M2", "|V1", "float8_e5m2"), TS_OPAQUE("F8_E4M3FNUZ", "|V1", "float8_e4m3fnuz"),
    TS_OPAQUE("F8_E5M2FNUZ", "|V1", "float8_e5m2fnuz"), TS_OPAQUE("F8_E8M0", "|V1", "float8_e8m0fnu"),
};
#undef TS_OPAQUE
#undef TS_PLAIN
// Spec types whose elements are smaller than a byte: named in the error, not loaded.
const char* const kSubByte[] = {"F4", "F6_E2M3", "F6_E3M2"};

std::string shape_str(const std::vector<uint64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

const json::Value& member(const json::Value& obj, const char* key, const std::string& tensor) {
  for (const auto& m : obj.members)
    if (m.first == key) return m.second;
  throw FormatError(std::string("tensor has no '") + key + "'", tensor, key);
}

std::vector<uint64_t> uints(const json::Value& v, const std::string& tensor, const char* field) {
  TS_FORMAT_CHECK(v.kind == json::Value::kArray, std::string(field) + " is " + v.kind_name() + ", not an array",
                  tensor, field);
  std::vector<uint64_t> out;
  out.reserve(v.items.size());
  for (const auto& item : v.items) {
    TS_FORMAT_CHECK(item.kind == json::Value::kNumber && item.is_uint,
                    std::string(field) + " holds " + (item.kind == json::Value::kNumber ? item.text : item.kind_name()) +
                        ", not a non-negative integer",
                    tensor, field);
    out.push_back(item.uint);
  }
  return out;
}

struct Span {
  uint64_t begin, end;
};

tz::IndexEntry entry_of(const std::string& name, const json::Value& info, Span& span) {
  TS_FORMAT_CHECK(info.kind == json::Value::kObject, std::string("tensor info is ") + info.kind_name() +
                      ", not an object", name, "info");
  const json::Value& dt = member(info, "dtype", name);
  TS_FORMAT_CHECK(dt.kind == json::Value::kString, std::string("dtype is ") + dt.kind_name(), name, "dtype");
  tz::IndexEntry e;
  e.name = name;
  e.tensor_type = tz::kStateDict;
  e.dtype = dtype_string(dt.text);
  for (const char* sub : kSubByte)
    TS_FORMAT_CHECK(dt.text != sub, "dtype " + dt.text + " has sub-byte elements, which are not supported", name,
                    "dtype");
  TS_FORMAT_CHECK(!e.dtype.empty(), "unknown dtype '" + printable_name(dt.text) + "'", name, "dtype");
  e.torch_dtype = tz::torch_dtype_name(e.dtype);
  e.path = tz::decode_name(name);
  e.itemsize = tz::dtype_itemsize(e.dtype);
  e.shape = uints(member(info, "shape", name), name, "shape");
  TS_FORMAT_CHECK(e.shape.size() <= 255, "shape has " + std::to_string(e.shape.size()) + " dimensions", name,
                  "shape");
  uint64_t numel = 1, nbytes = 0;
  for (uint64_t d : e.shape)
    TS_FORMAT_CHECK(mul_ok(numel, d, &numel), "shape " + shape_str(e.shape) + " overflows", name, "shape");
  TS_FORMAT_CHECK(mul_ok(numel, e.itemsize, &nbytes), "shape " + shape_str(e.shape) + " overflows", name, "shape");
  e.numel = numel;
  std::vector<uint64_t> offs = uints(member(info, "data_offsets", name), name, "data_offsets");
  TS_FORMAT_CHECK(offs.size() == 2, "data_offsets must hold [begin, end]", name, "data_offsets");
  TS_FORMAT_CHECK(offs[0] <= offs[1], "data_offsets end before they begin", name, "data_offsets");
  TS_FORMAT_CHECK(offs[1] - offs[0] == nbytes,
                  "data_offsets span " + std::to_string(offs[1] - offs[0]) + " bytes; shape " + shape_str(e.shape) +
                      " of " + dt.text + " needs " + std::to_string(nbytes),
                  name, "data_offsets");
  e.data_length = nbytes;
  span = {offs[0], offs[1]};
  return e;
}

void read_metadata(const json::Value& v, tz::Index& idx) {
  TS_FORMAT_CHECK(v.kind == json::Value::kObject, std::string("__metadata__ is ") + v.kind_name(), "",
                  "__metadata__");
  for (const auto& m : v.members) {
    TS_FORMAT_CHECK(m.second.kind == json::Value::kString,
                    "__metadata__ value of '" + printable_name(m.first) + "' is " + m.second.kind_name() +
                        ", not a string",
                    "", "__metadata__");
    idx.metadata.emplace_back(m.first, m.second.text);
  }
}

// Orders the entries by offset and checks that the data is contiguous and fills the file.
void check_layout(std::vector<tz::IndexEntry>& entries, std::vector<Span>& spans, uint64_t data_len) {
  std::vector<size_t> order(entries.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return spans[a].begin != spans[b].begin ? spans[a].begin < spans[b].begin : spans[a].end < spans[b].end;
  });
  uint64_t at = 0;
  std::vector<tz::IndexEntry> sorted;
  sorted.reserve(entries.size());
  for (size_t i : order) {
    const std::string& n = entries[i].name;
    TS_FORMAT_CHECK(spans[i].begin >= at,
                    "data [" + std::to_string(spans[i].begin) + ", " + std::to_string(spans[i].end) +
                        ") overlaps the tensor before it (" + printable_name(sorted.back().name) + ")",
                    n, "data_offsets");
    TS_FORMAT_CHECK(spans[i].begin == at,
                    "data begins at " + std::to_string(spans[i].begin) + ", leaving a gap after byte " +
                        std::to_string(at) + " (data must be contiguous)",
                    n, "data_offsets");
    TS_FORMAT_CHECK(spans[i].end <= data_len,
                    "data ends at " + std::to_string(spans[i].end) + ", past the " + std::to_string(data_len) +
                        " data bytes of the file",
                    n, "data_offsets");
    at = spans[i].end;
    sorted.push_back(std::move(entries[i]));
  }
  TS_FORMAT_CHECK(at == data_len,
                  "tensor data ends at " + std::to_string(at) + " but the file holds " + std::to_string(data_len) +
                      " data bytes",
                  "", "data_offsets");
  entries = std::move(sorted);
}

}  // namespace

std::string dtype_string(const std::string& name) {
  for (const auto& d : kDtypes)
    if (name == d.name) return std::string(d.dtype, d.dtype_len);
  return {};
}

bool looks_like(const uint8_t* data, size_t size) { return size > kLengthSize && data[kLengthSize] == '{'; }

uint64_t header_length(const uint8_t* data, size_t size, uint64_t file_size) {
  TS_FORMAT_CHECK(file_size >= kLengthSize && size >= kLengthSize,
                  "file is " + std::to_string(file_size) + " bytes, too short for a safetensors header", "",
                  "header_len");
  uint64_t n = 0;
  std::memcpy(&n, data, 8);
  TS_FORMAT_CHECK(n <= kMaxHeaderSize,
                  "header length " + std::to_string(n) + " exceeds the limit of " + std::to_string(kMaxHeaderSize),
                  "", "header_len");
  TS_FORMAT_CHECK(n <= file_size - kLengthSize,
                  "header length " + std::to_string(n) + " runs past the end of the file (" +
                      std::to_string(file_size) + " bytes)",
                  "", "header_len");
  return n;
}

tz::Index parse_header(const uint8_t* data, size_t header_len, uint64_t file_size) {
  TS_FORMAT_CHECK(header_len > 0 && data[0] == '{', "header does not start with '{'", "", "header");
  json::Value top = json::parse(reinterpret_cast<const char*>(data), header_len);
  TS_FORMAT_CHECK(top.kind == json::Value::kObject, "header is not a JSON object", "", "header");
  tz::Index idx;
  idx.format = tz::Format::kSafetensors;
  idx.file_size = file_size;
  std::vector<Span> spans;
  for (const auto& m : top.members) {
    if (m.first == kMetadataKey) {
      read_metadata(m.second, idx);
      continue;
    }
    spans.emplace_back();
    idx.entries.push_back(entry_of(m.first, m.second, spans.back()));
  }
  const uint64_t data_start = kLengthSize + header_len;
  check_layout(idx.entries, spans, file_size - data_start);
  tz::check_paths(idx.entries);
  uint64_t at = data_start;
  for (auto& e : idx.entries) {
    e.header_offset = e.data_offset = at;
    at += e.data_length;
  }
  idx.header.tensor_count = idx.entries.size();
  idx.header.tensor_size = at - data_start;
  return idx;
}

}  // namespace ts::st
