#include "tensorstream/io/source.hpp"

#include "tensorstream/io/engine.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
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

std::unique_ptr<ReadEngine> Source::engine_for(const Source&, size_t) const { return nullptr; }

std::unique_ptr<ReadEngine> Source::own_engine(size_t chunk_bytes) const {
  return locate(0).part->engine_for(*this, chunk_bytes);
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

ShardSource::ShardSource(std::vector<std::shared_ptr<Source>> parts, std::string name)
    : parts_(std::move(parts)), name_(std::move(name)) {
  if (parts_.empty()) throw std::invalid_argument("a ShardSource needs at least one part");
  starts_.push_back(0);
  for (const auto& p : parts_) {
    if (!p) throw std::invalid_argument("a ShardSource part is null");
    if (p->size() && p->locate(0).part != p.get()) throw std::invalid_argument("a ShardSource cannot hold another");
    if (p->kind() != parts_.front()->kind())
      throw std::invalid_argument("the parts of " + name_ + " are read differently (" + parts_.front()->name() +
                                  " and " + p->name() + "): they cannot be one source");
    starts_.push_back(starts_.back() + p->size());
  }
}

Source::Located ShardSource::locate(uint64_t offset) const {
  // The last part starting at or before `offset` (an empty part starts where the next one does).
  const size_t i = std::upper_bound(starts_.begin(), starts_.end() - 1, offset) - starts_.begin() - 1;
  return {parts_[i].get(), offset - starts_[i], starts_[i + 1]};
}

void ShardSource::read_exact(uint64_t offset, void* dst, size_t n, const CancelToken* cancel) const {
  if (offset > size() || n > size() - offset)
    throw FormatError("the shards end before byte " + std::to_string(offset + n) + " of " + name_, "", "file_size");
  auto* out = static_cast<uint8_t*>(dst);
  while (n > 0) {
    const Located at = locate(offset);
    const size_t take = static_cast<size_t>(std::min<uint64_t>(n, at.end - offset));
    at.part->read_exact(at.offset, out, take, cancel);
    offset += take;
    out += take;
    n -= take;
  }
}

}  // namespace ts
