// Stopping a running load from another thread.
#pragma once
#include <atomic>

#include "tensorstream/errors.hpp"

namespace ts {

// Checked by the read engines before each chunk and after each completion, and by the hashing
// and decryption in their workers. `cancel()` stops the running load and every later one (a
// loader being closed); `interrupt()` stops the running one only, until `resume()` (Ctrl-C on a
// loader that stays usable). Both may be called from any thread.
class CancelToken {
 public:
  void cancel() noexcept { cancelled_.store(true, std::memory_order_release); }
  void interrupt() noexcept { interrupted_.store(true, std::memory_order_release); }
  void resume() noexcept { interrupted_.store(false, std::memory_order_release); }
  bool cancelled() const noexcept { return cancelled_.load(std::memory_order_acquire); }
  bool requested() const noexcept {
    return cancelled_.load(std::memory_order_relaxed) || interrupted_.load(std::memory_order_relaxed);
  }
  // Throws Cancelled when a stop was asked for.
  void check() const {
    if (requested()) throw Cancelled("cancelled");
  }

 private:
  std::atomic<bool> cancelled_{false}, interrupted_{false};
};

}  // namespace ts
