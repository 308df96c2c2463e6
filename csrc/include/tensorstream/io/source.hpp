// Byte sources a load reads from: a local file or a block of memory.
#pragma once
#include "tensorstream/cancel.hpp"
#include <cstdint>
#include <memory>
#include <string>

struct stat;

namespace ts {

class ReadEngine;

class Source {
 public:
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
  // The engine this source reads with, when it brings its own (a network source); null: a file or
  // memory engine (make_engine picks it). `chunk_bytes` is the largest piece one read may be.
  virtual std::unique_ptr<ReadEngine> own_engine(size_t chunk_bytes) const;
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
  void read_exact(uint64_t offset, void* dst, size_t n) const override;

 private:
  const uint8_t* data_;
  uint64_t size_;
  std::shared_ptr<void> owner_;
  std::string name_ = "<memory>";
};

// pread until n bytes are read; returns bytes read (< n only at end of file). Throws IoError.
size_t pread_full(int fd, void* dst, size_t n, uint64_t offset, const std::string& name);

}  // namespace ts
