// A tiny test registry for the C++ test executable (no external framework).
//
//   #include "test_harness.h"
//   TEST_CASE(my_feature_works) {
//     CHECK(1 + 1 == 2);
//     CHECK_EQ(f(3), 9);
//     CHECK_NEAR(g(0.5f), 0.25f, 1e-6);
//     CHECK_THROWS(h(-1));
//     REQUIRE(ptr != nullptr);   // like CHECK, but stops this test case on failure
//   }
//
// Run: bonn_core_tests [substring ...]   runs the tests whose name contains any of the substrings (all if none).
//      bonn_core_tests --list-paths       prints the popcount paths this CPU supports.
// Env BONN_POPCOUNT=<path> makes the kernel tests exercise only that path (else every supported path).
#pragma once
#include <cmath>
#include <sstream>
#include <string>

namespace bonn_test {

using TestFn = void (*)();
struct Registrar {
  Registrar(const char* name, TestFn fn, const char* file);
};
// Records a failure of the current test case; prints the first few per test case.
void fail(const char* file, int line, const std::string& what);
struct RequireFailed {};

}  // namespace bonn_test

#define BONN_TEST_CAT2(a, b) a##b
#define BONN_TEST_CAT(a, b) BONN_TEST_CAT2(a, b)

#define TEST_CASE(name)                                                            \
  static void name();                                                              \
  static ::bonn_test::Registrar BONN_TEST_CAT(name, _registrar)(#name, name, __FILE__); \
  static void name()

#define CHECK(cond)                                                                \
  do {                                                                             \
    if (!(cond)) ::bonn_test::fail(__FILE__, __LINE__, "CHECK(" #cond ")");       \
  } while (0)

#define REQUIRE(cond)                                                              \
  do {                                                                             \
    if (!(cond)) {                                                                 \
      ::bonn_test::fail(__FILE__, __LINE__, "REQUIRE(" #cond ")");                \
      throw ::bonn_test::RequireFailed{};                                          \
    }                                                                              \
  } while (0)

#define CHECK_EQ(a, b)                                                             \
  do {                                                                             \
    const auto& bonn_a_ = (a);                                                     \
    const auto& bonn_b_ = (b);                                                     \
    if (!(bonn_a_ == bonn_b_)) {                                                   \
      std::ostringstream bonn_os_;                                                 \
      bonn_os_ << "CHECK_EQ(" #a ", " #b "): " << bonn_a_ << " != " << bonn_b_;    \
      ::bonn_test::fail(__FILE__, __LINE__, bonn_os_.str());                       \
    }                                                                              \
  } while (0)

#define CHECK_NEAR(a, b, tol)                                                      \
  do {                                                                             \
    const double bonn_a_ = static_cast<double>(a);                                 \
    const double bonn_b_ = static_cast<double>(b);                                 \
    if (!(std::fabs(bonn_a_ - bonn_b_) <= static_cast<double>(tol))) {             \
      std::ostringstream bonn_os_;                                                 \
      bonn_os_ << "CHECK_NEAR(" #a ", " #b ", " #tol "): " << bonn_a_ << " vs " << bonn_b_; \
      ::bonn_test::fail(__FILE__, __LINE__, bonn_os_.str());                       \
    }                                                                              \
  } while (0)

#define CHECK_THROWS(expr)                                                         \
  do {                                                                             \
    bool bonn_threw_ = false;                                                      \
    try {                                                                          \
      (void)(expr);                                                                \
    } catch (const std::exception&) {                                              \
      bonn_threw_ = true;                                                          \
    }                                                                              \
    if (!bonn_threw_) ::bonn_test::fail(__FILE__, __LINE__, "CHECK_THROWS(" #expr ") did not throw"); \
  } while (0)
