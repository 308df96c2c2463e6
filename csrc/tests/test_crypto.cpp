// Secret boxes, nonces, crypt-info blocks and the in-worker decryption stream.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "check.hpp"
#include "tensorstream/crypto.hpp"
#include "tensorstream/data_streams.hpp"
#include "tensorstream/encryptor.hpp"
#include "tensorstream/errors.hpp"
#include "tensorstream/format/crypt_info.hpp"

using namespace ts;

namespace {

crypto::SecretKey test_key(uint8_t seed) {
  uint8_t k[crypto::kKeyBytes];
  for (size_t i = 0; i < sizeof k; ++i) k[i] = static_cast<uint8_t>(seed + i);
  return crypto::SecretKey(k, sizeof k);
}

std::vector<uint8_t> pattern(size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(i * 7 + (i >> 9));
  return v;
}

// Encrypts `plain` with 1 KiB chunks; returns the ciphertext and fills `ci`.
std::vector<uint8_t> encrypt(const std::vector<uint8_t>& plain, const crypto::SecretKey& key, tz::CryptInfo& ci) {
  ci = plan_encryption(plain.size(), std::nullopt);
  ci.chunk_size = 1024;
  ci.macs.resize((plain.size() + 1023) / 1024);
  std::vector<uint8_t> out(plain.size());
  TensorHasher h;
  encrypt_data(plain.data(), plain.size(), ci, key, h,
               [&](const uint8_t* p, size_t n, uint64_t at) { std::memcpy(out.data() + at, p, n); });
  return out;
}

}  // namespace

TEST(nonce_counts_up_little_endian_with_carry) {
  crypto::Nonce n{};
  n[0] = 0xff;
  n[1] = 0xff;
  auto m = crypto::nonce_at(n, 1);
  CHECK(m[0] == 0 && m[1] == 0 && m[2] == 1);
  auto big = crypto::nonce_at(crypto::Nonce{}, 0x0102030405060708ull);
  CHECK(big[0] == 8 && big[7] == 1 && big[8] == 0);
  CHECK(crypto::nonce_at(n, 0) == n);
}

TEST(seal_then_open_and_tampering) {
  auto key = test_key(1);
  crypto::Nonce nonce{};
  nonce[3] = 9;
  auto plain = pattern(5000);
  std::vector<uint8_t> buf(plain.size());
  auto mac = crypto::seal(buf.data(), plain.data(), plain.size(), nonce, key);
  CHECK(buf != plain);
  auto copy = buf;
  CHECK(crypto::open(copy.data(), copy.size(), nonce, mac, key));
  CHECK(copy == plain);
  copy = buf;
  copy[4321] ^= 1;
  CHECK(!crypto::open(copy.data(), copy.size(), nonce, mac, key));
  copy = buf;
  CHECK(!crypto::open(copy.data(), copy.size(), nonce, mac, test_key(2)));
  CHECK(!crypto::open(copy.data(), copy.size(), crypto::nonce_at(nonce, 1), mac, key));
}

TEST(key_derivation_checks_its_limits) {
  crypto::PwHash p;
  p.opslimit = 1;
  p.memlimit = 8192;
  auto a = crypto::derive_key("phrase", p);
  auto b = crypto::derive_key("phrase", p);
  CHECK(std::memcmp(a.data(), b.data(), crypto::kKeyBytes) == 0);
  p.salt[0] = 1;
  auto c = crypto::derive_key("phrase", p);
  CHECK(std::memcmp(a.data(), c.data(), crypto::kKeyBytes) != 0);
  p.memlimit = crypto::kMaxMemlimit + 1;
  CHECK_THROWS(crypto::derive_key("phrase", p), std::invalid_argument);
  p.memlimit = 8192;
  p.opslimit = 0;
  CHECK_THROWS(crypto::derive_key("phrase", p), std::invalid_argument);
  p.opslimit = 1;
  p.alg = 1;
  CHECK_THROWS(crypto::derive_key("phrase", p), std::invalid_argument);
}

TEST(crypt_info_builds_and_parses_back) {
  tz::CryptInfo ci = plan_encryption(5 * crypto::kChunkBytes + 3, crypto::PwHash{3, 1 << 20, 2, {}});
  for (size_t i = 0; i < ci.macs.size(); ++i) ci.macs[i][0] = static_cast<uint8_t>(i + 1);
  size_t macs_at = 0;
  auto bytes = tz::build_crypt_info(ci, &macs_at);
  uint64_t len;
  std::memcpy(&len, bytes.data(), 8);
  CHECK(len == bytes.size() - 8);
  CHECK(bytes[macs_at] == 1 && macs_at + 6 * 16 == bytes.size());
  auto back = tz::parse_crypt_info(bytes.data() + 8, bytes.size() - 8, 5 * crypto::kChunkBytes + 3, "t");
  CHECK(back.encrypted && back.kdf && back.kdf->opslimit == 3 && back.kdf->memlimit == (1 << 20));
  CHECK(back.chunk_size == crypto::kChunkBytes && back.nonce == ci.nonce && back.macs == ci.macs);
  // The same block does not fit a tensor of another size; a block without chunks has no encryption.
  CHECK_THROWS(tz::parse_crypt_info(bytes.data() + 8, bytes.size() - 8, 3, "t"), FormatError);
  auto empty = tz::build_crypt_info(plan_encryption(0, std::nullopt), nullptr);
  CHECK(empty.size() == 10 && !tz::parse_crypt_info(empty.data() + 8, 2, 0, "t").encrypted);
  // Every cut of the block is refused without reading past it.
  for (size_t cut = 0; cut < bytes.size() - 8; ++cut)
    CHECK_THROWS(tz::parse_crypt_info(bytes.data() + 8, cut, 5 * crypto::kChunkBytes + 3, "t"), FormatError);
}

