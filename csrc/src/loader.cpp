#include "tensorstream/loader.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <stdexcept>

#include "tensorstream/data_streams.hpp"
#include "tensorstream/errors.hpp"
#include "tensorstream/hash.hpp"
#include "tensorstream/stage_times.hpp"
#include "tensorstream/tensor_checks.hpp"
#include "tensorstream/runtime.hpp"

namespace ts {

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

constexpr uint64_t kHashBlock = 4u << 20;  // in-place hashing checks for cancellation this often
constexpr uint64_t kEarlyDataBytes = 4u << 20;  // remote data fetched with the headers, at most

}  // namespace

Loader::Loader(std::shared_ptr<Source> src, EngineOptions opts) : src_(std::move(src)), opts_(std::move(opts)) {
  if (!src_) throw std::invalid_argument("a Loader needs a source");
  const std::string& b = opts_.backend;
  if (b != "auto" && b != "uring" && b != "posix")
    throw std::invalid_argument("unknown I/O backend '" + b + "' (expected auto, uring or posix)");
}

ReadEngine& Loader::engine() const {
  std::call_once(made_, [this] {
    engine_ = make_engine(*src_, opts_);
    engine_->set_cancel(&cancel_);
  });
  return *engine_;
}

template <class F>
std::vector<uint16_t> Loader::naming_cancel(F&& body) {
  try {
    return body();
  } catch (const Cancelled&) {  // from an engine, a hasher or a check here: name the file
    throw Cancelled("loading '" + src_->name() + "' was cancelled");
  }
}

std::vector<uint16_t> Loader::load(const tz::Index& index, const std::vector<LoadRequest>& reqs, bool verify) {
  return naming_cancel([&] { return load_checked(index, reqs, verify); });
}

std::vector<uint16_t> Loader::check_in_place(const tz::Index& index, const std::vector<LoadRequest>& reqs,
                                             bool verify) {
  return naming_cancel([&] { return check_checked(index, reqs, verify); });
}

std::vector<uint16_t> Loader::check_checked(const tz::Index& index, const std::vector<LoadRequest>& reqs,
                                            bool verify) {
  stats_ = LoadStats{};
  digests_.clear();
  progress_.store(0, std::memory_order_relaxed);
  if (index.header.encrypted())
    throw std::invalid_argument("'" + src_->name() + "' is encrypted: its tensors cannot be used where they lie");
  check_requests(index, reqs);
  cancel_.check();
  auto t0 = Clock::now();
  std::vector<TensorCheck> checks = index.has_tensor_headers() || verify
      ? read_headers(engine(), *src_, index, reqs, verify, keys_, stats_.reads, &cancel_)
      : checks_without_headers(reqs);  // data in place and nothing to check: no engine needed
  stats_.header_seconds = since(t0);
  t0 = Clock::now();
  for (const auto& r : reqs) stats_.bytes += r.nbytes;
  if (verify) {  // each tensor hashed where it lies, large ones first, by as many threads as loads use
    std::vector<size_t> order;
    for (size_t i = 0; i < reqs.size(); ++i)
      if (reqs[i].nbytes) order.push_back(i);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return reqs[a].nbytes > reqs[b].nbytes; });
    std::atomic<size_t> next{0};
    std::exception_ptr error;
    std::mutex error_mu;
    run_on_workers(std::min(order.size(), static_cast<size_t>(opts_.threads ? opts_.threads : default_threads())),
                [&](size_t) {
                  for (size_t k; (k = next.fetch_add(1)) < order.size();) {
                    const size_t r = order[k];
                    try {
                      for (uint64_t at = 0; at < reqs[r].nbytes; at += kHashBlock) {
                        cancel_.check();
                        checks[r].hasher->update(reqs[r].dst + at, std::min(kHashBlock, reqs[r].nbytes - at));
                      }
                      finish_check(checks[r], index.entries[reqs[r].entry].name, src_->name());
                    } catch (...) {
                      std::lock_guard<std::mutex> lock(error_mu);
                      if (!error) error = std::current_exception();
                      next = order.size();
                    }
                  }
                });
    if (error) std::rethrow_exception(error);
  }
  stats_.data_seconds = since(t0);
  if (verify) stats_.hash_seconds = stats_.data_seconds;  // hashing is all this step does
  progress_.store(stats_.bytes, std::memory_order_relaxed);
  digests_ = digests_of(checks);
  std::vector<uint16_t> modules;
  modules.reserve(checks.size());
  for (const auto& c : checks) modules.push_back(c.header.module_idx);
  return modules;
}

