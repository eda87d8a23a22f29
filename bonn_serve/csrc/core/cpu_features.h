// Run-time CPU feature detection (CPUID on x86, always-on NEON on aarch64). One place, asked once.
#pragma once

namespace bonn {

struct CpuFeatures {
  bool popcnt = false;           // x86 POPCNT
  bool avx2 = false;             // x86 AVX2 (OS-enabled ymm state)
  bool avx512_vpopcntdq = false; // x86 AVX-512 F+BW+VL+DQ+VPOPCNTDQ (OS-enabled zmm state)
  bool neon = false;             // aarch64 Advanced SIMD
};

// Cached after the first call; thread-safe.
const CpuFeatures& cpu_features();

}  // namespace bonn
