// Worker threads for one parallel step. A thread the system refuses (EAGAIN: a process or cgroup
// thread limit) is not an error: the step runs on the threads it got, at least the caller's.
// Every thread started is joined before the step returns, also when it throws, so no joinable
// std::thread is ever destroyed (which would terminate the process).
#pragma once
#include <cstddef>
#include <exception>
#include <thread>
#include <utility>
#include <vector>

namespace ts {

class ThreadGroup {
 public:
  ThreadGroup() = default;
  ThreadGroup(const ThreadGroup&) = delete;
  ThreadGroup& operator=(const ThreadGroup&) = delete;
  ~ThreadGroup() { join(); }

  // Starts `f` on a new thread; false, with nothing started, when no thread can be had.
  template <class F>
  bool spawn(F&& f) noexcept {
    try {
      threads_.emplace_back(std::forward<F>(f));
      return true;
    } catch (const std::exception&) {  // std::system_error (no thread), std::bad_alloc
      return false;
    }
  }

  void join() noexcept {
    for (auto& t : threads_)
      if (t.joinable()) t.join();
    threads_.clear();
  }

 private:
  std::vector<std::thread> threads_;
};

// Runs `worker(k)` for k in [0, n): k = 0 on the calling thread, the others on new threads, or
// fewer of them if the system refuses threads. Workers must share their work (e.g. through an
// atomic counter) so that any number of them finishes it. Returns how many ran.
template <class F>
size_t run_workers(size_t n, F&& worker) {
  if (n == 0) return 0;
  size_t started = 1;
  {
    ThreadGroup group;
    for (size_t k = 1; k < n && group.spawn([&worker, k] { worker(k); }); ++k) ++started;
    worker(size_t{0});
  }
  return started;
}

}  // namespace ts
