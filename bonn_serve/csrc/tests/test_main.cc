// Test runner for bonn_core_tests: runs registered TEST_CASEs, filtered by name substrings from argv.
#include <chrono>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "bconv.h"
#include "test_harness.h"

namespace bonn_test {

namespace {

struct Entry {
  const char* name;
  TestFn fn;
  const char* file;
};

std::vector<Entry>& registry() {
  static std::vector<Entry> r;
  return r;
}

int g_failures_in_case = 0;
constexpr int kMaxPrintedPerCase = 8;

}  // namespace

Registrar::Registrar(const char* name, TestFn fn, const char* file) { registry().push_back({name, fn, file}); }

void fail(const char* file, int line, const std::string& what) {
  if (g_failures_in_case < kMaxPrintedPerCase) std::printf("    %s:%d: %s\n", file, line, what.c_str());
  else if (g_failures_in_case == kMaxPrintedPerCase) std::printf("    (further failures in this case not shown)\n");
  ++g_failures_in_case;
}

}  // namespace bonn_test

int main(int argc, char** argv) {
  using namespace bonn_test;
  std::vector<std::string> filters(argv + 1, argv + argc);
  if (filters.size() == 1 && filters[0] == "--list-paths") {  // for scripts: one supported path per line
    for (auto p : bonn::supported_paths()) std::printf("%s\n", bonn::path_name(p));
    return 0;
  }
  try {
    std::printf("popcount path: %s (supported:", bonn::path_name(bonn::select_path()));
    for (auto p : bonn::supported_paths()) std::printf(" %s", bonn::path_name(p));
    std::printf(")\n");
  } catch (const std::exception& e) {
    std::printf("error: %s\n", e.what());
    return 2;
  }
  int ran = 0, failed = 0;
  for (const Entry& e : registry()) {
    bool selected = filters.empty();
    for (const auto& f : filters) selected = selected || std::string(e.name).find(f) != std::string::npos;
    if (!selected) continue;
    ++ran;
    g_failures_in_case = 0;
    auto t0 = std::chrono::steady_clock::now();
    try {
      e.fn();
    } catch (const RequireFailed&) {
    } catch (const std::exception& ex) {
      fail(e.file, 0, std::string("uncaught exception: ") + ex.what());
    }
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (g_failures_in_case) ++failed;
    std::printf("[%s] %s (%.0f ms)\n", g_failures_in_case ? "FAIL" : " ok ", e.name, ms);
  }
  std::printf("%d test case(s), %d failed\n", ran, failed);
  if (ran == 0) {
    std::printf("no test matched the filter\n");
    return 1;
  }
  return failed ? 1 : 0;
}
