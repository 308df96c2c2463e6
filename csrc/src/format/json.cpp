// The header JSON reader. Every byte is checked against the grammar before it is used.
#include "tensorstream/format/json.hpp"

#include <set>

#include "tensorstream/errors.hpp"

namespace ts::json {

namespace {

class Parser {
 public:
  Parser(const char* data, size_t size) : p_(data), end_(data + size), begin_(data) {}

  Value document() {
    Value v = value(0);
    skip_ws();
    if (p_ != end_) fail("unexpected bytes after the JSON value");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw FormatError("header JSON: " + why + " at byte " + std::to_string(p_ - begin_), "", "header");
  }
  void skip_ws() {
    while (p_ != end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) ++p_;
  }
  char peek() {
    skip_ws();
    if (p_ == end_) fail("unexpected end");
    return *p_;
  }
  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++p_;
  }
  void literal(const char* word) {
    for (const char* w = word; *w; ++w, ++p_)
      if (p_ == end_ || *p_ != *w) fail(std::string("bad literal (expected ") + word + ")");
  }

  Value value(int depth) {
    if (depth > kMaxDepth) fail("nested deeper than " + std::to_string(kMaxDepth) + " levels");
    Value v;
    switch (peek()) {
      case '{': object(v, depth); break;
      case '[': array(v, depth); break;
      case '"': v.kind = Value::kString; v.text = string(); break;
      case 't': literal("true"); v.kind = Value::kBool; v.boolean = true; break;
      case 'f': literal("false"); v.kind = Value::kBool; break;
      case 'n': literal("null"); break;
      default: number(v);
    }
    return v;
  }

  void object(Value& v, int depth) {
    v.kind = Value::kObject;
    ++p_;
    if (peek() == '}') {
      ++p_;
      return;
    }
    std::set<std::string> seen;
    for (;;) {
      if (peek() != '"') fail("expected a string key");
      std::string key = string();
      if (!seen.insert(key).second) fail("key '" + printable_name(key) + "' appears twice");
      expect(':');
      v.members.emplace_back(std::move(key), value(depth + 1));
      if (peek() == '}') break;
      expect(',');
    }
    ++p_;
  }

  void array(Value& v, int depth) {
    v.kind = Value::kArray;
    ++p_;
    if (peek() == ']') {
      ++p_;
      return;
    }
    for (;;) {
      v.items.push_back(value(depth + 1));
      if (peek() == ']') break;
      expect(',');
    }
    ++p_;
  }

  void number(Value& v) {
    const char* start = p_;
    if (p_ != end_ && *p_ == '-') ++p_;
    const char* digits = p_;
    while (p_ != end_ && *p_ >= '0' && *p_ <= '9') ++p_;
    if (p_ == digits) fail("unexpected character");
    if (*digits == '0' && p_ - digits > 1) fail("number with a leading zero");
    bool integer = true;
    if (p_ != end_ && *p_ == '.') {
      integer = false;
      ++p_;
      if (!run_of_digits()) fail("bad number");
    }
    if (p_ != end_ && (*p_ == 'e' || *p_ == 'E')) {
      integer = false;
      ++p_;
      if (p_ != end_ && (*p_ == '+' || *p_ == '-')) ++p_;
      if (!run_of_digits()) fail("bad number");
    }
    v.kind = Value::kNumber;
    v.text.assign(start, p_);
    if (!integer || *start == '-') return;
    uint64_t n = 0;
    for (const char* d = digits; d != p_; ++d) {
      if (n > (UINT64_MAX - static_cast<uint64_t>(*d - '0')) / 10) return;  // too large: not a u64
      n = n * 10 + static_cast<uint64_t>(*d - '0');
    }
    v.is_uint = true;
    v.uint = n;
  }
  bool run_of_digits() {
    const char* d = p_;
    while (p_ != end_ && *p_ >= '0' && *p_ <= '9') ++p_;
    return p_ != d;
  }

  std::string string() {
    ++p_;  // the opening quote
    std::string out;
    for (;;) {
      if (p_ == end_) fail("unterminated string");
      unsigned char c = static_cast<unsigned char>(*p_);
      if (c == '"') break;
      if (c < 0x20) fail("control character in a string");
      if (c == '\\') {
        escape(out);
        continue;
      }
      out += static_cast<char>(c);
      ++p_;
    }
    ++p_;
    return out;
  }

  void escape(std::string& out) {
    if (++p_ == end_) fail("unterminated escape");
    char c = *p_++;
    switch (c) {
      case '"': out += '"'; return;
      case '\\': out += '\\'; return;
      case '/': out += '/'; return;
      case 'b': out += '\b'; return;
      case 'f': out += '\f'; return;
      case 'n': out += '\n'; return;
      case 'r': out += '\r'; return;
      case 't': out += '\t'; return;
      case 'u': break;
      default: fail("unknown escape");
    }
    uint32_t cp = hex4();
    if (cp >= 0xD800 && cp <= 0xDBFF) {  // a high surrogate must be followed by a low one
      if (end_ - p_ < 2 || p_[0] != '\\' || p_[1] != 'u') fail("unpaired surrogate");
      p_ += 2;
      uint32_t lo = hex4();
      if (lo < 0xDC00 || lo > 0xDFFF) fail("unpaired surrogate");
      cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
    } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
      fail("unpaired surrogate");
    }
    utf8(out, cp);
  }
  uint32_t hex4() {
    if (end_ - p_ < 4) fail("short \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i, ++p_) {
      char h = *p_;
      int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
      if (d < 0) fail("bad \\u escape");
      v = v * 16 + static_cast<uint32_t>(d);
    }
    return v;
  }
  static void utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  const char* p_;
  const char* end_;
  const char* begin_;
};

}  // namespace

size_t invalid_utf8_at(const unsigned char* s, size_t size) {
  for (size_t i = 0; i < size;) {
    unsigned char c = s[i];
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || n > size - i || (n == 2 && c < 0xC2)) return i;
    for (size_t k = 1; k < n; ++k)
      if ((s[i + k] & 0xC0) != 0x80) return i;
    if (n == 3) {
      uint32_t cp = ((c & 0x0Fu) << 12) | ((s[i + 1] & 0x3Fu) << 6);
      if (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    }
    if (n == 4) {
      uint32_t cp = ((c & 0x07u) << 18) | ((s[i + 1] & 0x3Fu) << 12);
      if (cp < 0x10000 || cp > 0x10FFFF) return i;
    }
    i += n;
  }
  return size;
}

const char* Value::kind_name() const {
  static const char* names[] = {"null", "a boolean", "a number", "a string", "an array", "an object"};
  return names[kind];
}

Value parse(const char* data, size_t size) {
  size_t bad = invalid_utf8_at(reinterpret_cast<const unsigned char*>(data), size);
  if (bad != size) throw FormatError("header is not valid UTF-8 (byte " + std::to_string(bad) + ")", "", "header");
  return Parser(data, size).document();
}

}  // namespace ts::json
