// Benchmarks of eventbus::ring_buffer against peer queues, all in one binary.
//
// Names are `<scenario>/<queue>` (Google Benchmark appends `/real_time` to the threaded
// scenarios), so a report can divide every peer row by the `eventbus_*` rows of its scenario:
//   BM_PushPop/<queue>     one thread: push one element, pop it again (one item = one pair)
//   BM_PushPop32/<queue>   the same with a 32-byte element
//   BM_1p1c/<queue>        one producer thread, one consumer thread, 1 << 20 items per iteration
//                          (checked: all arrive, in order), waiting on full and empty with a few
//                          pauses then yield (see spin_wait); timed in real time
// Capacity 1024 everywhere, except that AtomicQueueB2 rounds it up to 4096 and moodycamel is
// bounded only by its preallocated blocks (try_enqueue never allocates).
//
// eventbus rows: eventbus_<policy> use try_push/try_pop; eventbus_block_wait uses the blocking
// push(ctx, v)/pop(ctx) (spin, then sleep). drop_oldest is absent from BM_1p1c: it discards
// elements when full, so not every item would arrive.
//
// Reproduce: scripts/bench, or
//   cmake --preset bench && cmake --build --preset bench
//   build/bench/bench/bench_ring_buffer --benchmark_min_time=0.2

#include <atomic_queue/atomic_queue.h>
#include <benchmark/benchmark.h>
#include <concurrentqueue/concurrentqueue.h>
#include <boost/lockfree/queue.hpp>
#if EVENTBUS_BENCH_HAVE_TBB
#include <tbb/concurrent_queue.h>
#endif

#include <eventbus/eventbus.hpp>

#include "common.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>

namespace {

constexpr std::size_t capacity = 1024;
constexpr std::uint64_t items_per_transfer = std::uint64_t{1} << 20;
constexpr std::size_t line = eventbus::cache_line_size;

using eventbus_bench::spin_wait;

// A 32-byte element: a sequence number plus payload, nothrow-movable as the ring requires.
struct payload32 {
    std::uint64_t seq = 0;
    std::array<std::uint64_t, 3> data{};

    payload32() noexcept = default;
    explicit payload32(std::uint64_t value) noexcept : seq(value), data{value, value, value} {}
};
static_assert(sizeof(payload32) == 32);

inline std::uint64_t key_of(std::uint64_t value) noexcept {
    return value;
}
inline std::uint64_t key_of(const payload32& value) noexcept {
    return value.seq;
}

// Adapters: one interface for every queue. `try_push` / `try_pop` return false when full / empty.
// Each adapter is created on the heap (over-aligned members) and never moved.

template <class T, class Policy>
class eventbus_queue {
  public:
    explicit eventbus_queue(std::size_t cap) : ring_(cap) {}
    bool try_push(T value) noexcept { return !ring_.try_push(std::move(value)); }
    bool try_pop(T& out) noexcept {
        std::optional<T> value = ring_.try_pop();
        if (!value)
            return false;
        out = std::move(*value);
        return true;
    }

  private:
    eventbus::ring_buffer<T, Policy> ring_;
};

// The waiting API under `block`: never reports full or empty; it spins, then sleeps.
template <class T>
class eventbus_waiting_queue {
  public:
    explicit eventbus_waiting_queue(std::size_t cap) : ring_(cap) {}
    bool try_push(T value) { return !ring_.push(ctx_, std::move(value)); }
    bool try_pop(T& out) {
        eventbus::pop_result<T> result = ring_.pop(ctx_);
        if (!result)
            return false;
        out = std::move(*result.value);
        return true;
    }

  private:
    const eventbus::context ctx_{};
    eventbus::ring_buffer<T, eventbus::block> ring_;
};

// Compile-time capacity. 1024 < 64 * 64 states, so atomic_queue does not shuffle indices here.
template <class T>
class atomic_queue2 {
  public:
    explicit atomic_queue2(std::size_t) {}
    bool try_push(T value) noexcept { return queue_.try_push(std::move(value)); }
    bool try_pop(T& out) noexcept { return queue_.try_pop(out); }

  private:
    atomic_queue::AtomicQueue2<T, static_cast<unsigned>(capacity)> queue_;
};

// Run-time capacity. Note: AtomicQueueB2 rounds a capacity below 4096 up to 4096.
template <class T>
class atomic_queue_b2 {
  public:
    explicit atomic_queue_b2(std::size_t cap) : queue_(static_cast<unsigned>(cap)) {}
    bool try_push(T value) noexcept { return queue_.try_push(std::move(value)); }
    bool try_pop(T& out) noexcept { return queue_.try_pop(out); }

