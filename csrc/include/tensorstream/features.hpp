// What this build and this machine support, for tensorstream.features().
#pragma once
#include <string>

namespace ts {

struct Features {
  std::string version;
  bool io_uring = false;
  std::string io_uring_error;
  std::string default_backend;
  unsigned hardware_threads = 0;
};

Features features();

}  // namespace ts

#ifndef TENSORSTREAM_VERSION
#define TENSORSTREAM_VERSION "0.1.0"
#endif
