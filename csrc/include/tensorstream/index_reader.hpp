// Reading a file's index from a source: the one place where the format parsers (which know bytes,
// not sources) meet the sources (which know bytes, not formats).
#pragma once
#include <cstdint>
#include <vector>

#include "tensorstream/cancel.hpp"
#include "tensorstream/format/tensorizer.hpp"
#include "tensorstream/io/source.hpp"

namespace ts {

namespace tz {
// Reads the file header and index (in one read for the usual 256 KiB index) and validates them.
// `first` holds bytes already read from offset 0 (may be empty); `cancel` (may be null) stops a
// read that waits (Cancelled).
Index read_index(const Source& src, std::vector<uint8_t> first = {}, const CancelToken* cancel = nullptr);
}  // namespace tz

namespace st {
// Reads and validates the header of a safetensors source. `first` holds bytes already read
// from offset 0 (may be empty); more are read only when the header is longer.
tz::Index read_index(const Source& src, std::vector<uint8_t> first = {}, const CancelToken* cancel = nullptr);
}  // namespace st

// The index of a tensorizer or safetensors source, picked by the first bytes (one read for
// headers up to 256 KiB). FormatError if the bytes are neither.
tz::Index read_any_index(const Source& src, const CancelToken* cancel = nullptr);

// The indexes of a ShardSource's parts (safetensors files, one index per part, in order) as one
// index of `whole`: entries in part order, their offsets counted from the start of `whole`, names
// checked across parts (the same path twice, a path that is a prefix of another: FormatError), the
// metadata of every part. std::invalid_argument for indexes that do not match the parts.
tz::Index join_indexes(const std::vector<const tz::Index*>& parts, const ShardSource& whole);

}  // namespace ts
