// Benchmarks of eventbus::event_store in async mode (worker threads) against a plain
// std::mutex + std::condition_variable + std::deque worker pool, all in one binary.
//
// Names are `<scenario>/<variant>` (Google Benchmark appends `/real_time` or `/manual_time`), so
// a report can divide every peer row by the `eventbus` row of its scenario:
//   BM_AsyncThroughput_p<P>_w<W>/<variant>  P producer threads subscribe 1 << 16 dynamic events
//                     per iteration (a publish() after every 64 per producer), W workers run the
//                     handler, then drain(); checked: every event handled once (count and sum of
//                     an arg). One item = one event; timed in real time. P/W are part of the
//                     scenario so that each peer row gets its ratio to the eventbus row with the
//                     same P and W.
//   BM_AsyncLatency/<variant>_w1  ping-pong with one worker: the producer stamps steady_clock
//                     into the event's args just before subscribe (+ publish for eventbus), the
//                     handler records now - stamp on entry, the producer waits for that handler
//                     before sending the next event. The iteration time is that latency (manual
//                     time), so ns per item is the mean; p50_ns and p99_ns are counters.
//
// Both sides use eventbus::event (building its args map is timed for both), the same handler
// lambda, capacity 1024 and the same producer code. The peer (mutex_cv_pool) looks the handler up
// by projection in an std::unordered_map<std::string, std::function> and calls it, as the
// dispatcher does; producers wait on a condition variable when 1024 events are queued (eventbus
// uses the `block` policy), workers take one event at a time under the lock, and drain() waits
// until the queue is empty and no event is in flight.
//
// Reproduce: scripts/bench, or
//   cmake --preset bench && cmake --build --preset bench
//   build/bench/bench/bench_event_store --benchmark_min_time=0.2

#include <benchmark/benchmark.h>

#include <eventbus/eventbus.hpp>

#include "common.hpp"

#include <algorithm>
#include <any>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

constexpr std::size_t capacity = 1024;
constexpr std::int64_t events_per_iteration = std::int64_t{1} << 16;
constexpr std::int64_t publish_every = 64;
constexpr std::size_t line = eventbus::cache_line_size;

using eventbus_bench::spin_wait;

std::int64_t now_ns() noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// Variants: one interface. `subscribe` returns false on failure; `publish` makes what was
// subscribed eligible (a no-op for the peer, whose events are eligible at once); `drain` waits
// until everything subscribed and published has been handled. Created on the heap, never moved.

class eventbus_variant {
  public:
    template <class Fn>
    eventbus_variant(std::size_t workers, Fn fn)
        : store_(init(dispatcher_, std::move(fn)), capacity,
                 eventbus::store_options{.async = true, .workers = workers}) {}

    bool subscribe(eventbus::event ev) { return !store_.subscribe(ctx_, std::move(ev)); }
    void publish() { store_.publish(); }
    bool drain() { return !store_.drain(ctx_); }

  private:
    template <class Fn>
    static eventbus::dispatcher& init(eventbus::dispatcher& d, Fn fn) {
        (void)d.on("tick", std::move(fn));
        return d;
    }

    const eventbus::context ctx_{};
    eventbus::dispatcher dispatcher_;  // outlives the store (declared first)
    eventbus::event_store<eventbus::block> store_;
};

// The peer: a minimal, fair thread pool on one mutex and three condition variables.
class mutex_cv_pool {
  public:
    template <class Fn>
    mutex_cv_pool(std::size_t workers, Fn fn) {
        // Wrapped like the dispatcher wraps a void handler.
        handlers_.emplace("tick", [fn = std::move(fn)](const eventbus::context& ctx,
                                                       const eventbus::args& a) mutable {
            fn(ctx, a);
            return eventbus::result{};
        });
        workers_.reserve(workers);
        for (std::size_t i = 0; i < workers; ++i)
            workers_.emplace_back([this] { work(); });
    }
    mutex_cv_pool(const mutex_cv_pool&) = delete;
    mutex_cv_pool& operator=(const mutex_cv_pool&) = delete;
    ~mutex_cv_pool() {
        {
            std::lock_guard lock(mutex_);
            stopping_ = true;
        }
        work_cv_.notify_all();
        for (auto& worker : workers_)
            worker.join();
    }

