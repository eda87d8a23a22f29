// Persistent workers with dynamic block claiming.
//
// A job is split into up to 4 blocks per thread. The job's generation, block count and next unclaimed block
// live in ONE atomic word, so a worker claims a block with a single CAS that also proves the job is still
// current; the caller claims blocks too and only waits for blocks already being run. This matters on a shared
// machine: a worker that is descheduled before it claims anything never holds up a layer.
// Workers spin briefly after each job (back-to-back layers at batch 1 dispatch in well under a microsecond
// when cores are free), then sleep on a condition variable.
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
constexpr int kBlocksPerThread = 4;

// state = generation (32 bits) | block count (16) | next block (16)
inline uint64_t pack_state(uint64_t gen, uint64_t nblocks, uint64_t next) {
  return (gen << 32) | (nblocks << 16) | next;
}
inline uint32_t state_gen(uint64_t s) { return static_cast<uint32_t>(s >> 32); }
inline int state_nblocks(uint64_t s) { return static_cast<int>((s >> 16) & 0xFFFF); }
inline int state_next(uint64_t s) { return static_cast<int>(s & 0xFFFF); }

}  // namespace

struct ThreadPool::Impl {
  std::vector<std::thread> workers;
  std::mutex mu;
  std::condition_variable cv;
  std::atomic<uint64_t> state{0};
  std::atomic<int> done{0};
  std::atomic<int> sleepers{0};
  std::atomic<bool> stop{false};
  // The current job; written before the state is published (release), read after a successful claim (acquire).
  const std::function<void(int64_t, int64_t)>* fn = nullptr;
  int64_t n = 0;
  std::mutex err_mu;
  std::exception_ptr err;
  std::mutex busy;  // held by the caller for the duration of a parallel job

  // Claims and runs blocks of job `gen` until none are left (or a newer job replaced it).
  void run_blocks(uint32_t gen) {
    uint64_t s = state.load(std::memory_order_acquire);
    for (;;) {
      if (state_gen(s) != gen || state_next(s) >= state_nblocks(s)) return;
      if (!state.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
      const int b = state_next(s), nb = state_nblocks(s);
      const int64_t begin = n * b / nb, end = n * (b + 1) / nb;
      try {
        (*fn)(begin, end);
      } catch (...) {
        std::lock_guard<std::mutex> lk(err_mu);
        if (!err) err = std::current_exception();
      }
      done.fetch_add(1, std::memory_order_acq_rel);
      s = state.load(std::memory_order_acquire);
    }
  }

  void worker() {
    uint32_t seen = 0;
    for (;;) {
      int spins = 0;
      uint32_t g;
      while ((g = state_gen(state.load(std::memory_order_acquire))) == seen) {
        if (stop.load(std::memory_order_acquire)) return;
        if (++spins < kSpinIters) {
          cpu_relax();
          continue;
        }
        std::unique_lock<std::mutex> lk(mu);
        sleepers.fetch_add(1, std::memory_order_seq_cst);
        cv.wait(lk, [&] {
          return state_gen(state.load(std::memory_order_seq_cst)) != seen || stop.load(std::memory_order_seq_cst);
        });
        sleepers.fetch_sub(1, std::memory_order_seq_cst);
        spins = 0;
      }
      seen = g;
      run_blocks(g);
    }
  }
};

ThreadPool::ThreadPool(int threads) : impl_(new Impl), n_threads_(threads <= 0 ? available_cores() : threads) {
  impl_->workers.reserve(n_threads_ - 1);
  for (int i = 1; i < n_threads_; ++i) impl_->workers.emplace_back([this] { impl_->worker(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(impl_->mu);
    impl_->stop.store(true, std::memory_order_seq_cst);
  }
  impl_->cv.notify_all();
  for (auto& t : impl_->workers) t.join();
  delete impl_;
}

namespace {
thread_local const ThreadPool* tl_job_owner = nullptr;  // the pool whose job this thread is running, if any
}  // namespace

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t grain) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  // Every block holds at least `grain` items (n / nblocks >= grain), except when n < grain: one block.
  const int64_t nblocks = std::max<int64_t>(
      1, std::min<int64_t>({int64_t(n_threads_) * kBlocksPerThread, n / grain, int64_t{0xFFFF}}));
  if (n_threads_ == 1 || nblocks == 1) {
    fn(0, n);
    return;
  }
  Impl& s = *impl_;
  // One job at a time. A nested call from inside fn, or a concurrent call from another thread, runs serially
  // on its own thread instead of corrupting the job in flight (or deadlocking). A nested call on the thread
  // that holds `busy` must not try_lock it again (undefined for std::mutex): the thread-local flag catches it.
  if (tl_job_owner == this) {
    fn(0, n);
    return;
  }
  std::unique_lock<std::mutex> busy(s.busy, std::try_to_lock);
  if (!busy.owns_lock()) {
    fn(0, n);
    return;
  }
  struct Owner {  // this thread runs a job of this pool until the end of the call, exceptions included
    const ThreadPool* prev = tl_job_owner;  // a job of another pool this one was called from
    explicit Owner(const ThreadPool* p) { tl_job_owner = p; }
    ~Owner() { tl_job_owner = prev; }
  } owner(this);
  s.fn = &fn;
  s.n = n;
  s.err = nullptr;
  s.done.store(0, std::memory_order_relaxed);
  const uint32_t gen = state_gen(s.state.load(std::memory_order_relaxed)) + 1;
  s.state.store(pack_state(gen, static_cast<uint64_t>(nblocks), 0), std::memory_order_seq_cst);
  if (s.sleepers.load(std::memory_order_seq_cst) > 0) {
    { std::lock_guard<std::mutex> lk(s.mu); }  // a worker between its predicate check and wait() holds mu
    s.cv.notify_all();
  }
  s.run_blocks(gen);
  int spins = 0;
  while (s.done.load(std::memory_order_acquire) != static_cast<int>(nblocks)) {
    if (++spins < kSpinIters) cpu_relax();
    else std::this_thread::yield();
  }
  s.fn = nullptr;
  if (s.err) std::rethrow_exception(s.err);
}

}  // namespace bonn
