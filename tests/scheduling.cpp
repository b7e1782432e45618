// Scheduling: schedule / schedule_after publish an event later from the store's timer thread;
// handles cancel; contexts and close() cancel what is pending, counted in metrics().cancelled.
#include <eventbus/eventbus.hpp>

#include <atomic>
#include <chrono>
#include <limits>
#include <stdexcept>
#include <stop_token>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using eventbus::args;
using eventbus::context;
using eventbus::dispatcher;
using eventbus::errc;
using eventbus::event;
using eventbus::event_store;
using eventbus::store_options;
using eventbus::timer_handle;
using eventbus_test::eventually;
using eventbus_test::scaled;

namespace {

using clock_type = std::chrono::steady_clock;

event tick() {
    return event{.id = "t", .projection = "tick", .args = {}};
}

}  // namespace

TEST_CASE("schedule in the past runs synchronously on the caller", "[schedule]") {
    std::thread::id ran_on;
    dispatcher handlers{
        {"tick", [&](const context&, const args&) { ran_on = std::this_thread::get_id(); }}};
    event_store store(handlers, 8);
    const timer_handle handle = store.schedule(context{}, clock_type::now() - 1s, tick());
    CHECK(ran_on == std::this_thread::get_id());
    CHECK_FALSE(handle);
    CHECK_FALSE(handle.error());
    const timer_handle now = store.schedule_after(context{}, 0ms, tick());
    CHECK_FALSE(now);
    CHECK(store.metrics().processed == 2);
    CHECK(store.metrics().scheduled == 0);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("schedule_after 50 ms runs no earlier than due, on the timer thread", "[schedule]") {
    std::atomic<int> calls{0};
    std::atomic<clock_type::rep> ran_at{0};
    std::thread::id ran_on;
    dispatcher handlers{{"tick", [&](const context&, const args&) {
                             ran_on = std::this_thread::get_id();
                             ran_at = clock_type::now().time_since_epoch().count();
                             ++calls;
                         }}};
    event_store store(handlers, 8);
    const auto start = clock_type::now();
    const timer_handle handle = store.schedule_after(context{}, 50ms, tick());
    // Pending and not run yet, unless this thread was held up until it was due.
    const bool pending = static_cast<bool>(handle);
    const int calls_then = calls;
    const auto looked = clock_type::now() - start;
    CHECK((pending || looked >= 50ms));
    CHECK((calls_then == 0 || looked >= 50ms));
    REQUIRE(eventually([&] { return calls == 1; }));
    const auto elapsed = clock_type::time_point(clock_type::duration(ran_at.load())) - start;
    CHECK(elapsed >= 50ms);
    CHECK(ran_on != std::this_thread::get_id());  // sync mode: on the timer thread
    CHECK_FALSE(handle);                          // it ran: nothing pending
    CHECK_FALSE(handle.error());
    CHECK(store.metrics().scheduled == 1);
    CHECK(store.metrics().cancelled == 0);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("cancel returns true once and the event never runs", "[schedule]") {
    std::atomic<int> calls{0};
    std::atomic<bool> later_ran{false};
    dispatcher handlers{{"tick", [&](const context&, const args&) { ++calls; }},
                        {"later", [&](const context&, const args&) { later_ran = true; }}};
    event_store store(handlers, 8);
    const auto start = clock_type::now();
    timer_handle handle = store.schedule_after(context{}, 30ms, tick());
    // Due after the cancelled one: once it has run, the cancelled one would have run before it.
    (void)store.schedule_after(context{}, 60ms, event{.id = "", .projection = "later", .args = {}});
    if (handle.cancel()) {
        CHECK_FALSE(handle.cancel());
        CHECK_FALSE(handle);
        REQUIRE(eventually([&] { return later_ran.load(); }));
        CHECK(calls == 0);
        CHECK(store.metrics().cancelled == 1);
    } else {
        // Only a thread held up until the event was due may find it gone.
        CHECK(clock_type::now() - start >= 30ms);
    }
    CHECK_FALSE(timer_handle{}.cancel());  // an empty handle has nothing to cancel
    REQUIRE_FALSE(store.close({}));
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("a cancelled context cancels the scheduled event", "[schedule]") {
    std::atomic<int> calls{0};
    dispatcher handlers{{"tick", [&](const context&, const args&) { ++calls; }}};
    event_store store(handlers, 8);
    std::stop_source stop;
    const auto start = clock_type::now();
    timer_handle handle = store.schedule_after(context(stop.get_token()), 30ms, tick());
    const bool pending = static_cast<bool>(handle);
    stop.request_stop();
    // Stopped before it was due, unless this thread was held up that long.
    const bool in_time = clock_type::now() - start < 30ms;
    CHECK((pending || !in_time));
    CHECK_FALSE(handle);
    if (in_time) {
        REQUIRE(eventually([&] { return store.metrics().cancelled == 1; }));
        CHECK(calls == 0);
    }
    CHECK_FALSE(handle.cancel());  // the context stopped it, not this call
    REQUIRE(eventually(
        [&] { return static_cast<std::uint64_t>(calls.load()) + store.metrics().cancelled == 1; }));
    const int calls_before = calls;

    // A deadline before the due time cancels too; an ended context is refused at once.
    (void)store.schedule_after(context{}.with_timeout(5ms), 30ms, tick());
    REQUIRE(eventually(
        [&] { return static_cast<std::uint64_t>(calls.load()) + store.metrics().cancelled == 2; }));
    CHECK(calls == calls_before);
    const timer_handle refused = store.schedule_after(context(stop.get_token()), 30ms, tick());
    CHECK_FALSE(refused);
    CHECK(refused.error() == errc::cancelled);
    CHECK(calls == calls_before);
    REQUIRE_FALSE(store.close({}));
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("close cancels pending timers and counts them; schedule after close is refused",
          "[schedule]") {
    std::atomic<int> calls{0};
    dispatcher handlers{{"tick", [&](const context&, const args&) { ++calls; }}};
    event_store store(handlers, 8);
    std::vector<timer_handle> handles;
    for (int i = 0; i < 3; ++i)
        handles.push_back(store.schedule_after(context{}, 1h, tick()));
    REQUIRE_FALSE(store.close(context{}));
    CHECK(store.metrics().scheduled == 3);
    CHECK(store.metrics().cancelled == 3);
    for (auto& handle : handles) {
        CHECK_FALSE(handle);
        CHECK_FALSE(handle.cancel());
    }
    const timer_handle late = store.schedule_after(context{}, 10ms, tick());
    CHECK_FALSE(late);
    CHECK(late.error() == errc::closed);
    CHECK(calls == 0);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("a handle may outlive its store", "[schedule]") {
    dispatcher handlers{{"tick", [](const context&, const args&) {}}};
    timer_handle handle;
    {
        event_store store(handlers, 8);
        handle = store.schedule_after(context{}, 1h, tick());
        REQUIRE(handle);
    }
    CHECK_FALSE(handle);
    CHECK_FALSE(handle.cancel());
}

TEST_CASE("async: scheduled events run on the workers; system_clock times work", "[schedule]") {
    std::atomic<int> calls{0};
    dispatcher handlers{{"tick", [&](const context&, const args&) { ++calls; }}};
    event_store store(handlers, 8, store_options{.async = true, .workers = 2});
    (void)store.schedule_after(context{}, 10ms, tick());
    (void)store.schedule(context{}, std::chrono::system_clock::now() + 20ms, tick());
    REQUIRE(eventually([&] { return calls == 2; }));
    REQUIRE_FALSE(store.drain(context{}));
    CHECK(store.metrics().processed == 2);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("earlier events scheduled later still run first; the timer thread does not poll",
          "[schedule]") {
    std::vector<int> order;  // written by the timer thread only
    dispatcher handlers{{"tick", [&](const context&, const args& a) {
                             order.push_back(std::any_cast<int>(a.at("n")));
                         }}};
    event_store store(handlers, 8);
    const auto start = clock_type::now();
    (void)store.schedule_after(context{}, 100ms,
                               event{.id = "", .projection = "tick", .args = {{"n", 2}}});
    (void)store.schedule_after(context{}, 10ms,
                               event{.id = "", .projection = "tick", .args = {{"n", 1}}});
    // The second is due first unless this thread was held up for 90 ms between the two.
    const bool in_time = clock_type::now() - start < 90ms;
    REQUIRE(eventually([&] { return store.metrics().processed == 2; }));
    REQUIRE_FALSE(store.close(context{}));  // orders the timer thread's writes before ours
    if (in_time)
        CHECK(order == std::vector<int>{1, 2});
    else
        CHECK(order.size() == 2);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("many threads scheduling and cancelling: every event runs or is cancelled, once",
          "[schedule][stress]") {
    std::atomic<std::uint64_t> ran{0};
    dispatcher handlers{{"tick", [&](const context&, const args&) { ++ran; }}};
    event_store store(handlers, 64, store_options{.async = true, .workers = 2});
    const std::size_t per_thread = scaled(2000, 100);
    std::atomic<std::uint64_t> cancelled_by_us{0};
    {
        std::vector<std::jthread> threads;
        for (int t = 0; t < 3; ++t) {
            threads.emplace_back([&, t] {
                for (std::size_t i = 0; i < per_thread; ++i) {
                    const auto delay =
                        std::chrono::microseconds((i * 7 + static_cast<std::size_t>(t)) % 3000);
                    timer_handle handle = store.schedule_after(context{}, delay, tick());
                    if (i % 3 == 0 && handle.cancel())
                        ++cancelled_by_us;
                }
            });
        }
    }
    // Let some of the events become due before close() cancels the rest (how many does not
    // matter: every split is counted the same way).
    std::this_thread::sleep_for(10ms);
    REQUIRE_FALSE(store.close(context{}));
    const auto m = store.metrics();
    CHECK(m.cancelled >= cancelled_by_us);
    // Each event reached the ring (at once or when due) or was cancelled, exactly once; each
    // one that reached it was handled or overwritten (drop_oldest), exactly once.
    CHECK(m.published + m.cancelled == 3 * per_thread);
    CHECK(ran + m.dropped == m.published);
    CHECK(m.processed == ran);
    CHECK(m.handled == ran);
    CHECK_RECONCILES(m);
}

TEST_CASE("block: more events due at once than the ring holds still all run", "[schedule]") {
    // The timer thread publishes before it waits for room: it never waits for itself.
    std::atomic<int> calls{0};
    dispatcher handlers{{"tick", [&](const context&, const args&) { ++calls; }}};
    {
        event_store<eventbus::block> store(handlers, 1);
        const auto when = clock_type::now() + 20ms;
        (void)store.schedule(context{}, when, tick());
        (void)store.schedule(context{}, when, tick());
        REQUIRE(eventually([&] { return calls == 2; }));
        // A full ring of unpublished events and a pending timer: the destructor still finishes.
        REQUIRE_FALSE(store.subscribe(context{}, tick()));
        (void)store.schedule_after(context{}, 1h, tick());
    }
    CHECK(calls == 3);  // the last one was still pending: the destructor cancelled it
}

TEST_CASE("return_error: an event due while the ring is full is refused and counted",
          "[schedule]") {
    std::atomic<int> calls{0};
    dispatcher handlers{{"tick", [&](const context&, const args&) { ++calls; }}};
    event_store<eventbus::return_error> store(handlers, 1);
    REQUIRE_FALSE(store.subscribe(context{}, tick()));  // full, not published
    timer_handle handle = store.schedule_after(context{}, 10ms, tick());
    REQUIRE(eventually([&] { return store.metrics().cancelled == 1; }));
    CHECK_FALSE(handle.cancel());
    store.publish();
    CHECK(calls == 1);
    REQUIRE_FALSE(store.close({}));
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("schedule at the earliest system_clock time publishes at once, without overflow",
          "[schedule]") {
    int calls = 0;
    dispatcher handlers{{"e", [&](const context&, const args&) { ++calls; }}};
    event_store<> store(handlers, 8);
    const timer_handle h = store.schedule(context{}, std::chrono::system_clock::time_point::min(),
                                          event{.id = "1", .projection = "e", .args = {}});
    CHECK_FALSE(h);
    CHECK_FALSE(h.error());
    CHECK(calls == 1);
    CHECK(store.metrics().scheduled == 0);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("a NaN delay is a bad argument, and nothing is scheduled", "[schedule]") {
    dispatcher handlers{{"e", [](const context&, const args&) {}}};
    event_store<> store(handlers, 8);
    const std::chrono::duration<double> nan(std::numeric_limits<double>::quiet_NaN());
    CHECK_THROWS_AS(
        (void)store.schedule_after(context{}, nan, event{.id = "1", .projection = "e", .args = {}}),
        std::invalid_argument);
    CHECK(store.metrics().published == 0);
}

TEST_CASE("cancelling the entry the timer thread is waiting for", "[schedule]") {
    // The timer thread sleeps until the earliest entry is due; a cancel() then erases that
    // entry. The thread must not read the erased entry when it wakes (AddressSanitizer checks).
    std::atomic<eventbus_test::thread_id> timer_thread{0};
    std::atomic<int> calls{0};
    dispatcher handlers{
        {"where",
         [&](const context&, const args&) { timer_thread = eventbus_test::current_thread_id(); }},
        {"tick", [&](const context&, const args&) { ++calls; }}};
    event_store store(handlers, 8);
    (void)store.schedule_after(context{}, 1ms, event{.id = "", .projection = "where", .args = {}});
    REQUIRE(eventually([&] { return timer_thread.load() != 0; }));
    timer_handle handle = store.schedule_after(context{}, 200ms, tick());
    REQUIRE(eventually([&] { return eventbus_test::is_asleep(timer_thread.load()); }));
    const bool cancelled = handle.cancel();
    // The thread wakes (for the cancel or at the due time) and finds the queue changed.
    (void)store.schedule_after(context{}, 1ms, tick());
    REQUIRE(eventually([&] { return calls.load() == (cancelled ? 1 : 2); }));
    REQUIRE_FALSE(store.close({}));
    CHECK(store.metrics().cancelled == (cancelled ? 1U : 0U));
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("once a handle says the event left the timer, close() handles it", "[scheduling]") {
    // The timer thread takes a due event out of its queue and then enqueues it: a handle that
    // turned false in between let close() shut the ring first, and the event was refused.
    struct due_event {
        int n = 0;
    };
    const std::size_t rounds = scaled(400, 50);
    std::atomic<bool> stop{false};
    std::jthread load([&] {  // competes for the cores, widening the window
        while (!stop.load())
            std::this_thread::yield();
    });
    std::size_t lost = 0;
    for (std::size_t round = 0; round < rounds; ++round) {
        dispatcher d;
        std::atomic<int> handled{0};
        d.on<due_event>([&](const context&, const due_event&) { handled.fetch_add(1); });
        event_store<eventbus::block> store(d, 16);
        const context ctx;
        timer_handle later = store.schedule_after(ctx, 100us, due_event{1});
        while (later)
            std::this_thread::yield();
        REQUIRE(!store.close(ctx));
        const auto m = store.metrics();
        if (handled.load() != 1 || m.cancelled != 0)
            ++lost;
    }
    stop.store(true);
    CHECK(lost == 0);
}
