// Read engines: execute a list of reads into caller memory with bounded chunks in flight.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "tensorstream/cancel.hpp"
#include "tensorstream/io/source.hpp"

namespace ts {

struct ReadOp {
  uint64_t offset = 0;
  uint64_t length = 0;
  uint8_t* dst = nullptr;
};

// One chunk of an op, as engines cut them.
struct Piece {
  size_t op;
  uint64_t offset;  // in the source
  uint64_t length;
  uint8_t* dst;     // ops[op].dst + (offset - ops[op].offset)
};

// Called once per finished chunk, with the chunk as it was cut, from several worker threads at
// once: it must be thread-safe. An exception it throws fails the run like a read error.
using ChunkDone = std::function<void(const Piece& piece)>;

// A read that failed: which op, and why. The loader names the tensor.
class ReadFailure : public std::runtime_error {
 public:
  ReadFailure(size_t op, int err, const std::string& what) : std::runtime_error(what), op_(op), err_(err) {}
  size_t op() const { return op_; }
  int err() const { return err_; }  // 0: the source ended early

 private:
  size_t op_;
  int err_;
};

struct EngineOptions {
  std::string backend = "auto";  // auto | uring | posix
  unsigned threads = 0;          // 0: default_threads() (read workers, hashing)
  size_t chunk_bytes = 0;        // 0: TENSORSTREAM_CHUNK_MB
  unsigned queue_depth = 0;      // 0: TENSORSTREAM_QUEUE_DEPTH; reads in flight per io_uring worker
};

class ReadEngine {
 public:
  virtual ~ReadEngine() = default;
  virtual const char* name() const = 0;
  // Reads every op whole. On failure it lets reads already in flight finish, then throws
  // ReadFailure (or IoError); it never returns while a read may still write to a destination.
  // Once the cancel token asks, it starts no more reads, waits for (or stops) those in flight
  // and throws Cancelled.
  virtual void run(const std::vector<ReadOp>& ops, const ChunkDone& done) = 0;
  // Bytes the last run read through an asynchronous queue rather than copying inline.
  virtual uint64_t queued_bytes() const { return 0; }
  // Whether each run costs round trips to a server (worth fewer, larger runs).
  virtual bool remote() const { return false; }
  // The token that stops runs early (null: none); it must outlive every later run.
  void set_cancel(const CancelToken* token) { cancel_ = token; }
  bool cancel_requested() const { return cancel_ && cancel_->requested(); }

 private:
  const CancelToken* cancel_ = nullptr;
};

std::unique_ptr<ReadEngine> make_engine(const Source& src, const EngineOptions& opts);

// Whether io_uring can be set up here, and if not, why.
bool uring_available(std::string* why);
// Read workers: TENSORSTREAM_THREADS, else one per hardware thread (at most 32).
unsigned default_threads();

std::vector<Piece> cut_pieces(const std::vector<ReadOp>& ops, size_t chunk_bytes);

// Engines, built by make_engine.
std::unique_ptr<ReadEngine> make_posix_engine(const Source& src, unsigned threads, size_t chunk_bytes);
std::unique_ptr<ReadEngine> make_uring_engine(const Source& src, unsigned threads, unsigned depth,
                                              size_t chunk_bytes, bool async_reads = false);

}  // namespace ts
