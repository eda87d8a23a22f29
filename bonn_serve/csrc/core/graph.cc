// Graph executor: builder (re-validation of untrusted op lists), shape inference, buffer planning, run loop.
#include "graph.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <unordered_map>

namespace bonn {

namespace {

enum class OpKind { kConv, kMaxPool, kBinaryConv, kBatchNorm, kAvgPool, kLinear };

constexpr int64_t kMaxKernel = 64, kMaxStride = 64, kMaxChannels = 1 << 16, kMaxFeatures = 1 << 20;
constexpr int64_t kMaxDim = 1 << 16;                  // input H, W and batch; every value's H, W
constexpr int64_t kMaxPixels = int64_t(1) << 26;      // H * W of any value: keeps per-image pixel counts in int
constexpr int64_t kMaxArenaBytes = int64_t(1) << 40;  // sanity bound before allocating

std::string label(size_t i, const OpArg& op) { return "op #" + std::to_string(i) + " (" + op.op + " '" + op.name + "')"; }

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument(msg); }

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// Checks that the op has the tensor `role` with the given dtype/shape and a matching byte length.
const TensorArg& expect_tensor(const std::string& where, const OpArg& op, const std::string& role,
                               const std::string& dtype, const std::vector<int64_t>& shape) {
  auto it = op.tensors.find(role);
  if (it == op.tensors.end()) fail(where + ": missing tensor role '" + role + "'");
  const TensorArg& t = it->second;
  if (t.dtype != dtype) fail(where + ": tensor '" + role + "' has dtype " + t.dtype + ", expected " + dtype);
  if (t.shape != shape)
    fail("shape mismatch: " + where + " tensor '" + role + "' is " + shape_str(t.shape) + ", expected " +
         shape_str(shape));
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  const int64_t item = dtype == "uint64" ? 8 : 4;
  if (t.nbytes != n * item || !t.data)
    fail(where + ": tensor '" + role + "' holds " + std::to_string(t.nbytes) + " bytes, expected " +
         std::to_string(n * item));
  return t;
}

std::vector<float> floats(const TensorArg& t) {
  std::vector<float> v(size_t(t.nbytes / 4));
  std::memcpy(v.data(), t.data, size_t(t.nbytes));
  return v;
}

int64_t attr(const std::string& where, const OpArg& op, const char* key, int64_t lo, int64_t hi) {
  auto it = op.attrs.find(key);
  if (it == op.attrs.end()) fail(where + ": attribute '" + key + "' missing");
  if (it->second < lo || it->second > hi)
    fail(where + ": attribute '" + key + "' = " + std::to_string(it->second) + " out of range [" +
         std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return it->second;
}

struct AlignedFree {
  void operator()(void* p) const { std::free(p); }
};

}  // namespace

struct Model::Node {
  OpKind kind;
  std::string name, label;
  int in0 = -1, in1 = -1, out = -1;  // value ids
  int K = 1, stride = 1, pad = 0, Ci = 0, Co = 0;
  bool relu = false;
  std::unique_ptr<FloatConv2d> fconv;
  std::unique_ptr<BinaryConv2d> bconv;
  std::vector<float> scale, shift, prelu, bias, w_io;  // per-kind vectors
  float alpha = 1.f;
  int fuse_into = -1;               // binary conv: the consumer whose input bits this op's epilogue writes
  bool packed_by_producer = false;  // binary conv: input bits come from the producer's epilogue
};

struct Model::Plan {
  int N = 0, H = 0, W = 0;
  std::vector<Shape> shapes;        // per value
  std::vector<size_t> value_off;    // per value: float buffer
  std::vector<size_t> packed_off;   // per node: packed input bits (binary conv)
  std::vector<size_t> scratch_off;  // per node: zero-padded input copy (conv with padding)
  std::unique_ptr<uint8_t, AlignedFree> arena;
  size_t arena_bytes = 0;
  uint64_t last_used = 0;

