// io_uring engine: one ring per worker thread, each keeping a bounded number of chunk reads in
// flight, straight into the destinations. Workers take chunks from a shared counter, so work is
// balanced whatever the tensor sizes.
//
// Each worker first copies whatever the page cache already holds with preadv2(RWF_NOWAIT), in its
// own thread (one worker per core, so every core copies, and each destination page is faulted in
// just before it is filled); only the part that must wait for the device is queued on the ring,
// where up to `depth` reads per worker stay in flight. TENSORSTREAM_URING_ASYNC=1 queues every
// read on the ring with IOSQE_ASYNC instead (for comparison).
#include <liburing.h>
#include <pthread.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>

#include "tensorstream/errors.hpp"
#include "tensorstream/io/engine.hpp"
#include "tensorstream/runtime.hpp"

namespace ts {

namespace {

constexpr uint64_t kMaxSqeBytes = uint64_t{1} << 30;

class Ring {
 public:
  explicit Ring(unsigned depth) : depth_(depth) {
    int rc = io_uring_queue_init(depth, &ring_, 0);
    if (rc < 0) throw IoError(-rc, "io_uring_queue_init failed", "");
    count_ring_made();
  }
  ~Ring() {
    io_uring_queue_exit(&ring_);
    count_ring_gone();
  }
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;
  io_uring* get() { return &ring_; }
  // Whether this thread may use it for `depth` reads: made for that depth, in this process (a
  // child of fork() shares the parent's ring memory, so it makes its own).
  bool fits(unsigned depth) const { return depth_ == depth && pid_ == ::getpid(); }
  unsigned depth() const { return depth_; }

 private:
  io_uring ring_;
  unsigned depth_;
  pid_t pid_ = ::getpid();
};

// Rings kept for the process: a worker borrows one for a run and gives it back, so rings are set
// up once (as many as run at once), not per load, whichever thread (a runtime worker, or a
// caller's thread) runs. A child of fork() drops the parent's rings and makes its own.
class RingPool {
 public:
  static RingPool& get() {
    static RingPool* pool = [] {
      auto* made = new RingPool;  // never destroyed: loads may run while the process exits
      pthread_atfork(nullptr, nullptr, [] { get().mu_ = new (get().mu_) std::mutex; });
      return made;
    }();
    return *pool;
  }

  std::unique_ptr<Ring> take(unsigned depth) {
    {
      std::lock_guard<std::mutex> lock(*mu_);
      for (auto it = free_.begin(); it != free_.end(); ++it) {
        if (!(*it)->fits(depth)) continue;
        std::unique_ptr<Ring> ring = std::move(*it);
        free_.erase(it);
        return ring;
      }
    }
    return std::make_unique<Ring>(depth);
  }

  void give_back(std::unique_ptr<Ring> ring) {
    std::lock_guard<std::mutex> lock(*mu_);
    free_.erase(std::remove_if(free_.begin(), free_.end(), [](const auto& r) { return !r->fits(r->depth()); }),
                free_.end());
    free_.push_back(std::move(ring));
  }

 private:
  std::mutex* mu_ = new std::mutex;
  std::vector<std::unique_ptr<Ring>> free_;
};

// State shared by the workers of one run.
struct Shared {
  const std::vector<Piece>& pieces;
  const ChunkDone& done;
  const ReadEngine& engine;  // its cancel token
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::atomic<uint64_t> queued{0};
  std::mutex mu;
  std::exception_ptr error;

  void fail(std::exception_ptr e) {
    std::lock_guard<std::mutex> lock(mu);
    if (!error) error = e;
    failed = true;
  }
  // Whether to stop starting reads; a cancellation becomes the run's error.
  bool stopping() {
    if (failed.load(std::memory_order_relaxed)) return true;
    if (!engine.cancel_requested()) return false;
    fail(std::make_exception_ptr(Cancelled("read cancelled")));
    return true;
  }
};

class Worker {
 public:
  Worker(Shared& s, const Source& src, unsigned depth, bool async)
      : s_(s), src_(src), depth_(depth), async_(async), owned_(RingPool::get().take(depth)), ring_(*owned_),
        left_(depth), slot_fd_(depth), slot_piece_(depth) {
    for (unsigned i = 0; i < depth; ++i) free_.push_back(i);
  }
  // The ring goes back for the next run, unless it broke or was left with reads in flight.
  ~Worker() {
    if (in_flight_ == 0 && !broken_) RingPool::get().give_back(std::move(owned_));
  }

  // Keeps up to `depth` pieces in flight until none are left, a worker failed or the run was
  // cancelled; never returns with a read still in flight (reads on regular files cannot be
  // recalled, so a cancelled worker waits for at most `depth` chunks).
  void run() {
    for (;;) {
      while (!free_.empty() && !s_.stopping()) {
        size_t i = s_.next.fetch_add(1);
        if (i >= s_.pieces.size()) break;
        unsigned slot = free_.back();
        free_.pop_back();
        slot_piece_[slot] = i;
        left_[slot] = s_.pieces[i];
        const Source::Located at = src_.locate(left_[slot].offset);  // a piece lies within one part
        left_[slot].offset = at.offset;
        slot_fd_[slot] = at.part->fd();
        if (!async_ && copy_cached(left_[slot], slot_fd_[slot])) {
          free_.push_back(slot);
          finish(i);
          continue;
        }
        s_.queued += left_[slot].length;
        queue(slot);
      }
      if (in_flight_ == 0) return;
      reap();
    }
  }

