// Releasing the GIL around blocking core calls, safely for daemon threads at exit.
//
// A thread that takes the GIL back while the interpreter is finalising is ended by Python with
// pthread_exit, a forced unwind; when it runs inside a destructor (pybind11's gil_scoped_release)
// the unwind crosses a noexcept frame and aborts the process. release_gil instead leaves such a
// thread waiting for the process to end, and call_without_gil takes the GIL back outside any
// destructor, where the unwind is harmless.
#pragma once
#include <pybind11/pybind11.h>

#include <exception>
#include <optional>
#include <thread>
#include <utility>

namespace tsb {

inline bool interpreter_finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing() != 0;
#else
  return _Py_IsFinalizing() != 0;
#endif
}

// Never returns: a daemon thread whose interpreter is gone waits here for the process to end.
[[noreturn]] inline void wait_for_exit() {
  for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
}

class release_gil {
 public:
  release_gil() : state_(PyEval_SaveThread()) {}
  ~release_gil() {
    if (interpreter_finalizing()) wait_for_exit();
    PyEval_RestoreThread(state_);
  }
  release_gil(const release_gil&) = delete;
  release_gil& operator=(const release_gil&) = delete;

 private:
  PyThreadState* state_;
};

// Returns `work()`, run with the GIL released.
template <typename Work>
auto call_without_gil(Work&& work) -> decltype(work()) {
  std::optional<decltype(work())> result;
  std::exception_ptr error;
  PyThreadState* state = PyEval_SaveThread();
  try {
    result.emplace(work());
  } catch (...) {
    error = std::current_exception();
  }
  if (interpreter_finalizing()) wait_for_exit();
  PyEval_RestoreThread(state);
  if (error) std::rethrow_exception(error);
  return std::move(*result);
}

}  // namespace tsb
