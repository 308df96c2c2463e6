// The safetensors header parser (through ts::read_any_index, which picks the format) over
// arbitrary bytes, then a load of what it accepted. A refused file must raise FormatError; an
// accepted one must hold every invariant the loaders rely on, and its tensors must load as the
// bytes of the file at their offsets.
#include <cstring>
#include <vector>

#include "fuzz_util.hpp"
#include "tensorstream/index_reader.hpp"
#include "tensorstream/errors.hpp"
#include "tensorstream/format/safetensors.hpp"
#include "tensorstream/io/source.hpp"
#include "tensorstream/loader.hpp"

using namespace ts;

namespace {

void check_layout(const tz::Index& idx) {
  FUZZ_CHECK(!idx.has_tensor_headers() && idx.entries.size() == idx.header.tensor_count);
  uint64_t at = idx.file_size - idx.header.tensor_size;  // the data area fills the end of the file
  for (const auto& e : idx.entries) {
    FUZZ_CHECK(e.itemsize > 0 && e.data_length == e.numel * e.itemsize);
    FUZZ_CHECK(e.header_offset == e.data_offset && e.data_offset == at);
    at += e.data_length;
  }
  FUZZ_CHECK(at == idx.file_size);
}

void check_load(const std::shared_ptr<Source>& src, const tz::Index& idx, const uint8_t* data) {
  std::vector<std::vector<uint8_t>> got(idx.entries.size());
  std::vector<LoadRequest> reqs;
  for (size_t i = 0; i < idx.entries.size(); ++i) {
    got[i].resize(idx.entries[i].data_length);
    reqs.push_back(LoadRequest{i, got[i].empty() ? nullptr : got[i].data(), got[i].size()});
  }
  EngineOptions o;
  o.backend = "posix";
  o.threads = 1;
  Loader loader(src, o);
  loader.load(idx, reqs, false);
  for (size_t i = 0; i < idx.entries.size(); ++i)
    FUZZ_CHECK(got[i].empty() || std::memcmp(got[i].data(), data + idx.entries[i].data_offset, got[i].size()) == 0);
  bool refused = false;
  try {
    loader.load(idx, reqs, true);  // the format has no hashes: a bad argument, never a fake check
  } catch (const std::invalid_argument&) {
    refused = true;
  }
  FUZZ_CHECK(refused || reqs.empty());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto src = std::make_shared<MemorySource>(data, size, nullptr);
  tz::Index idx;
  try {
    idx = read_any_index(*src);
  } catch (const FormatError&) {
    return 0;
  }
  if (idx.has_tensor_headers()) return 0;  // a tensorizer file: fuzz_index's business
  check_layout(idx);
  check_load(src, idx, data);
  return 0;
}
