// A whole load over arbitrary bytes: the index, every per-tensor header, then the data into
// destinations of exactly each tensor's size, so the engine-level checks (hashes, decryption,
// chunking) run on hostile input too. Each input is loaded twice, by the Loader (CPU) and by the
// DeviceLoader's ring pipeline with the host stand-in for the device copy (small slots, so data
// spans turns): both must succeed with the same bytes, or both refuse the file.
//
// Input: one option byte, then the file.
//   bit 0     verify_hash
//   bit 1     decrypt with the passphrase rather than the key (when every key-derivation chunk is
//             cheap; otherwise the key is used)
//   bit 2     give the key even to a file that is not encrypted (must be refused)
//   bits 3-5  read chunk size: 64 << n bytes
//   bit 6     load every other tensor only
//   bit 7     request the tensors in reverse order
// Files are read from memory by one worker, copies run inline: a run is deterministic.
#include <algorithm>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <vector>

#include "fuzz_util.hpp"
#include "tensorstream/index_reader.hpp"
#include "tensorstream/cuda/copier.hpp"
#include "tensorstream/device/device_loader.hpp"
#include "tensorstream/errors.hpp"
#include "tensorstream/format/tensorizer.hpp"
#include "tensorstream/io/source.hpp"
#include "tensorstream/loader.hpp"

using namespace ts;

namespace {

// Key derivation is cheap enough to run per input only at the lowest cost (seeds use it).
bool cheap_kdfs(const Source& src, const tz::Index& idx) {
  for (const auto& e : idx.entries) {
    std::vector<uint8_t> raw(e.header_size());
    src.read_exact(e.header_offset, raw.data(), raw.size());
    tz::TensorHeader h;
    try {
      h = tz::parse_tensor_header(raw.data(), raw.size(), e, idx.header);
    } catch (const FormatError&) {
      continue;  // the loader refuses it, if it is asked for
    }
    if (h.crypt.kdf && (h.crypt.kdf->opslimit > 1 || h.crypt.kdf->memlimit > (64u << 10))) return false;
  }
  return true;
}

void set_keys(crypto::KeySource& keys, const Source& src, const tz::Index& idx, uint8_t opts) {
  const bool encrypted = idx.header.encrypted();
  if (!encrypted && !(opts & 0x04)) return;
  if ((opts & 0x02) && encrypted && cheap_kdfs(src, idx))
    keys.set_passphrase(fuzz::kPassphrase);
  else
    keys.set_key(std::string(fuzz::kKey, 32));
}

// Every requested tensor's bytes, or nothing when the loader refused the file.
struct Outcome {
  bool loaded = false;
  std::vector<std::vector<uint8_t>> data;
  std::vector<uint16_t> modules;
};

template <typename L>
Outcome run(L& loader, const tz::Index& idx, std::vector<size_t> entries, uint8_t opts) {
  Outcome out;
  std::vector<LoadRequest> reqs;
  for (size_t i : entries) {
    out.data.emplace_back(idx.entries[i].data_length);
    auto& d = out.data.back();
    reqs.push_back(LoadRequest{i, d.empty() ? nullptr : d.data(), d.size()});
  }
  try {
    out.modules = loader.load(idx, reqs, opts & 0x01);
  } catch (const FormatError&) {
    return out;
  } catch (const HashMismatchError&) {
    return out;
  } catch (const CryptographyError&) {  // and KeyRequiredError
    return out;
  }
  FUZZ_CHECK(out.modules.size() == reqs.size());
  out.loaded = true;
  return out;
}

void load(const uint8_t* file, size_t size, uint8_t opts) {
  auto src = std::make_shared<MemorySource>(file, size, nullptr);
  tz::Index idx;
  try {
    idx = tz::read_index(*src);
  } catch (const FormatError&) {
    return;
  }
  std::vector<size_t> entries;
  for (size_t i = 0; i < idx.entries.size(); i += (opts & 0x40) ? 2 : 1) {
    // The index keeps every tensor's data inside the file, so this is bounded by the input.
    FUZZ_CHECK(idx.entries[i].data_length <= size);
    entries.push_back(i);
  }
  if (opts & 0x80) std::reverse(entries.begin(), entries.end());

  EngineOptions eo;
  eo.backend = "posix";
  eo.threads = 1;
  eo.chunk_bytes = size_t{64} << ((opts >> 3) & 7);
  Loader cpu(src, eo);
  set_keys(cpu.keys(), *src, idx, opts);
  const Outcome a = run(cpu, idx, entries, opts);

  RingOptions ro;
  ro.slots = 3;
  ro.slot_bytes = 4096;
  ro.streams = 1;
  ro.lanes = 1;
  HostCopierOptions ho;
  ho.background = false;
  DeviceLoader ring(src, eo, ro, make_host_copier(1, ro.slots, ho));
  set_keys(ring.keys(), *src, idx, opts);
  Outcome b;
  try {
    b = run(ring, idx, entries, opts);
  } catch (const std::invalid_argument& e) {
    // The ring refuses a tensor encrypted in chunks larger than a slot; the CPU loader takes it.
    FUZZ_CHECK(std::strstr(e.what(), "more than a ring slot") != nullptr);
    return;
  }
  FUZZ_CHECK(a.loaded == b.loaded);
  if (a.loaded) FUZZ_CHECK(a.data == b.data && a.modules == b.modules);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  // The file in its own allocation, so that reading past its end is caught.
  std::vector<uint8_t> file(data + 1, data + size);
  load(file.data(), file.size(), data[0]);
  return 0;
}
