// Shared by the libFuzzer targets: an invariant check that stops the run (libFuzzer keeps the
// input), and the key and passphrase the seed files are encrypted with (make_seeds.py).
#pragma once
#include <cstdio>
#include <cstdlib>

#define FUZZ_CHECK(cond)                                                              \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      std::fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                   \
    }                                                                                 \
  } while (0)

namespace fuzz {
inline constexpr char kKey[] = "tensorstream-fuzz-key-0123456789";  // 32 bytes
inline constexpr char kPassphrase[] = "tensorstream fuzz passphrase";
static_assert(sizeof kKey == 33, "the key is 32 bytes");
}  // namespace fuzz
