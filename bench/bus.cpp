// The headline comparison: eventbus as a typed event bus against what a user would otherwise
// write or pick, every peer in this same binary, one payload and one handler for all.
//
// Payload: struct price_tick { int id; double price; long qty; }, a typed event (its type is its
// key, stored inline in the ring slot). Event n (counted from 0 over the whole run) is
// {id n % 1024, price 100 + id / 4, qty n}. Handler: one lambda that counts the event and adds
// id + qty into a sink captured by reference; every variant calls it through one type-erased
// call (eventbus's dispatcher keeps it behind one function pointer; the peers hold a
// std::function<void(const price_tick&)>). After its loop each row checks the sink: as many calls
// as events subscribed and the sum of their id + qty, i.e. every event handled exactly once
// (SkipWithError otherwise).
//
// Names are `<scenario>/<variant>` (Google Benchmark appends `/real_time` to the async rows).
// One benchmark iteration is one event (state.KeepRunningBatch), and items processed =
// iterations, so the console's time column, items_per_second and scripts/bench_report.py all
// show ns per event. scripts/bench_report.py divides each row by the scenario's reference peer.
//
//   BM_SyncTyped/<variant>   one thread: per batch of 64 events, 64 subscribe(ctx, price_tick)
//                            then one publish(), which runs the handler on this thread. CPU time.
//     eventbus                   eventbus::dispatcher with `(void)d.on<price_tick>(fn)` (the
//                                registration dropped), eventbus::event_store<> (drop_oldest,
//                                multi-producer) of capacity 1024.
//     eventbus_registration_kept the same, with the eventbus::registration returned by on() kept
//                                for the whole row (the handler can be removed, so the store
//                                re-reads the handler table once per publish()).
//     eventbus_shared_tail       the first, after a second thread has subscribed once: the
//                                first producer no longer owns the ring's tail, so every
//                                subscribe claims its slot with a CAS (what several producing
//                                threads pay).
//     eventbus_single_producer   the first with store_options{.single_producer = true}.
//     eventbus_batch_handler     the first with the handler registered by on_batch<price_tick>:
//                                each publish()'s 64 events reach it as one std::span (one
//                                type-erased call per run; the lambda is called per element
//                                inside it, so that call can be inlined).
//     eventbus_latency_histograms the first with store_options{.latency_histograms = true}:
//                                a clock read per subscribe, one per event before its handler
//                                and one after it, and the histograms' counts (the cost of
//                                store_metrics::queue_wait and handler_duration).
//     mutex_deque_bus            REFERENCE. The bus a user writes by hand: subscribe = lock a
//                                std::mutex, push_back into a std::deque<price_tick>, unlock;
//                                publish = lock, swap the deque out into a local one, unlock, then
//                                per event find the handlers in a std::unordered_map<std::
//                                type_index, std::vector<std::function<void(const price_tick&)>>>
//                                and call them.
//     std_function_floor         no bus: each of the 64 events is handed straight to the handler
//                                through its std::function (made opaque so the call can be neither
//                                inlined nor skipped). The floor any bus adds its cost to.
//
//   BM_AsyncTyped/<variant>  one producer (the benchmark thread), one consumer thread running
//                            the handler. Per batch: 1 << 16 events subscribed, a publish() after
//                            every 64, then a drain that waits until all were handled; all timed,
//                            in real time. Bound: 1024 events; a full producer waits.
//     eventbus                   eventbus::event_store<eventbus::block>, capacity 1024,
//                                store_options{.async = true, .workers = 1}; subscribe waits while
//                                the ring is full; drain = store.drain(ctx).
//     eventbus_single_producer   the same plus .single_producer = true.
//     eventbus_latency_histograms the first plus .latency_histograms = true.
//     mutex_cv_queue             REFERENCE (with moodycamel_blocking: the faster of the two). A
//                                std::deque<price_tick> under a std::mutex, bounded to 1024
//                                queued (the producer waits on a not-full std::condition_variable;
//                                the batch being handled is no longer queued); the consumer
//                                sleeps on a condition variable, swaps the whole deque out under
//                                the lock and handles that batch outside it; publish() wakes it
//                                (notify_one); drain waits on a condition variable until the
//                                deque is empty and nothing is in flight.
//     moodycamel_blocking        moodycamel::BlockingConcurrentQueue<price_tick> with a
//                                ProducerToken; the consumer takes up to 64 at a time with
//                                wait_dequeue_bulk_timed (ConsumerToken, 10 ms timeout to see the
//                                stop flag) and counts what it handled in an atomic; the producer
//                                waits (spin_wait) while 1024 or more events are outstanding
//                                (subscribed and not yet handled); drain waits until handled ==
//                                subscribed. publish() does nothing.
//
// Waiting on the other thread (moodycamel's bound and drain) uses eventbus_bench::spin_wait, as
// every threaded benchmark here; eventbus and the mutex peer sleep in their own way. The two async
// peers depend on scheduling: on an idle 2-core machine their consumer keeps up, so every
// hand-off (a wake-up, a contended lock, a cache line moving between cores) carries few events;
// with other work on the machine the consumer falls behind, takes larger batches, and the same
// rows were measured 2-3x faster. Compare rows of one run, never across runs.
//
// Reproduce: scripts/bench (which runs this executable with 7 repetitions and prints the table
// "eventbus against the alternatives": medians, ratios, max/min over the repetitions), or
//   cmake --preset bench && cmake --build --preset bench
//   build/bench/bench/bench_bus --benchmark_repetitions=7 --benchmark_display_aggregates_only=true

