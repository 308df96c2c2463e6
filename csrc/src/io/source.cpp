#include "tensorstream/io/source.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "tensorstream/errors.hpp"

namespace ts {

size_t pread_full(int fd, void* dst, size_t n, uint64_t offset, const std::string& name) {
  auto* p = static_cast<uint8_t*>(dst);
  size_t done = 0;
  while (done < n) {
    size_t want = n - done;
    if (want > (1u << 30)) want = 1u << 30;
    ssize_t r = ::pread(fd, p + done, want, static_cast<off_t>(offset + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      throw IoError(errno, "read failed", name);
    }
    if (r == 0) break;
    done += static_cast<size_t>(r);
  }
  return done;
}

FileSource::FileSource(int fd, std::string name) : fd_(fd), name_(std::move(name)) {
  struct stat st;
  if (::fstat(fd_, &st) != 0) {
    int err = errno;
    ::close(fd_);
    throw IoError(err, "cannot stat", name_);
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd_);
    throw IoError(EISDIR, "cannot read", name_);
  }
  size_ = static_cast<uint64_t>(st.st_size);
}

namespace {
int open_or_throw(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw IoError(errno, "cannot open", path);
  return fd;
}
}  // namespace

FileSource::FileSource(const std::string& path) : FileSource(open_or_throw(path), path) {}

std::shared_ptr<FileSource> FileSource::from_fd(int fd) {
  int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) throw IoError(errno, "cannot duplicate descriptor", "<fd " + std::to_string(fd) + ">");
  return std::shared_ptr<FileSource>(new FileSource(dup, "<fd " + std::to_string(fd) + ">"));
}

FileSource::~FileSource() {
  if (fd_ >= 0) ::close(fd_);
}

void FileSource::read_exact(uint64_t offset, void* dst, size_t n) const {
  size_t got = pread_full(fd_, dst, n, offset, name_);
  if (got != n)
    throw FormatError("file ended at byte " + std::to_string(offset + got) + " while reading " +
                          std::to_string(n) + " bytes at " + std::to_string(offset),
                      "", "file_size");
}

MemorySource::MemorySource(const uint8_t* data, uint64_t size, std::shared_ptr<void> owner)
    : data_(data), size_(size), owner_(std::move(owner)) {}

void MemorySource::read_exact(uint64_t offset, void* dst, size_t n) const {
  if (offset > size_ || n > size_ - offset)
    throw FormatError("buffer ends before byte " + std::to_string(offset + n), "", "file_size");
  if (n) std::memcpy(dst, data_ + offset, n);  // an empty buffer or destination may be null
}

}  // namespace ts
