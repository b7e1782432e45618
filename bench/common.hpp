// What every benchmark executable shares: the fair wait used by both sides of a threaded
// benchmark, and a main() that starts a thread before anything is timed.
#pragma once

#include <benchmark/benchmark.h>

#include <thread>

namespace eventbus_bench {

// Waits for another thread: a few pauses, then yield. On a 2-core machine with other work, a
// pure pause loop burns the rest of its time slice whenever the thread it waits for is
// descheduled: measured here, 2-5 us per item for every queue instead of 15-30 ns, i.e. the rows
// measured the scheduler rather than the queue. Every queue and pool uses this same wait.
class spin_wait {
  public:
    void operator()() noexcept {
        if (spins_ < spin_limit) {
            ++spins_;
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
            asm volatile("yield" ::: "memory");
#endif
        } else {
            std::this_thread::yield();
        }
    }

  private:
    static constexpr unsigned spin_limit = 16;  // about 0.3 us of pause on the reference machine
    unsigned spins_ = 0;
};

// glibc drops the lock prefix from mutexes and libstdc++ makes shared_ptr counts non-atomic
// until a process starts its first thread; start one so that single-thread rows are honest.
template <class Register>
int run(int argc, char** argv, Register register_benchmarks) {
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv))
        return 1;
    std::thread([] {}).join();
    register_benchmarks();
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}

}  // namespace eventbus_bench
