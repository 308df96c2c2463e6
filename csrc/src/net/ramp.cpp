#include "ramp.hpp"

#include <algorithm>

namespace ts::net {

void HostState::begin_run(unsigned fixed) {
  std::lock_guard<std::mutex> lock(mu_);
  fixed_ = fixed;
  if (fixed) {
    limit_.store(fixed);
  } else {
    limit_.store(settled_ ? best_level_ : level_);
    if (runs_ == 0) restart_window(Clock::now());  // time spent idle between runs is not measured
  }
  ++runs_;
}

void HostState::end_run() {
  std::lock_guard<std::mutex> lock(mu_);
  if (runs_) --runs_;
  measuring_ = false;
}

bool HostState::try_start() {
  const unsigned allowed = limit_.load(std::memory_order_relaxed);
  if (active_.fetch_add(1, std::memory_order_relaxed) < allowed) return true;
  active_.fetch_sub(1, std::memory_order_relaxed);
  return false;
}

void HostState::restart_window(Clock::time_point now) {
  window_at_ = now + kSettle;  // new connections open and ramp their TCP window first
  measuring_ = false;
  starved_.store(false);
}

void HostState::tick() {
  std::unique_lock<std::mutex> lock(mu_, std::try_to_lock);
  if (!lock.owns_lock() || fixed_ || settled_ || runs_ == 0) return;
  const auto now = Clock::now();
  if (now < window_at_) return;
  if (!measuring_) {  // settled in: the window starts now
    measuring_ = true;
    window_at_ = now;
    window_bytes_ = bytes_.load();
    starved_.store(false);
    return;
  }
  const auto elapsed = now - window_at_;
  if (elapsed < kMeasure) return;
  if (starved_.load()) {  // not enough work to fill the level: measure again
    restart_window(now);
    return;
  }
  const double seconds = std::chrono::duration<double>(elapsed).count();
  decide(static_cast<double>(bytes_.load() - window_bytes_) / seconds);
  restart_window(now);
}

void HostState::decide(double rate) {
  measured_.emplace_back(level_, rate);
  if (best_level_ == 0 || rate >= best_rate_ * kGain) {
    best_rate_ = std::max(best_rate_, rate);
    best_level_ = level_;
    if (level_ * 2 <= kMax) {
      level_ *= 2;
      limit_.store(level_);
      return;
    }
  } else if (rate > best_rate_) {
    best_rate_ = rate;  // better, but not by enough to pay for more connections
  }
  settled_ = true;
  limit_.store(best_level_);
}

RampReport HostState::report() {
  std::lock_guard<std::mutex> lock(mu_);
  RampReport r;
  r.host = label_;
  r.connections = limit_.load();
  r.settled = settled_;
  r.fixed = fixed_ != 0;
  r.measured = measured_;
  return r;
}

}  // namespace ts::net
