// Engines against a memory source and a temporary file, including a file that ends early.
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <numeric>

#include "check.hpp"
#include "temp_file.hpp"
#include "tensorstream/errors.hpp"
#include "tensorstream/io/engine.hpp"

using namespace ts;

namespace {
std::vector<uint8_t> pattern(size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(i * 131 + (i >> 9));
  return v;
}

void run_all_backends(const Source& src, const std::vector<uint8_t>& data) {
  for (const char* backend : {"posix", "uring"}) {
    std::string why;
    if (std::string(backend) == "uring" && !uring_available(&why)) continue;
    EngineOptions o;
    o.backend = backend;
    o.chunk_bytes = 4096 + 17;  // odd size: many pieces, unaligned
    auto engine = make_engine(src, o);
    std::vector<uint8_t> a(100000), b(data.size() - 200000);
    std::atomic<uint64_t> seen{0};
    engine->run({{5, a.size(), a.data()}, {200000, b.size(), b.data()}},
                [&](const Piece& p) { seen += p.length; });
    CHECK(seen == a.size() + b.size());
    CHECK(std::memcmp(a.data(), data.data() + 5, a.size()) == 0);
    CHECK(std::memcmp(b.data(), data.data() + 200000, b.size()) == 0);
  }
}
}  // namespace

TEST(memory_and_file_sources_read_exactly) {
  auto data = pattern(1 << 20);
  MemorySource mem(data.data(), data.size(), nullptr);
  run_all_backends(mem, data);
  auto path = temp_file(data);
  FileSource file(path);
  CHECK(file.size() == data.size());
  run_all_backends(file, data);
  unlink(path.c_str());
}

TEST(reading_past_the_end_fails_with_the_op) {
  auto data = pattern(50000);
  auto path = temp_file(data);
  FileSource file(path);
  for (const char* backend : {"posix", "uring"}) {
    std::string why;
    if (std::string(backend) == "uring" && !uring_available(&why)) continue;
    EngineOptions o;
    o.backend = backend;
    auto engine = make_engine(file, o);
    std::vector<uint8_t> a(100), b(1000);
    try {
      engine->run({{0, a.size(), a.data()}, {49500, b.size(), b.data()}}, [](const Piece&) {});
      CHECK(false);
    } catch (const ReadFailure& f) {
      CHECK(f.op() == 1 && f.err() == 0);
    }
  }
  unlink(path.c_str());
}

TEST(missing_file_is_an_io_error) { CHECK_THROWS(FileSource("/nonexistent/tensorstream"), IoError); }

namespace {
// Cancels after `after` chunks from inside the callback; returns how many chunks were reported
// and whether the run threw Cancelled. `dst` must be a fresh buffer of 0xEE bytes.
std::pair<size_t, bool> run_cancelled(ReadEngine& engine, std::vector<uint8_t>& dst, size_t after) {
  CancelToken token;
  engine.set_cancel(&token);
  std::atomic<size_t> chunks{0};
  bool cancelled = false;
  try {
    engine.run({{0, dst.size(), dst.data()}}, [&](const Piece&) {
      if (++chunks == after) token.cancel();
    });
  } catch (const Cancelled&) {
    cancelled = true;
  }
  engine.set_cancel(nullptr);
  return {chunks.load(), cancelled};
}
}  // namespace

TEST(cancelled_runs_stop_early_and_nothing_writes_afterwards) {
  auto data = pattern(4 << 20);
  auto path = temp_file(data);
  FileSource file(path);
  MemorySource mem(data.data(), data.size(), nullptr);
  const size_t chunk = 4096 + 17, pieces = (data.size() + chunk - 1) / chunk;
  // Every read through the ring (none copied inline), so reads are in flight when it stops.
  setenv("TENSORSTREAM_URING_ASYNC", "1", 1);
  for (const char* backend : {"posix", "uring", "memory"}) {
    std::string why;
    if (std::string(backend) == "uring" && !uring_available(&why)) continue;
    EngineOptions o;
    o.backend = std::string(backend) == "memory" ? "posix" : backend;
    o.chunk_bytes = chunk;
    o.threads = 2;
    o.queue_depth = 8;
    auto engine = make_engine(std::string(backend) == "memory" ? static_cast<const Source&>(mem) : file, o);
    std::vector<uint8_t> dst(data.size(), 0xEE);
    auto [chunks, cancelled] = run_cancelled(*engine, dst, 5);
    CHECK(cancelled);
    CHECK(chunks >= 5 && chunks <= 5 + 2 * 8);  // at most what was in flight when it stopped
    CHECK(chunks < pieces);
    std::vector<uint8_t> after = dst;
    usleep(50 * 1000);  // anything still in flight would land now
    CHECK(after == dst);
    // Without a token the same engine reads everything again.
    std::vector<uint8_t> whole(data.size());
    engine->run({{0, whole.size(), whole.data()}}, [](const Piece&) {});
    CHECK(whole == data);
  }
  unsetenv("TENSORSTREAM_URING_ASYNC");
  unlink(path.c_str());
}

TEST(a_token_cancelled_before_the_run_reads_nothing) {
  auto data = pattern(100000);
  MemorySource mem(data.data(), data.size(), nullptr);
  EngineOptions o;
  o.backend = "posix";
  auto engine = make_engine(mem, o);
  CancelToken token;
  token.interrupt();
  engine->set_cancel(&token);
  std::vector<uint8_t> dst(data.size(), 0xEE);
  CHECK_THROWS(engine->run({{0, dst.size(), dst.data()}}, [](const Piece&) {}), Cancelled);
  CHECK(dst == std::vector<uint8_t>(data.size(), 0xEE));
  token.resume();  // an interrupt stops one run; cancel() would stop every later one too
  engine->run({{0, dst.size(), dst.data()}}, [](const Piece&) {});
  CHECK(dst == data);
  token.cancel();
  CHECK_THROWS(engine->run({{0, dst.size(), dst.data()}}, [](const Piece&) {}), Cancelled);
}
