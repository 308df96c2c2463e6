#include "tensorstream/device/device_loader.hpp"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <thread>

#include "tensorstream/device/ring_plan.hpp"
#include "tensorstream/data_streams.hpp"
#include "tensorstream/errors.hpp"
#include "tensorstream/settings.hpp"
#include "tensorstream/stage_times.hpp"
#include "tensorstream/tensor_checks.hpp"
#include "tensorstream/runtime.hpp"

namespace ts {

namespace {

using Clock = std::chrono::steady_clock;
constexpr uint64_t kMiB = 1u << 20;
constexpr uint64_t kMinSlot = 4096;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Read chunks small enough that one slot keeps every read worker busy.
size_t lane_chunk(uint64_t slot_bytes, size_t asked) {
  if (asked) return asked;
  return static_cast<size_t>(std::clamp<uint64_t>(slot_bytes / 32, 256u << 10, 8u << 20));
}

// Another lane failed or the load was cancelled: this lane stops; never the error a user sees.
struct Stopped : std::exception {
  const char* what() const noexcept override { return "stopped"; }
};

}  // namespace

RingOptions RingOptions::resolved() const {
  const Settings s = settings();
  RingOptions r = *this;
  if (!r.ring_bytes) r.ring_bytes = uint64_t{s.ring_mb} * kMiB;
  if (!r.slots) r.slots = s.ring_slots;
  if (!r.slot_bytes) r.slot_bytes = r.ring_bytes / r.slots / kRingAlign * kRingAlign;
  if (r.slot_bytes < kMinSlot || r.slot_bytes % kRingAlign)
    throw std::invalid_argument("ring slots of " + std::to_string(r.slot_bytes) + " bytes: each slot needs at least " +
                                std::to_string(kMinSlot) + " bytes, a multiple of " + std::to_string(kRingAlign));
  r.ring_bytes = r.slot_bytes * r.slots;
  if (!r.streams) r.streams = s.cuda_streams ? s.cuda_streams : std::min(r.slots, 4u);
  if (!r.lanes) r.lanes = s.ring_lanes;
  r.lanes = std::min(r.lanes, r.slots);
  return r;
}

// One load's pipeline: the plan, per-tensor progress and the lanes that fill and copy slots.
class DeviceLoader::Run {
 public:
  Run(DeviceLoader& owner, const tz::Index& index, const std::vector<LoadRequest>& reqs,
      std::vector<TensorCheck>& checks, bool verify)
      : L_(owner), index_(index), reqs_(reqs), checks_(checks), verify_(verify) {
    for (size_t r = 0; r < reqs.size(); ++r)
      if (reqs[r].nbytes) order_.push_back(r);
    std::sort(order_.begin(), order_.end(),
              [&](size_t a, size_t b) { return entry(a).data_offset < entry(b).data_offset; });
    std::vector<RingTensor> tensors;
    for (size_t r : order_) {
      uint64_t chunk = checks_[r].key ? checks_[r].header.crypt.chunk_size : 0;
      if (chunk > L_.ring_.slot_bytes)
        throw std::invalid_argument("tensor " + printable_name(entry(r).name) + " is encrypted in chunks of " +
                                    std::to_string(chunk) + " bytes, more than a ring slot (" +
                                    std::to_string(L_.ring_.slot_bytes) +
                                    " bytes): load it with a larger ring (TENSORSTREAM_RING_MB) or to the CPU");
      tensors.push_back(RingTensor{entry(r).data_offset, reqs[r].nbytes, chunk});
    }
    turns_ = plan_ring(tensors, L_.ring_.slot_bytes);
    enqueued_.assign(turns_.size(), 0);
    hashed_to_.assign(order_.size(), 0);
  }

  void execute() {
    const unsigned lanes = std::min<unsigned>(L_.ring_.lanes, std::max<size_t>(turns_.size(), 1));
    // Lanes take turns in order from a shared counter, so that any number of them finishes the
    // load: a lane the runtime has no free worker for is simply never started.
    run_on_workers(lanes, [this](size_t l) { lane(static_cast<unsigned>(l)); });
    if (!error_) finish_copies();
    if (error_) {
      L_.copier_->drain();  // nothing may still write to the destinations or read the slots
      std::rethrow_exception(error_);
    }
  }

