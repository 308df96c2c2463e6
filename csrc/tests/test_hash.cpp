// The folded CRC32 must equal zlib's for every length and start value, and at any split point.
#include <zlib.h>

#include <random>
#include <vector>

#include "check.hpp"
#include "tensorstream/hash.hpp"

TEST(crc32_matches_zlib) {
  std::mt19937_64 rng(7);
  std::vector<uint8_t> buf(70000);
  for (auto& b : buf) b = static_cast<uint8_t>(rng());
  int bad = 0;
  for (size_t n : {0, 1, 15, 16, 63, 64, 65, 255, 256, 257, 300, 1000, 4096, 4097, 65535, 70000}) {
    for (uint32_t start : {0u, 1u, 0xdeadbeefu}) {
      uint32_t want = static_cast<uint32_t>(crc32_z(start, buf.data(), n));
      if (ts::crc32_update(start, buf.data(), n) != want) ++bad;
    }
  }
  for (size_t off = 0; off < 32; ++off) {  // unaligned starts
    uint32_t want = static_cast<uint32_t>(crc32_z(0, buf.data() + off, 5000));
    if (ts::crc32_update(0, buf.data() + off, 5000) != want) ++bad;
  }
  uint32_t split = ts::crc32_update(ts::crc32_update(0, buf.data(), 1234), buf.data() + 1234, 60000);
  CHECK(split == static_cast<uint32_t>(crc32_z(0, buf.data(), 61234)));
  CHECK(bad == 0);
}

TEST(header_digest_checks_header_and_data_against_each_stored_hash) {
  std::vector<uint8_t> header = {1, 2, 3}, data = {4, 5, 6, 7};
  ts::TensorHasher h;
  h.update(header.data(), header.size());
  h.update(data.data(), data.size());
  const uint32_t crc = h.crc32();
  const auto sha = h.sha256();
  ts::HeaderDigest both{0, crc, sha, header};
  CHECK(both.matches(data.data(), data.size()));
  CHECK(!both.matches(data.data(), data.size() - 1));
  ts::HeaderDigest crc_only{0, crc, std::nullopt, header}, sha_only{0, std::nullopt, sha, header};
  ts::HeaderDigest none{0, std::nullopt, std::nullopt, header};
  data[2] ^= 1;
  CHECK(!both.matches(data.data(), data.size()));
  CHECK(!crc_only.matches(data.data(), data.size()) && !sha_only.matches(data.data(), data.size()));
  CHECK(none.matches(data.data(), data.size()));  // nothing stored: nothing to disagree with
}