#include <benchmark/benchmark.h>
#include <concurrentqueue/blockingconcurrentqueue.h>

#include <eventbus/eventbus.hpp>

#include "common.hpp"

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <typeindex>
#include <typeinfo>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

constexpr std::size_t capacity = 1024;
constexpr std::int64_t sync_batch = 64;                      // events per publish(), sync rows
constexpr std::int64_t async_batch = std::int64_t{1} << 16;  // events per drain, async rows
constexpr std::int64_t publish_every = 64;                   // async rows
constexpr std::size_t consumer_bulk = 64;                    // moodycamel: events per dequeue
constexpr std::int64_t consumer_timeout_us = 10'000;         // moodycamel: sees `stop` this often
constexpr std::size_t line = eventbus::cache_line_size;

using eventbus_bench::spin_wait;

// The payload ////////////////////////////////////////////////////////////////////////////////////

struct price_tick {
    int id;
    double price;
    long qty;
};
static_assert(sizeof(price_tick) <= eventbus::inline_payload_size);  // no allocation per event

constexpr std::int64_t instruments = 1024;

price_tick tick(std::int64_t n) noexcept {
    const auto id = static_cast<int>(n % instruments);
    return price_tick{id, 100.0 + 0.25 * id, static_cast<long>(n)};
}

// Sum of id + qty over the events 0 .. events - 1.
std::int64_t expected_sum(std::int64_t events) noexcept {
    const std::int64_t full = events / instruments;
    const std::int64_t rest = events % instruments;
    const std::int64_t ids = full * (instruments * (instruments - 1) / 2) + rest * (rest - 1) / 2;
    return ids + events * (events - 1) / 2;
}

// The handler ////////////////////////////////////////////////////////////////////////////////////

// What the handler updates. Written by one thread at a time (the producer in sync rows, the one
// consumer in async rows), read by the benchmark thread after the drain; on its own cache line.
struct alignas(line) sink {
    std::int64_t count = 0;
    std::int64_t sum = 0;
};

auto make_handler(sink& s) {
    return [&s](const price_tick& t) {
        ++s.count;
        s.sum += t.id + t.qty;
    };
}

using handler_fn = std::function<void(const price_tick&)>;

// Returns `p`, which the optimizer can then no longer trace to the object it points to.
template <class T>
T* opaque(T* p) noexcept {
    asm volatile("" : "+r"(p));
    return p;
}

// After a row: every event 0 .. events - 1 handled exactly once (count and sum).
void check_sink(benchmark::State& state, const sink& s, std::int64_t events) {
    if (state.error_occurred())
        return;
    if (s.count != events || s.sum != expected_sum(events))
        state.SkipWithError("the handler did not see every event exactly once");
}

// Variants: one interface. `subscribe` returns false on failure; `publish` makes what was
// subscribed eligible (sync: handles it on the caller); `drain` (async) waits until everything
// subscribed has been handled. Created on the heap (over-aligned members), never moved.

// Sync /////////////////////////////////////////////////////////////////////////////////////////

