// The process's runtime: read workers started once and reused by every load of every loader.
// A load describes its work as `worker(k)` calls that share it (an atomic counter of chunks) and
// hands them to run_on_workers; it never starts threads itself.
//
// After fork() the child starts its own workers on first use and never touches the parent's
// (their threads do not exist in the child). shutdown_runtime() stops the workers at exit.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>

namespace ts {

// Runs `worker(k)` for k in [0, n): k = 0 on the calling thread, the others on the runtime's
// workers as they are free. Workers must share their work, so that any number of them finishes
// it: once the caller's own call returns, calls not yet started are withdrawn. Returns after every
// started call returned; rethrows the first exception one threw. Safe to call from a worker.
void run_on_workers(size_t n, const std::function<void(size_t)>& worker);

struct RuntimeInfo {
  unsigned workers = 0;          // worker threads alive now
  uint64_t threads_started = 0;  // worker threads this process ever started
  uint64_t jobs = 0;             // run_on_workers calls that used the workers
  uint64_t rings_made = 0;       // io_uring rings this process set up for reads
  uint64_t rings_kept = 0;       // of those, rings alive now (each holds a file descriptor)
  long pid = 0;                  // the process the workers belong to
};

RuntimeInfo runtime_info();

// Counts a ring set up for reads, and one torn down (for runtime_info).
void count_ring_made();
void count_ring_gone();

// Stops the workers: idle ones at once, busy ones after their current call. Waits up to
// `wait_s` seconds for them to end, then leaves the rest to end on their own. A later
// run_on_workers starts new workers.
void shutdown_runtime(double wait_s);

}  // namespace ts
