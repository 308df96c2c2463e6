#include "tensorstream/io/medium.hpp"

#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <vector>

namespace ts {

namespace {

constexpr double kCached = 0.9;     // at least this share resident: a page-cache read
constexpr uint64_t kWindows = 64;   // sampled windows per file
constexpr uint64_t kWindowBytes = 1 << 20;

double resident_share(int fd, uint64_t size) {
  if (size == 0) return 1;
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) return 0;
  const double share = resident_in(map, size, kWindows, kWindowBytes);
  ::munmap(map, size);
  return share;
}

int read_flag(const std::string& path) {
  std::ifstream f(path);
  int v = -1;
  return (f >> v) ? v : -1;
}

int rotational(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0 || major(st.st_dev) == 0) return -1;  // major 0: no block device
  const std::string dev = "/sys/dev/block/" + std::to_string(major(st.st_dev)) + ":" + std::to_string(minor(st.st_dev));
  int v = read_flag(dev + "/queue/rotational");
  return v >= 0 ? v : read_flag(dev + "/../queue/rotational");  // a partition: its disk's flag
}

}  // namespace

double resident_in(const void* addr, uint64_t size, uint64_t windows, uint64_t window_bytes) {
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  // mincore wants a page-aligned start: widen the range to whole pages.
  const uint64_t lead = reinterpret_cast<uintptr_t>(addr) % page;
  auto* base = static_cast<char*>(const_cast<void*>(addr)) - lead;
  size += lead;
  if (size == 0) return 1;
  const uint64_t window = std::max(page, std::min(size, window_bytes) / page * page);
  windows = std::min<uint64_t>(windows, std::max<uint64_t>(1, size / window));
  std::vector<unsigned char> vec(window / page);
  uint64_t in = 0, all = 0;
  for (uint64_t i = 0; i < windows; ++i) {
    const uint64_t span = size > window ? size - window : 0;
    const uint64_t at = span / std::max<uint64_t>(1, windows - 1) * i / page * page;
    const uint64_t len = std::min(window, size - at);
    if (::mincore(base + at, len, vec.data()) != 0) continue;
    const uint64_t pages = (len + page - 1) / page;
    for (uint64_t k = 0; k < pages; ++k) in += vec[k] & 1;
    all += pages;
  }
  return all ? static_cast<double>(in) / static_cast<double>(all) : 0;
}

Medium probe_medium(int fd, uint64_t size) { return Medium{resident_share(fd, size), rotational(fd)}; }

unsigned auto_queue_depth(const Medium& m) {
  if (m.resident >= kCached) return 2;
  return m.rotational == 1 ? 4 : 16;
}

std::string describe_medium(const Medium& m) {
  if (m.resident >= kCached) return "cached";
  return m.rotational == 1 ? "spinning" : m.rotational == 0 ? "flash" : "unknown";
}

}  // namespace ts