template <bool KeepRegistration, bool SingleProducer, bool SharedTail = false, bool Latency = false>
class eventbus_sync {
  public:
    explicit eventbus_sync(sink& s)
        : registration_(register_handler(dispatcher_, make_handler(s)))
        , store_(dispatcher_, capacity,
                 eventbus::store_options{.single_producer = SingleProducer,
                                         .latency_histograms = Latency}) {
        if constexpr (SharedTail) {
            // A second producing thread ends the first producer's ownership of the tail: from
            // then on every subscribe claims its slot by CAS. Its event is handled (and
            // counted in the sink) by a publish() before the row starts.
            std::thread([this] { (void)store_.subscribe(ctx_, price_tick{0, 100.0, 0}); }).join();
            (void)store_.subscribe(ctx_, price_tick{0, 100.0, 0});
            store_.publish();
        }
    }

    bool subscribe(price_tick t) { return !store_.subscribe(ctx_, std::move(t)); }
    void publish() { store_.publish(); }

  private:
    template <class Fn>
    static eventbus::registration register_handler(eventbus::dispatcher& d, Fn fn) {
        if constexpr (KeepRegistration) {
            return d.on<price_tick>(std::move(fn));
        } else {
            (void)d.on<price_tick>(std::move(fn));
            return {};
        }
    }

    const eventbus::context ctx_{};
    eventbus::dispatcher dispatcher_;      // outlives the store (declared first)
    eventbus::registration registration_;  // empty unless KeepRegistration
    eventbus::event_store<> store_;
};

// The first eventbus variant with the handler registered as a batch handler: one type-erased
// call per run of events (here each publish()'s 64), the handler lambda called per element.
class eventbus_sync_batch {
  public:
    explicit eventbus_sync_batch(sink& s) : store_(dispatcher_, capacity) {
        (void)dispatcher_.on_batch<price_tick>(
            [handler = make_handler(s)](std::span<const price_tick> run) {
                for (const price_tick& t : run)
                    handler(t);
            });
    }

    bool subscribe(price_tick t) { return !store_.subscribe(ctx_, std::move(t)); }
    void publish() { store_.publish(); }

  private:
    const eventbus::context ctx_{};
    eventbus::dispatcher dispatcher_;  // outlives the store (declared first)
    eventbus::event_store<> store_;
};

// The hand-written bus: one mutex, one deque, handlers looked up by type per event.
class mutex_deque_bus {
  public:
    explicit mutex_deque_bus(sink& s) { on<price_tick>(make_handler(s)); }

    bool subscribe(const price_tick& t) {
        std::lock_guard lock(mutex_);
        queue_.push_back(t);
        return true;
    }

    void publish() {
        std::deque<price_tick> batch;
        {
            std::lock_guard lock(mutex_);
            batch.swap(queue_);
        }
        for (const price_tick& t : batch) {
            const auto found = handlers_.find(std::type_index(typeid(price_tick)));
            if (found == handlers_.end())
                continue;
            for (const handler_fn& fn : found->second)
                fn(t);
        }
    }

  private:
    template <class T, class Fn>
    void on(Fn fn) {
        handlers_[std::type_index(typeid(T))].emplace_back(std::move(fn));
    }

    std::unordered_map<std::type_index, std::vector<handler_fn>> handlers_;
    std::mutex mutex_;
    std::deque<price_tick> queue_;
};

// The floor: the handler called directly through its std::function. The function object is
// reached through a pointer the compiler cannot follow (an empty asm statement "changes" it), so
// the call is neither inlined nor removed. Not benchmark::DoNotOptimize(call_): with Google
// Benchmark 1.7's read-write constraint ("+m,r") GCC 12 -O2 called through a garbage pointer here.
class std_function_floor {
  public:
    explicit std_function_floor(sink& s) : handler_(make_handler(s)), call_(opaque(&handler_)) {}

    bool subscribe(const price_tick& t) {
        (*call_)(t);
        return true;
    }
    void publish() noexcept {}

  private:
    handler_fn handler_;
    const handler_fn* call_;
};

template <class Variant>
void bm_sync_typed(benchmark::State& state) {
    sink s;  // outlives the variant, which calls the handler
    auto variant = std::make_unique<Variant>(s);
    // Untimed warm-up, the same for every variant: the first pass over a ring's memory (page
    // faults, cold caches) is not what a running bus costs.
    for (std::int64_t i = 0; i < 4096; ++i) {
        (void)variant->subscribe(tick(i));
        if (i % sync_batch == sync_batch - 1)
            variant->publish();
    }
    variant->publish();
    s = sink{};  // what a variant's set-up and warm-up handled is not part of the row
    std::int64_t n = 0;
    std::int64_t refused = 0;
    while (state.KeepRunningBatch(sync_batch)) {
        for (std::int64_t i = 0; i < sync_batch; ++i)
            if (!variant->subscribe(tick(n++)))
                ++refused;
        variant->publish();
    }
    if (refused != 0)
        state.SkipWithError("subscribe refused an event");
    check_sink(state, s, n);
    state.SetItemsProcessed(n);
}