TEST(decrypt_stream_opens_each_chunk_once_whole_in_any_piece_order) {
  auto key = test_key(3);
  auto plain = pattern(10 * 1024 + 100);
  tz::CryptInfo ci;
  auto cipher = encrypt(plain, key, ci);
  for (uint64_t piece : {100ull, 1000ull, 1024ull, 3000ull, 20000ull}) {
    auto buf = cipher;
    std::vector<std::pair<uint64_t, uint64_t>> pieces;
    for (uint64_t at = 0; at < buf.size(); at += piece) pieces.emplace_back(at, std::min<uint64_t>(piece, buf.size() - at));
    std::shuffle(pieces.begin(), pieces.end(), std::mt19937(static_cast<unsigned>(piece)));
    DecryptStream ds(ci, key, buf.size(), 0, buf.size(), "t", "f");
    std::vector<int> seen(ci.macs.size(), 0);
    std::vector<std::thread> pool;
    std::atomic<size_t> next{0};
    for (int t = 0; t < 3; ++t)
      pool.emplace_back([&] {
        for (size_t i; (i = next.fetch_add(1)) < pieces.size();)
          ds.add(pieces[i].first, pieces[i].second, buf.data(), [&](uint64_t at, uint64_t n) {
            ++seen[at / 1024];
            CHECK(n == ci.chunk_length(at / 1024, buf.size()));
          });
      });
    for (auto& t : pool) t.join();
    CHECK(buf == plain);
    CHECK(std::all_of(seen.begin(), seen.end(), [](int s) { return s == 1; }));
  }
}

TEST(decrypt_stream_names_tensor_and_file_on_a_bad_mac) {
  auto key = test_key(4);
  auto plain = pattern(3000);
  tz::CryptInfo ci;
  auto cipher = encrypt(plain, key, ci);
  cipher[2500] ^= 0x80;
  DecryptStream ds(ci, key, cipher.size(), 0, cipher.size(), "layer.w", "model.tensors");
  std::string what;
  try {
    ds.add(0, cipher.size(), cipher.data(), [](uint64_t, uint64_t) {});
  } catch (const CryptographyError& e) {
    what = e.what();
    CHECK(e.tensor() == "layer.w");
  }
  CHECK(what.find("model.tensors") != std::string::npos && what.find("chunk 3 of 3") != std::string::npos);
}

TEST(key_source_exact_key_passphrase_and_refusals) {
  crypto::KeySource ks;
  CHECK(ks.empty());
  CHECK_THROWS(ks.set_key("short"), std::invalid_argument);
  ks.set_passphrase("pw");
  CHECK_THROWS(ks.key_for(nullptr, "t"), CryptographyError);  // exact-key tensor, passphrase given
  crypto::PwHash p{1, 8192, 2, {}};
  const auto& k1 = ks.key_for(&p, "t");
  CHECK(&ks.key_for(&p, "u") == &k1);  // derived once per parameter set
  crypto::PwHash huge{1, crypto::kMaxMemlimit * 2, 2, {}};
  CHECK_THROWS(ks.key_for(&huge, "t"), FormatError);
  ks.set_key(std::string(32, 'k'));
  CHECK(ks.key_for(&huge, "t").data()[0] == 'k');  // an exact key ignores derivation chunks
}

TEST(decrypt_stream_takes_a_chunk_size_near_two_to_the_64) {
  // Any multiple of 64 is a legal chunk size; one larger than the data is one chunk of all of it.
  // Counting chunks as (total + chunk_size - 1) / chunk_size wrapped around here (found by fuzzing).
  auto key = test_key(5);
  auto plain = pattern(3000);
  tz::CryptInfo ci;
  auto cipher = encrypt(plain, key, ci);  // 1 KiB chunks
  ci.chunk_size = ~uint64_t{63};
  ci.macs.assign(1, crypto::seal(cipher.data(), plain.data(), plain.size(), ci.nonce, key));
  auto block = tz::build_crypt_info(ci, nullptr);
  auto parsed = tz::parse_crypt_info(block.data() + 8, block.size() - 8, plain.size(), "t");
  CHECK(parsed.chunk_size == ci.chunk_size && parsed.macs.size() == 1);
  DecryptStream ds(parsed, key, cipher.size(), 0, cipher.size(), "t", "f");
  int opened = 0;
  ds.add(0, 1000, cipher.data(), [&](uint64_t, uint64_t) { ++opened; });
  ds.add(1000, 2000, cipher.data(), [&](uint64_t at, uint64_t n) { opened += at == 0 && n == 3000; });
  CHECK(opened == 1 && cipher == plain);
}
