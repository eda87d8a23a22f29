// Internal bit-packing helpers shared by the kernels (not part of the graph executor's contract).
#pragma once
#include <cstdint>

namespace bonn {

inline int words_for(int channels) { return (channels + 63) / 64; }

// Scalar popcount: the hardware instruction where the target has one, else a SWAR count (x86-64 baseline has no
// POPCNT, and libgcc's fallback is an out-of-line call). `static`: its body differs between translation units
// compiled with and without -mpopcnt, so each keeps its own copy (one shared inline symbol would break the ODR
// and could hand the POPCNT version to the portable path).
static inline int popcount64(uint64_t x) {
#if defined(__POPCNT__) || defined(__aarch64__)
  return __builtin_popcountll(x);
#else
  x = x - ((x >> 1) & 0x5555555555555555ULL);
  x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
  x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
  return static_cast<int>((x * 0x0101010101010101ULL) >> 56);
#endif
}

// pack_bn_sign over pixels [p0, p1) of x [npix, C]; one variant per instruction set.
using PackRowsFn = void (*)(const float* x, int64_t p0, int64_t p1, int C, const float* scale, const float* shift,
                            uint64_t* out);
void pack_bn_sign_rows_portable(const float* x, int64_t p0, int64_t p1, int C, const float* scale,
                                const float* shift, uint64_t* out);
#if defined(__x86_64__)
void pack_bn_sign_rows_avx2(const float* x, int64_t p0, int64_t p1, int C, const float* scale, const float* shift,
                            uint64_t* out);
void pack_bn_sign_rows_avx512(const float* x, int64_t p0, int64_t p1, int C, const float* scale,
                              const float* shift, uint64_t* out);
#endif

}  // namespace bonn