  void wake() {
    { std::lock_guard<std::mutex> lock(mu_); }
    cv_.notify_all();
  }

  uint64_t copies() const { return copies_; }
  uint64_t reads() const { return reads_; }
  double wait_seconds() const { return wait_seconds_; }
  const StageTimes& times() const { return times_; }

 private:
  const tz::IndexEntry& entry(size_t req) const { return index_.entries[reqs_[req].entry]; }
  size_t req_of(size_t tensor) const { return order_[tensor]; }

  void fail(std::exception_ptr e) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!error_) error_ = e;
      failed_ = true;
    }
    cv_.notify_all();
  }
  bool stopping() const { return failed_ || L_.cancel_.requested(); }
  void check_stop() const {
    L_.cancel_.check();
    if (failed_) throw Stopped();
  }

  void lane(unsigned l) {
    try {
      for (size_t t = next_turn_++; t < turns_.size(); t = next_turn_++) {
        const unsigned s = static_cast<unsigned>(t % L_.ring_.slots);
        acquire(t, s);
        uint8_t* base = L_.slot(s);
        fill(t, base, *L_.engines_[l]);
        enqueue(t, s, base);
      }
    } catch (...) {
      fail(std::current_exception());
    }
  }

  // Waits until slot s is free: the turn that used it before has queued its copies and they ran.
  void acquire(size_t t, unsigned s) {
    const unsigned slots = L_.ring_.slots;
    if (t >= slots) {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return enqueued_[t - slots] || stopping(); });
      check_stop();
      lock.unlock();
      const auto t0 = Clock::now();
      L_.copier_->wait(s);
      const double waited = since(t0);
      lock.lock();
      wait_seconds_ += waited;
    }
    check_stop();
  }

  // Reads the turn's segments into the slot; hashes and decrypts them as pieces arrive.
  void fill(size_t t, uint8_t* base, ReadEngine& engine) {
    const RingTurn& turn = turns_[t];
    const size_t n = turn.segments.size();
    std::vector<ReadOp> ops;
    ops.reserve(n);
    for (const auto& seg : turn.segments)
      ops.push_back(ReadOp{entry(req_of(seg.tensor)).data_offset + seg.at, seg.length, base + seg.slot_offset});
    std::unique_ptr<HashFeed[]> feeds(verify_ ? new HashFeed[n] : nullptr);
    std::vector<std::unique_ptr<DecryptStream>> crypts(n);
    for (size_t k = 0; k < n; ++k) {
      const RingSegment& seg = turn.segments[k];
      const TensorCheck& c = checks_[req_of(seg.tensor)];
      if (c.key)
        crypts[k] = std::make_unique<DecryptStream>(c.header.crypt, *c.key, reqs_[req_of(seg.tensor)].nbytes, seg.at,
                                                    seg.length, entry(req_of(seg.tensor)).name, L_.src_->name());
    }
    ChunkDone on_chunk = [&](const Piece& p) {
      check_stop();
      const RingSegment& seg = turn.segments[p.op];
      uint8_t* sbase = base + seg.slot_offset;
      const size_t r = req_of(seg.tensor);
      uint64_t hash_ns = 0, gate_ns = 0, check_ns = 0;
      auto wait_turn = [&](uint64_t pos) {  // a segment's first byte waits for the tensor's earlier ones
        if (pos != 0) return;
        ScopedNs timed(gate_ns);
        gate(seg);
      };
      auto hash = [&](uint64_t at, uint64_t len) {
        if (!verify_) return;
        ScopedNs timed(hash_ns);
        if (feeds[p.op].add(at, len, sbase, seg.length, *checks_[r].hasher, wait_turn)) hashed(seg);
      };
      {
        ScopedNs timed(check_ns);
        if (crypts[p.op]) crypts[p.op]->add(p.dst - sbase, p.length, sbase, hash);
        else hash(p.dst - sbase, p.length);
      }
      times_.add(hash_ns - gate_ns, crypts[p.op] ? check_ns - hash_ns : 0);  // waiting for a turn is not hashing
      L_.progress_.fetch_add(p.length, std::memory_order_relaxed);
    };
    try {
      engine.run(ops, on_chunk);
    } catch (const ReadFailure& f) {
      rethrow_read(f, entry(req_of(turn.segments[f.op()].tensor)), *L_.src_, "data");
    }
    std::lock_guard<std::mutex> lock(mu_);
    reads_ += n;
  }

  // Hashing of a tensor's segment waits until its earlier segments (other turns) are hashed.
  void gate(const RingSegment& seg) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return hashed_to_[seg.tensor] == seg.at || stopping(); });
    check_stop();
  }
  void hashed(const RingSegment& seg) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      hashed_to_[seg.tensor] = seg.at + seg.length;
    }
    cv_.notify_all();
    const size_t r = req_of(seg.tensor);
    if (seg.at + seg.length == reqs_[r].nbytes) finish_check(checks_[r], entry(r).name, L_.src_->name());
  }

  void enqueue(size_t t, unsigned s, uint8_t* base) {
    const unsigned stream = s % L_.copier_->streams();
    const RingTurn& turn = turns_[t];
    for (const auto& seg : turn.segments) {
      const uint64_t dst = reinterpret_cast<uintptr_t>(reqs_[req_of(seg.tensor)].dst) + seg.at;
      L_.copier_->copy_async(dst, base + seg.slot_offset, seg.length, stream);
    }
    L_.copier_->record(s, stream);
    {
      std::lock_guard<std::mutex> lock(mu_);
      enqueued_[t] = 1;
      copies_ += turn.segments.size();
      L_.stats_.slot_turns[s] += 1;
    }
    cv_.notify_all();
  }

  void finish_copies() {
    try {
      const unsigned used = static_cast<unsigned>(std::min<size_t>(turns_.size(), L_.ring_.slots));
      for (unsigned s = 0; s < used; ++s) L_.copier_->wait(s);
    } catch (...) {
      fail(std::current_exception());
    }
  }

  DeviceLoader& L_;
  const tz::Index& index_;
  const std::vector<LoadRequest>& reqs_;
  std::vector<TensorCheck>& checks_;
  const bool verify_;
  std::vector<size_t> order_;  // requests with data, by file offset: the planned tensors
  std::vector<RingTurn> turns_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<char> enqueued_;         // per turn: copies queued and the slot's event recorded
  std::vector<uint64_t> hashed_to_;    // per planned tensor: bytes hashed so far
  std::exception_ptr error_;           // the first failure
  std::atomic<bool> failed_{false};
  std::atomic<size_t> next_turn_{0};   // the next turn a lane takes
  uint64_t copies_ = 0, reads_ = 0;
  double wait_seconds_ = 0;
  StageTimes times_;
};

