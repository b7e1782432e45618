// Metrics: the log-linear latency histogram (its layout and its error bound against the exact
// percentiles of a known sample), and what a store's snapshot says: depth, high-water mark,
// rejected subscribes, and the queue-wait and handler-duration histograms, which must count
// every event taken from the ring and every handler call exactly once.
#include <eventbus/eventbus.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using eventbus::context;
using eventbus::dispatcher;
using eventbus::errc;
using eventbus::event;
using eventbus::event_store;
using eventbus::latency_histogram;
using eventbus::store_metrics;
using eventbus::store_options;

namespace {

struct tick {
    std::uint64_t n = 0;
};
struct other {
    int n = 0;
};

// A gate a handler waits at until the test opens it.
struct entry_gate {
    std::atomic<bool> open{false};
    std::atomic<int> waiting{0};
    void pass() {
        waiting.fetch_add(1);
        while (!open.load())
            std::this_thread::sleep_for(100us);
    }
};

}  // namespace

TEST_CASE("latency_histogram buckets tile 0 ns to 2^36 ns with bounded width", "[metrics]") {
    using H = latency_histogram;
    CHECK(H::lower_bound(0) == 0);
    for (std::size_t i = 0; i < H::bucket_count; ++i) {
        INFO("bucket " << i);
        REQUIRE(H::bucket_of(H::lower_bound(i)) == i);
        REQUIRE(H::bucket_of(H::upper_bound(i)) == i);
        if (i + 1 < H::bucket_count)
            REQUIRE(H::upper_bound(i) + 1 == H::lower_bound(i + 1));
        // A bucket is at most 1/32 of its lower bound wide (one nanosecond below 64 ns).
        const std::uint64_t width = H::upper_bound(i) - H::lower_bound(i) + 1;
        REQUIRE((width == 1 || width * 32 <= H::lower_bound(i)));
    }
    CHECK(H::upper_bound(H::bucket_count - 1) == H::max_tracked_ns);
    CHECK(H::max_tracked_ns >= std::uint64_t{60'000'000'000});  // at least 60 s
}

TEST_CASE("latency_histogram quantiles are within 1/64 of the exact ones", "[metrics]") {
    // Log-uniform from 1 ns to 60 s: every decade of the range is exercised.
    std::mt19937_64 random(20261207);
    std::uniform_real_distribution<double> exponent(0.0, std::log(60e9));
    std::vector<std::uint64_t> sample(200'000);
    latency_histogram h;
    for (auto& v : sample) {
        v = static_cast<std::uint64_t>(std::exp(exponent(random)));
        h.record(std::chrono::nanoseconds(static_cast<std::int64_t>(v)));
    }
    std::sort(sample.begin(), sample.end());
    REQUIRE(h.count() == sample.size());
    CHECK(h.overflow() == 0);
    CHECK(static_cast<std::uint64_t>(h.min().count()) == sample.front());
    CHECK(static_cast<std::uint64_t>(h.max().count()) == sample.back());
    double worst = 0.0;
    for (double q : {0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 0.9999, 1.0}) {
        const auto rank = std::max<std::size_t>(
            1, static_cast<std::size_t>(std::ceil(q * static_cast<double>(sample.size()))));
        const double exact = static_cast<double>(sample[rank - 1]);
        const double read = static_cast<double>(h.quantile(q).count());
        INFO("q=" << q << " exact=" << exact << " histogram=" << read);
        // Within half a bucket, a bucket being at most 1/32 of its lower bound wide.
        CHECK(std::abs(read - exact) <= exact / 64.0 + 1.0);
        worst = std::max(worst, std::abs(read - exact) / exact);
    }
    CHECK(worst <= 0.03);
    // The exact mean, from the exact sum.
    long double total = 0;
    for (auto v : sample)
        total += static_cast<long double>(v);
    CHECK(static_cast<long double>(h.sum().count()) == total);
}

TEST_CASE("latency_histogram merges, counts overflow and answers cumulative counts", "[metrics]") {
    latency_histogram a;
    latency_histogram b;
    latency_histogram both;
    for (std::int64_t ns = 0; ns < 5000; ns += 7) {
        (ns % 2 == 0 ? a : b).record(std::chrono::nanoseconds(ns));
        both.record(std::chrono::nanoseconds(ns));
    }
    a.merge(b);
    CHECK(a.count() == both.count());
    CHECK(a.sum() == both.sum());
    CHECK(a.min() == both.min());
    CHECK(a.max() == both.max());
    CHECK(std::ranges::equal(a.buckets(), both.buckets()));

    latency_histogram h;
    CHECK(h.empty());
    CHECK(h.quantile(0.5) == 0ns);
    CHECK(h.min() == 0ns);
    h.record(-5ns);  // counts as 0
    h.record(100s);  // beyond 2^36 ns
    CHECK(h.count() == 2);
    CHECK(h.overflow() == 1);
    CHECK(h.max() == 100s);
    CHECK(h.quantile(1.0) == 100s);
    CHECK(h.quantile(0.0) == 0ns);
    CHECK(h.count_at_or_below(1s) == 1);
    CHECK(h.count_at_or_below(100s) == 2);

    // Exact at bucket edges: 63 ns and 64 ns are in different buckets.
    latency_histogram edges;
    edges.record(63ns);
    edges.record(64ns);
    edges.record(65ns);
    CHECK(edges.count_at_or_below(62ns) == 0);
    CHECK(edges.count_at_or_below(63ns) == 1);
    CHECK(edges.count_at_or_below(65ns) == 3);  // 64 and 65 share a 2 ns bucket
    CHECK(edges.count_at_or_below(-1ns) == 0);
}

TEST_CASE("depth and high-water mark (sync)", "[metrics]") {
    dispatcher d;
    std::atomic<int> seen{0};
    d.on<tick>([&](const context&, const tick&) { seen.fetch_add(1); });
    event_store<eventbus::block> store(d, 256);
    const context ctx;
    for (std::uint64_t i = 0; i < 100; ++i)
        REQUIRE(!store.subscribe(ctx, tick{i}));
    store_metrics m = store.metrics();
    CHECK(m.depth == 100);
    CHECK(m.high_water == 100);  // at least what is waiting now
    store.publish();
    m = store.metrics();
    CHECK(m.depth == 0);
    CHECK(m.high_water == 100);
    CHECK(seen.load() == 100);
    for (std::uint64_t i = 0; i < 10; ++i)
        REQUIRE(!store.subscribe(ctx, tick{i}));
    store.publish();
    m = store.metrics();
    CHECK(m.high_water == 100);  // a mark, not the last depth
    CHECK_RECONCILES(m);
}

TEST_CASE("depth and high-water mark (async): events behind a busy worker", "[metrics]") {
    dispatcher d;
    entry_gate g;
    std::atomic<int> seen{0};
    d.on<tick>([&](const context&, const tick& t) {
        if (t.n == 0)
            g.pass();
        seen.fetch_add(1);
    });
    event_store<eventbus::block> store(d, 256, store_options{.async = true, .workers = 1});
    const context ctx;
    REQUIRE(!store.subscribe(ctx, tick{0}));
    store.publish();
    REQUIRE(eventbus_test::eventually([&] { return g.waiting.load() == 1; }));
    for (std::uint64_t i = 1; i <= 150; ++i)
        REQUIRE(!store.subscribe(ctx, tick{i}));
    store.publish();
    CHECK(store.metrics().depth == 150);
    g.open.store(true);
    REQUIRE(!store.drain(ctx));
    const store_metrics m = store.metrics();
    CHECK(seen.load() == 151);
    CHECK(m.depth == 0);
    CHECK(m.high_water == 150);  // what the worker found waiting when it came back
    CHECK_RECONCILES(m);
}

TEST_CASE("rejected counts refused subscribes and commits", "[metrics]") {
    dispatcher d;
    d.on<tick>([](const context&, const tick&) {});
    event_store<eventbus::return_error> store(d, 4);
    const context ctx;
    int refused = 0;
    for (std::uint64_t i = 0; i < 10; ++i)
        if (store.subscribe(ctx, tick{i}) == errc::buffer_full)
            ++refused;
    CHECK(refused == 6);
    CHECK(store.metrics().rejected == 6);
    CHECK(store.metrics().published == 4);
    store.publish();
    auto tx = store.begin_transaction();
    for (std::uint64_t i = 0; i < 3; ++i)
        REQUIRE(!tx.publish(tick{i}));
    REQUIRE(!store.close(ctx));
    CHECK(tx.commit(ctx) == errc::closed);
    CHECK(store.subscribe(ctx, tick{99}) == errc::closed);
    const store_metrics m = store.metrics();
    CHECK(m.rejected == 6 + 3 + 1);
    CHECK(m.published == 4);
    CHECK_RECONCILES(m);
}

TEST_CASE("latency histograms are empty unless asked for", "[metrics]") {
    dispatcher d;
    d.on<tick>([](const context&, const tick&) {});
    event_store<eventbus::block> store(d, 64);
    const context ctx;
    for (std::uint64_t i = 0; i < 20; ++i)
        REQUIRE(!store.subscribe(ctx, tick{i}));
    store.publish();
    const store_metrics m = store.metrics();
    CHECK(m.processed == 20);
    CHECK(m.queue_wait.empty());
    CHECK(m.handler_duration.empty());
}

TEST_CASE("latency histograms (sync): waits and durations are measured and counted once",
          "[metrics]") {
    dispatcher d;
    d.on<tick>([](const context&, const tick& t) {
        if (t.n < 5)
            std::this_thread::sleep_for(2ms);
    });
    d.on<tick>([](const context&, const tick&) {});  // a second handler: two calls per tick
    d.on("dynamic",
         [](const context&, const eventbus::args&) { std::this_thread::sleep_for(1ms); });
    event_store<eventbus::block> store(d, 256, store_options{.latency_histograms = true});
    const context ctx;
    for (std::uint64_t i = 0; i < 50; ++i)
        REQUIRE(!store.subscribe(ctx, tick{i}));
    REQUIRE(!store.subscribe(ctx, event{.id = "d1", .projection = "dynamic", .args = {}}));
    REQUIRE(!store.subscribe(ctx, other{1}));  // no handler: unhandled, still waited
    std::this_thread::sleep_for(5ms);
    store.publish();
    // The transaction's events and trigger() go through the other paths.
    auto tx = store.begin_transaction();
    REQUIRE(!tx.publish(tick{100}));
    REQUIRE(!tx.commit(ctx));
    REQUIRE(!store.trigger(ctx, tick{101}));
    const store_metrics m = store.metrics();
    CHECK_RECONCILES(m);
    CHECK(m.published == 53);
    CHECK(m.unhandled == 1);
    // Every event taken from the ring once; trigger() waits in no queue.
    CHECK(m.queue_wait.count() == m.published - m.dropped);
    // Every handler call once.
    CHECK(m.handler_duration.count() == m.processed);
    CHECK(m.processed == 2 * 52 + 1);
    // The events of the first publish waited at least the 5 ms before it; the dynamic event also
    // behind 5 ticks of 2 ms (it was handled after them). (all but the transaction's event,
    // committed after)
    CHECK(m.queue_wait.count_at_or_below(4900us) <= 1);
    CHECK(m.queue_wait.max() >= 15ms);
    CHECK(m.handler_duration.max() >= 2ms);
    CHECK(m.handler_duration.count_at_or_below(1ms) >= 2 * 52 + 1 - 6);
}

TEST_CASE("latency histograms (async, ordered and batch handlers) count every event once",
          "[metrics][stress]") {
    const std::size_t n = eventbus_test::scaled(20'000, 500);
    for (const bool ordered : {false, true}) {
        DYNAMIC_SECTION((ordered ? "ordered_by_key" : "unordered")) {
            dispatcher d;
            std::atomic<std::uint64_t> calls{0};
            d.on<tick>([&](const context&, const tick&) { calls.fetch_add(1); });
            d.on("k", [&](const context&, const eventbus::args&) { calls.fetch_add(1); });
            event_store<eventbus::block> store(d, 1024,
                                               store_options{.async = true,
                                                             .workers = 2,
                                                             .ordered_by_key = ordered,
                                                             .latency_histograms = true});
            const context ctx;
            std::atomic<std::size_t> failures{0};
            std::vector<std::thread> producers;
            for (int p = 0; p < 2; ++p)
                producers.emplace_back([&, p] {
                    for (std::size_t i = 0; i < n / 2; ++i) {
                        const std::error_code e =
                            (i % 4 == 0) ? store.subscribe(
                                               ctx, event{.id = {}, .projection = "k", .args = {}})
                                         : store.subscribe(ctx, tick{i + std::size_t(p) * n});
                        if (e)
                            failures.fetch_add(1);
                        if (i % 16 == 0)
                            store.publish();
                        // The metrics are read while events are being recorded.
                        if (i % 1024 == 0)
                            (void)store.metrics();
                    }
                    store.publish();
                });
            for (auto& t : producers)
                t.join();
            REQUIRE(!store.drain(ctx));
            const store_metrics m = store.metrics();
            CHECK(failures.load() == 0);
            CHECK_RECONCILES(m);
            CHECK(m.published == 2 * (n / 2));
            CHECK(calls.load() == m.processed);
            CHECK(m.queue_wait.count() == m.published);
            CHECK(m.handler_duration.count() == m.processed);
            CHECK(m.high_water <= 1024);
            CHECK(m.high_water >= 1);
        }
    }

    SECTION("a batch handler's call counts once") {
        dispatcher d;
        std::atomic<std::uint64_t> events{0};
        std::atomic<std::uint64_t> batches{0};
        d.on_batch<tick>([&](const context&, std::span<const tick> run) {
            events.fetch_add(run.size());
            batches.fetch_add(1);
        });
        event_store<eventbus::block> store(d, 1024, store_options{.latency_histograms = true});
        const context ctx;
        for (std::uint64_t i = 0; i < 300; ++i)
            REQUIRE(!store.subscribe(ctx, tick{i}));
        store.publish();
        const store_metrics m = store.metrics();
        CHECK(events.load() == 300);
        CHECK(m.queue_wait.count() == 300);
        CHECK(m.handler_duration.count() == batches.load());
        CHECK(batches.load() < 300);
    }
}

TEST_CASE(
    "drop_oldest: the high-water mark stays within the capacity, and dropped events are "
    "not waited for",
    "[metrics][stress]") {
    // A drop_oldest push moves the ring's tail before it drops the oldest event, so a worker
    // taking a batch meanwhile can see more than the capacity waiting.
    const std::size_t n = eventbus_test::scaled(60'000, 3'000);
    dispatcher d;
    std::atomic<std::uint64_t> calls{0};
    d.on<tick>([&](const context&, const tick&) { calls.fetch_add(1); });
    event_store<eventbus::drop_oldest> store(
        d, 8, store_options{.async = true, .workers = 2, .latency_histograms = true});
    const context ctx;
    std::vector<std::thread> producers;
    for (int p = 0; p < 3; ++p)
        producers.emplace_back([&] {
            for (std::size_t i = 0; i < n / 3; ++i) {
                (void)store.subscribe(ctx, tick{i});
                if (i % 4 == 0)
                    store.publish();
            }
            store.publish();
        });
    for (auto& t : producers)
        t.join();
    REQUIRE(!store.drain(ctx));
    const store_metrics m = store.metrics();
    CHECK_RECONCILES(m);
    CHECK(m.high_water <= 8);
    CHECK(m.published == 3 * (n / 3));
    CHECK(m.queue_wait.count() == m.published - m.dropped);
    CHECK(m.handler_duration.count() == m.processed);
    CHECK(calls.load() == m.processed);
}
