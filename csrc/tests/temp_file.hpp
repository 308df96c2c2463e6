// A temporary file holding given bytes, for tests that read real files.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "check.hpp"

// The path of a new file under /tmp holding `data`; the caller unlinks it.
inline std::string temp_file(const std::vector<uint8_t>& data) {
  char path[] = "/tmp/tensorstream-test-XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0);
  CHECK(write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size()));
  close(fd);
  return path;
}