// Async ////////////////////////////////////////////////////////////////////////////////////////

template <bool SingleProducer, bool Latency = false>
class eventbus_async {
  public:
    explicit eventbus_async(sink& s)
        : store_(register_handler(dispatcher_, s), capacity,
                 eventbus::store_options{.async = true,
                                         .workers = 1,
                                         .single_producer = SingleProducer,
                                         .latency_histograms = Latency}) {}

    bool subscribe(price_tick t) { return !store_.subscribe(ctx_, std::move(t)); }
    void publish() { store_.publish(); }
    bool drain() { return !store_.drain(ctx_); }

  private:
    // Before the store starts its worker.
    static eventbus::dispatcher& register_handler(eventbus::dispatcher& d, sink& s) {
        (void)d.on<price_tick>(make_handler(s));
        return d;
    }

    const eventbus::context ctx_{};
    eventbus::dispatcher dispatcher_;  // outlives the store (declared first)
    eventbus::event_store<eventbus::block> store_;
};

// A bounded deque under a mutex; the consumer takes everything queued at once.
class mutex_cv_queue {
  public:
    explicit mutex_cv_queue(sink& s)
        : handler_(make_handler(s)), consumer_([this] { consume(); }) {}
    mutex_cv_queue(const mutex_cv_queue&) = delete;
    mutex_cv_queue& operator=(const mutex_cv_queue&) = delete;
    ~mutex_cv_queue() {
        {
            std::lock_guard lock(mutex_);
            stopping_ = true;
        }
        work_cv_.notify_one();
        consumer_.join();
    }

    // Wakes the consumer only from publish() (every 64 events), as eventbus makes events
    // eligible; measured here, a notify per event that finds the deque empty costs the peer about
    // 25% more. A producer that finds the deque full wakes the consumer before it waits.
    bool subscribe(const price_tick& t) {
        std::unique_lock lock(mutex_);
        if (queue_.size() >= capacity) {
            work_cv_.notify_one();
            not_full_cv_.wait(lock, [this] { return queue_.size() < capacity; });
        }
        queue_.push_back(t);
        return true;
    }
    void publish() noexcept { work_cv_.notify_one(); }
    bool drain() {
        work_cv_.notify_one();
        std::unique_lock lock(mutex_);
        idle_cv_.wait(lock, [this] { return queue_.empty() && in_flight_ == 0; });
        return true;
    }

  private:
    void consume() {
        std::deque<price_tick> batch;
        for (;;) {
            {
                std::unique_lock lock(mutex_);
                work_cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
                if (queue_.empty())
                    return;  // stopping, nothing left
                batch.swap(queue_);
                in_flight_ = batch.size();
            }
            not_full_cv_.notify_one();
            for (const price_tick& t : batch)
                handler_(t);
            batch.clear();
            bool idle = false;
            {
                std::lock_guard lock(mutex_);
                in_flight_ = 0;
                idle = queue_.empty();
            }
            if (idle)
                idle_cv_.notify_all();
        }
    }

    handler_fn handler_;
    std::mutex mutex_;
    std::condition_variable work_cv_;      // consumer: an event was queued (or stopping)
    std::condition_variable not_full_cv_;  // producer: the deque was emptied
    std::condition_variable idle_cv_;      // drain: deque empty, nothing in flight
    std::deque<price_tick> queue_;
    std::size_t in_flight_ = 0;
    bool stopping_ = false;
    std::thread consumer_;  // last: starts once everything above exists
};

// moodycamel's blocking queue, bounded by the count of events handled.
class moodycamel_blocking {
  public:
    explicit moodycamel_blocking(sink& s)
        : handler_(make_handler(s))
        , queue_(capacity)
        , token_(queue_)
        , consumer_([this] { consume(); }) {}
    moodycamel_blocking(const moodycamel_blocking&) = delete;
    moodycamel_blocking& operator=(const moodycamel_blocking&) = delete;
    ~moodycamel_blocking() {
        stop_.store(true, std::memory_order_relaxed);
        consumer_.join();
    }

