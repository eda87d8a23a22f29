// Tests of the float ops (every ISA vs plain references) and of the graph executor (vs a float re-derivation
// of docs/format.md §2.2, independent of bit packing), plus the builder's own validation.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <new>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "bconv.h"
#include "fops.h"
#include "graph.h"
#include "test_harness.h"

using namespace bonn;

// Counts heap allocations while enabled. Replaces every plain (non-aligned) operator new/delete of this test
// executable with malloc/free, so allocation and release always match (AddressSanitizer checks that).
static std::atomic<bool> g_count_allocs{false};
static std::atomic<long> g_allocs{0};
static void* counted_malloc(std::size_t n) noexcept {
  if (g_count_allocs.load(std::memory_order_relaxed)) g_allocs.fetch_add(1, std::memory_order_relaxed);
  return std::malloc(n ? n : 1);
}
void* operator new(std::size_t n) {
  if (void* p = counted_malloc(n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
  if (void* p = counted_malloc(n)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return counted_malloc(n); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return counted_malloc(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }

namespace {

std::vector<float> randv(size_t n, std::mt19937& rng, float lo = -1.f, float hi = 1.f) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

double max_rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, scale = 1e-30;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, double(std::fabs(a[i] - b[i])));
    scale = std::max(scale, double(std::fabs(b[i])));
  }
  return diff / scale;
}

struct ConvCase {
  int N, H, W, Ci, Co, K, stride, pad;
  bool relu;
};

}  // namespace

TEST_CASE(fconv_matches_reference_on_every_isa) {
  const ConvCase cases[] = {
      {2, 9, 7, 3, 5, 3, 1, 1, true},     // odd channels, batch > 1
      {1, 23, 21, 3, 64, 7, 2, 3, true},  // ResNet stem geometry, odd sizes
      {3, 8, 8, 17, 33, 1, 2, 0, false},  // 1x1 stride-2 shortcut, odd channels
      {1, 10, 13, 64, 130, 3, 2, 1, false},
      {2, 5, 5, 1, 1, 5, 1, 2, false},
      {1, 7, 19, 8, 16, 3, 1, 0, true},  // no padding, ow tails
      {2, 9, 50, 3, 20, 3, 1, 1, true},  // wide map: tasks are whole rows (50 = 8 blocks of 6 + 2)
      {2, 30, 29, 16, 70, 3, 1, 1, false},  // big enough (~17 M MACs) to be split across threads
  };
  std::mt19937 rng(7);
  for (const ConvCase& c : cases) {
    auto x = randv(size_t(c.N) * c.H * c.W * c.Ci, rng);
    auto w = randv(size_t(c.Co) * c.K * c.K * c.Ci, rng);
    auto b = randv(c.Co, rng);
    const int OH = (c.H + 2 * c.pad - c.K) / c.stride + 1, OW = (c.W + 2 * c.pad - c.K) / c.stride + 1;
    std::vector<float> ref(size_t(c.N) * OH * OW * c.Co);
    conv2d_reference(x.data(), c.N, c.H, c.W, c.Ci, w.data(), b.data(), c.Co, c.K, c.stride, c.pad, c.relu, ref.data());
    const int Hp = c.H + 2 * c.pad, Wp = c.W + 2 * c.pad;
    for (int threads : {1, 2}) {
      ThreadPool pool(threads);
      std::vector<float> padded(size_t(c.N) * Hp * Wp * c.Ci, 123.f);
      pad_nhwc(x.data(), c.N, c.H, c.W, c.Ci, c.pad, padded.data(), pool);
      for (FloatIsa isa : supported_float_isas()) {
        FloatConv2d conv(w.data(), b.data(), c.Co, c.K, c.Ci, c.stride, c.pad, c.relu, isa);
        std::vector<float> out(ref.size(), std::nanf(""));
        conv.run_padded(padded.data(), c.N, Hp, Wp, out.data(), pool);
        const double err = max_rel_err(out, ref);
        if (!(err < 1e-5))
          std::printf("  fconv isa=%s Ci=%d Co=%d K=%d s=%d: rel err %g\n", float_isa_name(isa), c.Ci, c.Co, c.K,
                      c.stride, err);
        CHECK(err < 1e-5);
      }
    }
  }
}

TEST_CASE(maxpool_padding_never_wins) {
  std::mt19937 rng(3);
  for (int C : {5, 64, 70})
    for (FloatIsa isa : supported_float_isas()) {
      const int N = 2, H = 7, W = 6, K = 3, S = 2, P = 1;
      auto x = randv(size_t(N) * H * W * C, rng, -5.f, -1.f);  // all negative: a zero pad would win
      const int OH = (H + 2 * P - K) / S + 1, OW = (W + 2 * P - K) / S + 1;
      std::vector<float> out(size_t(N) * OH * OW * C);
      ThreadPool pool(2);
      maxpool_nhwc(x.data(), N, H, W, C, K, S, P, out.data(), pool, isa);
      int bad = 0;
      for (int n = 0; n < N; ++n)
        for (int oh = 0; oh < OH; ++oh)
          for (int ow = 0; ow < OW; ++ow)
            for (int c = 0; c < C; ++c) {
              float m = -std::numeric_limits<float>::infinity();
              for (int ky = 0; ky < K; ++ky)
                for (int kx = 0; kx < K; ++kx) {
                  int y = oh * S + ky - P, xx = ow * S + kx - P;
                  if (y >= 0 && y < H && xx >= 0 && xx < W) m = std::max(m, x[((size_t(n) * H + y) * W + xx) * C + c]);
                }
              bad += out[((size_t(n) * OH + oh) * OW + ow) * C + c] != m;
            }
      CHECK_EQ(bad, 0);
    }
}

TEST_CASE(elementwise_ops_match_reference) {
  std::mt19937 rng(5);
  ThreadPool pool(2);
  const int N = 3, H = 4, W = 5, C = 7, O = 131;  // O: two full 64-output blocks and a tail
  auto x = randv(size_t(N) * C * H * W, rng);
  // NCHW -> NHWC
  std::vector<float> nhwc(x.size());
  nchw_to_nhwc(x.data(), N, C, H, W, nhwc.data(), pool);
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c)
      for (int y = 0; y < H; ++y)
        for (int xx = 0; xx < W; ++xx)
          CHECK_EQ(nhwc[((size_t(n) * H + y) * W + xx) * C + c], x[((size_t(n) * C + c) * H + y) * W + xx]);
  // batchnorm + relu
  auto sc = randv(C, rng), sh = randv(C, rng);
  std::vector<float> bn(x.size());
  batchnorm_nhwc(nhwc.data(), int64_t(N) * H * W, C, sc.data(), sh.data(), true, bn.data(), pool);
  // NEAR, not EQ: the compiler may contract x * scale + shift into one FMA (it does on aarch64).
  for (size_t i = 0; i < bn.size(); ++i) {
    const double want = std::max(double(nhwc[i]) * sc[i % C] + sh[i % C], 0.0);
    CHECK_NEAR(bn[i], want, 1e-6 * (1 + std::fabs(want)));
  }
  // global average pool
  std::vector<float> pooled(size_t(N) * C);
  global_avgpool_nhwc(nhwc.data(), N, H * W, C, pooled.data());
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) {
      double s = 0;
      for (int p = 0; p < H * W; ++p) s += nhwc[(size_t(n) * H * W + p) * C + c];
      CHECK_NEAR(pooled[size_t(n) * C + c], s / (H * W), 1e-6);
    }
  // linear with [I, O] weights
  auto w_oi = randv(size_t(O) * C, rng), b = randv(O, rng);
  std::vector<float> w_io(size_t(C) * O);
  for (int o = 0; o < O; ++o)
    for (int i = 0; i < C; ++i) w_io[size_t(i) * O + o] = w_oi[size_t(o) * C + i];
  for (FloatIsa isa : supported_float_isas()) {
    std::vector<float> y(size_t(N) * O, std::nanf(""));
    linear_io(pooled.data(), N, C, O, w_io.data(), b.data(), y.data(), pool, isa);
    for (int n = 0; n < N; ++n)
      for (int o = 0; o < O; ++o) {
        double s = b[o];
        for (int i = 0; i < C; ++i) s += double(pooled[size_t(n) * C + i]) * w_oi[size_t(o) * C + i];
        CHECK_NEAR(y[size_t(n) * O + o], s, 1e-5);
      }
  }
}

