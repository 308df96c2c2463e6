#include "check.hpp"

int main() {
  int ran = 0;
  for (auto& c : tst::cases()) {
    int before = tst::failures();
    try {
      c.fn();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s: unexpected exception: %s\n", c.name, e.what());
      ++tst::failures();
    }
    std::printf("%s %s\n", tst::failures() == before ? "ok  " : "FAIL", c.name);
    ++ran;
  }
  std::printf("%d passed, %d failed\n", ran - tst::failures(), tst::failures());
  return tst::failures() ? 1 : 0;
}
