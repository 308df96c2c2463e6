#include "tensorstream/io/engine.hpp"

#include <thread>

#include "tensorstream/io/medium.hpp"
#include "tensorstream/settings.hpp"

namespace ts {

unsigned default_threads() {
  if (unsigned asked = settings().threads) return asked;
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 2 : (n > 32 ? 32 : n);
}

std::vector<Piece> cut_pieces(const std::vector<ReadOp>& ops, size_t chunk_bytes) {
  std::vector<Piece> pieces;
  for (size_t i = 0; i < ops.size(); ++i) {
    const ReadOp& op = ops[i];
    for (uint64_t at = 0; at < op.length; at += chunk_bytes) {
      uint64_t n = op.length - at < chunk_bytes ? op.length - at : chunk_bytes;
      pieces.push_back(Piece{i, op.offset + at, n, op.dst + at});
    }
  }
  return pieces;
}

std::unique_ptr<ReadEngine> make_engine(const Source& src, const EngineOptions& opts) {
  const Settings set = settings();
  size_t chunk = opts.chunk_bytes ? opts.chunk_bytes : size_t{set.chunk_mb} << 20;
  unsigned threads = opts.threads ? opts.threads : default_threads();
  if (auto own = src.own_engine(chunk)) return own;
  const Source& head = *src.locate(0).part;  // a ShardSource's parts are all of one kind
  if (head.fd() < 0) return make_posix_engine(src, threads, chunk);  // memory: parallel memcpy

  std::string backend = opts.backend;
  if (backend == "auto") backend = set.io_backend;
  if (backend != "auto" && backend != "uring" && backend != "posix")
    throw std::invalid_argument("unknown I/O backend '" + backend + "' (expected auto, uring or posix)");
  if (backend == "posix") return make_posix_engine(src, threads, chunk);
  std::string why;
  if (uring_available(&why)) {
    unsigned depth = opts.queue_depth ? opts.queue_depth : set.queue_depth;
    if (depth == 0) depth = auto_queue_depth(probe_medium(head.fd(), head.size()));  // auto
    return make_uring_engine(src, threads, depth, chunk, set.uring_async);
  }
  if (backend == "uring") throw std::runtime_error("io_uring was asked for but is unavailable: " + why);
  return make_posix_engine(src, threads, chunk);
}

}  // namespace ts
