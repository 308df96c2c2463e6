// Writes a tensorizer file: records hashed in parallel and written with positioned writes straight
// from the caller's memory; after each batch the terminator, index and file header are rewritten.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "tensorstream/format/tensorizer.hpp"

namespace ts {

struct WriteRecord {
  tz::RecordSpec spec;
  const uint8_t* data = nullptr;  // spec.data_length bytes, contiguous host memory
};

class Writer {
 public:
  explicit Writer(int fd, unsigned threads = 0);  // duplicates fd
  ~Writer();
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  void write(const std::vector<WriteRecord>& records);
  void close();

  uint64_t tensor_count() const { return entries_.size(); }
  uint64_t tensor_size() const { return header_.tensor_size; }
  uint64_t end_offset() const { return next_; }
  uint32_t version() const { return header_.version; }

 private:
  void pwrite_all(const void* data, size_t n, uint64_t offset) const;
  void commit_prologue();

  int fd_ = -1;
  unsigned threads_;
  tz::FileHeader header_;
  std::vector<tz::IndexEntry> entries_;
  uint64_t next_;
  bool versioned_ = false;
};

}  // namespace ts
