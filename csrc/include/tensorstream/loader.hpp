// Executes a load plan: per-tensor headers into scratch, data straight into caller memory,
// hashes checked in worker threads.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "tensorstream/cancel.hpp"
#include "tensorstream/crypto.hpp"
#include "tensorstream/format/tensorizer.hpp"
#include "tensorstream/hash.hpp"
#include "tensorstream/io/engine.hpp"
#include "tensorstream/io/source.hpp"

namespace ts {

struct LoadRequest {
  size_t entry = 0;        // position in the index
  uint8_t* dst = nullptr;  // data_length bytes; null for meta tensors
  uint64_t nbytes = 0;
};

struct LoadStats {
  uint64_t bytes = 0;
  uint64_t reads = 0;
  uint64_t queued_bytes = 0;  // data bytes read through the io_uring queue, not copied inline
  double header_seconds = 0, data_seconds = 0;  // data includes hashing (done as chunks arrive)
  // Busy time summed over workers (so it can exceed data_seconds): hashing data, decrypting it.
  double hash_seconds = 0, decrypt_seconds = 0;
};

class Loader {
 public:
  // The engine is made on first use (a zero-copy load of safetensors never needs one); an unknown
  // backend name is refused here (std::invalid_argument).
  Loader(std::shared_ptr<Source> src, EngineOptions opts);
  const char* backend() const { return engine().name(); }
  const Source& source() const { return *src_; }
  // Returns each request's module_idx (from its per-tensor header), in request order. Throws
  // Cancelled when stopped by cancel() or interrupt(), once nothing writes to the destinations.
  std::vector<uint16_t> load(const tz::Index& index, const std::vector<LoadRequest>& requests, bool verify_hash);
  // For data the caller already has in memory at each request's `dst` (a mapping of the file):
  // reads and checks the per-tensor headers and, with `verify_hash`, hashes the data where it
  // lies; nothing is copied. Unencrypted files only (std::invalid_argument otherwise). Returns
  // module_idx as load() does.
  std::vector<uint16_t> check_in_place(const tz::Index& index, const std::vector<LoadRequest>& requests,
                                       bool verify_hash);
  // From any thread: stops the running load and every later one (closing the loader).
  void cancel() { cancel_.cancel(); }
  bool cancelled() const { return cancel_.cancelled(); }
  // From any thread: stops the running load only; resume() lets later loads run.
  void interrupt() { cancel_.interrupt(); }
  void resume() { cancel_.resume(); }
  const LoadStats& stats() const { return stats_; }
  // Data bytes read so far by the load in progress (or the last one); readable from any thread.
  uint64_t progress() const { return progress_.load(std::memory_order_relaxed); }
  // The key (or passphrase) for encrypted files; decryption runs in the read workers.
  crypto::KeySource& keys() { return keys_; }
  // The digests of the tensors of the last load that succeeded, in request order.
  const std::vector<HeaderDigest>& digests() const { return digests_; }

 private:
  std::vector<uint16_t> load_checked(const tz::Index& index, const std::vector<LoadRequest>& requests, bool verify);
  std::vector<uint16_t> check_checked(const tz::Index& index, const std::vector<LoadRequest>& requests, bool verify);
  template <class F>
  std::vector<uint16_t> naming_cancel(F&& body);

  ReadEngine& engine() const;

  std::shared_ptr<Source> src_;
  EngineOptions opts_;
  mutable std::once_flag made_;
  mutable std::unique_ptr<ReadEngine> engine_;
  LoadStats stats_;
  std::atomic<uint64_t> progress_{0};
  crypto::KeySource keys_;
  std::vector<HeaderDigest> digests_;
  CancelToken cancel_;
};

}  // namespace ts
