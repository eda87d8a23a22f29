// Measurement helpers shared by the microbenchmark executable and the Python bindings.
#pragma once
#include "bconv.h"

namespace bonn {

// L1-resident, register-blocked (4 inputs x 4 weight vectors) xor + popcount + add loop on one thread for about
// `seconds`; returns giga binary MACs per second (one bMAC = one bit of one xor-popcount). Throws if the path is
// not supported here.
double popcount_peak_gbmacs(PopcountPath path, double seconds);

// Median seconds of `repeats` runs of one BinaryConv2d layer with random weights and input, the full fused BONN
// epilogue (alpha, PReLU, residual, float output and next-layer packing), on a pool of `threads`.
double bench_bconv(int Ci, int Co, int H, int W, int K, int stride, int batch, int threads, PopcountPath path,
                   int repeats);

// Binary MACs of one such layer (pad = K/2).
double bconv_bmacs(int Ci, int Co, int H, int W, int K, int stride, int batch);

namespace detail {
// One run of the peak loop: `iters` passes over a fixed L1 buffer; returns the bMACs done.
double peak_loop_portable(long iters);
#if defined(__x86_64__)
double peak_loop_avx2(long iters);
double peak_loop_avx512(long iters);
#endif
#if defined(__aarch64__)
double peak_loop_neon(long iters);
#endif
}  // namespace detail

}  // namespace bonn
