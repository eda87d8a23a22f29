// Scalar dense-conv kernel (any CPU; also what aarch64 runs). Reads the original OHWI weights so that,
// per output pixel and channel, the window is one contiguous K*Ci run per kernel row.
#include "fops.h"

namespace bonn {

void fconv_scalar(const FConvTask& t, const float* w_ohwi, const float* bias) {
  const int KC = t.K * t.Ci;  // one kernel row: K taps x Ci channels, contiguous in the padded input row
  const size_t row_stride = size_t(t.Wp) * t.Ci;
  for (int q = t.q0; q < t.q1; ++q) {
    const float* base = t.origin(q);
    float* y = t.out + size_t(q) * t.Co;
    for (int o = t.co0; o < t.co1; ++o) {
      const float* w = w_ohwi + size_t(o) * t.K * KC;
      float acc = bias[o];
      for (int ky = 0; ky < t.K; ++ky) {
        const float* x = base + ky * row_stride;
        const float* wk = w + size_t(ky) * KC;
        for (int j = 0; j < KC; ++j) acc += x[j] * wk[j];
      }
      y[o] = t.relu && acc < 0.f ? 0.f : acc;
    }
  }
}

}  // namespace bonn
