// Engines against a memory source and a temporary file, including a file that ends early.
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <numeric>

#include "check.hpp"
#include "tensorstream/errors.hpp"
#include "tensorstream/io/engine.hpp"

using namespace ts;

namespace {
std::vector<uint8_t> pattern(size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(i * 131 + (i >> 9));
  return v;
}

std::string temp_file(const std::vector<uint8_t>& data) {
  char path[] = "/tmp/tensorstream-test-XXXXXX";
  int fd = mkstemp(path);
  CHECK(write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size()));
  close(fd);
  return path;
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