  private:
    atomic_queue::AtomicQueueB2<T> queue_;
};

// Unbounded by design; try_enqueue never allocates, so the preallocated blocks bound it.
template <class T>
class moodycamel_queue {
  public:
    explicit moodycamel_queue(std::size_t cap) : queue_(cap) {}
    bool try_push(T value) noexcept { return queue_.try_enqueue(std::move(value)); }
    bool try_pop(T& out) noexcept { return queue_.try_dequeue(out); }

  private:
    moodycamel::ConcurrentQueue<T> queue_;
};

// With a producer token and a consumer token, each used by one thread only (own cache lines).
template <class T>
class moodycamel_token_queue {
  public:
    explicit moodycamel_token_queue(std::size_t cap)
        : queue_(cap), producer_(queue_), consumer_(queue_) {}
    bool try_push(T value) noexcept {
        return queue_.try_enqueue(producer_.token, std::move(value));
    }
    bool try_pop(T& out) noexcept { return queue_.try_dequeue(consumer_.token, out); }

  private:
    moodycamel::ConcurrentQueue<T> queue_;
    struct alignas(line) producer_slot {
        explicit producer_slot(moodycamel::ConcurrentQueue<T>& q) : token(q) {}
        moodycamel::ProducerToken token;
    } producer_;
    struct alignas(line) consumer_slot {
        explicit consumer_slot(moodycamel::ConcurrentQueue<T>& q) : token(q) {}
        moodycamel::ConsumerToken token;
    } consumer_;
};

template <class T>
class boost_lockfree_queue {
  public:
    explicit boost_lockfree_queue(std::size_t) {}
    bool try_push(T value) noexcept { return queue_.bounded_push(value); }
    bool try_pop(T& out) noexcept { return queue_.pop(out); }

  private:
    boost::lockfree::queue<T, boost::lockfree::capacity<capacity>> queue_;
};

#if EVENTBUS_BENCH_HAVE_TBB
template <class T>
class tbb_bounded_queue {
  public:
    explicit tbb_bounded_queue(std::size_t cap) {
        queue_.set_capacity(static_cast<std::ptrdiff_t>(cap));
    }
    bool try_push(T value) { return queue_.try_push(std::move(value)); }
    bool try_pop(T& out) { return queue_.try_pop(out); }

  private:
    tbb::concurrent_bounded_queue<T> queue_;
};
#endif

template <class T>
class mutex_deque {
  public:
    explicit mutex_deque(std::size_t cap) : capacity_(cap) {}
    bool try_push(T value) {
        std::lock_guard lock(mutex_);
        if (queue_.size() >= capacity_)
            return false;
        queue_.push_back(std::move(value));
        return true;
    }
    bool try_pop(T& out) {
        std::lock_guard lock(mutex_);
        if (queue_.empty())
            return false;
        out = std::move(queue_.front());
        queue_.pop_front();
        return true;
    }

  private:
    std::mutex mutex_;
    std::deque<T> queue_;
    std::size_t capacity_;
};

// Scenarios ///////////////////////////////////////////////////////////////////////////////////

// One thread pushes one element and pops it again; the popped value is checked and kept alive.
template <class Queue, class T>
void bm_push_pop(benchmark::State& state) {
    auto queue = std::make_unique<Queue>(capacity);
    std::uint64_t next = 1;
    for (auto _ : state) {
        if (!queue->try_push(T(next))) {
            state.SkipWithError("push into an empty queue failed");
            break;
        }
        T out{};
        if (!queue->try_pop(out) || key_of(out) != next) {
            state.SkipWithError("pop did not return the element just pushed");
            break;
        }
        benchmark::DoNotOptimize(out);
        ++next;
    }
    state.SetItemsProcessed(state.iterations());
}

// The calling thread produces 1..N, a consumer thread receives them; timed in real time. The
// consumer is started inside the timed region (tens of microseconds against milliseconds of
// transfer) so that both threads see the same queue from an idle start each iteration.
template <class Queue, class T>
void bm_1p1c(benchmark::State& state) {
    const std::uint64_t items = items_per_transfer;
    const std::uint64_t expected_sum = items * (items + 1) / 2;
    auto queue = std::make_unique<Queue>(capacity);
    for (auto _ : state) {
        // Written once by the consumer at the end: no sharing with the producer's stack.
        std::uint64_t sum = 0;
        std::uint64_t out_of_order = 0;
        std::thread consumer([&queue, &sum, &out_of_order] {
            std::uint64_t local_sum = 0;
            std::uint64_t local_out_of_order = 0;
            std::uint64_t expected = 1;
            for (std::uint64_t received = 0; received < items; ++received) {
                T value{};
                for (spin_wait wait; !queue->try_pop(value);)
                    wait();
                benchmark::DoNotOptimize(value);
                const std::uint64_t key = key_of(value);
                if (key != expected)
                    ++local_out_of_order;
                expected = key + 1;
                local_sum += key;
            }
            sum = local_sum;
            out_of_order = local_out_of_order;
        });
        for (std::uint64_t value = 1; value <= items; ++value) {
            for (spin_wait wait; !queue->try_push(T(value));)
                wait();
        }
        consumer.join();
        if (sum != expected_sum) {
            state.SkipWithError("consumer did not receive every item exactly once");
            break;
        }
        if (out_of_order != 0) {
            state.SkipWithError("consumer received items out of order");
            break;
        }
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) *
                            static_cast<std::int64_t>(items));
}

