// A small persistent thread pool with a blocking parallel_for. One pool per Engine; workers spin briefly
// then sleep, so per-layer dispatch at batch 1 costs microseconds, not a thread start.
#pragma once
#include <cstdint>
#include <functional>

namespace bonn {

class ThreadPool {
 public:
  // threads <= 0 means "all cores" (std::thread::hardware_concurrency, respecting the CPU affinity mask).
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Runs fn(begin, end) over [0, n) split into disjoint contiguous chunks (up to 4 per thread, claimed
  // dynamically; the caller runs chunks too). Blocks until all chunks are done. Chunks are at least `grain`
  // items (one chunk if n < grain). An exception thrown by fn is rethrown here. Safe to call from several threads
  // and from inside fn: while one job runs on the pool, other (or nested) calls run serially on their own thread.
  void parallel_for(int64_t n, const std::function<void(int64_t begin, int64_t end)>& fn, int64_t grain = 1);

 private:
  struct Impl;
  Impl* impl_;
  int n_threads_;
};

}  // namespace bonn
