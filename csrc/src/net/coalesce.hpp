// Range requests for a run's pieces. Every request costs a round trip (and, behind some servers,
// a delayed acknowledgement), so pieces close together in the file travel in one request: a
// tensor's data and the next one's, with the small header between them read and dropped. A
// request never grows past the run's chunk size, so large reads still spread over connections.
// Private to csrc/src/net.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "tensorstream/io/engine.hpp"

namespace ts::net {

// The largest gap between two pieces that one request reads through (bytes it then drops): a gap
// up to kMinGap always, larger ones up to kMergeGap while the request already holds as many
// bytes it keeps, so that a request never drops more than it keeps (plus kMinGap). Data that
// follows a small header is read through it; headers far apart are not fetched with the data
// between them.
constexpr uint64_t kMinGap = 4u << 10;
constexpr uint64_t kMergeGap = 64u << 10;

struct RangeRequest {
  uint64_t offset = 0, length = 0;  // the bytes asked for
  std::vector<size_t> pieces;       // indices of the pieces it fills, by file offset, disjoint
};

// Requests covering every piece once: pieces sorted by offset join the previous request when they
// start at or after its end, within the gap allowed (above) of it, and the request stays within
// `max_bytes` (a single piece larger than that is a request of its own). With `part_end` (where
// the resource holding an offset ends: the shards of one source), a request stays in one part.
std::vector<RangeRequest> coalesce(const std::vector<Piece>& pieces, uint64_t max_bytes,
                                   const std::function<uint64_t(uint64_t)>& part_end = {});

// Copies `len` bytes that arrived at `pos` (relative to the request's offset) into the pieces they
// belong to; bytes in gaps are dropped. `cursor` is the first piece that may still receive bytes:
// positions only grow within one attempt; start each attempt with cursor 0.
void scatter(const RangeRequest& r, const std::vector<Piece>& pieces, uint64_t pos, const uint8_t* data, uint64_t len,
             size_t& cursor);

}  // namespace ts::net
