// Loads tensors to a device through a ring of fixed-size host slots: reads fill a slot (hashes
// checked and chunks decrypted in the read workers), the slot's bytes are copied asynchronously
// to the destinations, and the slot's event returns it to the ring. Host memory is the ring's
// size whatever the model's size; reading, checking and copying overlap. Slots come from the
// process's pool of host blocks (cuda/host_pool.hpp) and go back to it after each load, so a
// process pins its ring once, not once per loader.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "tensorstream/cancel.hpp"
#include "tensorstream/crypto.hpp"
#include "tensorstream/cuda/copier.hpp"
#include "tensorstream/format/tensorizer.hpp"
#include "tensorstream/hash.hpp"
#include "tensorstream/io/engine.hpp"
#include "tensorstream/io/source.hpp"
#include "tensorstream/loader.hpp"

namespace ts {

struct RingOptions {
  uint64_t ring_bytes = 0;  // 0: TENSORSTREAM_RING_MB, else 256 MiB
  unsigned slots = 0;       // 0: TENSORSTREAM_RING_SLOTS, else 4
  uint64_t slot_bytes = 0;  // 0: ring_bytes / slots (rounded down to 256 bytes)
  unsigned streams = 0;     // 0: TENSORSTREAM_CUDA_STREAMS, else one per slot up to 4
  unsigned lanes = 0;       // 0: TENSORSTREAM_RING_LANES, else 2 (slots filled at once; <= slots)

  // Zeros replaced by the environment, then the defaults; std::invalid_argument for bad values.
  RingOptions resolved() const;
};

struct DeviceLoadStats {
  uint64_t bytes = 0;
  uint64_t reads = 0;   // read ops issued (headers and segments)
  uint64_t turns = 0;   // slot fills
  uint64_t copies = 0;  // copies queued to the device
  std::vector<uint64_t> slot_turns;  // fills of each slot
  uint64_t ring_bytes = 0;           // host memory the ring held during the load
  double header_seconds = 0, data_seconds = 0;
  double alloc_seconds = 0;      // taking ring slots from the pool (pinning new ones is slow)
  double slot_wait_seconds = 0;  // lanes waiting for a slot's copies to finish
  // Busy time summed over lanes: hashing (not counting waits for a segment's turn), decrypting.
  double hash_seconds = 0, decrypt_seconds = 0;
};

class DeviceLoader {
 public:
  DeviceLoader(std::shared_ptr<Source> src, const EngineOptions& engine, const RingOptions& ring,
               std::unique_ptr<DeviceCopier> copier);
  ~DeviceLoader();
  DeviceLoader(const DeviceLoader&) = delete;
  DeviceLoader& operator=(const DeviceLoader&) = delete;

  const char* backend() const { return engines_.front()->name(); }
  const DeviceCopier& copier() const { return *copier_; }
  const RingOptions& ring() const { return ring_; }
  const Source& source() const { return *src_; }
  crypto::KeySource& keys() { return keys_; }
  // The digests of the tensors of the last load that succeeded, in request order.
  const std::vector<HeaderDigest>& digests() const { return digests_; }

  // Each request's `dst` is a device address (for the host copier: host memory). Returns each
  // request's module_idx, in request order, once every copy has finished. On any failure the
  // pipeline stops, copies in flight are waited for, and the error is thrown (Cancelled when
  // stopped by cancel() or interrupt()).
  std::vector<uint16_t> load(const tz::Index& index, const std::vector<LoadRequest>& requests, bool verify_hash);
  // From any thread: stops the running load and every later one (closing the loader).
  void cancel();
  bool cancelled() const { return cancel_.cancelled(); }
  // From any thread: stops the running load only; resume() lets later loads run.
  void interrupt();
  void resume() { cancel_.resume(); }
  const DeviceLoadStats& stats() const { return stats_; }
  // Data bytes read into the ring so far by the load in progress; readable from any thread.
  uint64_t progress() const { return progress_.load(std::memory_order_relaxed); }

 private:
  class Run;
  uint8_t* slot(unsigned i);  // taken from the process's pool at first use in a load
  void give_back_slots() noexcept;
  std::vector<uint16_t> load_checked(const tz::Index& index, const std::vector<LoadRequest>& requests, bool verify);
  void wake_active();

  std::shared_ptr<Source> src_;
  RingOptions ring_;
  std::unique_ptr<DeviceCopier> copier_;
  std::vector<std::unique_ptr<ReadEngine>> engines_;  // one per lane
  std::shared_ptr<HostAllocator> allocator_;
  HostPoolLimits pool_limits_;  // read with the ring's own settings, when the loader is made
  std::vector<uint8_t*> slots_;
  DeviceLoadStats stats_;
  std::atomic<uint64_t> progress_{0};
  crypto::KeySource keys_;
  std::vector<HeaderDigest> digests_;
  CancelToken cancel_;  // also stops the engines' runs
  std::mutex active_mu_;
  Run* active_ = nullptr;  // the load in progress, for cancel()
};

}  // namespace ts
