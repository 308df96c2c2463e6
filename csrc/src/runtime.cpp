#include "tensorstream/runtime.hpp"

#include "tensorstream/per_process.hpp"

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <thread>
#include <vector>


namespace ts {

namespace {

std::atomic<uint64_t> g_threads_started{0};
std::atomic<uint64_t> g_jobs{0};
std::atomic<uint64_t> g_rings{0};
std::atomic<uint64_t> g_rings_alive{0};

// One run_on_workers call: its calls queued or running on workers.
struct Job {
  explicit Job(const std::function<void(size_t)>& f) : fn(&f) {}
  const std::function<void(size_t)>* fn;
  size_t running = 0;
  std::exception_ptr error;
  std::condition_variable idle;  // running dropped to 0
};

// Worker threads of one process. Never destroyed: after fork() or shutdown its threads may still
// be (or, in a child, appear to be) using it, and it is small.
class Pool {
 public:
  const pid_t pid = ::getpid();

  void run(size_t n, const std::function<void(size_t)>& fn) {
    Job job(fn);
    {
      std::lock_guard<std::mutex> lock(mu_);
      top_up(n - 1);
      for (size_t k = 1; k < n && !threads_.empty(); ++k) queue_.emplace_back(&job, k);
    }
    wake_.notify_all();
    call(job, 0);
    std::unique_lock<std::mutex> lock(mu_);
    queue_.erase(std::remove_if(queue_.begin(), queue_.end(), [&](const auto& t) { return t.first == &job; }),
                 queue_.end());
    job.idle.wait(lock, [&] { return job.running == 0; });
    if (job.error) std::rethrow_exception(job.error);
  }

  unsigned alive() {
    std::lock_guard<std::mutex> lock(mu_);
    return alive_;
  }

  // True when every worker ended within `wait_s`; the pool is then unused.
  bool stop(double wait_s) {
    std::unique_lock<std::mutex> lock(mu_);
    stopping_ = true;
    wake_.notify_all();
    bool ended = ended_.wait_for(lock, std::chrono::duration<double>(wait_s), [&] { return alive_ == 0; });
    std::vector<std::thread> threads = std::move(threads_);
    lock.unlock();
    for (auto& t : threads) ended ? t.join() : t.detach();
    return ended;
  }

 private:
  // Starts workers until `wanted` are alive (the pool grows to the largest call it served); a
  // thread the system refuses means fewer workers, never an error. Caller holds mu_.
  void top_up(size_t wanted) {
    while (!stopping_ && threads_.size() < wanted) {
      try {
        threads_.emplace_back([this] { loop(); });
      } catch (const std::exception&) {
        return;
      }
      ++alive_;
      ++g_threads_started;
    }
  }

  void loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) break;
      auto [job, k] = queue_.front();
      queue_.pop_front();
      ++job->running;
      lock.unlock();
      call(*job, k);
      lock.lock();
      if (--job->running == 0) job->idle.notify_all();
    }
    --alive_;
    ended_.notify_all();
  }

  void call(Job& job, size_t k) {
    try {
      (*job.fn)(k);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mu_);
      if (!job.error) job.error = std::current_exception();
    }
  }

  std::mutex mu_, error_mu_;
  std::condition_variable wake_, ended_;
  std::deque<std::pair<Job*, size_t>> queue_;
  std::vector<std::thread> threads_;
  unsigned alive_ = 0;
  bool stopping_ = false;
};

// The current pool, made on first use; replaced in a child of fork().
Pool& pool() { return PerProcess<Pool>::get(); }

}  // namespace

void run_on_workers(size_t n, const std::function<void(size_t)>& worker) {
  if (n == 0) return;
  if (n == 1) return worker(0);
  ++g_jobs;
  pool().run(n, worker);
}

RuntimeInfo runtime_info() {
  RuntimeInfo info;
  Pool& p = pool();
  info.workers = p.alive();
  info.threads_started = g_threads_started;
  info.jobs = g_jobs;
  info.rings_made = g_rings;
  info.rings_kept = g_rings_alive;
  info.pid = p.pid;
  return info;
}

void count_ring_made() {
  ++g_rings;
  ++g_rings_alive;
}

void count_ring_gone() { --g_rings_alive; }

void shutdown_runtime(double wait_s) {
  if (Pool* p = PerProcess<Pool>::release()) p->stop(wait_s);
}

}  // namespace ts
