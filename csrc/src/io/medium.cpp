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
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t window = std::min(size, kWindowBytes) / page * page;
  const uint64_t windows = window == 0 ? 0 : std::min<uint64_t>(kWindows, size / window);
  std::vector<unsigned char> vec(window / page);
  uint64_t in = 0, all = 0;
  for (uint64_t i = 0; i < windows; ++i) {
    uint64_t at = (size - window) / std::max<uint64_t>(1, windows - 1) * i / page * page;
    if (::mincore(static_cast<char*>(map) + at, window, vec.data()) != 0) continue;
    for (unsigned char v : vec) in += v & 1;
    all += vec.size();
  }
  ::munmap(map, size);
  return all ? static_cast<double>(in) / static_cast<double>(all) : 0;
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
