// How many range requests a host gets at once. With TENSORSTREAM_HTTP_CONNECTIONS=0 (auto, the
// default) the first loads from a host ramp up: they start at kStart requests in flight, measure
// the bytes that arrive over a short window, and double while a doubling brings at least
// kGain more; the best level is then kept for the host for the rest of the process (loopback
// and a fast server settle low, a link capped per connection climbs until the cap no longer
// binds). A fixed setting pins the count instead. Either way the count is shared by every run
// reading from the host at once (shards loaded side by side share one budget). Private to
// csrc/src/net.
#pragma once
#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace ts::net {

struct RampReport {
  std::string host;
  unsigned connections = 0;  // the level in use now
  bool settled = false;      // the ramp has chosen
  bool fixed = false;        // the last run used a fixed setting
  std::vector<std::pair<unsigned, double>> measured;  // (level, bytes/s) of each finished window
};

class HostState {
 public:
  static constexpr unsigned kStart = 4, kMax = 64;
  static constexpr double kGain = 1.10;
  static constexpr std::chrono::milliseconds kSettle{40}, kMeasure{120};

  explicit HostState(std::string label) : label_(std::move(label)) {}

  // A run starts / ends; `fixed` is its pinned count (0: auto).
  void begin_run(unsigned fixed);
  void end_run();
  // Takes one of the host's request slots if the level allows (false: wait for one).
  bool try_start();
  void finished() { active_.fetch_sub(1, std::memory_order_relaxed); }
  bool has_room() const { return active_.load(std::memory_order_relaxed) < limit_.load(std::memory_order_relaxed); }
  void add_bytes(uint64_t n) { bytes_.fetch_add(n, std::memory_order_relaxed); }
  // A lane had room for a request but no range left to ask for: this window says nothing.
  void starved() { starved_.store(true, std::memory_order_relaxed); }
  // Called often by the lanes; measures and moves the level (cheap when nothing is due).
  void tick();
  RampReport report();
  unsigned limit() const { return limit_.load(std::memory_order_relaxed); }

 private:
  using Clock = std::chrono::steady_clock;
  void restart_window(Clock::time_point now);
  void decide(double rate);

  const std::string label_;
  std::atomic<unsigned> limit_{kStart};  // requests in flight allowed now
  std::atomic<unsigned> active_{0};
  std::atomic<uint64_t> bytes_{0};
  std::atomic<bool> starved_{false};
  std::mutex mu_;  // guards what follows
  unsigned runs_ = 0, fixed_ = 0;
  unsigned level_ = kStart, best_level_ = 0;
  double best_rate_ = 0;
  bool settled_ = false, measuring_ = false;
  Clock::time_point window_at_{};
  uint64_t window_bytes_ = 0;
  std::vector<std::pair<unsigned, double>> measured_;
};

// Every host that has been read from, as the ramp sees it now.
std::vector<RampReport> ramp_reports();

}  // namespace ts::net
