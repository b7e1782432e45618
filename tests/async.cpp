// event_store in async mode: workers fed straight from the ring, drain and close on atomic
// in-flight counters, idle workers asleep, per-key ordering, and every event handled once.
#include <eventbus/eventbus.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using eventbus::args;
using eventbus::block;
using eventbus::context;
using eventbus::dispatcher;
using eventbus::errc;
using eventbus::event;
using eventbus::event_store;
using eventbus::key;
using eventbus::result;
using eventbus::store_options;
using eventbus_test::eventually;
using eventbus_test::scaled;

namespace {

event make(key projection, eventbus::args a = {}) {
    return event{.id = "", .projection = std::move(projection), .args = std::move(a)};
}

store_options async_with(std::size_t workers) {
    return store_options{.async = true, .workers = workers};
}

// prefix + number. (Not `"k" + std::to_string(n)`: GCC 12 at -O3 reports a false -Wrestrict
// inside that operator+.)
std::string numbered(const char* prefix, int n) {
    std::string name(prefix);
    name += std::to_string(n);
    return name;
}

}  // namespace

TEST_CASE("async: 5 events, publish, drain gives metrics 5/5/0", "[async]") {
    std::atomic<int> calls{0};
    dispatcher handlers{{"e", [&](const context&, const args&) { calls.fetch_add(1); }}};
    event_store<> store(handlers, 64, async_with(2));
    CHECK(store.options().workers == 2);
    for (int i = 0; i < 5; ++i)
        REQUIRE_FALSE(store.subscribe({}, make("e")));
    store.publish();
    REQUIRE_FALSE(store.drain({}));
    CHECK(calls == 5);
    const auto m = store.metrics();
    CHECK(m.published == 5);
    CHECK(m.processed == 5);
    CHECK(m.handled == 5);
    CHECK(m.errors == 0);
    CHECK_RECONCILES(m);
}

TEST_CASE("async: zero workers means one per hardware thread", "[async]") {
    dispatcher handlers;
    event_store<> store(handlers, 8, async_with(0));
    CHECK(store.options().workers >= 1);
}

