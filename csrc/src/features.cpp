#include "tensorstream/features.hpp"

#include <stdexcept>

#include "tensorstream/io/engine.hpp"
#include "tensorstream/settings.hpp"

namespace ts {

#ifndef TENSORSTREAM_WITH_URING
bool uring_available(std::string* why) {
  if (why) *why = "built without io_uring support";
  return false;
}
std::unique_ptr<ReadEngine> make_uring_engine(const Source&, unsigned, unsigned, size_t, bool) {
  throw std::runtime_error("built without io_uring support");
}
#endif

Features features() {
  Features f;
  f.version = TENSORSTREAM_VERSION;
  f.io_uring = uring_available(&f.io_uring_error);
  const std::string mode = settings().io_backend;
  f.default_backend = (mode == "posix" || !f.io_uring) ? "posix" : "io_uring";
  f.hardware_threads = default_threads();
  return f;
}

}  // namespace ts
