// Transactions: commit enqueues all of its events as one contiguous run or none, then sees them
// handled; rollback touches nothing but its own buffer. GoEventBus's commit leaves a partial
// prefix behind on error and its rollback rewinds other producers' events: both proven absent.
#include <eventbus/eventbus.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <latch>
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
using eventbus::drop_oldest;
using eventbus::errc;
using eventbus::event;
using eventbus::event_store;
using eventbus::return_error;
using eventbus::store_options;
using eventbus_test::scaled;

namespace {

event numbered(const char* projection, int n) {
    return event{.id = std::to_string(n), .projection = projection, .args = {{"n", n}}};
}

int number(const args& a) {
    return std::any_cast<int>(a.at("n"));
}

}  // namespace

TEST_CASE("commit of 2 events handles both before returning; a later publish finds nothing",
          "[tx]") {
    std::vector<int> seen;
    dispatcher handlers{{"e", [&](const context&, const args& a) { seen.push_back(number(a)); }}};
    event_store store(handlers, 8);
    auto tx = store.begin_transaction();
    REQUIRE_FALSE(tx.publish(numbered("e", 1)));
    REQUIRE_FALSE(tx.publish(numbered("e", 2)));
    CHECK(tx.size() == 2);
    CHECK(store.metrics().published == 0);  // buffered only
    REQUIRE_FALSE(tx.commit(context{}));
    CHECK(seen == std::vector<int>{1, 2});
    CHECK_FALSE(tx.is_open());
    store.publish();
    CHECK(seen == std::vector<int>{1, 2});
    CHECK(store.metrics().processed == 2);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("sync commit dispatches older pending events first", "[tx]") {
    std::vector<int> seen;
    dispatcher handlers{{"e", [&](const context&, const args& a) { seen.push_back(number(a)); }}};
    event_store store(handlers, 8);
    REQUIRE_FALSE(store.subscribe(context{}, numbered("e", 0)));
    auto tx = store.begin_transaction();
    REQUIRE_FALSE(tx.publish(numbered("e", 1)));
    REQUIRE_FALSE(tx.commit(context{}));
    CHECK(seen == std::vector<int>{0, 1});
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("rollback discards; then commit, publish and rollback say finished", "[tx]") {
    int calls = 0;
    dispatcher handlers{{"e", [&](const context&, const args&) { ++calls; }}};
    event_store store(handlers, 8);
    auto tx = store.begin_transaction();
    REQUIRE_FALSE(tx.publish(numbered("e", 1)));
    REQUIRE_FALSE(tx.rollback());
    CHECK(tx.commit(context{}) == errc::finished);
    CHECK(tx.publish(numbered("e", 2)) == errc::finished);
    CHECK(tx.rollback() == errc::finished);
    store.publish();
    CHECK(calls == 0);
    CHECK(store.metrics().published == 0);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("commit then rollback wedges nothing, and other producers' events survive", "[tx]") {
    std::vector<int> seen;
    dispatcher handlers{{"e", [&](const context&, const args& a) { seen.push_back(number(a)); }}};
    event_store store(handlers, 8);
    auto tx = store.begin_transaction();
    REQUIRE_FALSE(tx.publish(numbered("e", 1)));
    REQUIRE_FALSE(tx.commit(context{}));
    CHECK(tx.commit(context{}) == errc::finished);
    REQUIRE_FALSE(store.subscribe(context{}, numbered("e", 2)));  // another producer
    CHECK(tx.rollback() == errc::finished);
    auto discarded = store.begin_transaction();
    REQUIRE_FALSE(discarded.publish(numbered("e", 3)));
    REQUIRE_FALSE(discarded.rollback());  // must not rewind event 2 (GoEventBus does)
    REQUIRE_FALSE(store.subscribe(context{}, numbered("e", 4)));
    store.publish();
    CHECK(seen == std::vector<int>{1, 2, 4});
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("a transaction's destructor rolls back; an empty commit succeeds", "[tx]") {
    int calls = 0;
    dispatcher handlers{{"e", [&](const context&, const args&) { ++calls; }}};
    event_store store(handlers, 8);
    {
        auto tx = store.begin_transaction();
        REQUIRE_FALSE(tx.publish(numbered("e", 1)));
    }
    auto empty = store.begin_transaction();
    CHECK_FALSE(empty.commit(context{}));
    CHECK(empty.commit(context{}) == errc::finished);
    store.publish();
    CHECK(calls == 0);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("commit of 3 events whose 2nd handler throws: handler_failed, the others still run",
          "[tx]") {
    std::vector<int> seen;
    std::vector<std::string> reported;
    dispatcher handlers{{"e", [&](const context&, const args& a) {
                             seen.push_back(number(a));
                             if (number(a) == 2)
                                 throw std::runtime_error("second fails");
                         }}};
    event_store store(handlers, 8);
    store.on_error([&](const context&, const event&, std::exception_ptr error) {
        try {
            std::rethrow_exception(error);
        } catch (const std::exception& e) {
            reported.emplace_back(e.what());
        }
    });
    auto tx = store.begin_transaction();
    for (int n = 1; n <= 3; ++n)
        REQUIRE_FALSE(tx.publish(numbered("e", n)));
    CHECK(tx.commit(context{}) == errc::handler_failed);
    // The 1st is not undone (side effects cannot be), and the 3rd still runs, as in a batch.
    CHECK(seen == std::vector<int>{1, 2, 3});
    CHECK(reported == std::vector<std::string>{"second fails"});
    CHECK(store.metrics().errors == 1);
    CHECK(store.metrics().processed == 3);
    CHECK(store.metrics().handled == 3);
    CHECK_RECONCILES(store.metrics());
}

TEMPLATE_TEST_CASE("commit larger than the capacity fails with nothing enqueued", "[tx]",
                   drop_oldest, block, return_error) {
    int calls = 0;
    dispatcher handlers{{"e", [&](const context&, const args&) { ++calls; }}};
    event_store<TestType> store(handlers, 4);
    auto tx = store.begin_transaction();
    for (int n = 0; n < 5; ++n)
        REQUIRE_FALSE(tx.publish(numbered("e", n)));
    CHECK(tx.commit(context{}) == errc::exceeds_capacity);
    CHECK(store.metrics().published == 0);
    CHECK(tx.is_open());  // may be rolled back, or shrunk by a new transaction
    CHECK_FALSE(tx.rollback());
    CHECK(calls == 0);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("return_error commit with too little room fails with nothing enqueued, then succeeds",
          "[tx]") {
    std::vector<int> seen;
    dispatcher handlers{{"e", [&](const context&, const args& a) { seen.push_back(number(a)); }}};
    event_store<return_error> store(handlers, 4);
    REQUIRE_FALSE(store.subscribe(context{}, numbered("e", 0)));
    REQUIRE_FALSE(store.subscribe(context{}, numbered("e", 1)));
    auto tx = store.begin_transaction();
    for (int n = 10; n < 13; ++n)
        REQUIRE_FALSE(tx.publish(numbered("e", n)));
    CHECK(tx.commit(context{}) == errc::buffer_full);
    CHECK(store.metrics().published == 2);
    CHECK(seen.empty());
    store.publish();  // makes room
    REQUIRE_FALSE(tx.commit(context{}));
    CHECK(seen == std::vector<int>{0, 1, 10, 11, 12});
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("block commit waits for room for the whole run, or for its context", "[tx]") {
    dispatcher handlers{{"e", [](const context&, const args&) {}}};
    event_store<block> store(handlers, 4);
    for (int n = 0; n < 3; ++n)
        REQUIRE_FALSE(store.subscribe(context{}, numbered("e", n)));
    auto tx = store.begin_transaction();
    REQUIRE_FALSE(tx.publish(numbered("e", 10)));
    REQUIRE_FALSE(tx.publish(numbered("e", 11)));
    CHECK(tx.commit(context{}.with_timeout(20ms)) == errc::deadline_exceeded);
    CHECK(store.metrics().published == 3);
    // Room is made once this thread sleeps in commit(), waiting for it.
    auto room =
        eventbus_test::when_asleep(eventbus_test::current_thread_id(), [&] { store.publish(); });
    CHECK_FALSE(tx.commit(context{}));
    room.join();
    CHECK(store.metrics().processed == 5);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("async commit waits for its own events only, not for the whole store", "[tx][async]") {
    std::latch release_slow(1);
    std::latch slow_started(1);
    std::atomic<int> fast{0};
    dispatcher handlers{
        {"slow",
         [&](const context&, const args&) {
             slow_started.count_down();
             release_slow.wait();
         }},
        {"fast", [&](const context&, const args&) { ++fast; }},
    };
    event_store store(handlers, 16, store_options{.async = true, .workers = 2});
    REQUIRE_FALSE(store.subscribe(context{}, numbered("slow", 0)));
    store.publish();
    slow_started.wait();  // a worker has claimed it: the transaction is not in its batch
    auto tx = store.begin_transaction();
    REQUIRE_FALSE(tx.publish(numbered("fast", 1)));
    REQUIRE_FALSE(tx.publish(numbered("fast", 2)));
    REQUIRE_FALSE(tx.commit(context{}));  // the slow event is still running on the other worker
    CHECK(fast == 2);
    release_slow.count_down();
    REQUIRE_FALSE(store.drain(context{}));
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("async commit: a throwing handler gives handler_failed", "[tx][async]") {
    dispatcher handlers{{"e", [](const context&, const args& a) {
                             if (number(a) == 2)
                                 throw std::runtime_error("no");
                         }}};
    event_store store(handlers, 16, store_options{.async = true, .workers = 2});
    auto tx = store.begin_transaction();
    for (int n = 1; n <= 3; ++n)
        REQUIRE_FALSE(tx.publish(numbered("e", n)));
    CHECK(tx.commit(context{}) == errc::handler_failed);
    REQUIRE_FALSE(store.drain(context{}));
    CHECK(store.metrics().processed == 3);
    CHECK(store.metrics().errors == 1);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("async drop_oldest: a transaction overwritten before it was handled says dropped",
          "[tx][async]") {
    std::latch release(1);
    std::atomic<bool> busy{false};
    dispatcher handlers{
        {"hold",
         [&](const context&, const args&) {
             busy = true;
             release.wait();
         }},
        {"e", [](const context&, const args&) {}},
    };
    event_store<drop_oldest> store(handlers, 4, store_options{.async = true, .workers = 1});
    REQUIRE_FALSE(store.subscribe(context{}, numbered("hold", 0)));
    store.publish();
    while (!busy)
        std::this_thread::yield();
    std::error_code committed;
    std::jthread committer([&] {
        auto tx = store.begin_transaction();
        (void)tx.publish(numbered("e", 1));
        (void)tx.publish(numbered("e", 2));
        committed = tx.commit(context{});
    });
    while (store.metrics().published < 3)
        std::this_thread::yield();
    for (int n = 3; n < 7; ++n)  // overwrite both of the transaction's events
        REQUIRE_FALSE(store.subscribe(context{}, numbered("e", n)));
    committer.join();  // returns without the worker: the drops told it
    CHECK(committed == errc::dropped);
    CHECK(store.metrics().dropped == 2);
    release.count_down();
    REQUIRE_FALSE(store.close(context{}));
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("async commit from inside a handler would wait for itself: refused", "[tx][async]") {
    std::error_code inner;
    dispatcher handlers;
    event_store store(handlers, 16, store_options{.async = true, .workers = 1});
    (void)handlers.on("outer", [&](const context&, const args&) {
        auto tx = store.begin_transaction();
        (void)tx.publish(numbered("inner", 1));
        inner = tx.commit(context{});
    });
    REQUIRE_FALSE(store.subscribe(context{}, numbered("outer", 0)));
    store.publish();
    REQUIRE_FALSE(store.drain(context{}));
    CHECK(inner == errc::would_deadlock);
    CHECK(store.metrics().published == 1);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("sync commit from inside a handler runs its events on the spot", "[tx]") {
    std::vector<int> seen;
    dispatcher handlers;
    event_store store(handlers, 16);
    (void)handlers.on("outer", [&](const context&, const args&) {
        auto tx = store.begin_transaction();
        (void)tx.publish(numbered("inner", 1));
        CHECK_FALSE(tx.commit(context{}));
        seen.push_back(0);
    });
    (void)handlers.on("inner", [&](const context&, const args& a) { seen.push_back(number(a)); });
    REQUIRE_FALSE(store.subscribe(context{}, numbered("outer", 0)));
    store.publish();
    CHECK(seen == std::vector<int>{1, 0});
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("concurrent 100-event transactions stay contiguous among single events; each once",
          "[tx][stress]") {
    constexpr int tx_size = 100;
    constexpr int committers = 3;
    const int per_committer = static_cast<int>(scaled(60, 6));
    const int singles = static_cast<int>(scaled(20000, 500));
    // One worker: handlers run one at a time, in ring order, so the log is the ring's order.
    std::vector<int> log;  // only the worker writes it
    dispatcher handlers{{"e", [&](const context&, const args& a) { log.push_back(number(a)); }}};
    event_store<block> store(handlers, 256, store_options{.async = true, .workers = 1});
    std::atomic<int> failures{0};
    {
        std::vector<std::jthread> threads;
        for (int c = 0; c < committers; ++c) {
            threads.emplace_back([&, c] {
                for (int t = 0; t < per_committer; ++t) {
                    auto tx = store.begin_transaction();
                    const int base = 1'000'000 * (c + 1) + t * tx_size;
                    for (int i = 0; i < tx_size; ++i)
                        (void)tx.publish(numbered("e", base + i));
                    if (tx.commit(context{}))
                        ++failures;
                }
            });
        }
        threads.emplace_back([&] {
            for (int n = 0; n < singles; ++n) {
                if (store.subscribe(context{}, numbered("e", n)))
                    ++failures;
                store.publish();
            }
        });
    }
    REQUIRE_FALSE(store.close(context{}));
    REQUIRE(failures == 0);
    const std::size_t expected =
        static_cast<std::size_t>(committers * per_committer * tx_size + singles);
    REQUIRE(log.size() == expected);
    std::vector<int> sorted = log;
    std::sort(sorted.begin(), sorted.end());
    REQUIRE(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end());  // each once
    std::size_t broken = 0;
    for (std::size_t i = 0; i < log.size(); ++i) {
        if (log[i] < 1'000'000 || (log[i] % 1'000'000) % tx_size != 0)
            continue;  // not the first event of a transaction
        if (i + tx_size > log.size()) {
            ++broken;
            continue;
        }
        for (int k = 1; k < tx_size; ++k)
            if (log[i + static_cast<std::size_t>(k)] != log[i] + k)
                ++broken;
    }
    CHECK(broken == 0);
    const auto m = store.metrics();
    CHECK(m.processed == expected);
    CHECK(m.handled == expected);
    CHECK_RECONCILES(m);
}

// commit_async: enqueued as commit enqueues, and told once when its events have been handled.

namespace {

/// What a commit_async callback was told, and how often; waited for on the test thread.
struct told {
    std::mutex mutex;
    std::condition_variable changed;
    std::vector<std::error_code> results;

    std::function<void(std::error_code)> callback() {
        return [this](std::error_code ec) {
            std::lock_guard lock(mutex);
            results.push_back(ec);
            changed.notify_all();
        };
    }
    std::vector<std::error_code> wait_for(std::size_t n) {
        std::unique_lock lock(mutex);
        changed.wait_for(lock, 10s, [&] { return results.size() >= n; });
        return results;
    }
};

}  // namespace

TEST_CASE("commit_async returns at once and tells its callback once, after the handlers",
          "[tx][async]") {
    std::latch release(1);
    std::atomic<int> handled{0};
    dispatcher handlers{{"e", [&](const context&, const args&) {
                             release.wait();
                             ++handled;
                         }}};
    event_store store(handlers, 8, store_options{.async = true, .workers = 1});
    told callback;
    auto tx = store.begin_transaction();
    REQUIRE_FALSE(tx.publish(numbered("e", 1)));
    REQUIRE_FALSE(tx.publish(numbered("e", 2)));
    REQUIRE_FALSE(tx.commit_async(context{}, callback.callback()));
    CHECK_FALSE(tx.is_open());
    CHECK(tx.commit_async(context{}, callback.callback()) == errc::finished);
    {
        std::lock_guard lock(callback.mutex);
        CHECK(callback.results.empty());  // the worker is held in the first handler
    }
    release.count_down();
    const auto results = callback.wait_for(1);
    REQUIRE(results.size() == 1);
    CHECK_FALSE(results[0]);
    CHECK(handled == 2);
    REQUIRE_FALSE(store.close(context{}));
    CHECK(callback.wait_for(2).size() == 1);  // never twice
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("commit_async: a failed handler says handler_failed; sync mode tells before returning",
          "[tx]") {
    dispatcher handlers{{"e", [](const context&, const args& a) {
                             if (number(a) == 2)
                                 throw std::runtime_error("two");
                         }}};
    event_store store(handlers, 8);
    told callback;
    auto tx = store.begin_transaction();
    for (int n = 1; n <= 3; ++n)
        REQUIRE_FALSE(tx.publish(numbered("e", n)));
    REQUIRE_FALSE(tx.commit_async(context{}, callback.callback()));
    {
        std::lock_guard lock(callback.mutex);
        REQUIRE(callback.results.size() == 1);  // sync: published on this thread
        CHECK(callback.results[0] == errc::handler_failed);
    }
    auto empty = store.begin_transaction();
    REQUIRE_FALSE(empty.commit_async(context{}, callback.callback()));
    CHECK_FALSE(callback.wait_for(2).at(1));
    const auto m = store.metrics();
    CHECK(m.processed == 3);
    CHECK(m.errors == 1);
    CHECK(m.dead_lettered == 1);
    CHECK_RECONCILES(m);
    auto no_callback = store.begin_transaction();
    REQUIRE_FALSE(no_callback.publish(numbered("e", 4)));
    CHECK_THROWS_AS(no_callback.commit_async(context{}, nullptr), std::invalid_argument);
}

TEST_CASE("commit_async that cannot enqueue returns the error, never calls back, stays open",
          "[tx]") {
    dispatcher handlers{{"e", [](const context&, const args&) {}}};
    event_store<return_error> store(handlers, 2);
    told callback;
    auto tx = store.begin_transaction();
    for (int n = 1; n <= 3; ++n)
        REQUIRE_FALSE(tx.publish(numbered("e", n)));
    CHECK(tx.commit_async(context{}, callback.callback()) == errc::exceeds_capacity);
    CHECK(tx.is_open());
    REQUIRE_FALSE(store.subscribe(context{}, numbered("e", 9)));
    auto two = store.begin_transaction();
    REQUIRE_FALSE(two.publish(numbered("e", 1)));
    REQUIRE_FALSE(two.publish(numbered("e", 2)));
    CHECK(two.commit_async(context{}, callback.callback()) == errc::buffer_full);
    CHECK(two.is_open());
    REQUIRE_FALSE(tx.rollback());
    REQUIRE_FALSE(two.rollback());  // its lost boxes must not call back either
    store.publish();
    REQUIRE_FALSE(store.close(context{}));
    auto empty = store.begin_transaction();  // nothing to enqueue: done({}) at once
    REQUIRE_FALSE(empty.commit_async(context{}, callback.callback()));
    std::lock_guard lock(callback.mutex);
    REQUIRE(callback.results.size() == 1);  // only the empty one's
    CHECK_FALSE(callback.results[0]);
}

TEST_CASE("commit_async under drop_oldest: the producer that overwrites its events tells it",
          "[tx][async]") {
    std::latch release(1);
    std::atomic<bool> busy{false};
    dispatcher handlers{
        {"hold",
         [&](const context&, const args&) {
             busy = true;
             release.wait();
         }},
        {"e", [](const context&, const args&) {}},
    };
    event_store<drop_oldest> store(handlers, 4, store_options{.async = true, .workers = 1});
    REQUIRE_FALSE(store.subscribe(context{}, numbered("hold", 0)));
    store.publish();
    while (!busy)
        std::this_thread::yield();
    told callback;
    auto tx = store.begin_transaction();
    REQUIRE_FALSE(tx.publish(numbered("e", 1)));
    REQUIRE_FALSE(tx.publish(numbered("e", 2)));
    REQUIRE_FALSE(tx.commit_async(context{}, callback.callback()));
    for (int n = 3; n < 7; ++n)  // overwrite both of the transaction's events
        REQUIRE_FALSE(store.subscribe(context{}, numbered("e", n)));
    {
        std::lock_guard lock(callback.mutex);  // told on this thread, by the last overwrite
        REQUIRE(callback.results.size() == 1);
        CHECK(callback.results[0] == errc::dropped);
    }
    release.count_down();
    REQUIRE_FALSE(store.close(context{}));
    CHECK(store.metrics().dropped == 2);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE(
    "redelivered transactions: failures before the last delivery are retries, the last a "
    "dead letter",
    "[tx][retry]") {
    std::atomic<int> calls{0};
    dispatcher handlers;
    (void)handlers.on(
        "e",
        [&](const context&, const args&) {
            ++calls;
            throw std::runtime_error("poison");
        },
        {.name = "consumer",
         .retry = {.max_attempts = 5, .backoff = eventbus::backoff_policy::constant(1ms)}});
    event_store store(handlers, 8,
                      store_options{.async = true, .workers = 1, .dead_letter_capacity = 4});
    CHECK_THROWS_AS(store.begin_transaction({.delivery = 0, .max_deliveries = 3}),
                    std::invalid_argument);
    for (std::uint32_t delivery = 1; delivery <= 3; ++delivery) {
        told callback;
        auto tx = store.begin_transaction({.delivery = delivery, .max_deliveries = 3});
        REQUIRE_FALSE(tx.publish(numbered("e", 7)));
        REQUIRE_FALSE(tx.commit_async(context{}, callback.callback()));
        const auto results = callback.wait_for(1);
        REQUIRE(results.size() == 1);
        CHECK(results[0] == errc::handler_failed);
        REQUIRE_FALSE(store.drain(context{}));
        const auto m = store.metrics();
        CHECK(m.retried == std::min<std::uint32_t>(delivery, 2));  // the handler's policy unused
        CHECK(m.dead_lettered == (delivery == 3 ? 1u : 0u));
        CHECK_RECONCILES(m);
    }
    CHECK(calls == 3);
    const auto letters = store.take_dead_letters();
    REQUIRE(letters.size() == 1);
    CHECK(letters[0].attempts() == 3);
    CHECK(letters[0].handler() == "consumer");
    CHECK(letters[0].event().id() == "7");
}