// ------------------------------------------------------------------------------------ graph vs reference
namespace {

// Owns the tensors of a small test graph.
struct GraphBuilder {
  std::vector<std::vector<float>> fbufs;
  std::vector<std::vector<uint64_t>> ubufs;
  GraphArg g;

  TensorArg f(std::vector<float> v, std::vector<int64_t> shape) {
    fbufs.push_back(std::move(v));
    return {"float32", shape, fbufs.back().data(), int64_t(fbufs.back().size() * 4)};
  }
  TensorArg u(std::vector<uint64_t> v, std::vector<int64_t> shape) {
    ubufs.push_back(std::move(v));
    return {"uint64", shape, ubufs.back().data(), int64_t(ubufs.back().size() * 8)};
  }
};

// Packs a +-1 float OHWI weight into OHWI_bits64 (bit = 1 for -1).
std::vector<uint64_t> pack_weights(const std::vector<float>& w, int Co, int K, int Ci) {
  const int words = (Ci + 63) / 64;
  std::vector<uint64_t> bits(size_t(Co) * K * K * words, 0);
  for (size_t t = 0; t < size_t(Co) * K * K; ++t)
    for (int c = 0; c < Ci; ++c)
      if (w[t * Ci + c] < 0) bits[t * words + c / 64] |= uint64_t(1) << (c % 64);
  return bits;
}

// docs/format.md binary_conv2d, computed in plain floats with explicit one-padding.
std::vector<float> binary_block_ref(const std::vector<float>& x, int N, int H, int W, int Ci, const std::vector<float>& sc,
                                    const std::vector<float>& sh, const std::vector<float>& wpm, int Co, int K, int S,
                                    int P, float alpha, const std::vector<float>& prelu, const float* residual) {
  const int OH = (H + 2 * P - K) / S + 1, OW = (W + 2 * P - K) / S + 1;
  std::vector<float> out(size_t(N) * OH * OW * Co);
  for (int n = 0; n < N; ++n)
    for (int oh = 0; oh < OH; ++oh)
      for (int ow = 0; ow < OW; ++ow)
        for (int o = 0; o < Co; ++o) {
          int dot = 0;
          for (int ky = 0; ky < K; ++ky)
            for (int kx = 0; kx < K; ++kx)
              for (int c = 0; c < Ci; ++c) {
                const int y = oh * S + ky - P, xx = ow * S + kx - P;
                float s = 1.f;
                if (y >= 0 && y < H && xx >= 0 && xx < W) {
                  const float t = x[((size_t(n) * H + y) * W + xx) * Ci + c] * sc[c] + sh[c];
                  s = t >= 0 ? 1.f : -1.f;
                }
                dot += int(s * wpm[((size_t(o) * K + ky) * K + kx) * Ci + c]);
              }
          float v = alpha * float(dot);
          if (!prelu.empty()) v = v >= 0 ? v : prelu[o] * v;
          const size_t idx = ((size_t(n) * OH + oh) * OW + ow) * Co + o;
          if (residual) v += residual[idx];
          out[idx] = v;
        }
  return out;
}

OpArg make_op(const std::string& name, const std::string& kind, std::vector<std::string> in, const std::string& out) {
  OpArg op;
  op.name = name;
  op.op = kind;
  op.inputs = std::move(in);
  op.output = out;
  return op;
}

}  // namespace

