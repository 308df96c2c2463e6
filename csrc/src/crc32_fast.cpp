// CRC32 (zlib's polynomial, reflected) with carry-less multiplication: the data is folded 64 bytes
// at a time into four 128-bit accumulators, which are then folded into one; the last 16 bytes and
// the tail are finished by zlib. About ten times zlib's table-driven speed where PCLMULQDQ exists.
#include <zlib.h>

#include <cstdint>
#include <cstring>

#include "tensorstream/hash.hpp"

#if defined(__x86_64__)
#include <immintrin.h>

namespace ts {

namespace {

// x^(512+64) and x^512 (folding 64 bytes), x^(128+64) and x^128 (folding 16 bytes), mod P, bit-reflected.
constexpr uint64_t kFold4Lo = 0x154442bd4, kFold4Hi = 0x1c6e41596;
constexpr uint64_t kFold1Lo = 0x1751997d0, kFold1Hi = 0x0ccaa009e;

__attribute__((target("pclmul,sse4.1"))) inline __m128i fold(__m128i x, __m128i k, __m128i data) {
  return _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11)), data);
}

__attribute__((target("pclmul,sse4.1"))) uint32_t crc32_clmul(uint32_t crc, const uint8_t* p, size_t n) {
  auto load = [](const uint8_t* q) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(q)); };
  __m128i x0 = _mm_xor_si128(load(p), _mm_cvtsi32_si128(static_cast<int>(~crc)));
  __m128i x1 = load(p + 16), x2 = load(p + 32), x3 = load(p + 48);
  p += 64;
  n -= 64;
  const __m128i k4 = _mm_set_epi64x(static_cast<long long>(kFold4Hi), static_cast<long long>(kFold4Lo));
  while (n >= 64) {
    x0 = fold(x0, k4, load(p));
    x1 = fold(x1, k4, load(p + 16));
    x2 = fold(x2, k4, load(p + 32));
    x3 = fold(x3, k4, load(p + 48));
    p += 64;
    n -= 64;
  }
  const __m128i k1 = _mm_set_epi64x(static_cast<long long>(kFold1Hi), static_cast<long long>(kFold1Lo));
  x1 = fold(x0, k1, x1);
  x2 = fold(x1, k1, x2);
  x3 = fold(x2, k1, x3);
  while (n >= 16) {
    x3 = fold(x3, k1, load(p));
    p += 16;
    n -= 16;
  }
  // The accumulator now stands for the message so far: its plain CRC (zero start, no final
  // inversion) is what zlib computes when started from all ones.
  uint8_t last[16];
  _mm_storeu_si128(reinterpret_cast<__m128i*>(last), x3);
  uLong c = ::crc32_z(0xffffffffUL, last, 16);
  return static_cast<uint32_t>(::crc32_z(c, p, n));
}

bool have_clmul() {
  static const bool ok = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
  return ok;
}

}  // namespace

uint32_t crc32_update(uint32_t crc, const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  if (n >= 256 && have_clmul()) return crc32_clmul(crc, p, n);
  return static_cast<uint32_t>(::crc32_z(crc, p, n));
}

}  // namespace ts

#else

namespace ts {
uint32_t crc32_update(uint32_t crc, const void* data, size_t n) {
  return static_cast<uint32_t>(::crc32_z(crc, static_cast<const Bytef*>(data), n));
}
}  // namespace ts

#endif