std::vector<uint16_t> Loader::load_checked(const tz::Index& index, const std::vector<LoadRequest>& reqs,
                                           bool verify) {
  stats_ = LoadStats{};
  digests_.clear();
  progress_.store(0, std::memory_order_relaxed);
  check_requests(index, reqs);
  cancel_.check();
  if (reqs.empty()) return {};
  check_encryption(index.header.encrypted(), keys_, src_->name());

  std::vector<ReadOp> ops;  // the data, straight into the destinations
  std::vector<size_t> op_req;
  for (size_t i = 0; i < reqs.size(); ++i) {
    if (reqs[i].nbytes == 0) continue;
    ops.push_back(ReadOp{index.entries[reqs[i].entry].data_offset, reqs[i].nbytes, reqs[i].dst});
    op_req.push_back(i);
    stats_.bytes += reqs[i].nbytes;
  }
  // A little data from a remote source (a lazy access, a small file) is fetched with the headers:
  // each tensor's data follows its header, so the two travel in one request, not one round trip
  // each. It is checked below, once the headers are known, as if it had just arrived.
  ReadEngine& engine = this->engine();
  const bool early = engine.remote() && stats_.bytes <= kEarlyDataBytes;

  // Phase 1: per-tensor headers, in batches of bounded scratch, parsed and checked against the index.
  auto t0 = Clock::now();
  std::vector<TensorCheck> checks =
      read_headers(engine, *src_, index, reqs, verify, keys_, stats_.reads, &cancel_, early ? &ops : nullptr);
  stats_.header_seconds = since(t0);
  cancel_.check();

  // Phase 2: the data, checked (and decrypted) as it arrives.
  t0 = Clock::now();
  // With verify_hash each tensor is hashed as its chunks arrive, in order, by the worker that
  // read them (so mostly while the bytes are still in cache); a chunk that arrives early waits in
  // its tensor's stream until the bytes before it are hashed.
  // Encrypted tensors are decrypted the same way, each crypto chunk by the worker whose read
  // completes it; hashes then cover the plaintext.
  std::unique_ptr<HashFeed[]> feeds(verify ? new HashFeed[ops.size()] : nullptr);
  std::vector<std::unique_ptr<DecryptStream>> crypts(ops.size());
  for (size_t k = 0; k < ops.size(); ++k) {
    const size_t r = op_req[k];
    if (checks[r].key)
      crypts[k] = std::make_unique<DecryptStream>(checks[r].header.crypt, *checks[r].key, ops[k].length, 0,
                                                  ops[k].length, index.entries[reqs[r].entry].name, src_->name());
  }
  StageTimes times;
  ChunkDone on_chunk = [&](const Piece& p) { progress_.fetch_add(p.length, std::memory_order_relaxed); };
  if (verify || index.header.encrypted()) {
    on_chunk = [&](const Piece& p) {
      const size_t r = op_req[p.op];
      uint64_t hash_ns = 0, check_ns = 0;
      auto hash = [&](uint64_t at, uint64_t n) {
        ScopedNs timed(hash_ns);
        if (verify && feeds[p.op].add(at, n, ops[p.op].dst, ops[p.op].length, *checks[r].hasher,
                                      [&](uint64_t) { cancel_.check(); }))
          finish_check(checks[r], index.entries[reqs[r].entry].name, src_->name());
      };
      const uint64_t at = p.dst - ops[p.op].dst;
      cancel_.check();  // before opening crypto chunks: the load is abandoned
      {
        ScopedNs timed(check_ns);
        if (crypts[p.op]) crypts[p.op]->add(at, p.length, ops[p.op].dst, hash);
        else hash(at, p.length);
      }
      times.add(hash_ns, crypts[p.op] ? check_ns - hash_ns : 0);
      progress_.fetch_add(p.length, std::memory_order_relaxed);
    };
  }
  try {
    if (early) {
      for (size_t k = 0; k < ops.size(); ++k) on_chunk(Piece{k, ops[k].offset, ops[k].length, ops[k].dst});
    } else {
      engine.run(ops, on_chunk);
      stats_.reads += ops.size();
    }
  } catch (const ReadFailure& f) {
    rethrow_read(f, index.entries[reqs[op_req[f.op()]].entry], *src_, "data");
  }
  stats_.data_seconds = since(t0);
  stats_.hash_seconds = times.hash_seconds();
  stats_.decrypt_seconds = times.decrypt_seconds();
  stats_.queued_bytes = engine.queued_bytes();
  digests_ = digests_of(checks);
  std::vector<uint16_t> modules;
  modules.reserve(checks.size());
  for (const auto& c : checks) modules.push_back(c.header.module_idx);
  return modules;
}

}  // namespace ts