void add(const std::string& name, void (*fn)(benchmark::State&), bool threaded) {
    benchmark::internal::Benchmark* b = benchmark::RegisterBenchmark(name.c_str(), fn);
    if (threaded)
        b->UseRealTime()->Unit(benchmark::kMillisecond);
}

// The queues that take any nothrow-movable T; PushPop32 runs only these.
template <class T>
void register_push_pop(const std::string& scenario, bool all_peers) {
    const std::string p = scenario + "/";
    add(p + "eventbus_drop_oldest", bm_push_pop<eventbus_queue<T, eventbus::drop_oldest>, T>,
        false);
    add(p + "eventbus_block", bm_push_pop<eventbus_queue<T, eventbus::block>, T>, false);
    add(p + "eventbus_return_error", bm_push_pop<eventbus_queue<T, eventbus::return_error>, T>,
        false);
    if (all_peers)
        add(p + "atomic_queue2", bm_push_pop<atomic_queue2<T>, T>, false);
    add(p + "atomic_queue_b2", bm_push_pop<atomic_queue_b2<T>, T>, false);
    if (all_peers) {
        add(p + "moodycamel", bm_push_pop<moodycamel_queue<T>, T>, false);
        add(p + "moodycamel_token", bm_push_pop<moodycamel_token_queue<T>, T>, false);
        add(p + "boost_lockfree", bm_push_pop<boost_lockfree_queue<T>, T>, false);
#if EVENTBUS_BENCH_HAVE_TBB
        add(p + "tbb_bounded", bm_push_pop<tbb_bounded_queue<T>, T>, false);
#endif
    }
    add(p + "mutex_deque", bm_push_pop<mutex_deque<T>, T>, false);
}

void register_1p1c() {
    using u64 = std::uint64_t;
    const std::string p = "BM_1p1c/";
    add(p + "eventbus_block", bm_1p1c<eventbus_queue<u64, eventbus::block>, u64>, true);
    add(p + "eventbus_return_error", bm_1p1c<eventbus_queue<u64, eventbus::return_error>, u64>,
        true);
    add(p + "eventbus_block_wait", bm_1p1c<eventbus_waiting_queue<u64>, u64>, true);
    add(p + "atomic_queue2", bm_1p1c<atomic_queue2<u64>, u64>, true);
    add(p + "atomic_queue_b2", bm_1p1c<atomic_queue_b2<u64>, u64>, true);
    add(p + "moodycamel", bm_1p1c<moodycamel_queue<u64>, u64>, true);
    add(p + "moodycamel_token", bm_1p1c<moodycamel_token_queue<u64>, u64>, true);
    add(p + "boost_lockfree", bm_1p1c<boost_lockfree_queue<u64>, u64>, true);
#if EVENTBUS_BENCH_HAVE_TBB
    add(p + "tbb_bounded", bm_1p1c<tbb_bounded_queue<u64>, u64>, true);
#endif
    add(p + "mutex_deque", bm_1p1c<mutex_deque<u64>, u64>, true);
}

void register_benchmarks() {
    register_push_pop<std::uint64_t>("BM_PushPop", true);
    register_push_pop<payload32>("BM_PushPop32", false);
    register_1p1c();
}

}  // namespace

int main(int argc, char** argv) {
    return eventbus_bench::run(argc, argv, register_benchmarks);
}
