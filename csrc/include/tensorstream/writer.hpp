// Writes a tensorizer file: records hashed in parallel and written with positioned writes straight
// from the caller's memory; after each batch the terminator, index and file header are rewritten.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tensorstream/crypto.hpp"
#include "tensorstream/format/tensorizer.hpp"
#include "tensorstream/io/sink.hpp"

namespace ts {

struct WriteRecord {
  tz::RecordSpec spec;
  const uint8_t* data = nullptr;  // spec.data_length bytes, contiguous host memory
};

class Writer {
 public:
  explicit Writer(int fd, unsigned threads = 0);  // duplicates fd
  // Streams into `sink`; the prologue is only final at close(), when it is handed over.
  explicit Writer(std::unique_ptr<StreamSink> sink, unsigned threads = 0);
  ~Writer();
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  // Encrypts every record written from now on (before the first write only); `kdf` is stored in
  // each encrypted header when the key was derived from a passphrase.
  void set_encryption(const crypto::SecretKey& key, const std::optional<crypto::PwHash>& kdf);
  void write(const std::vector<WriteRecord>& records);
  void close();
  void abort() noexcept;  // streamed writers: abandon the object (also done when destroyed unclosed)

  uint64_t tensor_count() const { return entries_.size(); }
  uint64_t tensor_size() const { return header_.tensor_size; }
  uint64_t end_offset() const { return next_; }
  uint32_t version() const { return header_.version; }

 private:
  void pwrite_all(const void* data, size_t n, uint64_t offset) const;
  // Makes the file valid after a write: the file header, and `tail` (the new entries, encoded)
  // after the old ones, or the whole index when `whole` (the first write, or a new encoding).
  void commit_prologue(const std::vector<uint8_t>& tail, bool whole);
  std::vector<uint8_t> prologue();
  // `crypts`: each record's crypt-info block when encrypting (MACs filled in here), else empty.
  void hash_and_write(const std::vector<WriteRecord>& records, const std::vector<tz::IndexEntry>& added,
                      std::vector<tz::BuiltHeader>& headers, std::vector<tz::CryptInfo>& crypts);
  void hash_then_stream(const std::vector<WriteRecord>& records, const std::vector<tz::IndexEntry>& added,
                        std::vector<tz::BuiltHeader>& headers, std::vector<tz::CryptInfo>& crypts);

  int fd_ = -1;
  std::unique_ptr<StreamSink> sink_;
  unsigned threads_;
  tz::FileHeader header_;
  std::vector<tz::IndexEntry> entries_;
  uint64_t index_bytes_ = 0;  // encoded size of entries_ (as versioned_ says)
  uint64_t next_;
  bool versioned_ = false;
  bool aborted_ = false;
  std::optional<crypto::SecretKey> key_;
  std::optional<crypto::PwHash> kdf_;
};

}  // namespace ts
