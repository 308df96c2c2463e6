#include "tensorstream/work_queue.hpp"

namespace ts {

WorkQueue::WorkQueue(unsigned threads) {
  for (unsigned i = 0; i < threads; ++i) threads_.emplace_back([this] { loop(); });
}

WorkQueue::~WorkQueue() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    jobs_.clear();
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void WorkQueue::submit(std::function<void()> job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (error_) return;  // after a failure nothing more is worth doing
    jobs_.push_back(std::move(job));
  }
  cv_.notify_one();
}

void WorkQueue::wait() {
  std::unique_lock<std::mutex> lock(mu_);
  idle_cv_.wait(lock, [this] { return jobs_.empty() && running_ == 0; });
  if (error_) std::rethrow_exception(error_);
}

bool WorkQueue::failed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<bool>(error_);
}

void WorkQueue::loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [this] { return stop_ || !jobs_.empty(); });
    if (stop_) return;
    auto job = std::move(jobs_.front());
    jobs_.pop_front();
    ++running_;
    lock.unlock();
    std::exception_ptr err;
    try {
      job();
    } catch (...) {
      err = std::current_exception();
    }
    lock.lock();
    --running_;
    if (err && !error_) {
      error_ = err;
      jobs_.clear();
    }
    if (jobs_.empty() && running_ == 0) idle_cv_.notify_all();
  }
}

}  // namespace ts
