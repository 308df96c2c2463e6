#include "tensorstream/loader.hpp"

#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <stdexcept>

#include "tensorstream/decrypt_stream.hpp"
#include "tensorstream/errors.hpp"
#include "tensorstream/hash.hpp"

namespace ts {

namespace {

using Clock = std::chrono::steady_clock;
constexpr uint64_t kHeaderBatchBytes = 16u << 20;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string hex(const uint8_t* p, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    s += d[p[i] >> 4];
    s += d[p[i] & 15];
  }
  return s;
}

// One tensor's expected hashes and a hasher already fed with its (zeroed) header.
struct Check {
  tz::TensorHeader header;
  std::unique_ptr<TensorHasher> hasher;
  const crypto::SecretKey* key = nullptr;  // set for tensors to decrypt
};

void feed_header(TensorHasher& h, const uint8_t* raw, size_t size, const tz::TensorHeader& th) {
  std::vector<uint8_t> copy(raw, raw + size);
  for (auto [b, e] : th.hash_value_ranges) std::memset(copy.data() + b, 0, e - b);
  if (th.crypt_end > th.crypt_begin) {
    h.update(copy.data(), th.crypt_begin);
    h.update(copy.data() + th.crypt_end, size - th.crypt_end);
  } else {
    h.update(copy.data(), size);
  }
}

void finish_check(Check& c, const std::string& name) {
  if (c.header.crc32 && *c.header.crc32 != c.hasher->crc32())
    throw HashMismatchError("CRC32 mismatch: stored " + std::to_string(*c.header.crc32) + ", computed " +
                                std::to_string(c.hasher->crc32()),
                            name);
  if (c.header.sha256) {
    auto got = c.hasher->sha256();
    if (got != *c.header.sha256)
      throw HashMismatchError("SHA-256 mismatch: stored " + hex(c.header.sha256->data(), 32) + ", computed " +
                                  hex(got.data(), 32),
                              name);
  }
}

// Feeds one tensor's chunks to its hasher in order, whatever order they arrive in.
class HashStream {
 public:
  // Records chunk [at, at+n) of `base`; the caller hashes every chunk that is now next in line.
  // Returns true for exactly one call: the one after which the whole tensor has been hashed.
  // Throws Cancelled between chunks once `stop` asks (the load is abandoned, the hash unused).
  bool add(uint64_t at, uint64_t n, const uint8_t* base, TensorHasher& h, const CancelToken& stop) {
    std::unique_lock<std::mutex> lock(mu_);
    ready_.emplace(at, n);
    if (busy_) return false;  // the thread already hashing this tensor will take it
    busy_ = true;
    while (!ready_.empty() && ready_.begin()->first == next_) {
      if (stop.requested()) {
        busy_ = false;
        throw Cancelled("hashing cancelled");
      }
      uint64_t len = ready_.begin()->second;
      ready_.erase(ready_.begin());
      lock.unlock();
      h.update(base + next_, len);
      lock.lock();
      next_ += len;
    }
    busy_ = false;
    if (done_ || next_ != total_) return false;
    done_ = true;
    return true;
  }
  void expect(uint64_t total) { total_ = total; }

 private:
  std::mutex mu_;
  std::map<uint64_t, uint64_t> ready_;
  uint64_t next_ = 0, total_ = 0;
  bool busy_ = false, done_ = false;
};

[[noreturn]] void rethrow_read(const ReadFailure& f, const std::string& tensor, const Source& src,
                               const char* what) {
  if (f.err() == 0)
    throw FormatError(std::string("file ended early while reading ") + what + " (" + f.what() + ")", tensor,
                      what);
  throw IoError(f.err(), std::string("reading the ") + what + " of tensor " + printable_name(tensor) + " failed",
                src.name());
}

void check_requests(const tz::Index& index, const std::vector<LoadRequest>& reqs) {
  for (const auto& r : reqs) {
    if (r.entry >= index.entries.size())
      throw std::invalid_argument("load request names tensor #" + std::to_string(r.entry) + " of " +
                                  std::to_string(index.entries.size()));
    const auto& e = index.entries[r.entry];
    if (r.nbytes != e.data_length)
      throw std::invalid_argument("destination of tensor " + printable_name(e.name) + " is " +
                                  std::to_string(r.nbytes) + " bytes, its data is " +
                                  std::to_string(e.data_length));
    if (r.nbytes && !r.dst) throw std::invalid_argument("null destination for tensor " + printable_name(e.name));
  }
}

void check_encryption(bool encrypted, const crypto::KeySource& keys, const std::string& file) {
  if (encrypted && keys.empty())
    throw KeyRequiredError("'" + file + "' is encrypted: a decryption key is needed to load it");
  if (!encrypted && !keys.empty())
    throw CryptographyError("'" + file + "' is not encrypted, but a decryption key was given: load it without one");
}

// The key of one tensor of an encrypted file; null for tensors without data.
const crypto::SecretKey* key_for(const tz::TensorHeader& h, const tz::IndexEntry& e, crypto::KeySource& keys) {
  if (e.data_length == 0) return nullptr;
  if (!h.crypt.encrypted)
    throw CryptographyError("has data but no encryption in an encrypted file: refused, its data is not authenticated",
                            e.name);
  return &keys.key_for(h.crypt.kdf ? &*h.crypt.kdf : nullptr, e.name);
}

}  // namespace

