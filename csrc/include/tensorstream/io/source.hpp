// Byte sources a load reads from: a local file, a block of memory, or several sources laid end
// to end (the shards of a checkpoint, read by one engine run).
#pragma once
#include "tensorstream/cancel.hpp"
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

struct stat;

namespace ts {

class ReadEngine;

class Source {
 public:
  // Where a byte of this source lies: in `part` (a plain source) at `offset`; `end` is where
  // that part ends in this source's numbering. A plain source holds its bytes itself.
  struct Located {
    const Source* part;
    uint64_t offset;
    uint64_t end;
  };

  virtual ~Source() = default;
  virtual uint64_t size() const = 0;
  virtual const std::string& name() const = 0;
  virtual int fd() const { return -1; }                       // file sources only
  virtual const uint8_t* memory() const { return nullptr; }  // memory sources only
  // Reads exactly n bytes at offset; throws IoError, or FormatError if the source ends first.
  virtual void read_exact(uint64_t offset, void* dst, size_t n) const = 0;
  // The same, stopped (Cancelled) once `cancel` asks, where a read may wait long (the network).
  virtual void read_exact(uint64_t offset, void* dst, size_t n, const CancelToken* cancel) const {
    read_exact(offset, dst, n);
  }
  // The part holding byte `offset` (offset < size(); 0 also for an empty source).
  virtual Located locate(uint64_t offset) const { return {this, offset, size()}; }
  // Sources of one kind are read by one kind of engine and can be laid end to end in a
  // ShardSource: "file", "memory", or a network source's kind (its scheme, host and options).
  virtual std::string kind() const = 0;
  // The engine this source reads with, when it brings its own (a network source); null: a file or
  // memory engine (make_engine picks it). `chunk_bytes` is the largest piece one read may be.
  std::unique_ptr<ReadEngine> own_engine(size_t chunk_bytes) const;
  // An engine reading `whole`, this source itself or a ShardSource whose parts are all of this
  // source's kind; null where make_engine chooses (files, memory).
  virtual std::unique_ptr<ReadEngine> engine_for(const Source& whole, size_t chunk_bytes) const;
};

// A regular file: FIFOs, devices, sockets and /proc or /sys files are refused (IoError).
class FileSource final : public Source {
 public:
  explicit FileSource(const std::string& path);
  static std::shared_ptr<FileSource> from_fd(int fd);  // duplicates fd
  ~FileSource() override;
  FileSource(const FileSource&) = delete;
  FileSource& operator=(const FileSource&) = delete;
  uint64_t size() const override { return size_; }
  const std::string& name() const override { return name_; }
  int fd() const override { return fd_; }
  std::string kind() const override { return "file"; }
  void read_exact(uint64_t offset, void* dst, size_t n) const override;

 private:
  FileSource(int fd, std::string name);
  static const char* not_regular(int fd, const struct stat& st);
  int fd_ = -1;
  uint64_t size_ = 0;
  std::string name_;
};

class MemorySource final : public Source {
 public:
  // `owner` keeps the memory alive for as long as the source lives.
  MemorySource(const uint8_t* data, uint64_t size, std::shared_ptr<void> owner);
  uint64_t size() const override { return size_; }
  const std::string& name() const override { return name_; }
  const uint8_t* memory() const override { return data_; }
  std::string kind() const override { return "memory"; }
  void read_exact(uint64_t offset, void* dst, size_t n) const override;

 private:
  const uint8_t* data_;
  uint64_t size_;
  std::shared_ptr<void> owner_;
  std::string name_ = "<memory>";
};

// Sources of one kind laid end to end, numbered as one: part i starts at the sum of the sizes
// before it. A load of a sharded checkpoint reads every shard through one engine run (one set of
// workers, one connection pool, one ring) with the shards' indexes joined on these offsets. Every
// read lies within one part (read_exact splits one that crosses parts).
class ShardSource final : public Source {
 public:
  // std::invalid_argument for no parts, a null one, a ShardSource as a part, or parts of
  // different kinds (a file and a URL, two hosts).
  ShardSource(std::vector<std::shared_ptr<Source>> parts, std::string name);
  uint64_t size() const override { return starts_.back(); }
  const std::string& name() const override { return name_; }
  void read_exact(uint64_t offset, void* dst, size_t n) const override { read_exact(offset, dst, n, nullptr); }
  void read_exact(uint64_t offset, void* dst, size_t n, const CancelToken* cancel) const override;
  Located locate(uint64_t offset) const override;
  std::string kind() const override { return parts_.front()->kind(); }
  const std::vector<std::shared_ptr<Source>>& parts() const { return parts_; }
  // Where each part starts, then the total size (parts() + 1 values).
  const std::vector<uint64_t>& starts() const { return starts_; }

 private:
  std::vector<std::shared_ptr<Source>> parts_;
  std::vector<uint64_t> starts_;
  std::string name_;
};

// pread until n bytes are read; returns bytes read (< n only at end of file). Throws IoError.
size_t pread_full(int fd, void* dst, size_t n, uint64_t offset, const std::string& name);

}  // namespace ts
