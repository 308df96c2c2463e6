// Range requests for a run's pieces: which pieces share a request, and where the bytes of a reply
// land (the gaps between pieces dropped), also when they arrive in odd sizes or an attempt resumes.
#include <cstdint>
#include <vector>

#include "../src/net/coalesce.hpp"
#include "check.hpp"

namespace {

using ts::Piece;
using ts::net::coalesce;
using ts::net::scatter;

// The file: byte i is i * 7 + 3 (mod 256).
uint8_t byte_at(uint64_t i) { return static_cast<uint8_t>(i * 7 + 3); }

// Delivers request r's bytes in slices of `step`, starting at `from` (a resumed attempt).
void deliver(const ts::net::RangeRequest& r, const std::vector<Piece>& pieces, uint64_t from, uint64_t step) {
  std::vector<uint8_t> body(r.length);
  for (uint64_t i = 0; i < r.length; ++i) body[i] = byte_at(r.offset + i);
  size_t cursor = 0;
  for (uint64_t pos = from; pos < r.length; pos += step) {
    uint64_t n = std::min<uint64_t>(step, r.length - pos);
    scatter(r, pieces, pos, body.data() + pos, n, cursor);
  }
}

}  // namespace

TEST(coalesce_joins_close_pieces_and_keeps_far_or_large_ones_apart) {
  std::vector<uint8_t> a(100), b(100), c(100), d(100), e(500);
  std::vector<Piece> pieces = {
      {0, 1000, 100, a.data()},  // data of tensor 1
      {1, 1150, 100, b.data()},  // after a 50-byte header: joins
      {2, 1650 + (64 << 10) + 1, 100, c.data()},  // past the gap after e: a new request
      {3, 900, 100, d.data()},   // out of order, just before the first: sorted in front
      {4, 1150, 500, e.data()},  // overlaps b: a request of its own
  };
  auto reqs = coalesce(pieces, 1 << 20);
  CHECK(reqs.size() == 3);
  CHECK(reqs[0].offset == 900 && reqs[0].length == 350);
  CHECK((reqs[0].pieces == std::vector<size_t>{3, 0, 1}));
  CHECK(reqs[1].offset == 1150 && reqs[1].pieces == std::vector<size_t>{4});
  CHECK(reqs[2].pieces == std::vector<size_t>{2});
  // A request stays within the size limit.
  auto small = coalesce(pieces, 300);
  for (const auto& r : small) CHECK(r.length <= 300 || r.pieces.size() == 1);
}

TEST(coalesce_reads_through_a_large_gap_only_for_as_many_bytes_it_keeps) {
  // Headers of 100 bytes, 10 KB apart (the data of small tensors between them): not fetched together.
  std::vector<uint8_t> h(100 * 10);
  std::vector<Piece> headers;
  for (size_t i = 0; i < 10; ++i) headers.push_back({i, i * 10100, 100, h.data() + 100 * i});
  CHECK(coalesce(headers, 8 << 20).size() == 10);
  // Headers 3 KB apart (tiny tensors): one request.
  for (size_t i = 0; i < 10; ++i) headers[i].offset = i * 3100;
  CHECK(coalesce(headers, 8 << 20).size() == 1);
  // Data of 20 KB after each 10 KB gap: the request keeps more than it drops, so it goes on.
  std::vector<uint8_t> d(20000 * 4);
  std::vector<Piece> data;
  for (size_t i = 0; i < 4; ++i) data.push_back({i, i * 30000, 20000, d.data() + 20000 * i});
  CHECK(coalesce(data, 8 << 20).size() == 1);
}

TEST(scatter_puts_every_byte_in_its_piece_and_drops_the_gaps) {
  for (uint64_t step : {1ull, 7ull, 64ull, 100000ull}) {
    std::vector<uint8_t> a(100, 0), b(30, 0), c(1, 0);
    std::vector<Piece> pieces = {{0, 10, 100, a.data()}, {1, 150, 30, b.data()}, {2, 180, 1, c.data()}};
    auto reqs = coalesce(pieces, 1 << 20);
    CHECK(reqs.size() == 1 && reqs[0].length == 171);
    deliver(reqs[0], pieces, 0, step);
    for (uint64_t i = 0; i < 100; ++i) CHECK(a[i] == byte_at(10 + i));
    for (uint64_t i = 0; i < 30; ++i) CHECK(b[i] == byte_at(150 + i));
    CHECK(c[0] == byte_at(180));
  }
}

TEST(scatter_resumes_mid_request) {
  std::vector<uint8_t> a(100, 0), b(100, 0);
  std::vector<Piece> pieces = {{0, 0, 100, a.data()}, {1, 120, 100, b.data()}};
  auto reqs = coalesce(pieces, 1 << 20);
  deliver(reqs[0], pieces, 0, 60);  // a first attempt, then one resumed from byte 130 of the request
  std::fill(b.begin() + 10, b.end(), 0);
  deliver(reqs[0], pieces, 130, 33);
  for (uint64_t i = 0; i < 100; ++i) CHECK(b[i] == byte_at(120 + i));
}

TEST(coalesce_keeps_each_request_within_one_part) {
  std::vector<uint8_t> a(100), b(100), c(100);
  std::vector<Piece> pieces = {
      {0, 900, 100, a.data()},   // the last tensor of the first part (which ends at 1000)
      {1, 1010, 100, b.data()},  // the second part's first tensor, 10 bytes on: close enough to join
      {2, 1150, 100, c.data()},
  };
  CHECK(coalesce(pieces, 1 << 20).size() == 1);  // one resource: one request
  auto reqs = coalesce(pieces, 1 << 20, [](uint64_t offset) -> uint64_t { return offset < 1000 ? 1000 : 5000; });
  CHECK(reqs.size() == 2);
  CHECK(reqs[0].offset == 900 && reqs[0].length == 100);
  CHECK(reqs[1].offset == 1010 && (reqs[1].pieces == std::vector<size_t>{1, 2}));
}
