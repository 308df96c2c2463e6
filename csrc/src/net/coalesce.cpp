#include "coalesce.hpp"

#include <algorithm>
#include <cstring>
#include <numeric>

namespace ts::net {

std::vector<RangeRequest> coalesce(const std::vector<Piece>& pieces, uint64_t max_bytes,
                                   const std::function<uint64_t(uint64_t)>& part_end) {
  std::vector<size_t> order(pieces.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return pieces[a].offset < pieces[b].offset; });
  std::vector<RangeRequest> out;
  uint64_t kept = 0;  // bytes of pieces in the last request
  uint64_t limit = 0;  // where the last request's part ends
  for (size_t i : order) {
    const Piece& p = pieces[i];
    if (!out.empty()) {
      RangeRequest& r = out.back();
      const uint64_t end = r.offset + r.length;
      const uint64_t gap = std::max(kMinGap, std::min(kMergeGap, kept));
      if (p.offset >= end && p.offset - end <= gap && p.offset + p.length - r.offset <= max_bytes &&
          p.offset + p.length <= limit) {
        r.length = p.offset + p.length - r.offset;
        r.pieces.push_back(i);
        kept += p.length;
        continue;
      }
    }
    out.push_back(RangeRequest{p.offset, p.length, {i}});
    kept = p.length;
    limit = part_end ? part_end(p.offset) : UINT64_MAX;
  }
  return out;
}

void scatter(const RangeRequest& r, const std::vector<Piece>& pieces, uint64_t pos, const uint8_t* data, uint64_t len,
             size_t& cursor) {
  const uint64_t from = r.offset + pos, to = from + len;  // file offsets of what arrived
  for (; cursor < r.pieces.size(); ++cursor) {
    const Piece& p = pieces[r.pieces[cursor]];
    if (p.offset >= to) return;  // later bytes
    const uint64_t a = std::max(from, p.offset), b = std::min(to, p.offset + p.length);
    if (a < b) std::memcpy(p.dst + (a - p.offset), data + (a - from), b - a);
    if (p.offset + p.length > to) return;  // this piece continues in the next bytes
  }
}

}  // namespace ts::net