    // The producer re-reads the consumer's count only when its last view says the bound is
    // reached, so the count's cache line does not move between the cores on every event.
    bool subscribe(const price_tick& t) {
        for (spin_wait wait; produced_ - handled_seen_ >= capacity; wait())
            handled_seen_ = handled_.load(std::memory_order_acquire);
        if (!queue_.enqueue(token_, t))
            return false;
        ++produced_;
        return true;
    }
    void publish() noexcept {}
    bool drain() {
        for (spin_wait wait; handled_.load(std::memory_order_acquire) != produced_;)
            wait();
        return true;
    }

  private:
    void consume() {
        moodycamel::ConsumerToken token(queue_);
        std::array<price_tick, consumer_bulk> batch{};
        while (!stop_.load(std::memory_order_relaxed)) {
            const std::size_t taken = queue_.wait_dequeue_bulk_timed(
                token, batch.begin(), batch.size(), consumer_timeout_us);
            for (std::size_t i = 0; i < taken; ++i)
                handler_(batch[i]);
            if (taken != 0)
                handled_.fetch_add(taken, std::memory_order_release);
        }
    }

    handler_fn handler_;
    moodycamel::BlockingConcurrentQueue<price_tick> queue_;
    moodycamel::ProducerToken token_;
    std::size_t produced_ = 0;      // the producer's own count
    std::size_t handled_seen_ = 0;  // the producer's last view of handled_
    alignas(line) std::atomic<std::size_t> handled_{0};
    alignas(line) std::atomic<bool> stop_{false};
    std::thread consumer_;  // last: starts once everything above exists
};

template <class Variant>
void bm_async_typed(benchmark::State& state) {
    sink s;  // outlives the variant, whose consumer calls the handler
    auto variant = std::make_unique<Variant>(s);
    std::int64_t n = 0;
    std::int64_t refused = 0;
    bool drained = true;
    while (drained && state.KeepRunningBatch(async_batch)) {
        for (std::int64_t i = 1; i <= async_batch; ++i) {
            if (!variant->subscribe(tick(n++)))
                ++refused;
            if (i % publish_every == 0)
                variant->publish();
        }
        variant->publish();
        drained = variant->drain();
    }
    if (!drained)
        state.SkipWithError("drain failed");
    else if (refused != 0)
        state.SkipWithError("subscribe refused an event");
    check_sink(state, s, n);
    state.SetItemsProcessed(n);
}

// Registration //////////////////////////////////////////////////////////////////////////////////

void register_benchmarks() {
    benchmark::RegisterBenchmark("BM_SyncTyped/eventbus",
                                 bm_sync_typed<eventbus_sync<false, false>>);
    benchmark::RegisterBenchmark("BM_SyncTyped/eventbus_registration_kept",
                                 bm_sync_typed<eventbus_sync<true, false>>);
    benchmark::RegisterBenchmark("BM_SyncTyped/eventbus_shared_tail",
                                 bm_sync_typed<eventbus_sync<false, false, true>>);
    benchmark::RegisterBenchmark("BM_SyncTyped/eventbus_single_producer",
                                 bm_sync_typed<eventbus_sync<false, true>>);
    benchmark::RegisterBenchmark("BM_SyncTyped/eventbus_batch_handler",
                                 bm_sync_typed<eventbus_sync_batch>);
    benchmark::RegisterBenchmark("BM_SyncTyped/eventbus_latency_histograms",
                                 bm_sync_typed<eventbus_sync<false, false, false, true>>);
    benchmark::RegisterBenchmark("BM_SyncTyped/mutex_deque_bus", bm_sync_typed<mutex_deque_bus>);
    benchmark::RegisterBenchmark("BM_SyncTyped/std_function_floor",
                                 bm_sync_typed<std_function_floor>);

    benchmark::RegisterBenchmark("BM_AsyncTyped/eventbus", bm_async_typed<eventbus_async<false>>)
        ->UseRealTime();
    benchmark::RegisterBenchmark("BM_AsyncTyped/eventbus_single_producer",
                                 bm_async_typed<eventbus_async<true>>)
        ->UseRealTime();
    benchmark::RegisterBenchmark("BM_AsyncTyped/eventbus_latency_histograms",
                                 bm_async_typed<eventbus_async<false, true>>)
        ->UseRealTime();
    benchmark::RegisterBenchmark("BM_AsyncTyped/mutex_cv_queue", bm_async_typed<mutex_cv_queue>)
        ->UseRealTime();
    benchmark::RegisterBenchmark("BM_AsyncTyped/moodycamel_blocking",
                                 bm_async_typed<moodycamel_blocking>)
        ->UseRealTime();
}

}  // namespace

int main(int argc, char** argv) {
    return eventbus_bench::run(argc, argv, register_benchmarks);
}
