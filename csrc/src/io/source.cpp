#include "tensorstream/io/source.hpp"

#include "tensorstream/io/engine.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

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

namespace {
constexpr long kProcMagic = 0x9fa0, kSysfsMagic = 0x62656572;
}  // namespace

// What a file is when it is not a regular one (whose size fstat gives), or null.
const char* FileSource::not_regular(int fd, const struct stat& st) {
  if (S_ISFIFO(st.st_mode)) return "a FIFO or pipe";
  if (S_ISCHR(st.st_mode)) return "a character device";
  if (S_ISBLK(st.st_mode)) return "a block device";
  if (S_ISSOCK(st.st_mode)) return "a socket";
  if (!S_ISREG(st.st_mode)) return "not a file";
  struct statfs fs;
  if (::fstatfs(fd, &fs) == 0 && (fs.f_type == kProcMagic || fs.f_type == kSysfsMagic))
    return "a /proc or /sys file";
  return nullptr;
}

std::unique_ptr<ReadEngine> Source::own_engine(size_t) const { return nullptr; }

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
  if (const char* what = not_regular(fd_, st)) {
    ::close(fd_);
    throw IoError(EINVAL, std::string("not a regular file (") + what + ")", name_);
  }
  size_ = static_cast<uint64_t>(st.st_size);
}

namespace {
// Non-blocking, so that a FIFO without a writer is refused instead of waited on.
int open_or_throw(const std::string& path) {
  if (path.find('\0') != std::string::npos) throw std::invalid_argument("embedded null byte in a path");
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw IoError(errno, "cannot open", path);
  int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
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
