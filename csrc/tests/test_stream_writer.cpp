// A streamed writer (object stores) must produce exactly the bytes of the positioned writer, and
// abandon its object when a write fails.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "check.hpp"
#include "memory_sink.hpp"
#include "tensorstream/writer.hpp"

namespace {

std::vector<ts::WriteRecord> records(const std::vector<std::vector<uint8_t>>& data, size_t first) {
  std::vector<ts::WriteRecord> out;
  for (size_t i = 0; i < data.size(); ++i) {
    ts::WriteRecord r;
    r.spec.name = "t" + std::to_string(first + i);
    r.spec.dtype = "<f4";
    r.spec.shape = {data[i].size() / 4};
    r.spec.data_length = data[i].size();
    r.data = data[i].data();
    out.push_back(r);
  }
  return out;
}

std::vector<uint8_t> read_fd(int fd) {
  std::vector<uint8_t> out(static_cast<size_t>(::lseek(fd, 0, SEEK_END)));
  CHECK(::pread(fd, out.data(), out.size(), 0) == static_cast<ssize_t>(out.size()));
  return out;
}

}  // namespace

TEST(streamed_writer_matches_positioned_writer) {
  std::vector<std::vector<uint8_t>> a, b;
  for (size_t n : {4000u, 4u, 0u, 1u << 20}) {
    a.emplace_back(n);
    std::iota(a.back().begin(), a.back().end(), static_cast<uint8_t>(n));
  }
  for (size_t n : {64u, 3u << 20}) b.emplace_back(n, static_cast<uint8_t>(n));
  char path[] = "/tmp/ts-stream-XXXXXX";
  int fd = ::mkstemp(path);
  CHECK(fd >= 0);
  ::unlink(path);
  {
    ts::Writer w(fd, 2);
    w.write(records(a, 0));
    w.write(records(b, a.size()));
    w.close();
  }
  std::vector<uint8_t> streamed;
  bool aborted = false;
  {
    ts::Writer w(std::make_unique<tst::MemorySink>(&streamed, &aborted), 2);
    w.write(records(a, 0));
    w.write(records(b, a.size()));
    w.close();
  }
  CHECK(!aborted);
  CHECK(streamed == read_fd(fd));
  ::close(fd);
}

TEST(streamed_writer_abandons_object_on_error) {
  std::vector<uint8_t> out;
  bool aborted = false;
  ts::Writer w(std::make_unique<tst::MemorySink>(&out, &aborted), 1);
  std::vector<ts::WriteRecord> bad(1);
  bad[0].spec.name = "x";
  bad[0].spec.dtype = "<f4";
  bad[0].spec.shape = {4};
  bad[0].spec.data_length = 16;  // and no data: refused
  CHECK_THROWS(w.write(bad), std::invalid_argument);
  // Refused before anything was sent: the writer stays usable.
  CHECK(!aborted);
  std::vector<std::vector<uint8_t>> ok{std::vector<uint8_t>(16, 1)};
  w.write(records(ok, 0));
  w.abort();
  CHECK(aborted);
  CHECK_THROWS(w.close(), std::runtime_error);
  CHECK(out.empty());
}

TEST(streamed_writer_destroyed_unclosed_aborts) {
  std::vector<uint8_t> out;
  bool aborted = false;
  {
    ts::Writer w(std::make_unique<tst::MemorySink>(&out, &aborted), 1);
    std::vector<std::vector<uint8_t>> ok{std::vector<uint8_t>(16, 1)};
    w.write(records(ok, 0));
  }
  CHECK(aborted);
  CHECK(out.empty());
}

TEST(streamed_writer_aborts_when_the_sink_fails) {
  struct FailingSink final : ts::StreamSink {
    bool* aborted;
    explicit FailingSink(bool* a) : aborted(a) {}
    void append(const uint8_t*, size_t) override { throw std::runtime_error("link down"); }
    void finish(const uint8_t*, size_t) override {}
    void abort() noexcept override { *aborted = true; }
  };
  bool aborted = false;
  ts::Writer w(std::make_unique<FailingSink>(&aborted), 1);
  std::vector<std::vector<uint8_t>> ok{std::vector<uint8_t>(16, 1)};
  CHECK_THROWS(w.write(records(ok, 0)), std::runtime_error);
  CHECK(aborted);
  CHECK_THROWS(w.write(records(ok, 1)), std::runtime_error);  // nothing more is accepted
}
