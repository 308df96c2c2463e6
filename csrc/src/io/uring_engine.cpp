// io_uring engine: one ring, a bounded number of chunk reads in flight, straight into destinations.
// Reads are flagged IOSQE_ASYNC so the kernel's workers copy from the page cache on several cores
// while this thread keeps the queue full.
#include <liburing.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include "tensorstream/errors.hpp"
#include "tensorstream/io/engine.hpp"

namespace ts {

namespace {

class Ring {
 public:
  explicit Ring(unsigned depth) {
    int rc = io_uring_queue_init(depth, &ring_, 0);
    if (rc < 0) throw IoError(-rc, "io_uring_queue_init failed", "");
  }
  ~Ring() { io_uring_queue_exit(&ring_); }
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;
  io_uring* get() { return &ring_; }

 private:
  io_uring ring_;
};

bool async_flag_wanted() {
  const char* v = std::getenv("TENSORSTREAM_URING_ASYNC");
  return !(v && std::strcmp(v, "0") == 0);
}

class UringEngine final : public ReadEngine {
 public:
  UringEngine(const Source& src, unsigned depth, size_t chunk)
      : src_(src), depth_(depth), chunk_(chunk), ring_(depth), async_(async_flag_wanted()) {}
  const char* name() const override { return "io_uring"; }

  void run(const std::vector<ReadOp>& ops, const ChunkDone& done) override {
    const std::vector<Piece> pieces = cut_pieces(ops, chunk_);
    std::vector<Piece> left(pieces);  // what each piece still has to read (short reads shrink it)
    io_uring* ring = ring_.get();
    size_t next = 0, in_flight = 0;
    bool failed = false;
    int fail_err = 0;
    size_t fail_op = 0;
    std::string fail_what;
    auto fail = [&](size_t op, int err, std::string what) {
      if (failed) return;
      failed = true;
      fail_op = op;
      fail_err = err;
      fail_what = std::move(what);
    };
    auto queue = [&](size_t i) {
      io_uring_sqe* sqe = io_uring_get_sqe(ring);
      if (!sqe) {  // queue full of unsubmitted entries: hand them to the kernel first
        io_uring_submit(ring);
        sqe = io_uring_get_sqe(ring);
      }
      const Piece& p = left[i];
      io_uring_prep_read(sqe, src_.fd(), p.dst, static_cast<unsigned>(p.length), p.offset);
      if (async_) sqe->flags |= IOSQE_ASYNC;
      io_uring_sqe_set_data64(sqe, i);
      ++in_flight;
    };

    while (in_flight > 0 || (!failed && next < pieces.size())) {
      while (!failed && next < pieces.size() && in_flight < depth_) queue(next++);
      // Also submits entries queued after a failure (requeued short reads), so none is left behind.
      int rc = io_uring_submit_and_wait(ring, 1);
      if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
        fail(0, -rc, std::string("io_uring submit failed: ") + std::strerror(-rc));
        io_uring_cqe* first;
        int wrc = io_uring_wait_cqe(ring, &first);
        if (wrc < 0 && wrc != -EINTR) break;  // the ring itself is broken; nothing more will arrive
      }
      io_uring_cqe* cqe;
      unsigned head, seen = 0;
      io_uring_for_each_cqe(ring, head, cqe) {
        ++seen;
        --in_flight;
        const size_t i = static_cast<size_t>(io_uring_cqe_get_data64(cqe));
        const int res = cqe->res;
        Piece& p = left[i];
        if (res == -EINTR || res == -EAGAIN) {
          if (!failed) queue(i);
        } else if (res < 0) {
          fail(p.op, -res, std::string("read failed: ") + std::strerror(-res));
        } else if (res == 0) {
          fail(p.op, 0, "file ended at byte " + std::to_string(p.offset));
        } else if (static_cast<uint64_t>(res) < p.length) {
          p.offset += res;
          p.dst += res;
          p.length -= res;
          if (!failed) queue(i);
        } else if (!failed) {
          done(pieces[i].op, pieces[i].length);
        }
      }
      io_uring_cq_advance(ring, seen);
    }
    if (failed) throw ReadFailure(fail_op, fail_err, fail_what);
  }

 private:
  const Source& src_;
  unsigned depth_;
  size_t chunk_;
  Ring ring_;
  bool async_;
};

}  // namespace

std::unique_ptr<ReadEngine> make_uring_engine(const Source& src, unsigned depth, size_t chunk) {
  return std::make_unique<UringEngine>(src, depth, chunk);
}

bool uring_available(std::string* why) {
  static int state = -1;  // -1 unknown, 0 no, 1 yes
  static std::string reason;
  if (state < 0) {
    io_uring ring;
    int rc = io_uring_queue_init(4, &ring, 0);
    if (rc < 0) {
      state = 0;
      reason = std::string("io_uring_queue_init: ") + std::strerror(-rc);
    } else {
      io_uring_queue_exit(&ring);
      state = 1;
    }
  }
  if (why) *why = reason;
  return state == 1;
}

}  // namespace ts
