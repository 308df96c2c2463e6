#include "tensorstream/index_reader.hpp"

#include <algorithm>
#include <cstring>

#include "tensorstream/format/names.hpp"
#include "tensorstream/format/safetensors.hpp"

namespace ts::tz {

Index read_index(const Source& src, std::vector<uint8_t> buf, const CancelToken* cancel) {
  Index idx;
  idx.file_size = src.size();
  if (buf.empty()) {
    buf.resize(std::min<uint64_t>(src.size(), kFileHeaderSize + kWriterMetadataLen));
    src.read_exact(0, buf.data(), buf.size(), cancel);
  }
  idx.header = parse_file_header(buf.data(), buf.size(), idx.file_size);
  const uint64_t need = kFileHeaderSize + idx.header.metadata_len;  // <= file size, checked above
  if (need > buf.size()) {
    size_t have = buf.size();
    buf.resize(need);
    src.read_exact(have, buf.data() + have, need - have, cancel);
  }
  idx.entries = parse_index_entries(idx.header, buf.data() + kFileHeaderSize, need - kFileHeaderSize,
                                    idx.file_size);
  return idx;
}

}  // namespace ts::tz

namespace ts::st {

tz::Index read_index(const Source& src, std::vector<uint8_t> buf, const CancelToken* cancel) {
  const uint64_t file_size = src.size();
  if (buf.size() < kLengthSize && file_size >= kLengthSize) {
    buf.resize(kLengthSize);
    src.read_exact(0, buf.data(), buf.size(), cancel);
  }
  const uint64_t n = header_length(buf.data(), buf.size(), file_size);
  if (buf.size() < kLengthSize + n) {  // n is capped and within the file: checked above
    size_t have = buf.size();
    buf.resize(kLengthSize + n);
    src.read_exact(have, buf.data() + have, buf.size() - have, cancel);
  }
  return parse_header(buf.data() + kLengthSize, static_cast<size_t>(n), file_size);
}

}  // namespace ts::st

namespace ts {

namespace {
constexpr uint64_t kLocalFirstRead = 64u << 10;  // what a local index read takes first
}  // namespace

tz::Index read_any_index(const Source& src, const CancelToken* cancel) {
  // A remote source gets the usual index in one request; a local one reads a little first (a
  // safetensors header is mostly a few KiB) and the rest only when the index is longer.
  const Source& part = *src.locate(0).part;
  const bool local = part.fd() >= 0 || part.memory() != nullptr;
  const uint64_t want = local ? kLocalFirstRead : tz::kFileHeaderSize + tz::kWriterMetadataLen;
  std::vector<uint8_t> first(std::min<uint64_t>(src.size(), want));
  src.read_exact(0, first.data(), first.size(), cancel);
  const bool tensorizer = first.size() >= sizeof(tz::kMagic) && std::memcmp(first.data(), tz::kMagic, 5) == 0;
  if (!tensorizer && st::looks_like(first.data(), first.size())) return st::read_index(src, std::move(first), cancel);
  return tz::read_index(src, std::move(first), cancel);
}

tz::Index join_indexes(const std::vector<const tz::Index*>& parts, const ShardSource& whole) {
  if (parts.size() != whole.parts().size())
    throw std::invalid_argument(std::to_string(parts.size()) + " indexes for the " +
                                std::to_string(whole.parts().size()) + " parts of " + whole.name());
  tz::Index out;
  out.format = tz::Format::kSafetensors;
  out.file_size = whole.size();
  for (size_t i = 0; i < parts.size(); ++i) {
    const tz::Index& part = *parts[i];
    const Source& source = *whole.parts()[i];
    if (part.format != tz::Format::kSafetensors)
      throw std::invalid_argument(source.name() + " is not a safetensors file: only those are joined");
    if (part.file_size != source.size())
      throw std::invalid_argument("the index of " + source.name() + " is of a file of " +
                                  std::to_string(part.file_size) + " bytes, not " + std::to_string(source.size()));
    const uint64_t base = whole.starts()[i];
    for (tz::IndexEntry e : part.entries) {
      e.header_offset += base;
      e.data_offset += base;
      out.entries.push_back(std::move(e));
    }
    out.metadata.insert(out.metadata.end(), part.metadata.begin(), part.metadata.end());
    out.header.tensor_size += part.header.tensor_size;
  }
  out.header.tensor_count = out.entries.size();
  tz::check_paths(out.entries);
  return out;
}

}  // namespace ts
