// Python bindings for the kernel layer: which popcount paths exist here and two measurements.
// module.cc (graph executor) calls bind_kernels(m) from its PYBIND11_MODULE.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "bconv.h"
#include "bconv_bench.h"

namespace py = pybind11;

namespace {

bonn::PopcountPath parse_path(const std::string& name) {
  for (auto p : {bonn::PopcountPath::kPortable, bonn::PopcountPath::kAVX2, bonn::PopcountPath::kAVX512,
                 bonn::PopcountPath::kNEON})
    if (name == bonn::path_name(p)) return p;
  throw std::invalid_argument("unknown popcount path '" + name + "' (expected portable, avx2, avx512 or neon)");
}

}  // namespace

void bind_kernels(py::module_& m) {
  m.def(
      "supported_paths",
      [] {
        std::vector<std::string> out;
        for (auto p : bonn::supported_paths()) out.emplace_back(bonn::path_name(p));
        return out;
      },
      "Popcount paths this CPU supports, e.g. ['portable', 'avx2', 'avx512'].");
  m.def(
      "selected_path", [] { return std::string(bonn::path_name(bonn::select_path())); },
      "The path kernels use by default: the best supported one, or BONN_POPCOUNT if set (error if unsupported).");
  m.def(
      "popcount_peak_gbmacs",
      [](const std::string& path, double seconds) {
        if (!(seconds > 0) || seconds > 60) throw std::invalid_argument("seconds must be in (0, 60]");
        auto p = parse_path(path);
        py::gil_scoped_release release;
        return bonn::popcount_peak_gbmacs(p, seconds);
      },
      py::arg("path"), py::arg("seconds") = 0.5,
      "Single-thread L1-resident xor+popcount+add peak of a path, in G binary MACs/s.");
  m.def(
      "bench_bconv",
      [](int Ci, int Co, int H, int W, int K, int stride, int batch, int threads, const std::string& path,
         int repeats) {
        auto p = path.empty() ? bonn::select_path() : parse_path(path);
        if (threads <= 0 || threads > 256) throw std::invalid_argument("threads must be in 1..256");
        py::gil_scoped_release release;
        return bonn::bench_bconv(Ci, Co, H, W, K, stride, batch, threads, p, repeats);
      },
      py::arg("Ci"), py::arg("Co"), py::arg("H"), py::arg("W"), py::arg("K") = 3, py::arg("stride") = 1,
      py::arg("batch") = 1, py::arg("threads") = 1, py::arg("path") = "", py::arg("repeats") = 11,
      "Median seconds of one binary conv layer (random weights, full fused BONN epilogue). path '' = selected.");
}
