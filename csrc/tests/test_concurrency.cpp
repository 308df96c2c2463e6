// The concurrent pipeline end to end, sized for ThreadSanitizer (scripts/sanitize.sh runs these
// under it): writers hashing and encrypting in parallel, positioned and streamed; loaders with
// several workers and many small chunks on every engine, with verify_hash and decryption; and
// several loaders at once in threads over one shared source.
#include <unistd.h>

#include <cstring>
#include <thread>

#include "check.hpp"
#include "memory_sink.hpp"
#include "tensorstream/index_reader.hpp"
#include "tensorstream/crypto.hpp"
#include "tensorstream/errors.hpp"
#include "tensorstream/io/engine.hpp"
#include "tensorstream/loader.hpp"
#include "tensorstream/writer.hpp"

using namespace ts;

namespace {

constexpr unsigned kWorkers = 4;
// Well under the 2 MiB encryption chunk and not a divisor of it: a chunk's bytes arrive from
// several workers, out of order.
constexpr size_t kReadChunk = (48u << 10) + 64;
const char kPhrase[] = "concurrency";

struct Model {
  std::vector<std::vector<uint8_t>> data;
  Model() {
    for (size_t n : {0u, 4u, 4096u, 300000u, 1u << 20, (5u << 20) / 2, 12u, 777u * 4})
      data.emplace_back(n);
    for (size_t t = 0; t < data.size(); ++t)
      for (size_t i = 0; i < data[t].size(); ++i) data[t][i] = static_cast<uint8_t>(i * 31 + t * 7 + (i >> 11));
  }
  std::vector<WriteRecord> records() const {
    std::vector<WriteRecord> out;
    for (size_t t = 0; t < data.size(); ++t) {
      WriteRecord r;
      r.spec.name = "tensor." + std::to_string(t);
      r.spec.dtype = "|u1";
      r.spec.shape = {data[t].size()};
      r.spec.data_length = data[t].size();
      r.data = data[t].data();
      out.push_back(r);
    }
    return out;
  }
};

const Model& model() {
  static const Model m;
  return m;
}

enum class Crypt { kNone, kKey, kPassphrase };

crypto::PwHash cheap_kdf() {
  crypto::PwHash p;
  p.opslimit = 1;
  p.memlimit = 8192;
  p.salt.fill(3);
  return p;
}

crypto::SecretKey test_key() {
  uint8_t k[crypto::kKeyBytes];
  for (size_t i = 0; i < sizeof k; ++i) k[i] = static_cast<uint8_t>(0xa0 + i);
  return crypto::SecretKey(k, sizeof k);
}

void set_writer_crypt(Writer& w, Crypt c) {
  if (c == Crypt::kKey) w.set_encryption(test_key(), std::nullopt);
  if (c == Crypt::kPassphrase) w.set_encryption(crypto::derive_key(kPhrase, cheap_kdf()), cheap_kdf());
}

// The model written by a positioned writer in two batches, in a temporary file (already unlinked).
std::shared_ptr<FileSource> written_file(Crypt c) {
  char path[] = "/tmp/ts-concurrency-XXXXXX";
  int fd = ::mkstemp(path);
  CHECK(fd >= 0);
  {
    Writer w(fd, kWorkers);
    set_writer_crypt(w, c);
    auto recs = model().records();
    w.write({recs.begin(), recs.begin() + 3});
    w.write({recs.begin() + 3, recs.end()});
    w.close();
  }
  auto src = FileSource::from_fd(fd);
  ::close(fd);
  ::unlink(path);
  return src;
}

// Loads every tensor (in reverse order) and checks its bytes.
void load_and_check(const std::shared_ptr<Source>& src, const std::string& backend, bool verify, Crypt c) {
  EngineOptions o;
  o.backend = backend;
  o.threads = kWorkers;
  o.chunk_bytes = kReadChunk;
  o.queue_depth = 3;
  Loader loader(src, o);
  if (c == Crypt::kKey) loader.keys().set_key(std::string(reinterpret_cast<const char*>(test_key().data()), 32));
  if (c == Crypt::kPassphrase) loader.keys().set_passphrase(kPhrase);
  auto index = tz::read_index(*src);
  const auto& want = model().data;
  CHECK(index.entries.size() == want.size());
  std::vector<std::vector<uint8_t>> got(index.entries.size());
  std::vector<LoadRequest> reqs;
  for (size_t i = index.entries.size(); i-- > 0;) {  // reverse order: batches and ops out of file order
    got[i].resize(index.entries[i].data_length);
    reqs.push_back(LoadRequest{i, got[i].empty() ? nullptr : got[i].data(), got[i].size()});
  }
  loader.load(index, reqs, verify);
  for (size_t i = 0; i < want.size(); ++i) CHECK(got[i] == want[i]);
}

std::vector<std::string> file_backends() {
  std::vector<std::string> out{"posix"};
  std::string why;
  if (uring_available(&why)) out.push_back("uring");
  return out;
}

}  // namespace