  float* f(size_t off) const { return reinterpret_cast<float*>(arena.get() + off); }
  uint64_t* u(size_t off) const { return reinterpret_cast<uint64_t*>(arena.get() + off); }
};

// ------------------------------------------------------------------------------------------------ builder
Model::Model(const GraphArg& g, const ModelOptions& opt) {
  if (g.in_channels < 1 || g.in_channels > kMaxChannels)
    fail("graph: input channels " + std::to_string(g.in_channels) + " out of range");
  if (opt.threads > 1024) fail("threads " + std::to_string(opt.threads) + " out of range (at most 1024)");
  popcount_path_ = opt.popcount_path < 0 ? select_path() : PopcountPath(opt.popcount_path);
  float_isa_ = opt.float_isa < 0 ? select_float_isa() : FloatIsa(opt.float_isa);
  if (opt.popcount_path >= 0) {
    auto ok = supported_paths();
    if (std::find(ok.begin(), ok.end(), popcount_path_) == ok.end())
      fail(std::string("popcount path '") + path_name(popcount_path_) + "' is not supported on this CPU");
  }
  if (opt.float_isa >= 0) {
    auto ok = supported_float_isas();
    if (std::find(ok.begin(), ok.end(), float_isa_) == ok.end())
      fail(std::string("float ISA '") + float_isa_name(float_isa_) + "' is not supported on this CPU");
  }
  in_channels_ = g.in_channels;

  // Static value info: channels and rank ([N,C,H,W] vs flat [N,F]).
  std::unordered_map<std::string, int> value_id;
  std::vector<int> channels;
  std::vector<bool> flat;
  value_id[g.input] = 0;
  channels.push_back(g.in_channels);
  flat.push_back(false);
  value_producer_.push_back(-1);

  static const std::map<std::string, OpKind> kinds = {
      {"conv2d", OpKind::kConv},          {"maxpool2d", OpKind::kMaxPool}, {"binary_conv2d", OpKind::kBinaryConv},
      {"batchnorm", OpKind::kBatchNorm}, {"global_avgpool", OpKind::kAvgPool}, {"linear", OpKind::kLinear}};
  static const std::map<OpKind, std::vector<std::string>> roles = {
      {OpKind::kConv, {"weight", "bias"}},
      {OpKind::kMaxPool, {}},
      {OpKind::kBinaryConv, {"bn_scale", "bn_shift", "weight", "alpha", "prelu"}},
      {OpKind::kBatchNorm, {"scale", "shift"}},
      {OpKind::kAvgPool, {}},
      {OpKind::kLinear, {"weight", "bias"}}};

  for (size_t i = 0; i < g.ops.size(); ++i) {
    const OpArg& op = g.ops[i];
    const std::string where = label(i, op);
    auto kit = kinds.find(op.op);
    if (kit == kinds.end()) fail("op #" + std::to_string(i) + ": unknown op '" + op.op + "'");
    auto node = std::make_unique<Node>();
    Node& n = *node;
    n.kind = kit->second;
    n.name = op.name;
    n.label = where;

    const size_t max_inputs = n.kind == OpKind::kBinaryConv ? 2 : 1;
    if (op.inputs.empty() || op.inputs.size() > max_inputs)
      fail(where + ": expects " + (max_inputs == 2 ? std::string("1 or 2 inputs") : std::string("1 input")) + ", got " +
           std::to_string(op.inputs.size()));
    std::vector<int> ins;
    for (const std::string& v : op.inputs) {
      auto it = value_id.find(v);
      if (it == value_id.end()) fail(where + ": input value '" + v + "' is not defined before use");
      ins.push_back(it->second);
    }
    if (value_id.count(op.output)) fail(where + ": output value '" + op.output + "' is already defined");
    for (const auto& kv : op.tensors) {
      const auto& allowed = roles.at(n.kind);
      if (std::find(allowed.begin(), allowed.end(), kv.first) == allowed.end())
        fail(where + ": unexpected tensor role '" + kv.first + "'");
    }
    if (op.act != "none" && op.act != "relu") fail(where + ": unknown activation '" + op.act + "'");
    if (op.act == "relu" && n.kind != OpKind::kConv && n.kind != OpKind::kBatchNorm)
      fail(where + ": activation 'relu' is not supported on this op");
    n.relu = op.act == "relu";
    n.in0 = ins[0];
    n.in1 = ins.size() > 1 ? ins[1] : -1;
    const int cin = channels[n.in0];
    const bool in_flat = flat[n.in0];
    int cout = cin;
    bool out_flat = in_flat;

    auto need_spatial = [&](int v, const char* what) {
      if (flat[v]) fail(where + ": " + what + " must be a [N, C, H, W] value, got a flat [N, F] value");
    };

    switch (n.kind) {
      case OpKind::kConv:
      case OpKind::kBinaryConv: {
        need_spatial(n.in0, "input");
        n.K = int(attr(where, op, "kernel", 1, kMaxKernel));
        n.stride = int(attr(where, op, "stride", 1, kMaxStride));
        n.pad = int(attr(where, op, "padding", 0, n.K - 1));
        n.Ci = int(attr(where, op, "in_channels", 1, kMaxChannels));
        n.Co = int(attr(where, op, "out_channels", 1, kMaxChannels));
        if (n.Ci != cin)
          fail("shape mismatch: " + where + " in_channels " + std::to_string(n.Ci) + " but its input has " +
               std::to_string(cin));
        if (n.kind == OpKind::kConv) {
          const TensorArg& w = expect_tensor(where, op, "weight", "float32", {n.Co, n.K, n.K, n.Ci});
          const TensorArg& b = expect_tensor(where, op, "bias", "float32", {n.Co});
          std::vector<float> wv = floats(w), bv = floats(b);
          n.fconv = std::make_unique<FloatConv2d>(wv.data(), bv.data(), n.Co, n.K, n.Ci, n.stride, n.pad, n.relu,
                                                  float_isa_);
        } else {
          const int words = (n.Ci + 63) / 64;
          const TensorArg& w = expect_tensor(where, op, "weight", "uint64", {n.Co, n.K, n.K, words});
          n.scale = floats(expect_tensor(where, op, "bn_scale", "float32", {n.Ci}));
          n.shift = floats(expect_tensor(where, op, "bn_shift", "float32", {n.Ci}));
          n.alpha = floats(expect_tensor(where, op, "alpha", "float32", {1}))[0];
          if (op.tensors.count("prelu")) n.prelu = floats(expect_tensor(where, op, "prelu", "float32", {n.Co}));
          std::vector<uint64_t> bits(size_t(w.nbytes / 8));
          std::memcpy(bits.data(), w.data, size_t(w.nbytes));
          // The format says bits for c >= in_channels are 0; the kernels may rely on it, so enforce it.
          if (n.Ci % 64) {
            const uint64_t tail = ~uint64_t(0) << (n.Ci % 64);
            for (size_t k = words - 1; k < bits.size(); k += words)
              if (bits[k] & tail) fail(where + ": packed weight has bits set beyond in_channels (padding must be 0)");
          }
          n.bconv = std::make_unique<BinaryConv2d>(bits.data(), n.Co, n.K, n.Ci, n.stride, n.pad, popcount_path_);
          if (n.in1 >= 0) {
            need_spatial(n.in1, "residual");
            if (channels[n.in1] != n.Co)
              fail("shape mismatch: " + where + " residual has " + std::to_string(channels[n.in1]) +
                   " channels, output has " + std::to_string(n.Co));
          }
        }
        cout = n.Co;
        break;
      }
      case OpKind::kMaxPool:
        need_spatial(n.in0, "input");
        n.K = int(attr(where, op, "kernel", 1, kMaxKernel));
        n.stride = int(attr(where, op, "stride", 1, kMaxStride));
        n.pad = int(attr(where, op, "padding", 0, n.K - 1));
        break;
      case OpKind::kBatchNorm:
        n.scale = floats(expect_tensor(where, op, "scale", "float32", {cin}));
        n.shift = floats(expect_tensor(where, op, "shift", "float32", {cin}));
        break;
      case OpKind::kAvgPool:
        need_spatial(n.in0, "input");
        out_flat = true;
        break;
      case OpKind::kLinear: {
        const int64_t fi = attr(where, op, "in_features", 1, kMaxFeatures);
        const int64_t fo = attr(where, op, "out_features", 1, kMaxFeatures);
        if (!in_flat) fail(where + ": input must be a flat [N, F] value (add a global_avgpool before it)");
        if (fi != cin)
          fail("shape mismatch: " + where + " in_features " + std::to_string(fi) + " but its input has " +
               std::to_string(cin));
        const std::vector<float> w = floats(expect_tensor(where, op, "weight", "float32", {fo, fi}));
        n.bias = floats(expect_tensor(where, op, "bias", "float32", {fo}));
        n.Ci = int(fi);
        n.Co = int(fo);
        n.w_io.resize(size_t(fi * fo));
        for (int64_t o = 0; o < fo; ++o)
          for (int64_t k = 0; k < fi; ++k) n.w_io[size_t(k * fo + o)] = w[size_t(o * fi + k)];
        cout = n.Co;
        out_flat = true;
        break;
      }
    }
    n.out = int(channels.size());
    value_id[op.output] = n.out;
    channels.push_back(cout);
    flat.push_back(out_flat);
    value_producer_.push_back(int(i));
    nodes_.push_back(std::move(node));
  }

  auto out_it = value_id.find(g.output);
  if (out_it == value_id.end()) fail("graph output '" + g.output + "' is never produced");
  output_value_ = out_it->second;
  if (!flat[output_value_]) fail("graph output '" + g.output + "' must be a flat [N, classes] value");
  num_outputs_ = channels[output_value_];

  // Fusion: a binary conv fed by another binary conv gets its input bits from the producer's epilogue.
  for (size_t c = 0; c < nodes_.size(); ++c) {
    Node& cons = *nodes_[c];
    if (cons.kind != OpKind::kBinaryConv) continue;
    const int p = value_producer_[cons.in0];
    if (p < 0) continue;
    Node& prod = *nodes_[p];
    if (prod.kind == OpKind::kBinaryConv && prod.fuse_into < 0) {
      prod.fuse_into = int(c);
      cons.packed_by_producer = true;
    }
  }
  pool_ = std::make_unique<ThreadPool>(opt.threads);
}

Model::~Model() = default;

// ------------------------------------------------------------------------------------------ shape inference
std::vector<Model::Shape> Model::infer_shapes(int N, int H, int W) const {
  if (N < 1 || N > kMaxDim || H < 1 || H > kMaxDim || W < 1 || W > kMaxDim)
    fail("input shape [" + std::to_string(N) + ", " + std::to_string(in_channels_) + ", " + std::to_string(H) + ", " +
         std::to_string(W) + "]: batch, height and width must be in [1, " + std::to_string(kMaxDim) + "]");
  if (int64_t(H) * W > kMaxPixels)
    fail("input shape: " + std::to_string(H) + "x" + std::to_string(W) + " has more than " + std::to_string(kMaxPixels) +
         " pixels");
  std::vector<Shape> s(value_producer_.size());
  s[0] = {H, W, in_channels_, false};
  for (const auto& np : nodes_) {
    const Node& n = *np;
    const Shape& x = s[n.in0];
    Shape y = x;
    switch (n.kind) {
      case OpKind::kConv:
      case OpKind::kBinaryConv:
      case OpKind::kMaxPool: {
        if (x.H + 2 * n.pad < n.K || x.W + 2 * n.pad < n.K)
          fail(n.label + ": input " + std::to_string(x.H) + "x" + std::to_string(x.W) + " is smaller than its " +
               std::to_string(n.K) + "x" + std::to_string(n.K) + " window (padding " + std::to_string(n.pad) +
               "); the model input is too small");
        y.H = (x.H + 2 * n.pad - n.K) / n.stride + 1;
        y.W = (x.W + 2 * n.pad - n.K) / n.stride + 1;
        // padding up to K - 1 lets a map grow by K - 1 per op: a hostile chain must not grow it without bound
        if (y.H > kMaxDim || y.W > kMaxDim || int64_t(y.H) * y.W > kMaxPixels)
          fail(n.label + ": output " + std::to_string(y.H) + "x" + std::to_string(y.W) + " exceeds the engine's " +
               std::to_string(kMaxDim) + " per side / " + std::to_string(kMaxPixels) + " pixels");
        if (n.kind != OpKind::kMaxPool) y.C = n.Co;
        if (n.in1 >= 0) {
          const Shape& r = s[n.in1];
          if (r.H != y.H || r.W != y.W || r.C != y.C)
            fail("shape mismatch: " + n.label + " residual is " + std::to_string(r.C) + "x" + std::to_string(r.H) +
                 "x" + std::to_string(r.W) + " but the output is " + std::to_string(y.C) + "x" + std::to_string(y.H) +
                 "x" + std::to_string(y.W));
        }
        break;
      }
      case OpKind::kAvgPool:
        y = {1, 1, x.C, true};
        break;
      case OpKind::kLinear:
        y = {1, 1, n.Co, true};
        break;
      case OpKind::kBatchNorm:
        break;
    }
    s[n.out] = y;
  }
  return s;
}

std::vector<OpStats> Model::stats(int N, int H, int W) const {
  const std::vector<Shape> s = infer_shapes(N, H, W);
  std::vector<OpStats> out;
  static const char* names[] = {"conv2d", "maxpool2d", "binary_conv2d", "batchnorm", "global_avgpool", "linear"};
  for (const auto& np : nodes_) {
    const Node& n = *np;
    const Shape& y = s[n.out];
    OpStats st;
    st.name = n.name;
    st.op = names[int(n.kind)];
    st.N = N;
    st.C = y.C;
    st.H = y.H;
    st.W = y.W;
    // In double, saturated: a hostile graph's count may pass int64 (exact below 2^53, far above real nets)
    auto count = [](double m) { return m >= 9.0e18 ? std::numeric_limits<int64_t>::max() : int64_t(m); };
    const int64_t macs = count(double(N) * y.H * y.W * n.Co * n.K * n.K * n.Ci);
    if (n.kind == OpKind::kConv) st.float_macs = macs;
    if (n.kind == OpKind::kBinaryConv) st.binary_macs = macs;
    if (n.kind == OpKind::kLinear) st.float_macs = count(double(N) * n.Ci * n.Co);
    st.fused_pack = n.packed_by_producer;
    out.push_back(st);
  }
  return out;
}

// ------------------------------------------------------------------------------------------ buffer planning
Model::Plan& Model::plan_for(int N, int H, int W) {
  for (auto& p : plans_)
    if (p->N == N && p->H == H && p->W == W) {
      p->last_used = ++plan_clock_;
      return *p;
    }
  auto plan = std::make_unique<Plan>();
  Plan& P = *plan;
  P.N = N;
  P.H = H;
  P.W = W;
  P.shapes = infer_shapes(N, H, W);

  // Buffers live over steps: step 0 converts the input, op i runs at step i + 1, the output copy is last.
  struct Buf {
    int64_t bytes;
    int first, last;
    size_t* off;
  };
  std::vector<Buf> bufs;
  const int n_ops = int(nodes_.size());
  const int nv = int(value_producer_.size());
  std::vector<int> last_use(nv, 0);
  for (int v = 0; v < nv; ++v) last_use[v] = value_producer_[v] + 1;
  for (int i = 0; i < n_ops; ++i) {
    const Node& n = *nodes_[i];
    last_use[n.in0] = std::max(last_use[n.in0], i + 1);
    if (n.in1 >= 0) last_use[n.in1] = std::max(last_use[n.in1], i + 1);
  }
  last_use[output_value_] = n_ops + 1;
  P.value_off.assign(nv, 0);
  P.packed_off.assign(n_ops, 0);
  P.scratch_off.assign(n_ops, 0);
  auto round = [](int64_t b) { return (b + 63) / 64 * 64; };
  for (int v = 0; v < nv; ++v) {
    const Shape& s = P.shapes[v];
    bufs.push_back({round(int64_t(N) * s.H * s.W * s.C * 4), value_producer_[v] + 1, last_use[v], &P.value_off[v]});
  }
  for (int i = 0; i < n_ops; ++i) {
    const Node& n = *nodes_[i];
    const Shape& x = P.shapes[n.in0];
    if (n.kind == OpKind::kBinaryConv) {
      int first = i + 1;
      if (n.packed_by_producer) first = value_producer_[n.in0] + 1;
      bufs.push_back({round(int64_t(N) * x.H * x.W * ((n.Ci + 63) / 64) * 8), first, i + 1, &P.packed_off[i]});
    } else if (n.kind == OpKind::kConv && n.pad > 0) {
      const int64_t hp = x.H + 2 * n.pad, wp = x.W + 2 * n.pad;
      bufs.push_back({round(int64_t(N) * hp * wp * x.C * 4), i + 1, i + 1, &P.scratch_off[i]});
    }
  }
  for (const Buf& b : bufs)
    if (b.bytes > kMaxArenaBytes) fail("input shape too large: an activation buffer would need " + std::to_string(b.bytes) + " bytes");

  // Greedy: biggest buffers first, each at the lowest offset free during its lifetime.
  std::vector<int> order(bufs.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return bufs[a].bytes > bufs[b].bytes; });
  std::vector<int> placed;
  int64_t total = 64;
  for (int bi : order) {
    Buf& b = bufs[bi];
    std::vector<std::pair<int64_t, int64_t>> busy;  // [start, end) of live overlapping buffers
    for (int pj : placed) {
      const Buf& o = bufs[pj];
      if (o.first <= b.last && b.first <= o.last) busy.push_back({int64_t(*o.off), int64_t(*o.off) + o.bytes});
    }
    std::sort(busy.begin(), busy.end());
    int64_t at = 0;
    for (const auto& r : busy) {
      if (r.first - at >= b.bytes) break;
      at = std::max(at, r.second);
    }
    *b.off = size_t(at);
    total = std::max(total, at + b.bytes);
    placed.push_back(bi);
  }
  if (total > kMaxArenaBytes) fail("input shape too large: activations would need " + std::to_string(total) + " bytes");
  void* mem = std::aligned_alloc(64, size_t(total));
  if (!mem) throw std::bad_alloc();
  P.arena.reset(static_cast<uint8_t*>(mem));
  P.arena_bytes = size_t(total);
  P.last_used = ++plan_clock_;

