// A whole load over arbitrary bytes: the index, every per-tensor header, then the data through a
// Loader into destinations of exactly each tensor's size, so the engine-level checks (hashes,
// decryption, chunking) run on hostile input too.
//
// Input: one option byte, then the file.
//   bit 0     verify_hash
//   bit 1     decrypt with the passphrase rather than the key (when every key-derivation chunk is
//             cheap; otherwise the key is used)
//   bit 2     give the key even to a file that is not encrypted (must be refused)
//   bits 3-5  read chunk size: 64 << n bytes
//   bit 6     load every other tensor only
//   bit 7     request the tensors in reverse order
// Files are read from memory by one worker, so a run is deterministic.
#include <algorithm>
#include <memory>
#include <vector>

#include "fuzz_util.hpp"
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

void set_keys(Loader& loader, const tz::Index& idx, uint8_t opts) {
  const bool encrypted = idx.header.encrypted();
  if (!encrypted && !(opts & 0x04)) return;
  if ((opts & 0x02) && encrypted && cheap_kdfs(loader.source(), idx))
    loader.keys().set_passphrase(fuzz::kPassphrase);
  else
    loader.keys().set_key(std::string(fuzz::kKey, 32));
}

void load(const uint8_t* file, size_t size, uint8_t opts) {
  auto src = std::make_shared<MemorySource>(file, size, nullptr);
  tz::Index idx = tz::read_index(*src);
  EngineOptions eo;
  eo.backend = "posix";
  eo.threads = 1;
  eo.chunk_bytes = size_t{64} << ((opts >> 3) & 7);
  Loader loader(src, eo);
  set_keys(loader, idx, opts);

  std::vector<std::unique_ptr<uint8_t[]>> buffers;
  std::vector<LoadRequest> reqs;
  for (size_t i = 0; i < idx.entries.size(); i += (opts & 0x40) ? 2 : 1) {
    const uint64_t n = idx.entries[i].data_length;
    // The index keeps every tensor's data inside the file, so this is bounded by the input.
    FUZZ_CHECK(n <= size);
    buffers.emplace_back(n ? new uint8_t[n] : nullptr);
    reqs.push_back(LoadRequest{i, buffers.back().get(), n});
  }
  if (opts & 0x80) std::reverse(reqs.begin(), reqs.end());
  auto modules = loader.load(idx, reqs, opts & 0x01);
  FUZZ_CHECK(modules.size() == reqs.size());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  // The file in its own allocation, so that reading past its end is caught.
  std::vector<uint8_t> file(data + 1, data + size);
  try {
    load(file.data(), file.size(), data[0]);
  } catch (const FormatError&) {
  } catch (const HashMismatchError&) {
  } catch (const CryptographyError&) {  // and KeyRequiredError
  }
  return 0;
}