TEST(concurrent_loads_every_engine_hash_and_crypt) {
  for (Crypt c : {Crypt::kNone, Crypt::kKey, Crypt::kPassphrase}) {
    std::shared_ptr<Source> file = written_file(c);
    for (const auto& backend : file_backends())
      for (bool verify : {false, true}) load_and_check(file, backend, verify, c);
  }
}

TEST(several_loaders_at_once_share_a_source) {
  for (Crypt c : {Crypt::kNone, Crypt::kKey}) {
    std::shared_ptr<Source> file = written_file(c);
    std::vector<std::thread> threads;
    const auto backends = file_backends();
    for (unsigned t = 0; t < 4; ++t)
      threads.emplace_back([&, t] { load_and_check(file, backends[t % backends.size()], t % 2 == 0, c); });
    for (auto& th : threads) th.join();
  }
}

TEST(streamed_writer_output_loads_concurrently_from_memory) {
  for (Crypt c : {Crypt::kNone, Crypt::kKey}) {
    auto bytes = std::make_shared<std::vector<uint8_t>>();
    {
      Writer w(std::make_unique<tst::MemorySink>(bytes.get()), kWorkers);
      set_writer_crypt(w, c);
      auto recs = model().records();
      w.write({recs.begin(), recs.begin() + 5});
      w.write({recs.begin() + 5, recs.end()});
      w.close();
    }
    auto src = std::make_shared<MemorySource>(bytes->data(), bytes->size(), bytes);
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < 3; ++t) threads.emplace_back([&] { load_and_check(src, "auto", true, c); });
    for (auto& th : threads) th.join();
  }
}

TEST(a_failing_concurrent_load_reports_and_joins) {
  // A tampered byte deep in the largest tensor: the worker that opens its chunk fails the run
  // while the others are still reading; every worker must stop and join before load() throws.
  std::shared_ptr<FileSource> file = written_file(Crypt::kKey);
  auto index = tz::read_index(*file);
  std::vector<uint8_t> bytes(file->size());
  file->read_exact(0, bytes.data(), bytes.size());
  bytes[index.entries[5].data_offset + (3u << 20) / 2] ^= 1;
  auto src = std::make_shared<MemorySource>(bytes.data(), bytes.size(), nullptr);
  EngineOptions o;
  o.threads = kWorkers;
  o.chunk_bytes = kReadChunk;
  Loader loader(src, o);
  loader.keys().set_key(std::string(reinterpret_cast<const char*>(test_key().data()), 32));
  std::vector<std::vector<uint8_t>> got(index.entries.size());
  std::vector<LoadRequest> reqs;
  for (size_t i = 0; i < got.size(); ++i) {
    got[i].resize(index.entries[i].data_length);
    reqs.push_back(LoadRequest{i, got[i].empty() ? nullptr : got[i].data(), got[i].size()});
  }
  CHECK_THROWS(loader.load(index, reqs, true), CryptographyError);
}
