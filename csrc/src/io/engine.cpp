#include "tensorstream/io/engine.hpp"

#include <cstdlib>
#include <cstring>
#include <thread>

#ifdef TENSORSTREAM_WITH_CURL
#include "tensorstream/net/http.hpp"
#endif

namespace ts {

namespace {
constexpr size_t kDefaultChunk = 8u << 20;
constexpr unsigned kDefaultDepth = 4;

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return (v && *v) ? std::string(v) : fallback;
}
}  // namespace

unsigned default_threads() {
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
  size_t chunk = opts.chunk_bytes ? opts.chunk_bytes : kDefaultChunk;
  unsigned threads = opts.threads ? opts.threads : default_threads();
#ifdef TENSORSTREAM_WITH_CURL
  if (const auto* http = dynamic_cast<const HttpSource*>(&src)) return make_http_engine(*http, chunk);
#endif
  if (src.fd() < 0) return make_posix_engine(src, threads, chunk);  // memory: parallel memcpy

  std::string backend = opts.backend;
  if (backend == "auto") backend = env_or("TENSORSTREAM_IO_BACKEND", "auto");
  if (backend != "auto" && backend != "uring" && backend != "posix")
    throw std::invalid_argument("unknown I/O backend '" + backend + "' (expected auto, uring or posix)");
  if (backend == "posix") return make_posix_engine(src, threads, chunk);
  std::string why;
  if (uring_available(&why)) {
    unsigned depth = opts.queue_depth ? opts.queue_depth : kDefaultDepth;
    return make_uring_engine(src, threads, depth, chunk);
  }
  if (backend == "uring") throw std::runtime_error("io_uring was asked for but is unavailable: " + why);
  return make_posix_engine(src, threads, chunk);
}

}  // namespace ts