DeviceLoader::DeviceLoader(std::shared_ptr<Source> src, const EngineOptions& engine, const RingOptions& ring,
                           std::unique_ptr<DeviceCopier> copier)
    : src_(std::move(src)), ring_(ring.resolved()), copier_(std::move(copier)) {
  if (!copier_) throw std::invalid_argument("a device loader needs a copier");
  allocator_ = copier_->host_allocator();
  pool_limits_ = HostPoolLimits::from_settings();
  if (copier_->slots() < ring_.slots || copier_->streams() == 0)
    throw std::invalid_argument("the copier has fewer events than the ring has slots");
  EngineOptions per_lane = engine;
  const unsigned threads = engine.threads ? engine.threads : default_threads();
  per_lane.threads = std::max(1u, threads / ring_.lanes);
  per_lane.chunk_bytes = lane_chunk(ring_.slot_bytes, engine.chunk_bytes);
  for (unsigned l = 0; l < ring_.lanes; ++l) {
    engines_.push_back(make_engine(*src_, per_lane));
    engines_.back()->set_cancel(&cancel_);
  }
  slots_.assign(ring_.slots, nullptr);
}

DeviceLoader::~DeviceLoader() {
  copier_->drain();  // no copy reads a slot any more
  give_back_slots();
}

// A load returns only once no copy reads its slots (every slot's last mark has completed, or, on
// an error, the copier was drained), so they go back at once.
void DeviceLoader::give_back_slots() noexcept {
  for (uint8_t*& p : slots_) {
    give_back_host_block(p, pool_limits_);
    p = nullptr;
  }
}

