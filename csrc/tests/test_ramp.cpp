// The per-host ramp of range requests in flight, fed with bytes at a rate that depends on the
// level it allows (as a link would), in real time but with exact rates.
#include <chrono>
#include <functional>
#include <thread>

#include "../src/net/ramp.hpp"
#include "check.hpp"

namespace {

using ts::net::HostState;

// Runs `host` for up to `seconds`, adding rate(limit) bytes per second; returns the final limit.
unsigned drive(HostState& host, const std::function<double(unsigned)>& rate, double seconds) {
  using Clock = std::chrono::steady_clock;
  host.begin_run(0);
  auto last = Clock::now();
  const auto end = last + std::chrono::duration<double>(seconds);
  while (Clock::now() < end && !host.report().settled) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    const auto now = Clock::now();
    host.add_bytes(static_cast<uint64_t>(rate(host.limit()) * std::chrono::duration<double>(now - last).count()));
    last = now;
    host.tick();
  }
  host.end_run();
  return host.limit();
}

}  // namespace

TEST(ramp_climbs_while_more_requests_bring_more_bytes) {
  HostState host("http://capped");
  CHECK(host.limit() == HostState::kStart);
  // A link capped per connection: 1 MB/s each up to 16 connections, no gain after.
  unsigned chosen = drive(host, [](unsigned n) { return 1e6 * (n < 16 ? n : 16); }, 10);
  auto r = host.report();
  CHECK(r.settled);
  CHECK(chosen == 16);
  CHECK(r.measured.size() == 4);  // 4, 8, 16, then 32 brought nothing
  CHECK(r.measured.front().first == 4 && r.measured.back().first == 32);
}

TEST(ramp_stays_low_when_more_requests_bring_nothing) {
  HostState host("http://loopback");
  unsigned chosen = drive(host, [](unsigned) { return 5e8; }, 10);
  CHECK(host.report().settled);
  CHECK(chosen == HostState::kStart);
}

TEST(ramp_goes_back_when_more_requests_are_slower) {
  HostState host("http://busy");
  // Best at 8; 16 is slower (a CPU-bound client).
  unsigned chosen = drive(host, [](unsigned n) { return n == 4 ? 4e8 : n == 8 ? 6e8 : 5e8; }, 10);
  CHECK(chosen == 8);
}

TEST(ramp_is_pinned_by_a_fixed_setting_and_ignores_starved_windows) {
  HostState host("http://fixed");
  host.begin_run(3);
  CHECK(host.limit() == 3);
  CHECK(host.try_start() && host.try_start() && host.try_start());
  CHECK(!host.try_start());  // the fourth waits
  host.finished();
  CHECK(host.try_start());
  for (int i = 0; i < 3; ++i) host.finished();
  host.end_run();
  // Auto, but every window is starved (no work to fill the level): no decision is made.
  HostState idle("http://starved");
  idle.begin_run(0);
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(600);
  while (std::chrono::steady_clock::now() < end) {
    idle.add_bytes(1000);
    idle.starved();
    idle.tick();
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  CHECK(idle.report().measured.empty() && idle.limit() == HostState::kStart);
  idle.end_run();
}
