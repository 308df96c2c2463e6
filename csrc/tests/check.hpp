// A minimal test harness: CHECK records failures, TEST registers a case.
#pragma once
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace tst {
struct Case {
  const char* name;
  std::function<void()> fn;
};
inline std::vector<Case>& cases() {
  static std::vector<Case> c;
  return c;
}
inline int& failures() {
  static int f = 0;
  return f;
}
struct Reg {
  Reg(const char* n, std::function<void()> f) { cases().push_back({n, std::move(f)}); }
};
}  // namespace tst

#define TS_CAT2(a, b) a##b
#define TS_CAT(a, b) TS_CAT2(a, b)
#define TEST(name)                                        \
  static void name();                                     \
  static tst::Reg TS_CAT(reg_, name)(#name, &name);       \
  static void name()
#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) {                                                           \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++tst::failures();                                                     \
    }                                                                        \
  } while (0)
#define CHECK_THROWS(expr, type)          \
  do {                                    \
    bool caught = false;                  \
    try {                                 \
      expr;                               \
    } catch (const type&) {               \
      caught = true;                      \
    }                                     \
    CHECK(caught && #type);               \
  } while (0)
