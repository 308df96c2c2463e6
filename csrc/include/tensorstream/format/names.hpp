// Tensor names and dtypes, decoded by the parsers so that callers decode nothing from the file.
//
// A name is a path: a plain name (any UTF-8 not starting with byte 0x1E) is one key; a structured
// name is 0x1E followed by a one-line JSON array of keys (strings) and list indices (non-negative
// integers), e.g. \x1e["model",0,"w"]. A dtype string is numpy's (`<f4`, `|b1`), or an opaque
// torch type (`<V2\0torch.bfloat16`: raw bytes of that width, then NUL and torch's name).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ts::tz {

struct IndexEntry;

struct NamePart {
  bool is_index = false;
  uint64_t index = 0;  // a list index
  std::string key;     // a dict key (UTF-8)
};
using NamePath = std::vector<NamePart>;

inline constexpr size_t kMaxNameDepth = 256;  // components of one path

// The path stored as `raw`; FormatError (field "name") when it is malformed.
NamePath decode_name(const std::string& raw);

// FormatError (field "name") when two paths are the same, one is a prefix of another (a tensor
// would be both a leaf and a branch), or one level mixes list indices with dict keys.
void check_paths(const std::vector<IndexEntry>& entries);

// Torch's name of a dtype string ("float32", "bfloat16", "half"): the name of an opaque type as
// written, checked against the torch types this format can hold and their widths. Empty for a
// string that is malformed, big-endian, unknown, quantized or of the wrong width; `why` says which.
std::string torch_dtype_name(const std::string& dtype, std::string* why = nullptr);

}  // namespace ts::tz