 private:
  // Copies what the page cache already holds, in this thread (RWF_NOWAIT never waits for the
  // device); true when the whole piece was copied. What is left goes to the ring.
  bool copy_cached(Piece& p, int fd) {
    while (p.length > 0) {
      iovec iov{p.dst, static_cast<size_t>(std::min<uint64_t>(p.length, 1u << 30))};
      ssize_t n = ::preadv2(fd, &iov, 1, static_cast<off_t>(p.offset), RWF_NOWAIT);
      if (n <= 0) return false;  // not cached (EAGAIN), unsupported, or end of file: the ring decides
      p.offset += static_cast<uint64_t>(n);
      p.dst += n;
      p.length -= static_cast<uint64_t>(n);
    }
    return true;
  }

  void finish(size_t i) {
    try {
      s_.done(s_.pieces[i]);
    } catch (...) {
      s_.fail(std::current_exception());
    }
  }

  void queue(unsigned slot) {
    io_uring_sqe* sqe = io_uring_get_sqe(ring_.get());
    if (!sqe) {  // cannot happen with one SQE per slot, but never write past the queue
      io_uring_submit(ring_.get());
      sqe = io_uring_get_sqe(ring_.get());
    }
    const Piece& p = left_[slot];
    // One SQE reads at most 1 GiB (its length is 32 bits): a longer piece completes short and
    // is queued again for the rest, as any short read is.
    const auto len = static_cast<unsigned>(std::min<uint64_t>(p.length, kMaxSqeBytes));
    io_uring_prep_read(sqe, slot_fd_[slot], p.dst, len, p.offset);
    if (async_) sqe->flags |= IOSQE_ASYNC;
    io_uring_sqe_set_data64(sqe, slot);
    ++in_flight_;
  }

  void reap() {
    io_uring* ring = ring_.get();
    int rc = io_uring_submit_and_wait(ring, 1);
    if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
      s_.fail(std::make_exception_ptr(IoError(-rc, "io_uring submit failed", "")));
      io_uring_cqe* first;
      if (io_uring_wait_cqe(ring, &first) < 0) {
        in_flight_ = 0;  // the ring itself is broken: nothing more will arrive
        broken_ = true;
        return;
      }
    }
    io_uring_cqe* cqe;
    unsigned head, seen = 0;
    io_uring_for_each_cqe(ring, head, cqe) {
      ++seen;
      --in_flight_;
      complete(static_cast<unsigned>(io_uring_cqe_get_data64(cqe)), cqe->res);
    }
    io_uring_cq_advance(ring, seen);
  }

  void complete(unsigned slot, int res) {
    Piece& p = left_[slot];
    const size_t i = slot_piece_[slot];
    const bool stop = s_.stopping();
    if (res == -EINTR || res == -EAGAIN) {
      if (!stop) return queue(slot);
    } else if (res < 0) {
      s_.fail(std::make_exception_ptr(
          ReadFailure(p.op, -res, std::string("read failed: ") + std::strerror(-res))));
    } else if (res == 0) {
      s_.fail(std::make_exception_ptr(ReadFailure(p.op, 0, "file ended at byte " + std::to_string(p.offset))));
    } else if (static_cast<uint64_t>(res) < p.length) {
      p.offset += res;
      p.dst += res;
      p.length -= res;
      if (!stop) return queue(slot);
    } else if (!stop) {
      finish(i);
    }
    free_.push_back(slot);
  }

  Shared& s_;
  const Source& src_;
  unsigned depth_;
  bool async_;
  std::unique_ptr<Ring> owned_;
  Ring& ring_;
  bool broken_ = false;
  std::vector<Piece> left_;         // what each slot's piece still has to read (offset in its part)
  std::vector<int> slot_fd_;        // the file each slot reads
  std::vector<size_t> slot_piece_;  // which piece each slot holds
  std::vector<unsigned> free_;
  size_t in_flight_ = 0;
};

class UringEngine final : public ReadEngine {
 public:
  UringEngine(const Source& src, unsigned threads, unsigned depth, size_t chunk, bool async)
      : src_(src), threads_(threads), depth_(depth), chunk_(chunk), async_(async) {}
  const char* name() const override { return "io_uring"; }

  void run(const std::vector<ReadOp>& ops, const ChunkDone& done) override {
    const std::vector<Piece> pieces = cut_pieces(ops, chunk_);
    Shared shared{pieces, done, *this, {}, {}, {}, {}, {}};
    auto work = [&](size_t) {
      try {
        Worker(shared, src_, depth_, async_).run();
      } catch (...) {
        shared.fail(std::current_exception());
      }
    };
    size_t n = std::min<size_t>(threads_, pieces.size());
    run_on_workers(n, work);
    queued_ = shared.queued;
    if (shared.error) std::rethrow_exception(shared.error);
  }
  uint64_t queued_bytes() const override { return queued_; }

 private:
  const Source& src_;
  unsigned threads_, depth_;
  size_t chunk_;
  bool async_;
  uint64_t queued_ = 0;
};

}  // namespace

std::unique_ptr<ReadEngine> make_uring_engine(const Source& src, unsigned threads, unsigned depth, size_t chunk,
                                              bool async) {
  return std::make_unique<UringEngine>(src, threads ? threads : 1, depth ? depth : 1, chunk, async);
}

bool uring_available(std::string* why) {
  static std::once_flag once;
  static bool ok = false;
  static std::string reason;
  std::call_once(once, [] {
    io_uring ring;
    int rc = io_uring_queue_init(4, &ring, 0);
    if (rc < 0) {
      reason = std::string("io_uring_queue_init: ") + std::strerror(-rc);
    } else {
      io_uring_queue_exit(&ring);
      ok = true;
    }
  });
  if (why) *why = reason;
  return ok;
}

}  // namespace ts