uint8_t* DeviceLoader::slot(unsigned i) {
  // Slot i is first used by turn i alone, so no two threads take the same slot; later turns
  // reach it only after the mutex-guarded hand-over in Run::acquire.
  if (!slots_[i]) {
    const auto t0 = Clock::now();
    slots_[i] = static_cast<uint8_t*>(take_host_block(allocator_, ring_.slot_bytes, pool_limits_));
    std::lock_guard<std::mutex> lock(active_mu_);
    stats_.alloc_seconds += since(t0);
    stats_.ring_bytes += ring_.slot_bytes;
  }
  return slots_[i];
}

std::vector<uint16_t> DeviceLoader::load(const tz::Index& index, const std::vector<LoadRequest>& reqs, bool verify) {
  struct GiveBack {  // the slots go back to the process's pool after every load, however it ends
    DeviceLoader& self;
    ~GiveBack() { self.give_back_slots(); }
  } give_back{*this};
  try {
    return load_checked(index, reqs, verify);
  } catch (const Cancelled&) {  // from an engine, a lane or a check here: name the file
    throw Cancelled("loading '" + src_->name() + "' was cancelled");
  }
}

std::vector<uint16_t> DeviceLoader::load_checked(const tz::Index& index, const std::vector<LoadRequest>& reqs,
                                                 bool verify) {
  stats_ = DeviceLoadStats{};
  progress_.store(0, std::memory_order_relaxed);
  stats_.slot_turns.assign(ring_.slots, 0);
  digests_.clear();
  check_requests(index, reqs);
  cancel_.check();
  if (reqs.empty()) return {};
  check_encryption(index.header.encrypted(), keys_, src_->name());

  auto t0 = Clock::now();
  std::vector<TensorCheck> checks = read_headers(*engines_.front(), *src_, index, reqs, verify, keys_, stats_.reads,
                                                  &cancel_);
  stats_.header_seconds = since(t0);

  t0 = Clock::now();
  Run run(*this, index, reqs, checks, verify);
  {
    std::lock_guard<std::mutex> lock(active_mu_);
    active_ = &run;
  }
  struct Unregister {
    DeviceLoader& self;
    ~Unregister() {
      std::lock_guard<std::mutex> lock(self.active_mu_);
      self.active_ = nullptr;
    }
  } unregister{*this};
  run.execute();
  stats_.data_seconds = since(t0);
  stats_.reads += run.reads();
  stats_.copies = run.copies();
  stats_.slot_wait_seconds = run.wait_seconds();
  stats_.hash_seconds = run.times().hash_seconds();
  stats_.decrypt_seconds = run.times().decrypt_seconds();
  for (const auto& r : reqs) stats_.bytes += r.nbytes;
  for (uint64_t n : stats_.slot_turns) stats_.turns += n;
  digests_ = digests_of(checks);
  std::vector<uint16_t> modules;
  modules.reserve(checks.size());
  for (const auto& c : checks) modules.push_back(c.header.module_idx);
  return modules;
}

void DeviceLoader::cancel() {
  cancel_.cancel();
  wake_active();
}

void DeviceLoader::interrupt() {
  cancel_.interrupt();
  wake_active();
}

void DeviceLoader::wake_active() {
  std::lock_guard<std::mutex> lock(active_mu_);
  if (active_) active_->wake();
}

}  // namespace ts
