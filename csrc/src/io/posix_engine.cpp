// Fallback engine: a few threads issue pread (or memcpy for memory sources) on fixed-size chunks.
#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <thread>

#include "tensorstream/errors.hpp"
#include "tensorstream/io/engine.hpp"
#include "tensorstream/runtime.hpp"

namespace ts {

namespace {

class PosixEngine final : public ReadEngine {
 public:
  PosixEngine(const Source& src, unsigned threads, size_t chunk) : src_(src), threads_(threads), chunk_(chunk) {}
  const char* name() const override { return src_.locate(0).part->fd() >= 0 ? "posix" : "memory"; }

  void run(const std::vector<ReadOp>& ops, const ChunkDone& done) override {
    std::vector<Piece> pieces = cut_pieces(ops, chunk_);
    std::atomic<size_t> next{0};
    std::atomic<bool> failed{false};
    std::exception_ptr error;
    std::mutex error_mu;
    auto worker = [&](size_t) {
      for (;;) {
        size_t i = next.fetch_add(1);
        if (i >= pieces.size() || failed.load(std::memory_order_relaxed)) return;
        try {
          if (cancel_requested()) throw Cancelled("read cancelled");
          read_piece(pieces[i]);
          done(pieces[i]);
        } catch (...) {
          std::lock_guard<std::mutex> lock(error_mu);
          if (!error) error = std::current_exception();
          failed = true;
        }
      }
    };
    size_t n = pieces.size() < threads_ ? pieces.size() : threads_;
    run_on_workers(n, worker);
    if (error) std::rethrow_exception(error);
  }

 private:
  void read_piece(const Piece& p) const {
    const Source::Located at = src_.locate(p.offset);  // a piece lies within one part
    const Source& part = *at.part;
    if (const uint8_t* mem = part.memory()) {
      if (at.offset > part.size() || p.length > part.size() - at.offset)
        throw ReadFailure(p.op, 0, "buffer ends before the data");
      std::memcpy(p.dst, mem + at.offset, p.length);
      return;
    }
    size_t got;
    try {
      got = pread_full(part.fd(), p.dst, p.length, at.offset, part.name());
    } catch (const IoError& e) {
      throw ReadFailure(p.op, e.code(), e.what());
    }
    if (got != p.length)
      throw ReadFailure(p.op, 0, "file ended at byte " + std::to_string(at.offset + got) +
                                     (at.part != &src_ ? " of " + part.name() : std::string()));
  }

  const Source& src_;
  unsigned threads_;
  size_t chunk_;
};

}  // namespace

std::unique_ptr<ReadEngine> make_posix_engine(const Source& src, unsigned threads, size_t chunk) {
  return std::make_unique<PosixEngine>(src, threads ? threads : 1, chunk);
}

}  // namespace ts
