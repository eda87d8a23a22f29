// bonn_microbench: popcount peak per path, then G binary MACs/s and % of that path's single-core peak for the
// binary conv layers of ResNet-18 and WRN-22 (batch 1, threads 1 and 2). Timings are medians.
//
//   bonn_microbench [--paths avx512,avx2,...] [--threads 1,2] [--repeats 21] [--batch 1]
//                   [--suites resnet18,wrn22-16,wrn22-64] [--peak-seconds 0.5]
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "bconv.h"
#include "bconv_bench.h"

using namespace bonn;

namespace {

struct Layer {
  const char* suite;
  int Ci, Co, H, W, stride;
};

const Layer kLayers[] = {
    {"resnet18", 64, 64, 56, 56, 1},    {"resnet18", 64, 128, 56, 56, 2},   {"resnet18", 128, 128, 28, 28, 1},
    {"resnet18", 128, 256, 28, 28, 2},  {"resnet18", 256, 256, 14, 14, 1},  {"resnet18", 256, 512, 14, 14, 2},
    {"resnet18", 512, 512, 7, 7, 1},    {"wrn22-16", 16, 16, 32, 32, 1},    {"wrn22-16", 16, 32, 32, 32, 2},
    {"wrn22-16", 32, 32, 16, 16, 1},    {"wrn22-16", 32, 64, 16, 16, 2},    {"wrn22-16", 64, 64, 8, 8, 1},
    {"wrn22-64", 64, 64, 32, 32, 1},    {"wrn22-64", 64, 128, 32, 32, 2},   {"wrn22-64", 128, 128, 16, 16, 1},
    {"wrn22-64", 128, 256, 16, 16, 2},  {"wrn22-64", 256, 256, 8, 8, 1},
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) if (!item.empty()) out.push_back(item);
  return out;
}

bool contains(const std::vector<std::string>& v, const std::string& x) {
  for (auto& s : v) if (s == x) return true;
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> paths, suites = {"resnet18", "wrn22-16", "wrn22-64"};
  std::vector<int> threads = {1, 2};
  int repeats = 21, batch = 1;
  double peak_seconds = 0.5;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) { std::fprintf(stderr, "missing value for %s\n", a.c_str()); std::exit(2); }
      return argv[++i];
    };
    if (a == "--paths") paths = split(next());
    else if (a == "--suites") suites = split(next());
    else if (a == "--threads") { threads.clear(); for (auto& t : split(next())) threads.push_back(std::atoi(t.c_str())); }
    else if (a == "--repeats") repeats = std::atoi(next().c_str());
    else if (a == "--batch") batch = std::atoi(next().c_str());
    else if (a == "--peak-seconds") peak_seconds = std::atof(next().c_str());
    else { std::fprintf(stderr, "unknown argument %s\n", a.c_str()); return 2; }
  }
  std::vector<PopcountPath> run_paths;
  for (auto p : supported_paths())
    if (paths.empty() || contains(paths, path_name(p))) run_paths.push_back(p);
  if (run_paths.empty()) { std::fprintf(stderr, "no supported path selected\n"); return 2; }

  for (PopcountPath p : run_paths) {
    const double peak = popcount_peak_gbmacs(p, peak_seconds);
    std::printf("\n== path %s: popcount peak %.1f G bMAC/s (1 thread, L1-resident) ==\n", path_name(p), peak);
    std::printf("%-9s %-22s %5s %3s %10s %10s %8s\n", "suite", "layer", "batch", "thr", "time_us", "GbMAC/s",
                "%peak1T");
    for (const Layer& l : kLayers) {
      if (!contains(suites, l.suite)) continue;
      for (int t : threads) {
        const double sec = bench_bconv(l.Ci, l.Co, l.H, l.W, 3, l.stride, batch, t, p, repeats);
        const double g = bconv_bmacs(l.Ci, l.Co, l.H, l.W, 3, l.stride, batch) / sec * 1e-9;
        char name[64];
        std::snprintf(name, sizeof name, "%d->%d@%dx%d s%d", l.Ci, l.Co, l.H, l.W, l.stride);
        std::printf("%-9s %-22s %5d %3d %10.1f %10.1f %7.1f%%\n", l.suite, name, batch, t, sec * 1e6, g,
                    100.0 * g / peak);
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
