#include "bindings.hpp"

PYBIND11_MODULE(_core, m) {
  m.doc() = "tensorstream's C++ core: .tensors parsing and writing, io_uring/pread read engines, HTTP(S) and S3";
  tsb::register_errors(m);
  tsb::register_format(m);
  tsb::register_io(m);
  tsb::register_net(m);
  tsb::register_device(m);
  tsb::register_crypto(m);
  tsb::register_digests(m);
  tsb::register_settings(m);
}
