// The ring pipeline with the host stand-in for the device copy: plan, copier contract, loads that
// span and share slots, hashes, decryption, failures in the middle, and the driver without a GPU.
#include <cstring>
#include <numeric>
#include <thread>

#include "check.hpp"
#include "memory_sink.hpp"
#include "tensorstream/index_reader.hpp"
#include "tensorstream/cuda/copier.hpp"
#include "tensorstream/cuda/driver.hpp"
#include "tensorstream/device/device_loader.hpp"
#include "tensorstream/device/ring_plan.hpp"
#include "tensorstream/errors.hpp"
#include "tensorstream/writer.hpp"

using namespace ts;

namespace {

std::vector<uint8_t> pattern(size_t n, unsigned seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(i * 131 + (i >> 9) + seed * 7);
  return v;
}

// A file with tensors of the given sizes (bytes, multiples of 4); optionally encrypted.
struct Model {
  std::vector<std::vector<uint8_t>> data;
  std::vector<uint8_t> file;
  crypto::SecretKey key{std::vector<uint8_t>(32, 7).data(), 32};

  Model(const std::vector<size_t>& sizes, bool encrypt) {
    std::vector<WriteRecord> recs;
    for (size_t i = 0; i < sizes.size(); ++i) data.push_back(pattern(sizes[i], static_cast<unsigned>(i)));
    for (size_t i = 0; i < sizes.size(); ++i) {
      WriteRecord r;
      r.spec.name = "t" + std::to_string(i);
      r.spec.dtype = "<f4";
      r.spec.shape = {sizes[i] / 4};
      r.spec.data_length = sizes[i];
      r.data = data[i].data();
      recs.push_back(r);
    }
    Writer w(std::make_unique<tst::MemorySink>(&file), 2);
    if (encrypt) w.set_encryption(key, std::nullopt);
    w.write(recs);
    w.close();
  }
};

struct Result {
  std::vector<std::vector<uint8_t>> out;
  DeviceLoadStats stats;
};

Result load(Model& m, RingOptions ring, HostCopierOptions copy, bool verify, bool with_key = false,
            const std::vector<uint8_t>* file = nullptr) {
  const auto& bytes = file ? *file : m.file;
  auto src = std::make_shared<MemorySource>(bytes.data(), bytes.size(), nullptr);
  tz::Index index = tz::read_index(*src);
  ring = ring.resolved();
  EngineOptions eo;
  eo.threads = 3;
  eo.chunk_bytes = 1000;  // many pieces per segment, arriving out of order
  DeviceLoader loader(src, eo, ring, make_host_copier(ring.streams, ring.slots, copy));
  if (with_key) loader.keys().set_key(std::string(reinterpret_cast<const char*>(m.key.data()), 32));
  Result r;
  std::vector<LoadRequest> reqs;
  for (size_t i = m.data.size(); i-- > 0;) {  // reverse order: the pipeline sorts by offset
    r.out.emplace_back(m.data[i].size(), 0xEE);
    reqs.push_back(LoadRequest{i, r.out.back().data(), r.out.back().size()});
  }
  loader.load(index, reqs, verify);
  std::reverse(r.out.begin(), r.out.end());
  r.stats = loader.stats();
  return r;
}

RingOptions small_ring(unsigned lanes) {
  RingOptions o;
  o.slots = 3;
  o.slot_bytes = 8192;
  o.lanes = lanes;
  o.streams = 2;
  return o;
}

}  // namespace

TEST(ring_plan_shares_and_spans_slots) {
  std::vector<RingTensor> t = {{0, 100, 0}, {100, 300, 0}, {400, 5000, 0}, {5400, 40, 0}};
  auto turns = plan_ring(t, 1024);
  // 100 + (pad) 300 share the first slot with the start of the 5000-byte tensor, which runs on
  // over several slots.
  CHECK(turns[0].segments.size() == 3);
  CHECK(turns[0].segments[1].slot_offset == 256 && turns[0].segments[2].slot_offset == 768);
  CHECK(turns[0].used == 1024);
  uint64_t seen[4] = {0, 0, 0, 0};
  for (const auto& turn : turns) {
    CHECK(turn.used <= 1024);
    for (const auto& s : turn.segments) {
      CHECK(s.slot_offset % kRingAlign == 0);
      CHECK(s.at == seen[s.tensor]);  // each tensor in order, without gaps
      seen[s.tensor] += s.length;
    }
  }
  for (size_t i = 0; i < 4; ++i) CHECK(seen[i] == t[i].length);
  CHECK(turns.size() >= 5);
}