// stem conv(relu) -> maxpool -> bconv (+ identity residual, fed by packing) -> bconv (fused packing, + residual)
// -> bconv (stride 2, 1x1 shortcut residual) -> batchnorm relu -> avgpool -> linear, against the float reference.
TEST_CASE(graph_matches_float_reference_on_every_path) {
  std::mt19937 rng(11);
  const int N = 2, H = 19, W = 17, C0 = 3, C1 = 70, C2 = 40, O = 9;
  GraphBuilder gb;
  auto pm1 = [&](size_t n) {
    auto v = randv(n, rng);
    for (auto& e : v) e = e < 0 ? -1.f : 1.f;
    return v;
  };
  auto stem_w = randv(size_t(C1) * 3 * 3 * C0, rng), stem_b = randv(C1, rng);
  struct B {
    std::vector<float> sc, sh, w, prelu;
    float alpha;
  };
  auto mk = [&](int ci, int co) {
    B b{randv(ci, rng, -1.5f, 1.5f), randv(ci, rng, -0.3f, 0.3f), pm1(size_t(co) * 9 * ci), randv(co, rng, -0.1f, 0.4f),
        0.07f};
    return b;
  };
  B b1 = mk(C1, C1), b2 = mk(C1, C1), b3 = mk(C1, C2);
  auto sc_w = randv(size_t(C2) * C1, rng), sc_b = randv(C2, rng);
  auto hs = randv(C2, rng), hh = randv(C2, rng), fw = randv(size_t(O) * C2, rng), fb = randv(O, rng);

  GraphArg& g = gb.g;
  g.input = "input";
  g.output = "logits";
  g.in_channels = C0;
  OpArg stem = make_op("stem", "conv2d", {"input"}, "s");
  stem.attrs = {{"kernel", 3}, {"stride", 1}, {"padding", 1}, {"in_channels", C0}, {"out_channels", C1}};
  stem.act = "relu";
  stem.tensors["weight"] = gb.f(stem_w, {C1, 3, 3, C0});
  stem.tensors["bias"] = gb.f(stem_b, {C1});
  OpArg pool = make_op("pool", "maxpool2d", {"s"}, "p");
  pool.attrs = {{"kernel", 3}, {"stride", 2}, {"padding", 1}};
  auto bop = [&](const std::string& name, const B& b, int ci, int co, int stride, std::vector<std::string> in,
                 const std::string& out) {
    OpArg op = make_op(name, "binary_conv2d", std::move(in), out);
    op.attrs = {{"kernel", 3}, {"stride", stride}, {"padding", 1}, {"in_channels", ci}, {"out_channels", co}};
    op.tensors["bn_scale"] = gb.f(b.sc, {ci});
    op.tensors["bn_shift"] = gb.f(b.sh, {ci});
    op.tensors["weight"] = gb.u(pack_weights(b.w, co, 3, ci), {co, 3, 3, (ci + 63) / 64});
    op.tensors["alpha"] = gb.f({b.alpha}, {1});
    op.tensors["prelu"] = gb.f(b.prelu, {co});
    return op;
  };
  OpArg short_op = make_op("short", "conv2d", {"b2"}, "sc");
  short_op.attrs = {{"kernel", 1}, {"stride", 2}, {"padding", 0}, {"in_channels", C1}, {"out_channels", C2}};
  short_op.tensors["weight"] = gb.f(sc_w, {C2, 1, 1, C1});
  short_op.tensors["bias"] = gb.f(sc_b, {C2});
  OpArg head = make_op("head", "batchnorm", {"b3"}, "h");
  head.act = "relu";
  head.tensors["scale"] = gb.f(hs, {C2});
  head.tensors["shift"] = gb.f(hh, {C2});
  OpArg gap = make_op("gap", "global_avgpool", {"h"}, "g");
  OpArg fc = make_op("fc", "linear", {"g"}, "logits");
  fc.attrs = {{"in_features", C2}, {"out_features", O}};
  fc.tensors["weight"] = gb.f(fw, {O, C2});
  fc.tensors["bias"] = gb.f(fb, {O});
  g.ops = {stem, pool, bop("b1", b1, C1, C1, 1, {"p", "p"}, "b1"), bop("b2", b2, C1, C1, 1, {"b1", "b1"}, "b2"),
           short_op, bop("b3", b3, C1, C2, 2, {"b2", "sc"}, "b3"), head, gap, fc};

  // Reference in plain floats.
  auto x_nchw = randv(size_t(N) * C0 * H * W, rng, -2.f, 2.f);
  std::vector<float> x(x_nchw.size());
  {
    ThreadPool p1(1);
    nchw_to_nhwc(x_nchw.data(), N, C0, H, W, x.data(), p1);
  }
  std::vector<float> s(size_t(N) * H * W * C1);
  conv2d_reference(x.data(), N, H, W, C0, stem_w.data(), stem_b.data(), C1, 3, 1, 1, true, s.data());
  const int H1 = (H + 2 - 3) / 2 + 1, W1 = (W + 2 - 3) / 2 + 1;
  std::vector<float> p(size_t(N) * H1 * W1 * C1);
  {
    ThreadPool p1(1);
    maxpool_nhwc(s.data(), N, H, W, C1, 3, 2, 1, p.data(), p1);
  }
  auto r1 = binary_block_ref(p, N, H1, W1, C1, b1.sc, b1.sh, b1.w, C1, 3, 1, 1, b1.alpha, b1.prelu, p.data());
  auto r2 = binary_block_ref(r1, N, H1, W1, C1, b2.sc, b2.sh, b2.w, C1, 3, 1, 1, b2.alpha, b2.prelu, r1.data());
  const int H2 = (H1 - 1) / 2 + 1, W2 = (W1 - 1) / 2 + 1;
  std::vector<float> sc(size_t(N) * H2 * W2 * C2);
  conv2d_reference(r2.data(), N, H1, W1, C1, sc_w.data(), sc_b.data(), C2, 1, 2, 0, false, sc.data());
  auto r3 = binary_block_ref(r2, N, H1, W1, C1, b3.sc, b3.sh, b3.w, C2, 3, 2, 1, b3.alpha, b3.prelu, sc.data());
  std::vector<float> ref(size_t(N) * O);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < O; ++o) {
      double acc = fb[o];
      for (int c = 0; c < C2; ++c) {
        double m = 0;
        for (int q = 0; q < H2 * W2; ++q)
          m += std::max(r3[(size_t(n) * H2 * W2 + q) * C2 + c] * hs[c] + hh[c], 0.f);
        acc += m / (H2 * W2) * fw[size_t(o) * C2 + c];
      }
      ref[size_t(n) * O + o] = float(acc);
    }

  for (PopcountPath path : supported_paths())
    for (int threads : {1, 2}) {
      ModelOptions opt;
      opt.threads = threads;
      opt.popcount_path = int(path);
      Model m(g, opt);
      CHECK_EQ(m.num_outputs(), O);
      auto st = m.stats(N, H, W);
      REQUIRE(st.size() == 9);
      CHECK(!st[2].fused_pack);  // fed by maxpool: packed by its own pass
      CHECK(st[3].fused_pack);   // fed by b2's epilogue
      CHECK(st[5].fused_pack);
      CHECK_EQ(st[2].binary_macs, int64_t(N) * H1 * W1 * C1 * 9 * C1);
      std::vector<float> out(ref.size());
      for (int rep = 0; rep < 2; ++rep) {  // second run reuses the cached plan
        std::fill(out.begin(), out.end(), std::nanf(""));
        m.run(x_nchw.data(), N, H, W, out.data());
        const double err = max_rel_err(out, ref);
        if (!(err < 1e-4)) std::printf("  graph path=%s threads=%d: rel err %g\n", path_name(path), threads, err);
        CHECK(err < 1e-4);
      }
      // A different batch size gets its own plan and the same per-image answers.
      std::vector<float> one(O);
      m.run(x_nchw.data() + size_t(C0) * H * W, 1, H, W, one.data());
      CHECK(max_rel_err(one, std::vector<float>(ref.begin() + O, ref.end())) < 1e-4);
      // Every window here is padded, so even a 1x1 image is a valid input; an empty batch is not.
      m.run(x_nchw.data(), 1, 1, 1, one.data());
      CHECK(std::isfinite(one[0]));
      CHECK_THROWS(m.run(x_nchw.data(), 0, H, W, out.data()));
    }

  // Steady state: with the plan cached, the executor and the float ops allocate nothing per call. (Checked on
  // the float part of the graph: the binary kernels keep their own per-call scratch.)
  {
    GraphArg float_only = g;
    float_only.ops = {g.ops[0], g.ops[1], g.ops[4], g.ops[6], g.ops[7], g.ops[8]};
    float_only.ops[2].inputs = {"p"};      // shortcut conv on the pooled stem: 70 -> 40 channels
    float_only.ops[3].inputs = {"sc"};     // head batchnorm on it
    for (int threads : {1, 2}) {
      ModelOptions opt;
      opt.threads = threads;
      Model m(float_only, opt);
      std::vector<float> out(size_t(N) * O);
      m.run(x_nchw.data(), N, H, W, out.data());  // plans and allocates the arena
      g_allocs = 0;
      g_count_allocs = true;
      m.run(x_nchw.data(), N, H, W, out.data());
      g_count_allocs = false;
      CHECK_EQ(long(g_allocs), 0L);
    }
  }

  // Without padding, the stem's 3x3 window does not fit a 2x2 image: a clear error, not a crash.
  {
    GraphArg unpadded = g;
    unpadded.ops[0].attrs["padding"] = 0;
    Model m(unpadded, ModelOptions{});
    std::vector<float> out(size_t(N) * O);
    CHECK_THROWS(m.run(x_nchw.data(), 1, 2, 2, out.data()));
    m.run(x_nchw.data(), 1, 3, 3, out.data());
    CHECK(std::isfinite(out[0]));
  }

  // A chain of padded max-pools (no weights) grows the map by K - 1 per op: shape inference stops it at the
  // engine's per-side limit instead of planning an arena of terabytes.
  {
    GraphArg grown = g;
    std::vector<OpArg> chain;
    for (int i = 0; i < 1100; ++i) {
      OpArg mp = make_op("grow" + std::to_string(i), "maxpool2d", {i ? "g" + std::to_string(i - 1) : "p"},
                         "g" + std::to_string(i));
      mp.attrs = {{"kernel", 64}, {"stride", 1}, {"padding", 63}};
      chain.push_back(mp);
    }
    grown.ops[2].inputs = {"g1099", "g1099"};
    grown.ops.insert(grown.ops.begin() + 2, chain.begin(), chain.end());
    Model m(grown, ModelOptions{});
    CHECK_THROWS(m.stats(1, H, W));
    std::vector<float> out(size_t(N) * O);
    CHECK_THROWS(m.run(x_nchw.data(), 1, H, W, out.data()));
  }

  // Builder checks: each broken variant must throw std::invalid_argument.
  auto expect_invalid = [&](GraphArg bad, const char* what) {
    bool threw = false;
    try {
      Model m(bad, ModelOptions{});
    } catch (const std::invalid_argument&) {
      threw = true;
    }
    if (!threw) std::printf("  builder accepted: %s\n", what);
    CHECK(threw);
  };
  GraphArg bad = g;
  bad.ops[0].op = "conv3d";
  expect_invalid(bad, "unknown op");
  bad = g;
  bad.ops[2].inputs = {"nope"};
  expect_invalid(bad, "undefined input");
  bad = g;
  bad.ops[2].tensors["weight"].shape = {C1, 3, 3, 1, 1};
  expect_invalid(bad, "weight rank");
  bad = g;
  bad.ops[2].tensors["bn_scale"].nbytes -= 4;
  expect_invalid(bad, "short tensor");
  bad = g;
  bad.ops[5].inputs = {"b2", "b1"};  // residual 70 channels, output 40
  expect_invalid(bad, "residual channels");
  bad = g;
  bad.ops[8].attrs["in_features"] = C2 + 1;
  expect_invalid(bad, "linear in_features");
  bad = g;
  bad.ops[1].attrs["padding"] = 3;
  expect_invalid(bad, "pool padding >= kernel");
  bad = g;
  bad.ops[8].inputs = {"h"};
  expect_invalid(bad, "linear on a spatial value");
  bad = g;
  bad.output = "h";
  expect_invalid(bad, "spatial graph output");
  bad = g;
  bad.ops[3].output = "b1";
  expect_invalid(bad, "value defined twice");
  bad = g;
  bad.ops[0].attrs.erase("stride");
  expect_invalid(bad, "missing attribute");
}
