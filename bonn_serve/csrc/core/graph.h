// Graph executor: runs a .bonn op list (docs/format.md §2.2) on float NCHW input and returns [N, classes].
//
// Built from an op list + tensors handed over by the Python loader. The loader has validated the file, but
// the builder re-checks every attribute, tensor length and channel count it relies on (the data is
// untrusted) and throws std::invalid_argument naming the op and the problem.
//
// Execution is NHWC. Buffers are planned once per input shape (N, H, W): value lifetimes are computed from
// the op list and packed into one arena, so steady-state calls allocate nothing. A binary conv whose output
// feeds the next binary conv writes that layer's packed (BN + sign) input in its own epilogue.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "bconv.h"
#include "fops.h"
#include "threadpool.h"

namespace bonn {

struct TensorArg {
  std::string dtype;  // "float32" or "uint64"
  std::vector<int64_t> shape;
  const void* data = nullptr;
  int64_t nbytes = 0;
};

struct OpArg {
  std::string name, op;
  std::vector<std::string> inputs;
  std::string output;
  std::map<std::string, int64_t> attrs;  // the integer attributes
  std::string act = "none";
  std::map<std::string, TensorArg> tensors;  // role -> tensor
};

struct GraphArg {
  std::string input, output;
  int in_channels = 0;
  std::vector<OpArg> ops;
};

struct ModelOptions {
  int threads = 0;         // <= 0: all cores
  int popcount_path = -1;  // -1: select_path() (honours BONN_POPCOUNT), else a PopcountPath value
  int float_isa = -1;      // -1: select_float_isa() (honours BONN_FLOAT_ISA), else a FloatIsa value
};

// Per-op shape and work for one input shape.
struct OpStats {
  std::string name, op;
  int N = 0, C = 0, H = 0, W = 0;  // output shape (H = W = 1 for [N, F] values)
  int64_t binary_macs = 0, float_macs = 0;
  bool fused_pack = false;  // binary conv whose input bits are written by the previous binary conv
};

class Model {
 public:
  Model(const GraphArg& graph, const ModelOptions& options);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  int in_channels() const { return in_channels_; }
  int num_outputs() const { return num_outputs_; }
  int threads() const { return pool_->size(); }
  PopcountPath popcount_path() const { return popcount_path_; }
  FloatIsa float_isa() const { return float_isa_; }
  size_t num_ops() const { return nodes_.size(); }

  // Shapes and MAC counts for an input of N x in_channels x H x W; throws like run() for bad shapes.
  std::vector<OpStats> stats(int N, int H, int W) const;
  // x: NCHW [N, in_channels, H, W]; out: [N, num_outputs]. Serialized per model (one arena, one pool).
  // op_seconds, if given, receives the wall time of each op (for the benchmark's per-layer report).
  void run(const float* x, int N, int H, int W, float* out, std::vector<double>* op_seconds = nullptr);

 private:
  struct Node;
  struct Plan;
  struct Shape {
    int H = 0, W = 0, C = 0;
    bool flat = false;
  };
  std::vector<Shape> infer_shapes(int N, int H, int W) const;
  Plan& plan_for(int N, int H, int W);

  int in_channels_ = 0, num_outputs_ = 0, output_value_ = -1;
  std::vector<std::unique_ptr<Node>> nodes_;
  std::vector<int> value_producer_;  // -1 for the graph input
  PopcountPath popcount_path_;
  FloatIsa float_isa_;
  std::unique_ptr<ThreadPool> pool_;
  std::mutex mu_;
  std::vector<std::unique_ptr<Plan>> plans_;
  uint64_t plan_clock_ = 0;  // LRU stamp for plans_
};

}  // namespace bonn