TEST(ring_plan_cuts_encrypted_tensors_at_chunks) {
  std::vector<RingTensor> t = {{0, 300, 0}, {300, 2500, 1000}};
  auto turns = plan_ring(t, 2048);
  for (const auto& turn : turns)
    for (const auto& s : turn.segments)
      if (s.tensor == 1) CHECK(s.at % 1000 == 0 && (s.length % 1000 == 0 || s.at + s.length == 2500));
  CHECK_THROWS(plan_ring({{0, 5000, 4096}}, 2048), std::invalid_argument);
  CHECK_THROWS(plan_ring(t, 1000), std::invalid_argument);  // not a multiple of 256
}

TEST(host_copier_marks_follow_copies_and_errors_stick) {
  HostCopierOptions o;
  o.delay_us = 2000;
  auto c = make_host_copier(2, 2, o);
  std::vector<uint8_t> src = pattern(4096, 1), dst(4096, 0);
  c->copy_async(reinterpret_cast<uintptr_t>(dst.data()), src.data(), src.size(), 1);
  c->record(0, 1);
  CHECK(!c->query(0));  // still sleeping in the worker
  c->wait(0);
  CHECK(c->query(0));
  CHECK(dst == src);
  o.delay_us = 0;
  o.fail_copy_at = 2;
  auto f = make_host_copier(1, 1, o);
  f->copy_async(reinterpret_cast<uintptr_t>(dst.data()), src.data(), 1, 0);
  f->copy_async(reinterpret_cast<uintptr_t>(dst.data()), src.data(), 1, 0);
  f->record(0, 0);
  CHECK_THROWS(f->wait(0), cuda::CudaError);
  f->drain();
}

TEST(loads_through_a_small_ring_reuse_its_slots) {
  Model m({40000, 12, 8, 20000, 4, 3000, 0x10000}, false);
  for (unsigned lanes : {1u, 2u, 3u}) {
    HostCopierOptions copy;
    copy.delay_us = 300;  // copies are the slow stage: slots must wait for them
    auto r = load(m, small_ring(lanes), copy, false);
    CHECK(r.out == m.data);
    CHECK(r.stats.turns >= 16);
    for (uint64_t n : r.stats.slot_turns) CHECK(n >= r.stats.turns / 3);
    CHECK(r.stats.ring_bytes == 3 * 8192);
    CHECK(r.stats.bytes == 40000 + 12 + 8 + 20000 + 4 + 3000 + 0x10000);
  }
}

TEST(hashes_are_checked_in_order_across_lanes) {
  Model m({50000, 100, 30000}, false);
  for (unsigned lanes : {1u, 3u}) {
    auto r = load(m, small_ring(lanes), HostCopierOptions{}, true);
    CHECK(r.out == m.data);
  }
  std::vector<uint8_t> bad = m.file;
  bad[bad.size() - 20000] ^= 1;  // inside the last tensor
  CHECK_THROWS(load(m, small_ring(2), HostCopierOptions{}, true, false, &bad), HashMismatchError);
}

TEST(encrypted_files_decrypt_in_the_ring) {
  // Chunks are 2 MiB: a slot must hold one.
  Model m({(2u << 20) + 4096, 64, 5u << 20}, true);
  RingOptions ring;
  ring.slots = 2;
  ring.slot_bytes = 2u << 20;
  ring.lanes = 2;
  auto r = load(m, ring, HostCopierOptions{}, true, true);
  CHECK(r.out == m.data);
  std::vector<uint8_t> bad = m.file;
  bad[bad.size() - 100] ^= 1;
  CHECK_THROWS(load(m, ring, HostCopierOptions{}, false, true, &bad), CryptographyError);
  ring.slot_bytes = 1u << 20;
  CHECK_THROWS(load(m, ring, HostCopierOptions{}, false, true), std::invalid_argument);
}