    bool subscribe(eventbus::event ev) {
        {
            std::unique_lock lock(mutex_);
            not_full_cv_.wait(lock, [this] { return queue_.size() < capacity; });
            queue_.push_back(std::move(ev));
        }
        work_cv_.notify_one();
        return true;
    }
    void publish() noexcept {}
    bool drain() {
        std::unique_lock lock(mutex_);
        idle_cv_.wait(lock, [this] { return queue_.empty() && in_flight_ == 0; });
        return true;
    }

  private:
    struct string_hash {
        using is_transparent = void;
        std::size_t operator()(std::string_view s) const noexcept {
            return std::hash<std::string_view>{}(s);
        }
    };
    using handler_fn =
        std::function<eventbus::result(const eventbus::context&, const eventbus::args&)>;

    void work() {
        for (;;) {
            eventbus::event ev;
            {
                std::unique_lock lock(mutex_);
                work_cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
                if (queue_.empty())
                    return;  // stopping, nothing left
                ev = std::move(queue_.front());
                queue_.pop_front();
                ++in_flight_;
            }
            not_full_cv_.notify_one();
            const auto found = handlers_.find(ev.projection.name());
            if (found != handlers_.end()) {
                try {
                    (void)found->second(ctx_, ev.args);
                } catch (...) {
                }
            }
            bool idle = false;
            {
                std::lock_guard lock(mutex_);
                --in_flight_;
                idle = queue_.empty() && in_flight_ == 0;
            }
            if (idle)
                idle_cv_.notify_all();
        }
    }

    const eventbus::context ctx_{};
    std::unordered_map<std::string, handler_fn, string_hash, std::equal_to<>> handlers_;
    std::mutex mutex_;
    std::condition_variable work_cv_;      // workers: an event was queued (or stopping)
    std::condition_variable not_full_cv_;  // producers: a slot was freed
    std::condition_variable idle_cv_;      // drain: queue empty, nothing in flight
    std::deque<eventbus::event> queue_;
    std::size_t in_flight_ = 0;
    bool stopping_ = false;
    std::vector<std::thread> workers_;
};

// Throughput //////////////////////////////////////////////////////////////////////////////////

// What the throughput handler updates: one counter per call, plus the sum of the `n` args.
struct tally {
    alignas(line) std::atomic<std::int64_t> count{0};
    std::atomic<std::int64_t> sum{0};
};

auto counting_handler(tally& t) {
    return [&t](const eventbus::context&, const eventbus::args& a) {
        t.sum.fetch_add(std::any_cast<std::int64_t>(a.at("n")), std::memory_order_relaxed);
        t.count.fetch_add(1, std::memory_order_relaxed);
    };
}

eventbus::event make_event(std::int64_t n) {
    return eventbus::event{.id = {}, .projection = "tick", .args = {{"n", n}}};
}

// The calling thread is producer 0; the other producers are started inside the timed region
// (tens of microseconds against milliseconds of events). The store or pool, with its workers, is
// built once per run, outside the timed region.
template <class Variant>
void bm_async_throughput(benchmark::State& state, std::int64_t producers, std::size_t workers) {
    const std::int64_t per_producer = events_per_iteration / producers;
    const std::int64_t events = per_producer * producers;
    const std::int64_t expected_sum = events * (events + 1) / 2;
    tally t;  // outlives the variant, whose workers call the handler
    auto variant = std::make_unique<Variant>(workers, counting_handler(t));
    for (auto _ : state) {
        t.count.store(0, std::memory_order_relaxed);
        t.sum.store(0, std::memory_order_relaxed);
        std::atomic<std::int64_t> failures{0};
        auto produce = [&variant, &failures, per_producer](std::int64_t first) {
            std::int64_t failed = 0;
            for (std::int64_t i = 0; i < per_producer; ++i) {
                if (!variant->subscribe(make_event(first + i)))
                    ++failed;
                if ((i + 1) % publish_every == 0)
                    variant->publish();
            }
            variant->publish();
            if (failed != 0)
                failures.fetch_add(failed, std::memory_order_relaxed);
        };
        std::vector<std::thread> others;
        others.reserve(static_cast<std::size_t>(producers - 1));
        for (std::int64_t p = 1; p < producers; ++p)
            others.emplace_back(produce, 1 + p * per_producer);
        produce(1);
        for (auto& producer : others)
            producer.join();
        if (!variant->drain()) {
            state.SkipWithError("drain failed");
            break;
        }
        if (failures.load(std::memory_order_relaxed) != 0) {
            state.SkipWithError("subscribe failed");
            break;
        }
        if (t.count.load(std::memory_order_relaxed) != events ||
            t.sum.load(std::memory_order_relaxed) != expected_sum) {
            state.SkipWithError("the handler did not see every event exactly once");
            break;
        }
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * events);
}

