// The runtime's workers and the settings object.
#include <cstdlib>
#include <atomic>
#include <stdexcept>
#include <thread>
#include <vector>

#include "check.hpp"
#include "tensorstream/runtime.hpp"
#include "tensorstream/settings.hpp"

using namespace ts;

namespace {

// Work shared through a counter, as engines share chunks.
void count_to(std::atomic<size_t>& next, std::vector<int>& hits, size_t k, std::vector<int>& by_worker) {
  for (size_t i; (i = next.fetch_add(1)) < hits.size();) {
    ++hits[i];
    by_worker[k] = 1;
    std::this_thread::yield();
  }
}

}  // namespace

TEST(workers_run_shared_work_once_and_are_kept) {
  for (int round = 0; round < 5; ++round) {
    std::atomic<size_t> next{0};
    std::vector<int> hits(5000, 0), by_worker(4, 0);
    run_on_workers(4, [&](size_t k) { count_to(next, hits, k, by_worker); });
    for (int h : hits) CHECK(h == 1);
  }
  const uint64_t started = runtime_info().threads_started;
  for (int round = 0; round < 5; ++round) run_on_workers(4, [](size_t) {});
  CHECK(runtime_info().threads_started == started);
  CHECK(runtime_info().workers >= 1);
}

TEST(a_worker_error_reaches_the_caller_after_every_started_call) {
  std::atomic<int> running{0}, peak{0};
  CHECK_THROWS(run_on_workers(3,
                              [&](size_t k) {
                                int now = ++running;
                                peak = std::max(peak.load(), now);
                                std::this_thread::sleep_for(std::chrono::milliseconds(5));
                                --running;
                                if (k == 1) throw std::runtime_error("worker failed");
                              }),
               std::runtime_error);
  CHECK(running == 0);
}

TEST(calls_from_a_worker_do_not_wait_for_themselves) {
  // Returning at all is the test: an inner call made on a worker must not wait for a worker.
  // Outer calls a busy pool never started are withdrawn, so count the ones that ran.
  std::atomic<int> outer{0}, inner{0};
  run_on_workers(4, [&](size_t) {
    ++outer;
    run_on_workers(4, [&](size_t) { ++inner; });
  });
  CHECK(outer >= 1);
  CHECK(inner >= outer);  // each outer call ran at least its own inner share
}

TEST(settings_come_from_the_environment_and_code) {
  setenv("TENSORSTREAM_HTTP_RETRIES", "2", 1);
  CHECK(settings().http_retries == 2);
  configure({{"http_retries", std::string("7")}});
  CHECK(settings().http_retries == 7);
  configure({{"http_retries", std::nullopt}});
  CHECK(settings().http_retries == 2);
  setenv("TENSORSTREAM_HTTP_RETRIES", "two", 1);
  CHECK_THROWS(settings(), std::invalid_argument);
  unsetenv("TENSORSTREAM_HTTP_RETRIES");
  CHECK(settings().http_retries == 5);
  CHECK_THROWS(configure({{"http_retries", std::string("-1")}}), std::invalid_argument);
  CHECK_THROWS(configure({{"no_such_setting", std::string("1")}}), std::invalid_argument);
  CHECK(overrides().empty());
}
