// What a local file lies on, as far as reading it goes: how much of it the page cache holds and
// whether its block device spins. TENSORSTREAM_QUEUE_DEPTH=0 (auto, the default) picks the
// io_uring queue depth from it.
#pragma once
#include <cstdint>
#include <string>

namespace ts {

struct Medium {
  double resident = 0;  // share of the file's pages in the page cache (sampled), 0..1
  int rotational = -1;  // 1: a spinning disk, 0: flash, -1: unknown (tmpfs, overlay, network)
};

// Samples up to 64 spread windows of the file with mincore (no page is read) and reads the
// block device's queue/rotational from sysfs.
Medium probe_medium(int fd, uint64_t size);

// The share of `windows` spread windows of `window_bytes` (whole pages) in [addr, addr + size),
// a mapping of a file, that the page cache holds (mincore; no page is read). 0 when it cannot
// tell (a window mincore refuses is skipped).
double resident_in(const void* addr, uint64_t size, uint64_t windows, uint64_t window_bytes);

// Reads in flight per io_uring worker for that medium: cached data is copied by the CPU, so a
// short queue does; flash wants many reads queued, a spinning disk few.
unsigned auto_queue_depth(const Medium& m);

// "cached", "flash", "spinning" or "unknown", for messages.
std::string describe_medium(const Medium& m);

}  // namespace ts
