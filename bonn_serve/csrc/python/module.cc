// pybind11 module `bonn_serve._engine`: the graph executor (`Model`) plus the kernels' own bindings.
//
// The op list and tensors come from bonn_serve.format (already validated), but everything is converted
// defensively: a wrong type anywhere becomes a ValueError naming the op, never a crash.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <iterator>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "bconv.h"
#include "fops.h"
#include "graph.h"

namespace py = pybind11;

void bind_kernels(py::module_& m);  // bind_kernels.cc (kernels: supported_paths, bench_bconv, ...)

namespace {

[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument(msg); }

std::string as_str(py::handle h, const std::string& what) {
  if (!py::isinstance<py::str>(h)) bad(what + " must be a string");
  return h.cast<std::string>();
}

int64_t as_int(py::handle h, const std::string& what) {
  if (!py::isinstance<py::int_>(h) || py::isinstance<py::bool_>(h)) bad(what + " must be an integer");
  try {
    return h.cast<int64_t>();
  } catch (const py::cast_error&) {
    bad(what + " is out of range");
  }
}

py::dict as_dict(py::handle h, const std::string& what) {
  if (!py::isinstance<py::dict>(h)) bad(what + " must be an object");
  return py::reinterpret_borrow<py::dict>(h);
}

bonn::OpArg parse_op(py::handle h, size_t i, const py::dict& tensors, std::vector<py::array>& keep) {
  const std::string where = "op #" + std::to_string(i);
  py::dict d = as_dict(h, where);
  bonn::OpArg op;
  op.name = d.contains("name") ? as_str(d["name"], where + ": name") : std::string("?");
  if (!d.contains("op")) bad(where + ": missing field 'op'");
  op.op = as_str(d["op"], where + ": op");
  if (!d.contains("inputs") || !py::isinstance<py::list>(d["inputs"])) bad(where + ": 'inputs' must be a list");
  for (py::handle v : py::reinterpret_borrow<py::list>(d["inputs"])) op.inputs.push_back(as_str(v, where + ": input"));
  if (!d.contains("output")) bad(where + ": missing field 'output'");
  op.output = as_str(d["output"], where + ": output");
  if (d.contains("attrs")) {
    for (auto kv : as_dict(d["attrs"], where + ": attrs")) {
      const std::string key = as_str(kv.first, where + ": attribute name");
      static const char* used[] = {"kernel", "stride", "padding", "in_channels", "out_channels", "in_features",
                                   "out_features"};
      if (key == "act") op.act = as_str(kv.second, where + ": attribute 'act'");
      else if (std::find(std::begin(used), std::end(used), key) != std::end(used))
        op.attrs[key] = as_int(kv.second, where + ": attribute '" + key + "'");
      // other attributes are informational; the engine does not read them
    }
  }
  if (d.contains("tensors")) {
    for (auto kv : as_dict(d["tensors"], where + ": tensors")) {
      const std::string role = as_str(kv.first, where + ": tensor role");
      const std::string tname = as_str(kv.second, where + ": tensor name for '" + role + "'");
      if (!tensors.contains(tname)) bad(where + ": tensor '" + tname + "' not in the tensor table");
      py::object obj = tensors[py::str(tname)];
      if (!py::isinstance<py::array>(obj)) bad(where + ": tensor '" + tname + "' is not an array");
      py::array arr = py::reinterpret_borrow<py::array>(obj);
      bonn::TensorArg t;
      if (arr.dtype().is(py::dtype::of<float>()) || arr.dtype().equal(py::dtype::of<float>())) t.dtype = "float32";
      else if (arr.dtype().equal(py::dtype::of<uint64_t>())) t.dtype = "uint64";
      else bad(where + ": tensor '" + tname + "' has unsupported dtype " + py::str(arr.dtype()).cast<std::string>());
      // A C-contiguous view (copy only if needed); kept alive until the model has copied the data.
      py::array c = py::module_::import("numpy").attr("ascontiguousarray")(arr);
      keep.push_back(c);
      for (py::ssize_t k = 0; k < c.ndim(); ++k) t.shape.push_back(int64_t(c.shape(k)));
      t.data = c.data();
      t.nbytes = int64_t(c.nbytes());
      op.tensors[role] = t;
    }
  }
  return op;
}

int parse_path(const py::object& s) {
  if (s.is_none()) return -1;
  const std::string want = as_str(s, "popcount path");
  for (auto p : {bonn::PopcountPath::kPortable, bonn::PopcountPath::kAVX2, bonn::PopcountPath::kAVX512,
                 bonn::PopcountPath::kNEON})
    if (want == bonn::path_name(p)) return int(p);
  bad("unknown popcount path '" + want + "' (expected portable, avx2, avx512 or neon)");
}

int parse_isa(const py::object& s) {
  if (s.is_none()) return -1;
  const std::string want = as_str(s, "float ISA");
  for (auto isa : {bonn::FloatIsa::kScalar, bonn::FloatIsa::kAVX2, bonn::FloatIsa::kAVX512})
    if (want == bonn::float_isa_name(isa)) return int(isa);
  bad("unknown float ISA '" + want + "' (expected scalar, avx2 or avx512)");
}

std::unique_ptr<bonn::Model> build_model(py::list ops, py::dict tensors, py::object input, py::object output,
                                         py::object in_channels, int threads, py::object popcount,
                                         py::object float_isa) {
  bonn::GraphArg g;
  g.input = as_str(input, "graph.input");
  g.output = as_str(output, "graph.output");
  const int64_t cin = as_int(in_channels, "input channels");
  if (cin < 1 || cin > (1 << 16)) bad("input channels " + std::to_string(cin) + " out of range");
  g.in_channels = int(cin);
  std::vector<py::array> keep;
  size_t i = 0;
  for (py::handle h : ops) g.ops.push_back(parse_op(h, i++, tensors, keep));
  bonn::ModelOptions opt;
  opt.threads = threads;
  opt.popcount_path = parse_path(popcount);
  opt.float_isa = parse_isa(float_isa);
  return std::make_unique<bonn::Model>(g, opt);
}

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

void check_input(const bonn::Model& m, const FloatArray& x) {
  if (x.ndim() != 4)
    bad("input must be a 4-D float32 array [N, C, H, W], got " + std::to_string(x.ndim()) + " dimensions");
  if (x.shape(1) != m.in_channels())
    bad("input has " + std::to_string(x.shape(1)) + " channels, the model expects " + std::to_string(m.in_channels()));
  for (int k : {0, 2, 3})
    if (x.shape(k) < 1 || x.shape(k) > (1 << 16)) bad("input dimension " + std::to_string(k) + " out of range");
}

FloatArray predict(bonn::Model& m, const FloatArray& x, std::vector<double>* times) {
  check_input(m, x);
  const int N = int(x.shape(0)), H = int(x.shape(2)), W = int(x.shape(3));
  FloatArray out({py::ssize_t(N), py::ssize_t(m.num_outputs())});
  const float* src = x.data();
  float* dst = out.mutable_data();
  {
    py::gil_scoped_release release;  // lets other Python threads (HTTP workers, metrics) run meanwhile
    m.run(src, N, H, W, dst, times);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_engine, m) {
  m.doc() = "bonn-serve XNOR/popcount engine: graph executor and binary conv kernels";

  py::class_<bonn::Model>(m, "Model")
      .def(py::init(&build_model), py::arg("ops"), py::arg("tensors"), py::arg("input"), py::arg("output"),
           py::arg("in_channels"), py::arg("threads") = 0, py::arg("popcount") = py::none(),
           py::arg("float_isa") = py::none(),
           "Build from a .bonn op list and {name: ndarray} tensors. threads <= 0: all cores. popcount / "
           "float_isa force a kernel path (default: best for this CPU, or BONN_POPCOUNT / BONN_FLOAT_ISA).")
      .def("predict", [](bonn::Model& self, const FloatArray& x) { return predict(self, x, nullptr); },
           py::arg("x"), "float32 NCHW [N, C, H, W] -> float32 [N, outputs]. Releases the GIL.")
      .def("profile",
           [](bonn::Model& self, const FloatArray& x) {
             std::vector<double> times;
             FloatArray out = predict(self, x, &times);
             return py::make_tuple(out, times);
           },
           py::arg("x"), "Like predict, but also returns the wall time of each op in seconds.")
      .def("stats",
           [](const bonn::Model& self, int N, int H, int W) {
             py::list out;
             for (const bonn::OpStats& s : self.stats(N, H, W)) {
               py::dict d;
               d["name"] = s.name;
               d["op"] = s.op;
               d["shape"] = py::make_tuple(s.N, s.C, s.H, s.W);
               d["binary_macs"] = s.binary_macs;
               d["float_macs"] = s.float_macs;
               d["fused_pack"] = s.fused_pack;
               out.append(d);
             }
             return out;
           },
           py::arg("n"), py::arg("h"), py::arg("w"), "Per-op output shape and MAC counts for an N x C x H x W input.")
      .def_property_readonly("in_channels", &bonn::Model::in_channels)
      .def_property_readonly("num_outputs", &bonn::Model::num_outputs)
      .def_property_readonly("threads", &bonn::Model::threads)
      .def_property_readonly("num_ops", &bonn::Model::num_ops)
      .def_property_readonly("popcount_path", [](const bonn::Model& s) { return bonn::path_name(s.popcount_path()); })
      .def_property_readonly("float_isa", [](const bonn::Model& s) { return bonn::float_isa_name(s.float_isa()); });

  m.def("supported_float_isas", [] {
    std::vector<std::string> out;
    for (auto isa : bonn::supported_float_isas()) out.push_back(bonn::float_isa_name(isa));
    return out;
  });
  m.def("selected_float_isa", [] { return std::string(bonn::float_isa_name(bonn::select_float_isa())); });

  bind_kernels(m);
}
