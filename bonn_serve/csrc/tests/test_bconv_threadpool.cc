// ThreadPool: every index exactly once, exceptions reach the caller, many back-to-back dispatches.
#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <thread>
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

TEST_CASE(threadpool_concurrent_and_nested_calls_are_safe) {
  ThreadPool pool(2);
  std::atomic<int64_t> outer{0}, chunks{0}, nested{0};
  auto job = [&] {
    for (int rep = 0; rep < 2000; ++rep)
      pool.parallel_for(16, [&](int64_t b, int64_t e) {
        outer += e - b;
        ++chunks;
        pool.parallel_for(4, [&](int64_t nb, int64_t ne) { nested += ne - nb; });  // nested: runs serially
      });
  };
  std::thread other(job);  // a second caller on the same pool at the same time
  job();
  other.join();
  CHECK_EQ(outer.load(), int64_t(2) * 2000 * 16);  // every outer index exactly once per call
  CHECK_EQ(nested.load(), 4 * chunks.load());      // every nested call covered its 4 items exactly once
}