TEST(a_copy_failure_stops_the_load) {
  Model m({100000}, false);
  HostCopierOptions copy;
  copy.fail_copy_at = 4;
  CHECK_THROWS(load(m, small_ring(2), copy, false), cuda::CudaError);
  copy.background = false;
  CHECK_THROWS(load(m, small_ring(2), copy, false), cuda::CudaError);
}

TEST(a_short_source_fails_with_a_format_error) {
  Model m({100000}, false);
  std::vector<uint8_t> cut(m.file.begin(), m.file.end() - 5000);
  CHECK_THROWS(load(m, small_ring(2), HostCopierOptions{}, false, false, &cut), FormatError);
}

TEST(cancel_stops_a_load_in_progress) {
  Model m({400000}, false);
  auto src = std::make_shared<MemorySource>(m.file.data(), m.file.size(), nullptr);
  tz::Index index = tz::read_index(*src);
  RingOptions ring = small_ring(2).resolved();
  HostCopierOptions copy;
  copy.delay_us = 2000;  // about 100 ms of copies
  DeviceLoader loader(src, EngineOptions{}, ring, make_host_copier(ring.streams, ring.slots, copy));
  std::vector<uint8_t> out(400000);
  std::thread stopper([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    loader.cancel();
  });
  CHECK_THROWS(loader.load(index, {LoadRequest{0, out.data(), out.size()}}, false), Cancelled);
  stopper.join();
  CHECK(loader.cancelled());
  CHECK_THROWS(loader.load(index, {LoadRequest{0, out.data(), out.size()}}, false), Cancelled);
}

TEST(an_interrupt_stops_one_load_and_resume_allows_the_next) {
  Model m({200000}, false);
  auto src = std::make_shared<MemorySource>(m.file.data(), m.file.size(), nullptr);
  tz::Index index = tz::read_index(*src);
  RingOptions ring = small_ring(2).resolved();
  HostCopierOptions copy;
  copy.delay_us = 1000;
  DeviceLoader loader(src, EngineOptions{}, ring, make_host_copier(ring.streams, ring.slots, copy));
  std::vector<uint8_t> out(200000);
  std::thread stopper([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    loader.interrupt();
  });
  CHECK_THROWS(loader.load(index, {LoadRequest{0, out.data(), out.size()}}, false), Cancelled);
  stopper.join();
  loader.resume();
  loader.load(index, {LoadRequest{0, out.data(), out.size()}}, false);
  CHECK(out == m.data[0]);
}

TEST(ring_options_come_from_the_environment) {
  setenv("TENSORSTREAM_RING_MB", "8", 1);
  setenv("TENSORSTREAM_RING_SLOTS", "2", 1);
  RingOptions r = RingOptions{}.resolved();
  CHECK(r.slots == 2 && r.slot_bytes == (4u << 20) && r.ring_bytes == (8u << 20) && r.lanes == 2);
  setenv("TENSORSTREAM_RING_SLOTS", "x", 1);
  CHECK_THROWS(RingOptions{}.resolved(), std::invalid_argument);
  unsetenv("TENSORSTREAM_RING_MB");
  unsetenv("TENSORSTREAM_RING_SLOTS");
  RingOptions d = RingOptions{}.resolved();
  CHECK(d.slots == 4 && d.slot_bytes == (64u << 20) && d.streams == 4);
}

TEST(without_a_driver_cuda_says_why) {
  std::string why;
  if (cuda::available(&why)) return;  // a machine with a GPU: nothing to check here
  CHECK(!why.empty());
  CHECK_THROWS(cuda::driver(), cuda::CudaUnavailableError);
  CHECK_THROWS(make_cuda_copier(0, 1, 1), cuda::CudaUnavailableError);
  CHECK(!cuda::driver_info().available);
}
