// A small, strict JSON reader for file headers (safetensors): objects, arrays, strings with
// escapes, numbers, true/false/null. Input must be UTF-8; depth and size are bounded.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace ts::json {

inline constexpr int kMaxDepth = 64;

struct Value {
  enum Kind : uint8_t { kNull, kBool, kNumber, kString, kArray, kObject };
  Kind kind = kNull;
  bool boolean = false;
  bool is_uint = false;      // a number written as a plain non-negative integer that fits in u64
  uint64_t uint = 0;         // its value
  std::string text;          // a string's decoded UTF-8, or a number's spelling
  std::vector<Value> items;  // array elements
  std::vector<std::pair<std::string, Value>> members;  // object members, in file order

  const char* kind_name() const;
};

// Parses exactly one value filling [data, data+size) (surrounding whitespace allowed). Throws
// FormatError (field "header") naming the byte offset of the first problem; an object with a
// key that appears twice is refused.
Value parse(const char* data, size_t size);

// Offset of the first byte that is not well-formed UTF-8 (overlong forms, surrogates and code
// points past U+10FFFF included), or `size` if all are.
size_t invalid_utf8_at(const unsigned char* s, size_t size);

}  // namespace ts::json
