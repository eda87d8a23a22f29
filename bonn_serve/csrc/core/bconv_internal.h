// Internal: one conv implementation per popcount path, built by a factory in that path's own file.
#pragma once
#include <cstdint>
#include <memory>

#include "bconv.h"

namespace bonn {

class ConvKernel {
 public:
  virtual ~ConvKernel() = default;
  // Shapes and pointers are validated by BinaryConv2d::run before this is called.
  virtual void run(const uint64_t* in, const ConvShape& s, const OutputTransform& ot, ThreadPool& pool) const = 0;
};

using ConvKernelFactory = std::unique_ptr<ConvKernel> (*)(const uint64_t* weight_bits, int Co, int K, int Ci,
                                                          int stride, int pad);

std::unique_ptr<ConvKernel> make_conv_kernel_portable(const uint64_t* w, int Co, int K, int Ci, int stride, int pad);
#if defined(__x86_64__)
std::unique_ptr<ConvKernel> make_conv_kernel_avx2(const uint64_t* w, int Co, int K, int Ci, int stride, int pad);
std::unique_ptr<ConvKernel> make_conv_kernel_avx512(const uint64_t* w, int Co, int K, int Ci, int stride, int pad);
#endif
#if defined(__aarch64__)
std::unique_ptr<ConvKernel> make_conv_kernel_neon(const uint64_t* w, int Co, int K, int Ci, int stride, int pad);
#endif

}  // namespace bonn