Loader::Loader(std::shared_ptr<Source> src, EngineOptions opts)
    : src_(std::move(src)), opts_(std::move(opts)), engine_(make_engine(*src_, opts_)) {
  engine_->set_cancel(&cancel_);
}

std::vector<uint16_t> Loader::load(const tz::Index& index, const std::vector<LoadRequest>& reqs, bool verify) {
  try {
    return load_checked(index, reqs, verify);
  } catch (const Cancelled&) {  // from an engine, a hasher or a check here: name the file
    throw Cancelled("loading '" + src_->name() + "' was cancelled");
  }
}

std::vector<uint16_t> Loader::load_checked(const tz::Index& index, const std::vector<LoadRequest>& reqs,
                                           bool verify) {
  stats_ = LoadStats{};
  check_requests(index, reqs);
  cancel_.check();
  if (reqs.empty()) return {};
  check_encryption(index.header.encrypted(), keys_, src_->name());

  // Phase 1: per-tensor headers, in batches of bounded scratch, parsed and checked against the index.
  auto t0 = Clock::now();
  std::vector<Check> checks(reqs.size());
  std::vector<uint8_t> scratch;
  for (size_t begin = 0; begin < reqs.size();) {
    cancel_.check();
    std::vector<ReadOp> ops;
    uint64_t used = 0;
    size_t end = begin;
    for (; end < reqs.size(); ++end) {
      uint64_t hs = index.entries[reqs[end].entry].header_size();
      if (end > begin && used + hs > kHeaderBatchBytes) break;
      used += hs;
    }
    scratch.resize(used);
    used = 0;
    for (size_t i = begin; i < end; ++i) {
      const auto& e = index.entries[reqs[i].entry];
      ops.push_back(ReadOp{e.header_offset, e.header_size(), scratch.data() + used});
      used += e.header_size();
    }
    try {
      engine_->run(ops, [](const Piece&) {});
    } catch (const ReadFailure& f) {
      rethrow_read(f, index.entries[reqs[begin + f.op()].entry].name, *src_, "header");
    }
    for (size_t i = begin; i < end; ++i) {
      const auto& e = index.entries[reqs[i].entry];
      const ReadOp& op = ops[i - begin];
      checks[i].header = tz::parse_tensor_header(op.dst, op.length, e, index.header);
      if (index.header.encrypted()) checks[i].key = key_for(checks[i].header, e, keys_);
      if (verify) {
        checks[i].hasher = std::make_unique<TensorHasher>();
        feed_header(*checks[i].hasher, op.dst, op.length, checks[i].header);
        if (e.data_length == 0) finish_check(checks[i], e.name);
      }
    }
    stats_.reads += ops.size();
    begin = end;
  }
  stats_.header_seconds = since(t0);
  cancel_.check();

  // Phase 2: data straight into the destinations.
  t0 = Clock::now();
  std::vector<ReadOp> ops;
  std::vector<size_t> op_req;
  for (size_t i = 0; i < reqs.size(); ++i) {
    if (reqs[i].nbytes == 0) continue;
    ops.push_back(ReadOp{index.entries[reqs[i].entry].data_offset, reqs[i].nbytes, reqs[i].dst});
    op_req.push_back(i);
    stats_.bytes += reqs[i].nbytes;
  }
  // With verify_hash each tensor is hashed as its chunks arrive, in order, by the worker that
  // read them (so mostly while the bytes are still in cache); a chunk that arrives early waits in
  // its tensor's stream until the bytes before it are hashed.
  // Encrypted tensors are decrypted the same way, each crypto chunk by the worker whose read
  // completes it; hashes then cover the plaintext.
  std::unique_ptr<HashStream[]> streams(verify ? new HashStream[ops.size()] : nullptr);
  std::vector<std::unique_ptr<DecryptStream>> crypts(ops.size());
  for (size_t k = 0; k < ops.size(); ++k) {
    const size_t r = op_req[k];
    if (checks[r].key)
      crypts[k] = std::make_unique<DecryptStream>(checks[r].header.crypt, *checks[r].key, ops[k].dst, ops[k].length,
                                                  index.entries[reqs[r].entry].name, src_->name());
  }
  ChunkDone on_chunk = [](const Piece&) {};
  if (verify || index.header.encrypted()) {
    if (verify)
      for (size_t k = 0; k < ops.size(); ++k) streams[k].expect(ops[k].length);
    on_chunk = [&](const Piece& p) {
      const size_t r = op_req[p.op];
      auto hash = [&](uint64_t at, uint64_t n) {
        if (verify && streams[p.op].add(at, n, ops[p.op].dst, *checks[r].hasher, cancel_))
          finish_check(checks[r], index.entries[reqs[r].entry].name);
      };
      const uint64_t at = p.dst - ops[p.op].dst;
      cancel_.check();  // before opening crypto chunks: the load is abandoned
      if (crypts[p.op]) crypts[p.op]->add(at, p.length, hash);
      else hash(at, p.length);
    };
  }
  try {
    engine_->run(ops, on_chunk);
  } catch (const ReadFailure& f) {
    rethrow_read(f, index.entries[reqs[op_req[f.op()]].entry].name, *src_, "data");
  }
  stats_.data_seconds = since(t0);
  stats_.queued_bytes = engine_->queued_bytes();
  stats_.reads += ops.size();
  std::vector<uint16_t> modules;
  modules.reserve(checks.size());
  for (const auto& c : checks) modules.push_back(c.header.module_idx);
  return modules;
}

}  // namespace ts
