// Persistent workers: they spin on a generation counter for a short while after each job (so back-to-back
// layers at batch 1 dispatch in about a microsecond) and then sleep on a condition variable.
#include "threadpool.h"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace bonn {

namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#else
  std::this_thread::yield();
#endif
}

int available_cores() {
#ifdef __linux__
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
#endif
  unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? static_cast<int>(n) : 1;
}

// ~2000 pauses is roughly 50-100 us: long enough to bridge consecutive layers, short enough not to burn a core
// that an idle server needs for something else.
constexpr int kSpinIters = 2000;

}  // namespace

struct ThreadPool::Impl {
  std::vector<std::thread> workers;
  std::mutex mu;
  std::condition_variable cv;
  std::atomic<uint64_t> generation{0};
  std::atomic<int> pending{0};
  std::atomic<bool> stop{false};
  // The current job; written by the caller before the generation bump (release), read after (acquire).
  const std::function<void(int64_t, int64_t)>* fn = nullptr;
  int64_t n = 0;
  int chunks = 0;
  std::mutex err_mu;
  std::exception_ptr err;

  void run_chunk(int i) {
    int64_t b = n * i / chunks, e = n * (i + 1) / chunks;
    if (b >= e) return;
    try {
      (*fn)(b, e);
    } catch (...) {
      std::lock_guard<std::mutex> lk(err_mu);
      if (!err) err = std::current_exception();
    }
  }

  void worker(int id) {
    uint64_t seen = 0;
    for (;;) {
      uint64_t g;
      int spins = 0;
      while ((g = generation.load(std::memory_order_acquire)) == seen) {
        if (stop.load(std::memory_order_acquire)) return;
        if (++spins < kSpinIters) {
          cpu_relax();
        } else {
          std::unique_lock<std::mutex> lk(mu);
          cv.wait(lk, [&] {
            return generation.load(std::memory_order_acquire) != seen || stop.load(std::memory_order_acquire);
          });
          spins = 0;
        }
      }
      seen = g;
      if (id < chunks) run_chunk(id);
      // Every worker acknowledges every job, so the caller never returns while a slow worker could still read
      // this job's parameters (which the next job overwrites).
      pending.fetch_sub(1, std::memory_order_acq_rel);
    }
  }
};

ThreadPool::ThreadPool(int threads) : impl_(new Impl), n_threads_(threads <= 0 ? available_cores() : threads) {
  impl_->workers.reserve(n_threads_ - 1);
  for (int i = 1; i < n_threads_; ++i) impl_->workers.emplace_back([this, i] { impl_->worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(impl_->mu);
    impl_->stop.store(true, std::memory_order_release);
  }
  impl_->cv.notify_all();
  for (auto& t : impl_->workers) t.join();
  delete impl_;
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t grain) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  int64_t max_chunks = (n + grain - 1) / grain;
  int chunks = static_cast<int>(std::min<int64_t>(n_threads_, max_chunks));
  if (chunks <= 1) {
    fn(0, n);
    return;
  }
  Impl& s = *impl_;
  s.fn = &fn;
  s.n = n;
  s.chunks = chunks;
  s.err = nullptr;
  s.pending.store(n_threads_ - 1, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lk(s.mu);  // pairs with the predicate check of sleeping workers
    s.generation.fetch_add(1, std::memory_order_release);
  }
  s.cv.notify_all();
  s.run_chunk(0);
  int spins = 0;
  while (s.pending.load(std::memory_order_acquire) != 0) {
    if (++spins < kSpinIters) cpu_relax();
    else std::this_thread::yield();
  }
  s.fn = nullptr;
  if (s.err) std::rethrow_exception(s.err);
}

}  // namespace bonn
