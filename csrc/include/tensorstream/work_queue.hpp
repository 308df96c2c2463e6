// A small pool of threads draining a queue of jobs; the first exception a job throws is kept
// and rethrown by wait(). Destroying the pool drops queued jobs and joins the threads.
#pragma once
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace ts {

class WorkQueue {
 public:
  explicit WorkQueue(unsigned threads);
  ~WorkQueue();
  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  void submit(std::function<void()> job);
  // Blocks until every submitted job ran; rethrows the first job error.
  void wait();
  bool failed() const;

 private:
  void loop();
  mutable std::mutex mu_;
  std::condition_variable cv_, idle_cv_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::thread> threads_;
  size_t running_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

}  // namespace ts