TEST_CASE("async: publish returns without waiting for handlers", "[async]") {
    eventbus_test::flag release;
    std::atomic<int> calls{0};
    dispatcher handlers{{"e", [&](const context&, const args&) {
                             release.wait();
                             calls.fetch_add(1);
                         }}};
    event_store<> store(handlers, 8, async_with(1));
    REQUIRE_FALSE(store.subscribe({}, make("e")));
    store.publish();  // would hang here if it waited
    CHECK(calls == 0);
    release.set();
    REQUIRE_FALSE(store.drain({}));
    CHECK(calls == 1);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("async: drain with a 10 ms deadline while a handler is still running", "[async]") {
    eventbus_test::gate slow;
    dispatcher handlers{{"slow", [&](const context&, const args&) { slow.pass(); }}};
    event_store<> store(handlers, 8, async_with(2));
    const eventbus_test::open_at_exit release_slow(slow);
    REQUIRE_FALSE(store.subscribe({}, make("slow")));
    store.publish();
    slow.entered.wait();
    const auto start = std::chrono::steady_clock::now();
    CHECK(store.drain(context{}.with_timeout(10ms)) == errc::deadline_exceeded);
    CHECK(std::chrono::steady_clock::now() - start >= 10ms);
    slow.opened.set();
    REQUIRE_FALSE(store.drain({}));  // still usable, and now it completes
    CHECK(store.metrics().processed == 1);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("async: drain handles events subscribed but never published", "[async]") {
    std::atomic<int> calls{0};
    dispatcher handlers{{"e", [&](const context&, const args&) { calls.fetch_add(1); }}};
    event_store<> store(handlers, 8, async_with(2));
    for (int i = 0; i < 3; ++i)
        REQUIRE_FALSE(store.subscribe({}, make("e")));
    REQUIRE_FALSE(store.drain(context{}.with_timeout(eventbus_test::patience)));
    CHECK(calls == 3);  // no publish() needed: drain publishes first
    CHECK(store.metrics().processed == 3);
    store.publish();
    REQUIRE_FALSE(store.drain({}));
    CHECK(calls == 3);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("async: close releases blocked producers with errc::closed and handles the rest",
          "[async]") {
    std::atomic<int> calls{0};
    dispatcher handlers{{"e", [&](const context&, const args&) { calls.fetch_add(1); }}};
    event_store<block> store(handlers, 2, async_with(2));
    REQUIRE_FALSE(store.subscribe({}, make("e")));
    REQUIRE_FALSE(store.subscribe({}, make("e")));  // full, nothing published yet
    std::vector<std::error_code> results(3);
    std::vector<std::atomic<eventbus_test::thread_id>> ids(results.size());
    {
        std::vector<std::jthread> producers;
        for (std::size_t p = 0; p < results.size(); ++p) {
            producers.emplace_back([&, p] {
                ids[p] = eventbus_test::current_thread_id();
                results[p] = store.subscribe({}, make("e"));
            });
        }
        // All three asleep in subscribe() before the close.
        CHECK(eventually([&] {
            for (const auto& id : ids)
                if (!eventbus_test::is_asleep(id))
                    return false;
            return true;
        }));
        REQUIRE_FALSE(store.close({}));
    }
    for (const auto& r : results)
        CHECK(r == errc::closed);
    CHECK(calls == 2);  // what was accepted is handled, though never published
    CHECK(store.metrics().processed == 2);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("async: publish and subscribe after close never crash", "[async]") {
    dispatcher handlers{{"e", [](const context&, const args&) {}}};
    event_store<> store(handlers, 8, async_with(2));
    REQUIRE_FALSE(store.close({}));
    CHECK(store.subscribe({}, make("e")) == errc::closed);
    store.publish();
    CHECK_FALSE(store.drain({}));
    CHECK_FALSE(store.close({}));
}

TEST_CASE("async: a throwing handler is counted and reported; the worker survives", "[async]") {
    std::atomic<int> ok_calls{0};
    dispatcher handlers{
        {"boom", [](const context&, const args&) -> result { throw std::runtime_error("boom"); }},
        {"ok", [&](const context&, const args&) { ok_calls.fetch_add(1); }},
    };
    event_store<> store(handlers, 64, async_with(1));
    std::atomic<int> reported{0};
    store.on_error([&](const context&, const event&, std::exception_ptr e) {
        if (e)
            reported.fetch_add(1);
    });
    for (int i = 0; i < 10; ++i) {
        REQUIRE_FALSE(store.subscribe({}, make("boom")));
        REQUIRE_FALSE(store.subscribe({}, make("ok")));
    }
    store.publish();
    REQUIRE_FALSE(store.drain({}));
    CHECK(reported == 10);
    CHECK(ok_calls == 10);
    const auto m = store.metrics();
    CHECK(m.errors == 10);
    CHECK(m.processed == 20);
    CHECK(m.handled == 20);  // a failed call still handles its event
    CHECK_RECONCILES(m);
}

TEST_CASE("async: a producer blocked on a full store is woken when a worker frees a slot",
          "[async]") {
    dispatcher handlers{{"e", [](const context&, const args&) {}}};
    event_store<block> store(handlers, 1, async_with(1));
    REQUIRE_FALSE(store.subscribe({}, make("e")));
    std::error_code result_code = errc::closed;
    std::atomic<eventbus_test::thread_id> id{0};
    std::jthread producer([&] {
        id = eventbus_test::current_thread_id();
        result_code = store.subscribe(context{}.with_timeout(eventbus_test::patience), make("e"));
    });
    CHECK(eventually([&] { return eventbus_test::is_asleep(id); }));  // waiting for room
    store.publish();  // the worker takes the first event, freeing the slot
    producer.join();
    CHECK_FALSE(result_code);
    store.publish();
    REQUIRE_FALSE(store.drain({}));
    CHECK(store.metrics().processed == 2);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("async: close with a cancelled context stops long handlers early", "[async]") {
    // The handler runs until its context ends (or gives up after a long time): it returns early
    // only if close() ended the handlers' context.
    std::atomic<bool> started{false};
    std::atomic<bool> saw_stop{false};
    dispatcher handlers{{"long", [&](const context& ctx, const args&) {
                             started = true;
                             saw_stop = eventually([&] { return ctx.done(); });
                         }}};
    {
        event_store<> store(handlers, 8, async_with(1));
        REQUIRE_FALSE(store.subscribe({}, make("long")));
        store.publish();
        while (!started)
            std::this_thread::yield();
        std::stop_source cancel;
        cancel.request_stop();
        CHECK(store.close(context(cancel.get_token())) == errc::cancelled);
    }  // the destructor waits for the handler, which stops early
    CHECK(saw_stop);
}

TEST_CASE("async: 4 producers x 2 workers, every event handled exactly once", "[async][stress]") {
    const std::size_t per_producer = scaled(250000, 2000);
    const std::size_t total = 4 * per_producer;
    auto seen = std::make_unique<std::atomic<std::uint8_t>[]>(total);
    dispatcher handlers{{"e", [&](const context&, const args& a) {
                             seen[std::any_cast<std::size_t>(a.at("n"))].fetch_add(1);
                         }}};
    event_store<block> store(handlers, 1024, async_with(2));
    std::atomic<int> failures{0};
    std::atomic<int> producing{4};
    {
        std::vector<std::jthread> threads;
        for (std::size_t p = 0; p < 4; ++p) {
            threads.emplace_back([&, p] {
                for (std::size_t i = 0; i < per_producer; ++i)
                    if (store.subscribe({}, make("e", {{"n", p * per_producer + i}})))
                        failures.fetch_add(1);
                producing.fetch_sub(1);
            });
        }
        threads.emplace_back([&] {
            while (producing > 0) {
                store.publish();
                std::this_thread::yield();
            }
        });
    }
    store.publish();
    REQUIRE_FALSE(store.drain({}));
    CHECK(failures == 0);
    CHECK(eventbus_test::not_exactly_once(seen.get(), total) == 0);
    const auto m = store.metrics();
    CHECK(m.published == total);
    CHECK(m.processed == total);
    CHECK(m.handled == total);
    CHECK_RECONCILES(m);
}

TEST_CASE("async: ordered_by_key keeps per-key FIFO and one-at-a-time with several workers",
          "[async][stress]") {
    constexpr int keys = 4;
    const int per_key = static_cast<int>(scaled(20000, 500));
    struct lane {
        std::vector<int> order;
        std::atomic<bool> busy{false};
        std::atomic<int> overlaps{0};
    };
    std::vector<lane> lanes(keys);
    std::atomic<int> parallel_now{0};
    std::atomic<int> max_parallel{0};
    dispatcher handlers;
    for (int k = 0; k < keys; ++k) {
        (void)handlers.on(numbered("k", k), [&, k](const context&, const args& a) {
            auto& l = lanes[static_cast<std::size_t>(k)];
            if (l.busy.exchange(true))
                l.overlaps.fetch_add(1);
            const int now = parallel_now.fetch_add(1) + 1;
            int seen_max = max_parallel.load();
            while (now > seen_max && !max_parallel.compare_exchange_weak(seen_max, now)) {
            }
            l.order.push_back(std::any_cast<int>(a.at("seq")));
            parallel_now.fetch_sub(1);
            l.busy.store(false);
        });
    }
    event_store<block> store(handlers, 256,
                             store_options{.async = true, .workers = 3, .ordered_by_key = true});
    for (int i = 0; i < per_key; ++i) {
        for (int k = 0; k < keys; ++k)
            REQUIRE_FALSE(store.subscribe({}, make(numbered("k", k), {{"seq", i}})));
        if (i % 16 == 0)
            store.publish();
    }
    store.publish();
    REQUIRE_FALSE(store.drain({}));
    for (int k = 0; k < keys; ++k) {
        const auto& l = lanes[static_cast<std::size_t>(k)];
        CAPTURE(k);
        CHECK(l.overlaps == 0);
        REQUIRE(l.order.size() == static_cast<std::size_t>(per_key));
        bool fifo = true;
        for (int i = 0; i < per_key; ++i)
            fifo = fifo && l.order[static_cast<std::size_t>(i)] == i;
        CHECK(fifo);
    }
    const auto m = store.metrics();
    CHECK(m.processed == static_cast<std::uint64_t>(keys * per_key));
    CHECK(m.handled == m.published);
    CHECK_RECONCILES(m);
}

#if defined(__linux__)
TEST_CASE("async: idle workers sleep instead of spinning", "[async]") {
    dispatcher handlers{{"e", [](const context&, const args&) {}}};
    const auto before = eventbus_test::threads_before();
    event_store<> store(handlers, 64, async_with(2));
    const auto workers = eventbus_test::started_since(before);
    REQUIRE(workers.size() == 2);
    // Give the workers something to do first, so they have been awake, then go idle.
    for (int i = 0; i < 10; ++i)
        REQUIRE_FALSE(store.subscribe({}, make("e")));
    store.publish();
    REQUIRE_FALSE(store.drain({}));
    // A worker that spins or yields is never asleep in the kernel.
    REQUIRE(eventually([&] { return eventbus_test::all_asleep(workers); }));
    // Nothing wakes an idle worker: one that polls would keep taking naps. (A couple are
    // allowed for spurious wake-ups.)
    const auto napped = eventbus_test::naps(workers);
    CHECK(eventbus_test::stays_false([&] { return eventbus_test::naps(workers) > napped + 2; },
                                     200ms));
}
#endif

TEST_CASE("async: after a close whose context ended, the destructor finishes the rest", "[async]") {
    // The first handler call holds the only worker until close() has given up.
    eventbus_test::gate first;
    std::atomic<int> calls{0};
    dispatcher handlers{{"e", [&](const context&, const args&) {
                             if (calls.fetch_add(1) == 0)
                                 first.pass();
                         }}};
    {
        event_store<> store(handlers, 64, async_with(1));
        for (int i = 0; i < 20; ++i)
            REQUIRE_FALSE(store.subscribe({}, make("e")));
        const eventbus_test::open_at_exit release_first(first);
        store.publish();
        first.entered.wait();
        CHECK(store.close(context{}.with_timeout(1ms)) == errc::deadline_exceeded);
        CHECK(store.subscribe({}, make("e")) == errc::closed);
        CHECK(calls == 1);  // not all done yet when close gave up
    }
    CHECK(calls == 20);  // nothing accepted is discarded
}

TEST_CASE("async: drain returns while other threads keep publishing", "[async]") {
    // drain() waits for the events it covers, not for a quiet store.
    std::atomic<long> calls{0};
    dispatcher handlers{{"e", [&](const context&, const args&) {
                             std::this_thread::sleep_for(1ms);
                             calls.fetch_add(1);
                         }}};
    event_store<> store(handlers, 1024, async_with(2));
    std::atomic<bool> stop{false};
    std::jthread noise([&] {
        while (!stop) {
            (void)store.subscribe({}, make("e"));
            store.publish();
            std::this_thread::sleep_for(200us);
        }
    });
    for (int round = 0; round < 5; ++round) {
        for (int i = 0; i < 5; ++i)
            REQUIRE_FALSE(store.subscribe({}, make("e")));
        store.publish();
        // A drain that waited for a quiet store would never return: the noise goes on.
        CHECK_FALSE(store.drain(context{}.with_timeout(eventbus_test::patience)));
    }
    stop = true;
    noise.join();
    REQUIRE_FALSE(store.drain({}));
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("async: an event's args are destroyed before drain reports it finished", "[async]") {
    eventbus_test::lifetime_counts counts;
    dispatcher handlers{{"e", [](const context&, const args&) {}}};
    event_store<> store(handlers, 64, async_with(2));
    const int rounds = static_cast<int>(scaled(300, 50));
    for (int round = 0; round < rounds; ++round) {
        REQUIRE_FALSE(store.subscribe(
            {}, make("e", {{"payload", std::make_shared<eventbus_test::tracked>(counts, round)}})));
        store.publish();
        REQUIRE_FALSE(store.drain({}));
        REQUIRE(counts.alive() == 0);
    }
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("async drop_oldest: close racing overwrites loses nothing it accepted",
          "[async][stress]") {
    const std::size_t runs = scaled(300, 30);
    for (std::size_t run = 0; run < runs; ++run) {
        std::atomic<std::uint64_t> calls{0};
        dispatcher handlers{{"e", [&](const context&, const args&) { calls.fetch_add(1); }}};
        std::uint64_t published = 0;
        std::uint64_t dropped = 0;
        {
            event_store<> store(handlers, 1, async_with(2));
            std::jthread pusher([&] {
                while (!store.subscribe({}, make("e")))
                    store.publish();
            });
            std::this_thread::sleep_for(std::chrono::microseconds(50 * (run % 10)));
            REQUIRE_FALSE(store.close({}));
            pusher.join();
            const auto m = store.metrics();
            published = m.published;
            dropped = m.dropped;
            REQUIRE(calls + dropped == published);  // at close() already
            REQUIRE(m.handled == calls);
            REQUIRE_RECONCILES(m);
        }
        REQUIRE(calls + dropped == published);
    }
}

TEST_CASE("async ordered_by_key: a busy key never holds up another key", "[async]") {
    // Events a, a, b with 2 workers: the first a waits until b has been handled. With workers
    // parked behind the busy key, b would never run.
    std::string b_key = "b";
    for (int i = 0; std::hash<key>{}(key(b_key)) % 64 == std::hash<key>{}(key("a")) % 64; ++i)
        b_key = numbered("b", i);  // keep a and b on different stripes
    std::atomic<bool> b_done{false};
    std::atomic<bool> a_saw_b{false};
    std::atomic<int> a_calls{0};
    dispatcher handlers{
        {"a",
         [&](const context&, const args&) {
             if (a_calls.fetch_add(1) == 0)
                 a_saw_b = eventually([&] { return b_done.load(); });
         }},
        {key(b_key), [&](const context&, const args&) { b_done = true; }},
    };
    event_store<> store(handlers, 16,
                        store_options{.async = true, .workers = 2, .ordered_by_key = true});
    REQUIRE_FALSE(store.subscribe({}, make("a")));
    REQUIRE_FALSE(store.subscribe({}, make("a")));
    REQUIRE_FALSE(store.subscribe({}, make(key(b_key))));
    store.publish();
    REQUIRE_FALSE(store.drain({}));
    CHECK(a_saw_b);
    CHECK(a_calls == 2);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("async: events published together are spread over the idle workers", "[async]") {
    // Each handler waits (up to a deadline) for the other to start: only two workers running at
    // once can meet. With both workers asleep, one publish() must end up waking both.
    for (const bool ordered : {false, true}) {
        CAPTURE(ordered);
        std::atomic<int> arrived{0};
        std::atomic<int> met{0};
        const auto meet = [&](const context&, const args&) {
            arrived.fetch_add(1);
            if (eventually([&] { return arrived.load() >= 2; }))
                met.fetch_add(1);
        };
        dispatcher handlers{{"a", meet}, {"b", meet}};
        const auto before = eventbus_test::threads_before();
        event_store store(handlers, 16,
                          store_options{.async = true, .workers = 2, .ordered_by_key = ordered});
        // Both workers asleep before the publish.
        CHECK(eventually(
            [&] { return eventbus_test::all_asleep(eventbus_test::started_since(before)); }));
        REQUIRE_FALSE(store.subscribe({}, make("a")));
        REQUIRE_FALSE(store.subscribe({}, make("b")));
        store.publish();
        REQUIRE_FALSE(store.drain({}));
        CHECK(met == 2);
    }
}
