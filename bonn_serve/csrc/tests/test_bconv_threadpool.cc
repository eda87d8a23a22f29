// ThreadPool: every index exactly once, exceptions reach the caller, many back-to-back dispatches.
#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <vector>

#include "test_harness.h"
#include "threadpool.h"

using namespace bonn;

TEST_CASE(threadpool_covers_each_index_once) {
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(threads);
    CHECK_EQ(pool.size(), threads);
    for (int64_t n : {int64_t(0), int64_t(1), int64_t(2), int64_t(7), int64_t(1000)}) {
      for (int64_t grain : {int64_t(1), int64_t(3), int64_t(400)}) {
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        for (auto& h : hits) h = 0;
        pool.parallel_for(n, [&](int64_t b, int64_t e) {
          CHECK(b < e);
          CHECK(e - b >= std::min(grain, n));  // chunks honour the grain
          for (int64_t i = b; i < e; ++i) hits[i]++;
        }, grain);
        for (auto& h : hits) CHECK_EQ(h.load(), 1);
      }
    }
  }
}

TEST_CASE(threadpool_many_quick_dispatches) {
  ThreadPool pool(2);
  std::atomic<int64_t> sum{0};
  for (int rep = 0; rep < 20000; ++rep)
    pool.parallel_for(4, [&](int64_t b, int64_t e) { sum += e - b; });
  CHECK_EQ(sum.load(), int64_t(80000));
}

TEST_CASE(threadpool_propagates_exceptions) {
  ThreadPool pool(2);
  CHECK_THROWS(pool.parallel_for(10, [](int64_t b, int64_t) {
    if (b > 0) throw std::runtime_error("worker failure");
  }));
  CHECK_THROWS(pool.parallel_for(10, [](int64_t b, int64_t) {
    if (b == 0) throw std::runtime_error("caller failure");
  }));
  int64_t total = 0;  // still usable afterwards
  pool.parallel_for(1, [&](int64_t b, int64_t e) { total += e - b; });
  CHECK_EQ(total, int64_t(1));
}

TEST_CASE(threadpool_default_size_is_positive) {
  ThreadPool pool(0);
  CHECK(pool.size() >= 1);
}
