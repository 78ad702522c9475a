#include "runtime/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace qd::rt {

namespace {

inline void cpu_relax() {
#if defined(__x86_64__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// Workers spin a little after each job (the next op's job follows within microseconds), then
// sleep on the condition variable, so an idle runtime costs no CPU.
constexpr int kSpins = 4000;

class Pool {
 public:
  ~Pool() { shutdown(); }

  void resize(int n) {
    if (n - 1 == static_cast<int>(workers_.size())) return;
    shutdown();
    const uint64_t now = gen_.load(std::memory_order_acquire);
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, i, now] { loop(i, now); });
  }
  int size() const { return static_cast<int>(workers_.size()) + 1; }

  void run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    const int64_t most = std::max<int64_t>(1, n / std::max<int64_t>(1, grain));
    const int parts = static_cast<int>(std::min<int64_t>(size(), most));
    if (parts <= 1) {
      if (n > 0) fn(0, n);
      return;
    }
    fn_ = &fn, n_ = n, parts_ = parts, error_ = nullptr;
    done_.store(0, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lk(m_);
      gen_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    part(0);
    const int workers = static_cast<int>(workers_.size());
    while (done_.load(std::memory_order_acquire) < workers) cpu_relax();
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void part(int i) {
    if (i >= parts_) return;
    const int64_t begin = n_ * i / parts_, end = n_ * (i + 1) / parts_;
    try {
      (*fn_)(begin, end);
    } catch (...) {
      std::lock_guard<std::mutex> lk(m_);
      if (!error_) error_ = std::current_exception();
    }
  }

  void shutdown() {
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_ = true;
      gen_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    for (std::thread& t : workers_) t.join();
    workers_.clear();
    stop_ = false;
  }

  void loop(int index, uint64_t seen) {
    for (;;) {
      uint64_t g = gen_.load(std::memory_order_acquire);
      for (int s = 0; g == seen && s < kSpins; ++s) {
        cpu_relax();
        g = gen_.load(std::memory_order_acquire);
      }
      if (g == seen) {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return gen_.load(std::memory_order_acquire) != seen; });
        g = gen_.load(std::memory_order_acquire);
      }
      seen = g;
      if (stop_) return;
      part(index);
      done_.fetch_add(1, std::memory_order_release);
    }
  }

  std::vector<std::thread> workers_;
  std::mutex m_;
  std::condition_variable cv_;
  std::atomic<uint64_t> gen_{0};
  std::atomic<int> done_{0};
  bool stop_ = false;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  int parts_ = 0;
  std::exception_ptr error_;
};

Pool& pool() {
  static Pool p;
  return p;
}

}  // namespace

void set_threads(int n) { pool().resize(std::clamp(n, 1, 256)); }
int threads() { return pool().size(); }

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) { pool().run(n, grain, fn); }

}  // namespace qd::rt