  // Keep a few shapes (e.g. batch 1 and the server's batch size); drop the least recently used beyond that.
  constexpr size_t kMaxPlans = 4;
  if (plans_.size() >= kMaxPlans) {
    auto lru = std::min_element(plans_.begin(), plans_.end(),
                                [](const auto& a, const auto& b) { return a->last_used < b->last_used; });
    plans_.erase(lru);
  }
  plans_.push_back(std::move(plan));
  return *plans_.back();
}

// ------------------------------------------------------------------------------------------------- run
void Model::run(const float* x, int N, int H, int W, float* out, std::vector<double>* op_seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  Plan& P = plan_for(N, H, W);
  ThreadPool& pool = *pool_;
  using clk = std::chrono::steady_clock;
  if (op_seconds) op_seconds->assign(nodes_.size(), 0.0);

  nchw_to_nhwc(x, N, in_channels_, H, W, P.f(P.value_off[0]), pool);
  for (size_t i = 0; i < nodes_.size(); ++i) {
    const Node& n = *nodes_[i];
    const auto t0 = op_seconds ? clk::now() : clk::time_point();
    const Shape& xs = P.shapes[n.in0];
    const Shape& ys = P.shapes[n.out];
    const float* in = P.f(P.value_off[n.in0]);
    float* y = P.f(P.value_off[n.out]);
    switch (n.kind) {
      case OpKind::kConv:
        if (n.pad > 0) {
          float* padded = P.f(P.scratch_off[i]);
          pad_nhwc(in, N, xs.H, xs.W, xs.C, n.pad, padded, pool);
          n.fconv->run_padded(padded, N, xs.H + 2 * n.pad, xs.W + 2 * n.pad, y, pool);
        } else {
          n.fconv->run_padded(in, N, xs.H, xs.W, y, pool);
        }
        break;
      case OpKind::kMaxPool:
        maxpool_nhwc(in, N, xs.H, xs.W, xs.C, n.K, n.stride, n.pad, y, pool, float_isa_);
        break;
      case OpKind::kBinaryConv: {
        uint64_t* bits = P.u(P.packed_off[i]);
        if (!n.packed_by_producer)
          pack_bn_sign(in, int64_t(N) * xs.H * xs.W, n.Ci, n.scale.data(), n.shift.data(), bits, pool,
                       popcount_path_);
        OutputTransform ot;
        ot.alpha = n.alpha;
        ot.prelu = n.prelu.empty() ? nullptr : n.prelu.data();
        ot.residual = n.in1 >= 0 ? P.f(P.value_off[n.in1]) : nullptr;
        ot.out = y;
        if (n.fuse_into >= 0) {
          const Node& next = *nodes_[n.fuse_into];
          ot.next_scale = next.scale.data();
          ot.next_shift = next.shift.data();
          ot.next_packed = P.u(P.packed_off[n.fuse_into]);
        }
        n.bconv->run(bits, N, xs.H, xs.W, ot, pool);
        break;
      }
      case OpKind::kBatchNorm:
        batchnorm_nhwc(in, int64_t(N) * xs.H * xs.W, xs.C, n.scale.data(), n.shift.data(), n.relu, y, pool);
        break;
      case OpKind::kAvgPool:
        global_avgpool_nhwc(in, N, xs.H * xs.W, xs.C, y);
        break;
      case OpKind::kLinear:
        linear_io(in, N, n.Ci, n.Co, n.w_io.data(), n.bias.data(), y, pool, float_isa_);
        break;
    }
    (void)ys;
    if (op_seconds) (*op_seconds)[i] = std::chrono::duration<double>(clk::now() - t0).count();
  }
  std::memcpy(out, P.f(P.value_off[output_value_]), size_t(N) * num_outputs_ * sizeof(float));
}

}  // namespace bonn
