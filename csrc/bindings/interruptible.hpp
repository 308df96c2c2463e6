// Blocking core calls that Ctrl-C can stop: the main thread keeps running Python's signal
// handlers while the call runs in a helper thread.
#pragma once
#include <pybind11/pybind11.h>

#include "nogil.hpp"
#include "tensorstream/io/source.hpp"

#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>
#include <utility>

namespace tsb {

// How often the main thread looks for signals while it waits.
constexpr std::chrono::milliseconds kSignalPoll{20};

// Whether this is Python's main thread, the only one that runs signal handlers. Needs the GIL.
inline bool on_main_thread() {
  pybind11::module_ threading = pybind11::module_::import("threading");
  return threading.attr("main_thread")().is(threading.attr("current_thread")());
}

// Whether a read from `s` may wait on something outside this machine (the network), so that
// Ctrl-C must be able to stop it; files and memory answer at once.
inline bool may_wait(const ts::Source& s) {
  const ts::Source& part = *s.locate(0).part;  // the parts of a ShardSource are of one kind
  return part.fd() < 0 && part.memory() == nullptr;
}

// Returns `work()`, run with the GIL released. On the main thread the work runs in a helper
// thread while this one checks for signals every kSignalPoll; when a handler raises (Ctrl-C's
// KeyboardInterrupt), `stop()` is called, the helper is joined (the work must then end quickly)
// and the handler's exception is raised. Elsewhere, or when the system refuses the helper thread,
// the work runs in the calling thread.
template <typename Work, typename Stop>
auto call_interruptible(Work&& work, Stop&& stop) -> decltype(work()) {
  if (!on_main_thread()) return call_without_gil(std::forward<Work>(work));
  std::mutex mu;
  std::condition_variable cv;
  bool done = false, interrupted = false;
  std::optional<decltype(work())> result;
  std::exception_ptr error;
  {
    release_gil nogil;
    auto run = [&] {
      try {
        result.emplace(work());
      } catch (...) {
        error = std::current_exception();
      }
      std::lock_guard<std::mutex> lock(mu);
      done = true;
      cv.notify_all();
    };
    std::thread helper;
    try {
      helper = std::thread(run);
    } catch (const std::system_error&) {  // no thread to be had (a thread limit): run it here
      run();
    }
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu);
        if (cv.wait_for(lock, kSignalPoll, [&] { return done; })) break;
      }
      if (interrupted) continue;
      pybind11::gil_scoped_acquire gil;
      if (PyErr_CheckSignals() != 0) {  // the handler's exception stays set for this thread
        interrupted = true;
        stop();
      }
    }
    if (helper.joinable()) helper.join();
  }
  if (interrupted) throw pybind11::error_already_set();
  if (error) std::rethrow_exception(error);
  return std::move(*result);
}

}  // namespace tsb
