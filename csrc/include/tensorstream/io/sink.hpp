// Where a file goes when it cannot be written out of order (an object store): the bytes after the
// prologue (file header and index) in file order, then the prologue, once, at the end.
#pragma once
#include <cstddef>
#include <cstdint>

namespace ts {

class StreamSink {
 public:
  virtual ~StreamSink() = default;
  virtual void append(const uint8_t* data, size_t n) = 0;
  virtual void finish(const uint8_t* prologue, size_t n) = 0;
  virtual void abort() noexcept = 0;  // drop what was sent; no object is left behind
};

}  // namespace ts