// Latency /////////////////////////////////////////////////////////////////////////////////////

// The latency handler's output: samples[seq] = handler start - stamp; `done` = seq + 1 after.
struct probe {
    std::vector<std::int64_t> samples;
    alignas(line) std::atomic<std::int64_t> done{0};
};

auto latency_handler(probe& p) {
    return [&p](const eventbus::context&, const eventbus::args& a) {
        const std::int64_t start = now_ns();
        const auto t0 = std::any_cast<std::int64_t>(a.at("t0"));
        const auto seq = std::any_cast<std::int64_t>(a.at("seq"));
        p.samples[static_cast<std::size_t>(seq)] = start - t0;
        p.done.store(seq + 1, std::memory_order_release);
    };
}

std::int64_t percentile(const std::vector<std::int64_t>& sorted, std::size_t count,
                        std::size_t percent) {
    if (count == 0)
        return 0;
    const std::size_t index = std::min(count - 1, count * percent / 100);
    return sorted[index];
}

// One event in flight at a time. The event (args map included) is built before the stamp, so
// the sample is subscribe (+ publish) -> handler start. Iteration time = the sample.
template <class Variant>
void bm_async_latency(benchmark::State& state) {
    probe p;
    p.samples.assign(static_cast<std::size_t>(state.max_iterations), 0);
    auto variant = std::make_unique<Variant>(1, latency_handler(p));
    std::int64_t seq = 0;
    for (auto _ : state) {
        if (static_cast<std::size_t>(seq) >= p.samples.size()) {
            state.SkipWithError("more iterations than max_iterations");
            break;
        }
        eventbus::event ev{
            .id = {}, .projection = "tick", .args = {{"t0", std::int64_t{0}}, {"seq", seq}}};
        std::int64_t* stamp = std::any_cast<std::int64_t>(&ev.args.find("t0")->second);
        *stamp = now_ns();
        if (!variant->subscribe(std::move(ev))) {
            state.SkipWithError("subscribe failed");
            break;
        }
        variant->publish();
        for (spin_wait wait; p.done.load(std::memory_order_acquire) != seq + 1;)
            wait();
        state.SetIterationTime(static_cast<double>(p.samples[static_cast<std::size_t>(seq)]) *
                               1e-9);
        ++seq;
    }
    if (!variant->drain())
        state.SkipWithError("drain failed");
    const auto count = static_cast<std::size_t>(seq);
    std::sort(p.samples.begin(), p.samples.begin() + seq);
    state.counters["p50_ns"] = static_cast<double>(percentile(p.samples, count, 50));
    state.counters["p99_ns"] = static_cast<double>(percentile(p.samples, count, 99));
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
}

// Registration ////////////////////////////////////////////////////////////////////////////////

void register_benchmarks() {
    for (const std::int64_t producers : {1, 2}) {
        for (const std::size_t workers : {std::size_t{1}, std::size_t{2}}) {
            const std::string p = "BM_AsyncThroughput_p" + std::to_string(producers) + "_w" +
                                  std::to_string(workers) + "/";
            benchmark::RegisterBenchmark((p + "eventbus").c_str(),
                                         bm_async_throughput<eventbus_variant>, producers, workers)
                ->UseRealTime()
                ->Unit(benchmark::kMillisecond);
            benchmark::RegisterBenchmark((p + "mutex_cv_pool").c_str(),
                                         bm_async_throughput<mutex_cv_pool>, producers, workers)
                ->UseRealTime()
                ->Unit(benchmark::kMillisecond);
        }
    }
    benchmark::RegisterBenchmark("BM_AsyncLatency/eventbus_w1", bm_async_latency<eventbus_variant>)
        ->UseManualTime()
        ->Unit(benchmark::kNanosecond);
    benchmark::RegisterBenchmark("BM_AsyncLatency/mutex_cv_pool_w1",
                                 bm_async_latency<mutex_cv_pool>)
        ->UseManualTime()
        ->Unit(benchmark::kNanosecond);
}

}  // namespace

int main(int argc, char** argv) {
    return eventbus_bench::run(argc, argv, register_benchmarks);
}
