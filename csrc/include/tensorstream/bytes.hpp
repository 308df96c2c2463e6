// Little-endian field reading with bounds checks, and appending for writers.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "tensorstream/errors.hpp"

namespace ts {

// Reads fields from [data, data+size); every read is checked, failures name the tensor and field.
class ByteReader {
 public:
  ByteReader(const uint8_t* data, size_t size, std::string tensor = {})
      : data_(data), size_(size), tensor_(std::move(tensor)) {}

  template <typename T>
  T get(const char* field) {
    need(sizeof(T), field);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));  // hosts are little-endian (checked at build)
    pos_ += sizeof(T);
    return v;
  }
  std::string bytes(size_t n, const char* field) {
    need(n, field);
    std::string s(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return s;
  }
  void skip(size_t n, const char* field) {
    need(n, field);
    pos_ += n;
  }
  void need(size_t n, const char* field) const {
    if (n > size_ - pos_)
      throw FormatError("field runs past the end of its region (needs " + std::to_string(n) +
                            " bytes, " + std::to_string(size_ - pos_) + " left)",
                        tensor_, field);
  }
  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }
  void set_tensor(std::string t) { tensor_ = std::move(t); }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  std::string tensor_;
};

class ByteWriter {
 public:
  template <typename T>
  void put(T v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    buf_.insert(buf_.end(), p, p + sizeof(T));
  }
  void bytes(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    buf_.insert(buf_.end(), b, b + n);
  }
  void bytes(const std::string& s) { bytes(s.data(), s.size()); }
  template <typename T>
  void patch(size_t at, T v) { std::memcpy(buf_.data() + at, &v, sizeof(T)); }
  size_t size() const { return buf_.size(); }
  std::vector<uint8_t>& buffer() { return buf_; }

 private:
  std::vector<uint8_t> buf_;
};

// a * b, or false on overflow.
inline bool mul_ok(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }
inline bool add_ok(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_add_overflow(a, b, out); }

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "tensorstream supports little-endian hosts only");

}  // namespace ts
