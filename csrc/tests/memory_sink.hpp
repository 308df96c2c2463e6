// A StreamSink that assembles a streamed file in memory: the body as it is appended, the head
// (header and index, sent last) put in front when the writer finishes.
#pragma once
#include <cstdint>
#include <vector>

#include "tensorstream/writer.hpp"

namespace tst {
struct MemorySink final : ts::StreamSink {
  std::vector<uint8_t>* out;
  bool* aborted;  // set when the writer abandons the file; may be null
  std::vector<uint8_t> body;
  explicit MemorySink(std::vector<uint8_t>* o, bool* a = nullptr) : out(o), aborted(a) {}
  void append(const uint8_t* d, size_t n) override { body.insert(body.end(), d, d + n); }
  void finish(const uint8_t* p, size_t n) override {
    out->assign(p, p + n);
    out->insert(out->end(), body.begin(), body.end());
  }
  void abort() noexcept override {
    if (aborted) *aborted = true;
  }
};
}  // namespace tst
