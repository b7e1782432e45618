// event_store in synchronous mode: each GoEventBus behaviour, ported as behaviour, and the places
// where the Go code is wrong (lost events and double handling under concurrent publish, capacity
// overshoot, publish after close, a failing handler delivered twice, uncounted drops).
#include <eventbus/eventbus.hpp>

#include <atomic>
#include <chrono>
#include <memory>
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
using eventbus::drop_oldest;
using eventbus::errc;
using eventbus::event;
using eventbus::event_store;
using eventbus::key;
using eventbus::result;
using eventbus::return_error;
using eventbus_test::eventually;
using eventbus_test::scaled;

namespace {

struct house_was_sold {};

event make(key projection, std::string id = "", eventbus::args a = {}) {
    return event{.id = std::move(id), .projection = std::move(projection), .args = std::move(a)};
}

// Records the ids of the events a handler saw, in order.
struct recorder {
    std::vector<std::string> ids;
    auto handler() {
        return [this](const context&, const args& a) {
            ids.push_back(std::any_cast<std::string>(a.at("id")));
        };
    }
};

event with_id(key projection, const std::string& id) {
    return make(std::move(projection), id, {{"id", id}});
}

}  // namespace

TEST_CASE("publish dispatches two projections in FIFO order", "[store]") {
    std::vector<std::string> order;
    dispatcher handlers{
        {"a",
         [&](const context&, const args& a) {
             order.push_back("a" + std::any_cast<std::string>(a.at("id")));
         }},
        {"b",
         [&](const context&, const args& a) {
             order.push_back("b" + std::any_cast<std::string>(a.at("id")));
         }},
    };
    event_store<> store(handlers, 16);
    REQUIRE_FALSE(store.subscribe({}, with_id("a", "1")));
    REQUIRE_FALSE(store.subscribe({}, with_id("b", "2")));
    REQUIRE_FALSE(store.subscribe({}, with_id("a", "3")));
    store.publish();
    CHECK(order == std::vector<std::string>{"a1", "b2", "a3"});
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("publish with nothing pending changes nothing", "[store]") {
    dispatcher handlers{{"a", [](const context&, const args&) {}}};
    event_store<> store(handlers, 8);
    store.publish();
    const auto m = store.metrics();
    CHECK(m.published == 0);
    CHECK(m.processed == 0);
    CHECK(m.errors == 0);
    CHECK(m.unhandled == 0);
    CHECK(m.handled == 0);
    CHECK_RECONCILES(m);
}

TEST_CASE("an event with no handler is consumed and counted, never an error", "[store]") {
    dispatcher handlers;
    event_store<> store(handlers, 8);
    REQUIRE_FALSE(store.subscribe({}, make("nobody_listens")));
    store.publish();
    const auto m = store.metrics();
    CHECK(m.published == 1);
    CHECK(m.processed == 0);
    CHECK(m.errors == 0);
    CHECK(m.unhandled == 1);
    CHECK(m.handled == 0);
    store.publish();
    CHECK(store.metrics().unhandled == 1);  // consumed, not retried
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("drop_oldest: 7 events into capacity 4 handles the last 4 and reports 3 dropped",
          "[store]") {
    recorder seen;
    dispatcher handlers{{"e", seen.handler()}};
    event_store<drop_oldest> store(handlers, 4);
    for (int i = 0; i < 7; ++i)
        REQUIRE_FALSE(store.subscribe({}, with_id("e", std::to_string(i))));
    store.publish();
    CHECK(seen.ids == std::vector<std::string>{"3", "4", "5", "6"});
    const auto m = store.metrics();
    CHECK(m.dropped == 3);
    CHECK(m.published == 7);
    CHECK(m.processed == 4);
    CHECK(m.handled == 4);
    CHECK_RECONCILES(m);
}

TEST_CASE("2^16 + 1 events into a 2^16 store handles 2^16", "[store]") {
    std::size_t calls = 0;
    dispatcher handlers{{"e", [&](const context&, const args&) { ++calls; }}};
    event_store<> store(handlers, std::size_t{1} << 16);
    for (std::size_t i = 0; i < (std::size_t{1} << 16) + 1; ++i)
        REQUIRE_FALSE(store.subscribe({}, make("e")));
    store.publish();
    CHECK(calls == std::size_t{1} << 16);
    CHECK(store.metrics().dropped == 1);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("return_error with capacity 8 accepts 8 and refuses the 9th", "[store]") {
    dispatcher handlers;
    event_store<return_error> store(handlers, 8);
    for (int i = 0; i < 8; ++i)
        REQUIRE_FALSE(store.subscribe({}, make("e")));
    CHECK(store.subscribe({}, make("e")) == errc::buffer_full);
    CHECK(store.metrics().published == 8);
}

TEST_CASE("return_error never accepts more than capacity under contention", "[store][stress]") {
    dispatcher handlers;
    const std::size_t rounds = scaled(50, 5);
    for (std::size_t round = 0; round < rounds; ++round) {
        event_store<return_error> store(handlers, 8);
        std::atomic<int> accepted{0};
        {
            std::vector<std::jthread> threads;
            for (int t = 0; t < 4; ++t) {
                threads.emplace_back([&] {
                    for (int i = 0; i < 8; ++i)
                        if (!store.subscribe({}, make("e")))
                            accepted.fetch_add(1);
                });
            }
        }
        REQUIRE(accepted == 8);
        REQUIRE(store.metrics().published == 8);
        REQUIRE_FALSE(store.close({}));  // no handler: all 8 unhandled
        REQUIRE(store.metrics().unhandled == 8);
        REQUIRE_RECONCILES(store.metrics());
    }
}

TEST_CASE("capacity 0 or not a power of two is refused", "[store]") {
    dispatcher handlers;
    CHECK_THROWS_AS(event_store<>(handlers, 0), std::invalid_argument);
    CHECK_THROWS_AS(event_store<>(handlers, 100), std::invalid_argument);
}

TEST_CASE("block: a full store with a 40 ms deadline fails after at least 40 ms", "[store]") {
    dispatcher handlers;
    event_store<block> store(handlers, 2);
    REQUIRE_FALSE(store.subscribe({}, make("e")));
    REQUIRE_FALSE(store.subscribe({}, make("e")));
    const auto start = std::chrono::steady_clock::now();
    const auto ec = store.subscribe(context{}.with_timeout(40ms), make("e"));
    CHECK(ec == errc::deadline_exceeded);
    CHECK(std::chrono::steady_clock::now() - start >= 40ms);
    CHECK(store.metrics().published == 2);
}

TEST_CASE("block: a waiting subscriber is released by another thread's publish", "[store]") {
    std::atomic<int> calls{0};
    dispatcher handlers{{"e", [&](const context&, const args&) { calls.fetch_add(1); }}};
    event_store<block> store(handlers, 1);
    REQUIRE_FALSE(store.subscribe({}, make("e")));
    std::atomic<eventbus_test::thread_id> id{0};
    std::atomic<bool> returned{false};
    std::error_code result_code;
    std::jthread producer([&] {
        id = eventbus_test::current_thread_id();
        result_code = store.subscribe({}, make("e"));
        returned = true;
    });
    // It waits: asleep in subscribe(), and it stays there for a while.
    CHECK(eventually([&] { return eventbus_test::is_asleep(id) || returned; }));
    CHECK(eventbus_test::stays_false([&] { return returned.load(); }, 20ms));
    store.publish();
    producer.join();
    CHECK_FALSE(result_code);
    store.publish();
    CHECK(calls == 2);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("metrics before and after publish", "[store]") {
    dispatcher handlers{{"ok", [](const context&, const args&) { return result{"fine"}; }}};
    event_store<> store(handlers, 8);
    REQUIRE_FALSE(store.subscribe({}, make("ok")));
    REQUIRE_FALSE(store.subscribe({}, make("ok")));
    auto m = store.metrics();
    CHECK(m.published == 2);
    CHECK(m.processed == 0);
    store.publish();
    m = store.metrics();
    CHECK(m.published == 2);
    CHECK(m.processed == 2);
    CHECK(m.handled == 2);
    CHECK(m.errors == 0);
    CHECK(m.dropped == 0);
    CHECK_RECONCILES(m);
}

TEST_CASE("a throwing handler is counted once, reported, and the batch goes on", "[store]") {
    int after_failing = 0;
    int next_event = 0;
    dispatcher handlers{
        {"boom", [](const context&, const args&) -> result { throw std::runtime_error("boom"); }},
        {"boom", [&](const context&, const args&) { ++after_failing; }},
        {"next", [&](const context&, const args&) { ++next_event; }},
    };
    event_store<> store(handlers, 8);
    std::vector<std::string> error_ids;
    std::string message;
    store.on_error([&](const context&, const event& ev, std::exception_ptr error) {
        error_ids.push_back(ev.id);
        try {
            std::rethrow_exception(error);
        } catch (const std::runtime_error& e) {
            message = e.what();
        }
    });
    REQUIRE_FALSE(store.subscribe({}, make("boom", "evt-1")));
    REQUIRE_FALSE(store.subscribe({}, make("next")));
    store.publish();
    CHECK(error_ids == std::vector<std::string>{"evt-1"});
    CHECK(message == "boom");
    CHECK(after_failing == 1);
    CHECK(next_event == 1);
    auto m = store.metrics();
    CHECK(m.published == 2);
    CHECK(m.processed == 3);
    CHECK(m.errors == 1);

    store.publish();  // never delivered twice
    CHECK(error_ids.size() == 1);
    CHECK(store.metrics().processed == 3);
    CHECK(store.metrics().handled == 2);  // two events, three handler calls
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("one failing handler: published 1, processed 1, errors 1 (as in Go)", "[store]") {
    dispatcher handlers{
        {"boom", [](const context&, const args&) -> result { throw std::logic_error("x"); }}};
    event_store<> store(handlers, 8);
    REQUIRE_FALSE(store.subscribe({}, make("boom")));
    store.publish();
    const auto m = store.metrics();
    CHECK(m.published == 1);
    CHECK(m.processed == 1);
    CHECK(m.errors == 1);
    CHECK(m.handled == 1);  // its handler ran, though it failed
    CHECK_RECONCILES(m);
}

TEST_CASE("hooks and middleware run in GoEventBus's order", "[store]") {
    std::vector<std::string> trace;
    dispatcher handlers{
        {"ok",
         [&](const context&, const args&) {
             trace.push_back("handler");
             return result{"done"};
         }},
        {"fail",
         [&](const context&, const args&) -> result {
             trace.push_back("handler");
             throw std::runtime_error("no");
         }},
    };
    event_store<> store(handlers, 8);
    store.on_before([&](const context&, const event& ev) { trace.push_back("before " + ev.id); });
    store.use([&](const context& ctx, const event& ev, const eventbus::next_handler& next) {
        trace.push_back("outer in");
        auto r = next(ctx, ev);
        trace.push_back("outer out");
        return r;
    });
    store.use([&](const context& ctx, const event& ev, const eventbus::next_handler& next) {
        trace.push_back("inner in");
        auto r = next(ctx, ev);
        trace.push_back("inner out");
        return r;
    });
    store.on_after([&](const context&, const event&, const result& r, std::exception_ptr error) {
        trace.push_back("after " + (error ? std::string("error") : r.message));
    });
    store.on_error(
        [&](const context&, const event&, std::exception_ptr) { trace.push_back("error"); });

    REQUIRE_FALSE(store.subscribe({}, make("ok", "1")));
    store.publish();
    CHECK(trace == std::vector<std::string>{"before 1", "outer in", "inner in", "handler",
                                            "inner out", "outer out", "after done"});
    trace.clear();
    REQUIRE_FALSE(store.subscribe({}, make("fail", "2")));
    store.publish();
    CHECK(trace == std::vector<std::string>{"before 2", "outer in", "inner in", "handler",
                                            "after error", "error"});
    CHECK(store.metrics().errors == 1);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("a handler added after subscribe but before publish is used", "[store]") {
    dispatcher handlers;
    event_store<> store(handlers, 8);
    REQUIRE_FALSE(store.subscribe({}, make("late")));
    int calls = 0;
    (void)handlers.on("late", [&](const context&, const args&) { ++calls; });
    store.publish();
    CHECK(calls == 1);
    CHECK(store.metrics().unhandled == 0);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("type keys and string keys never collide", "[store]") {
    int typed = 0;
    int named = 0;
    const key type_key = key::of<house_was_sold>();
    dispatcher handlers{
        {type_key, [&](const context&, const args&) { ++typed; }},
        {key(std::string(type_key.name())), [&](const context&, const args&) { ++named; }},
    };
    event_store<> store(handlers, 8);
    REQUIRE_FALSE(store.subscribe({}, make(type_key)));
    store.publish();
    CHECK(typed == 1);
    CHECK(named == 0);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("1000 threads subscribing once each, then one publish, give 1000 calls",
          "[store][stress]") {
    std::atomic<int> calls{0};
    dispatcher handlers{{"e", [&](const context&, const args&) { calls.fetch_add(1); }}};
    event_store<> store(handlers, 1024);
    std::atomic<int> failures{0};
    {
        std::vector<std::jthread> threads;
        threads.reserve(1000);
        for (int t = 0; t < 1000; ++t) {
            threads.emplace_back([&] {
                if (store.subscribe({}, make("e")))
                    failures.fetch_add(1);
            });
        }
    }
    store.publish();
    CHECK(failures == 0);
    CHECK(calls == 1000);
    CHECK(store.metrics().published == 1000);
    CHECK(store.metrics().handled == 1000);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("4 threads subscribing while 4 publish: every event handled exactly once",
          "[store][stress]") {
    const std::size_t per_producer = scaled(20000, 500);
    const std::size_t total = 4 * per_producer;
    auto seen = std::make_unique<std::atomic<int>[]>(total);
    dispatcher handlers{{"e", [&](const context&, const args& a) {
                             seen[std::any_cast<std::size_t>(a.at("n"))].fetch_add(1);
                         }}};
    event_store<block> store(handlers, 256);
    std::atomic<int> failures{0};
    std::atomic<int> producing{4};
    {
        std::vector<std::jthread> threads;
        for (std::size_t p = 0; p < 4; ++p) {
            threads.emplace_back([&, p] {
                for (std::size_t i = 0; i < per_producer; ++i) {
                    if (store.subscribe({}, make("e", "", {{"n", p * per_producer + i}})))
                        failures.fetch_add(1);
                }
                producing.fetch_sub(1);
            });
        }
        for (int c = 0; c < 4; ++c) {
            threads.emplace_back([&] {
                while (producing > 0)
                    store.publish();
                store.publish();
            });
        }
    }
    store.publish();
    CHECK(failures == 0);
    CHECK(eventbus_test::not_exactly_once(seen.get(), total) == 0);
    const auto m = store.metrics();
    CHECK(m.published == total);
    CHECK(m.processed == total);
    CHECK(m.handled == total);
    CHECK_RECONCILES(m);
}

TEST_CASE("subscribe and publish from inside a handler", "[store]") {
    dispatcher handlers;
    event_store<> store(handlers, 16);
    std::vector<std::string> order;
    (void)handlers.on("first", [&](const context&, const args&) {
        order.push_back("first");
        REQUIRE_FALSE(store.subscribe({}, make("second")));
        store.publish();  // dispatches "second" now, nested
        order.push_back("first done");
    });
    (void)handlers.on("second", [&](const context&, const args&) {
        order.push_back("second");
        REQUIRE_FALSE(store.subscribe({}, make("third")));  // waits for the next publish
    });
    (void)handlers.on("third", [&](const context&, const args&) { order.push_back("third"); });
    REQUIRE_FALSE(store.subscribe({}, make("first")));
    store.publish();
    CHECK(order == std::vector<std::string>{"first", "second", "first done"});
    store.publish();
    CHECK(order.back() == "third");
    CHECK(store.metrics().processed == 3);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("close dispatches what was accepted, then refuses; twice is harmless", "[store]") {
    int calls = 0;
    dispatcher handlers{{"e", [&](const context&, const args&) { ++calls; }}};
    event_store<> store(handlers, 8);
    REQUIRE_FALSE(store.subscribe({}, make("e")));
    REQUIRE_FALSE(store.subscribe({}, make("e")));
    CHECK_FALSE(store.close({}));
    CHECK(calls == 2);
    CHECK(store.is_closed());
    CHECK(store.subscribe({}, make("e")) == errc::closed);
    store.publish();  // publish after close: nothing to do, no crash (Go panics here)
    CHECK_FALSE(store.close({}));
    CHECK(calls == 2);
    CHECK(store.metrics().published == 2);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("the destructor dispatches what was accepted", "[store]") {
    int calls = 0;
    dispatcher handlers{{"e", [&](const context&, const args&) { ++calls; }}};
    {
        event_store<> store(handlers, 8);
        REQUIRE_FALSE(store.subscribe({}, make("e")));
    }
    CHECK(calls == 1);
}

TEST_CASE("close releases blocked subscribers with errc::closed", "[store]") {
    dispatcher handlers;
    event_store<block> store(handlers, 1);
    REQUIRE_FALSE(store.subscribe({}, make("e")));
    std::atomic<eventbus_test::thread_id> id{0};
    std::error_code result_code;
    std::jthread producer([&] {
        id = eventbus_test::current_thread_id();
        result_code = store.subscribe({}, make("e"));
    });
    CHECK(eventually([&] { return eventbus_test::is_asleep(id); }));  // waiting for room
    CHECK_FALSE(store.close({}));
    producer.join();
    CHECK(result_code == errc::closed);
    CHECK(store.metrics().published == 1);
    CHECK(store.metrics().unhandled == 1);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("drain in sync mode returns at once when nothing is in flight", "[store]") {
    dispatcher handlers;
    event_store<> store(handlers, 8);
    // With nothing to wait for, drain does not wait: even a context that has already ended
    // gets success, not its error.
    std::stop_source stop;
    stop.request_stop();
    CHECK_FALSE(store.drain(context(stop.get_token())));
    CHECK_FALSE(store.drain(context{}.with_timeout(0s)));
    REQUIRE_FALSE(store.subscribe({}, make("e")));
    CHECK_FALSE(store.drain({}));  // drain publishes what was subscribed, on the caller
    CHECK(store.metrics().unhandled == 1);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("drain waits for another thread's dispatch; from inside a handler it refuses",
          "[store]") {
    dispatcher handlers;
    event_store<> store(handlers, 8);
    eventbus_test::gate slow;
    std::atomic<bool> finished{false};
    std::error_code inner_drain;
    (void)handlers.on("slow", [&](const context&, const args&) {
        inner_drain = store.drain({});  // would wait for itself
        slow.pass();
        finished = true;
    });
    REQUIRE_FALSE(store.subscribe({}, make("slow")));
    std::jthread publisher([&] { store.publish(); });
    const eventbus_test::open_at_exit release(slow);
    slow.entered.wait();
    CHECK(store.drain(context{}.with_timeout(10ms)) == errc::deadline_exceeded);
    // The call ends once this thread sleeps in drain(), waiting for it.
    auto opener =
        eventbus_test::when_asleep(eventbus_test::current_thread_id(), [&] { slow.opened.set(); });
    CHECK_FALSE(store.drain({}));
    CHECK(finished);
    publisher.join();
    CHECK(inner_drain == errc::would_deadlock);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("close from inside a handler dispatches the rest and does not wait for itself",
          "[store]") {
    dispatcher handlers;
    event_store<> store(handlers, 8);
    int after = 0;
    std::error_code inner_close;
    (void)handlers.on("shutdown",
                      [&](const context&, const args&) { inner_close = store.close({}); });
    (void)handlers.on("after", [&](const context&, const args&) { ++after; });
    REQUIRE_FALSE(store.subscribe({}, make("shutdown")));
    REQUIRE_FALSE(store.subscribe({}, make("after")));
    store.publish();
    CHECK_FALSE(inner_close);
    CHECK(after == 1);
    CHECK(store.subscribe({}, make("after")) == errc::closed);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("handlers receive the store's context", "[store]") {
    dispatcher handlers;
    bool stop_possible = false;
    (void)handlers.on("e", [&](const context& ctx, const args&) {
        stop_possible = ctx.token().stop_possible();
        CHECK_FALSE(ctx.done());
    });
    event_store<> store(handlers, 8);
    REQUIRE_FALSE(store.subscribe({}, make("e")));
    store.publish();
    CHECK(stop_possible);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("destroying a store right after another thread's dispatch is safe", "[store][stress]") {
    // close() waits for other threads' dispatches; the destructor must also wait until they have
    // stopped touching the store (ASan checks the use-after-free this once had).
    // Every other run closes first (close() racing the end of the dispatch, as the destructor
    // does), so that the counters can be checked before the store is gone.
    const std::size_t runs = scaled(2000, 200);
    std::atomic<bool> inside{false};
    dispatcher handlers{{"e", [&](const context&, const args&) { inside = true; }}};
    for (std::size_t run = 0; run < runs; ++run) {
        for (const bool close_first : {false, true}) {
            inside = false;
            auto store = std::make_unique<event_store<>>(handlers, 8);
            REQUIRE_FALSE(store->subscribe({}, make("e")));
            std::jthread publisher([&store] { store->publish(); });
            while (!inside)
                std::this_thread::yield();
            if (close_first) {
                REQUIRE_FALSE(store->close({}));  // races with the end of the dispatch
                const auto m = store->metrics();
                REQUIRE(m.handled == 1);
                REQUIRE_RECONCILES(m);
            }
            store.reset();  // races with the end of the publisher's dispatch
        }
    }
}
