#include "tensorstream/format/names.hpp"

#include <algorithm>
#include <cstring>

#include "tensorstream/errors.hpp"
#include "tensorstream/format/json.hpp"
#include "tensorstream/format/tensorizer.hpp"

namespace ts::tz {

namespace {

constexpr char kStructured = '\x1e';

[[noreturn]] void bad_name(const std::string& raw, const std::string& why) {
  throw FormatError("bad tensor name " + printable_name(raw.substr(0, 80)) + ": " + why, raw, "name");
}

std::string shown(const NamePath& p) {
  if (p.size() == 1 && !p[0].is_index) return "'" + printable_name(p[0].key) + "'";
  std::string out = "(";
  for (size_t i = 0; i < p.size(); ++i)
    out += (i ? ", " : "") + (p[i].is_index ? std::to_string(p[i].index) : "'" + printable_name(p[i].key) + "'");
  return out + (p.size() == 1 ? ",)" : ")");
}

// Indices before keys; indices by value, keys by their bytes (the order of their code points).
int compare(const NamePart& a, const NamePart& b) {
  if (a.is_index != b.is_index) return a.is_index ? -1 : 1;
  if (a.is_index) return a.index < b.index ? -1 : a.index > b.index ? 1 : 0;
  return a.key.compare(b.key) < 0 ? -1 : a.key == b.key ? 0 : 1;
}

// Torch dtypes a file may name in an opaque dtype string, with their widths (quantized types
// need metadata the format cannot carry and are left out).
struct TorchType {
  const char* name;
  uint32_t itemsize;
};
constexpr TorchType kTorchTypes[] = {
    {"bool", 1},           {"uint8", 1},           {"int8", 1},           {"int16", 2},         {"short", 2},
    {"int32", 4},          {"int", 4},             {"int64", 8},          {"long", 8},          {"uint16", 2},
    {"uint32", 4},         {"uint64", 8},          {"float16", 2},        {"half", 2},          {"bfloat16", 2},
    {"float32", 4},        {"float", 4},           {"float64", 8},        {"double", 8},        {"complex32", 4},
    {"chalf", 4},          {"complex64", 8},       {"cfloat", 8},         {"complex128", 16},   {"cdouble", 16},
    {"float8_e4m3fn", 1},  {"float8_e5m2", 1},     {"float8_e4m3fnuz", 1}, {"float8_e5m2fnuz", 1},
    {"float8_e8m0fnu", 1}, {"float4_e2m1fn_x2", 1}, {"bits1x8", 1},       {"bits2x4", 1},       {"bits4x2", 1},
    {"bits8", 1},          {"bits16", 2},
};

// numpy kind and width -> torch's name, for the types both have.
struct NumpyType {
  char kind;
  uint32_t width;
  const char* torch;
};
constexpr NumpyType kNumpyTypes[] = {
    {'b', 1, "bool"},    {'u', 1, "uint8"},    {'i', 1, "int8"},       {'i', 2, "int16"},       {'i', 4, "int32"},
    {'i', 8, "int64"},   {'u', 2, "uint16"},   {'u', 4, "uint32"},     {'u', 8, "uint64"},      {'f', 2, "float16"},
    {'f', 4, "float32"}, {'f', 8, "float64"},  {'c', 8, "complex64"},  {'c', 16, "complex128"},
};

std::string refuse(std::string* why, std::string reason) {
  if (why) *why = std::move(reason);
  return {};
}

}  // namespace

NamePath decode_name(const std::string& raw) {
  if (raw.empty()) bad_name(raw, "empty tensor name");
  if (raw[0] != kStructured) {
    if (json::invalid_utf8_at(reinterpret_cast<const unsigned char*>(raw.data()), raw.size()) != raw.size())
      bad_name(raw, "a plain name must be UTF-8");
    return {NamePart{false, 0, raw}};
  }
  if (raw.size() < 3 || raw[1] != '[' || raw.back() != ']' || raw.find_first_of("\r\n") != std::string::npos)
    bad_name(raw, "a structured name must be 0x1E then a one-line JSON array");
  json::Value v;
  try {
    v = json::parse(raw.data() + 1, raw.size() - 1);
  } catch (const FormatError& e) {
    bad_name(raw, e.what());
  }
  if (v.kind != json::Value::kArray) bad_name(raw, "a structured name must be a JSON array");
  if (v.items.empty()) bad_name(raw, "a structured name must not be empty");
  if (v.items.size() > kMaxNameDepth)
    bad_name(raw, "a structured name has " + std::to_string(v.items.size()) + " components, more than " +
                      std::to_string(kMaxNameDepth));
  NamePath path;
  path.reserve(v.items.size());
  for (const auto& item : v.items) {
    if (item.kind == json::Value::kString) path.push_back(NamePart{false, 0, item.text});
    else if (item.kind == json::Value::kNumber && item.is_uint) path.push_back(NamePart{true, item.uint, {}});
    else
      bad_name(raw, std::string("component ") + (item.kind == json::Value::kNumber ? item.text : item.kind_name()) +
                        " is not a string or a non-negative integer");
  }
  return path;
}

void check_paths(const std::vector<IndexEntry>& entries) {
  std::vector<const IndexEntry*> order;
  order.reserve(entries.size());
  for (const auto& e : entries) order.push_back(&e);
  auto less = [](const IndexEntry* a, const IndexEntry* b) {
    const size_t n = std::min(a->path.size(), b->path.size());
    for (size_t i = 0; i < n; ++i)
      if (int c = compare(a->path[i], b->path[i])) return c < 0;
    return a->path.size() < b->path.size();
  };
  std::sort(order.begin(), order.end(), less);
  // Sorted, a clash always shows between neighbours: a path right before the paths it prefixes,
  // and, under one parent, the last index right before the first key.
  for (size_t i = 1; i < order.size(); ++i) {
    const NamePath &a = order[i - 1]->path, &b = order[i]->path;
    size_t k = 0;
    while (k < a.size() && k < b.size() && compare(a[k], b[k]) == 0) ++k;
    const std::string& raw = order[i]->name;
    if (k == a.size() && k == b.size()) throw FormatError("tensor name " + shown(b) + " is used twice", raw, "name");
    if (k == a.size())
      throw FormatError("tensor name " + shown(a) + " is a prefix of another name (" + shown(b) + ")", raw, "name");
    if (a[k].is_index != b[k].is_index)
      throw FormatError("tensor name " + shown(b) + " mixes list indices and dict keys with " + shown(a), raw, "name");
  }
}

std::string torch_dtype_name(const std::string& dtype, std::string* why) {
  const size_t nul = dtype.find('\0');
  const std::string base = dtype.substr(0, nul);
  const std::string shown_dtype = "dtype " + printable_name(dtype);
  // numpy's str: byte order, kind letter, one or two digits of width
  if (base.size() < 3 || base.size() > 4 || std::strchr("<>=|", base[0]) == nullptr || base[0] == '\0' ||
      !((base[1] >= 'a' && base[1] <= 'z') || (base[1] >= 'A' && base[1] <= 'Z')))
    return refuse(why, "unknown " + shown_dtype);
  uint32_t width = 0;
  for (size_t i = 2; i < base.size(); ++i) {
    if (base[i] < '0' || base[i] > '9') return refuse(why, "unknown " + shown_dtype);
    width = width * 10 + static_cast<uint32_t>(base[i] - '0');
  }
  const char order = base[0], kind = base[1];
  if (width > 1 && order == '>') return refuse(why, "big-endian " + shown_dtype + " is not supported");
  if (width > 1 && order == '|') return refuse(why, shown_dtype + " lacks a byte order");
  if (nul == std::string::npos) {
    for (const auto& t : kNumpyTypes)
      if (t.kind == kind && t.width == width) return t.torch;
    return refuse(why, "unknown " + shown_dtype);
  }
  if (kind != 'V') return refuse(why, shown_dtype + " names a torch type but is not opaque ('V')");
  const std::string torch = dtype.substr(nul + 1);
  if (torch.rfind("torch.", 0) != 0) return refuse(why, "unknown or unsupported torch dtype in " + shown_dtype);
  const std::string name = torch.substr(6);
  for (const auto& t : kTorchTypes) {
    if (name != t.name) continue;
    if (t.itemsize != width)
      return refuse(why, shown_dtype + ": torch." + name + " has " + std::to_string(t.itemsize) +
                             "-byte elements, not " + std::to_string(width));
    return name;
  }
  return refuse(why, "unknown or unsupported torch dtype in " + shown_dtype);
}

}  // namespace ts::tz
