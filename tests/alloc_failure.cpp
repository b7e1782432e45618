// Allocation failure: this binary replaces the global operator new with one that can be armed
// to fail (std::bad_alloc, or nullptr for the nothrow forms) at the n-th next allocation of one
// thread, or of any thread. Tests make exactly one allocation of a store's own thread fail, and
// sweep one failure over every allocation of a whole scenario, and check that nothing
// terminates or hangs, nothing is lost, the counters still add up and the store still works.
// Under AddressSanitizer, LeakSanitizer checks at exit that nothing leaked on the way.
#include <eventbus/eventbus.hpp>

#include <any>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <new>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>

#include "catch.hpp"
#include "replaced_new.hpp"

using namespace std::chrono_literals;

namespace {

// Allocations left on this thread before one fails; negative: none is armed.
thread_local int allocations_before_failure = -1;
// Allocations left on any thread before one fails; negative: none is armed.
std::atomic<long> shared_allocations_before_failure{-1};
std::atomic<int> injected_failures{0};

}  // namespace

void* eventbus_test::observed_allocate(std::size_t size, std::size_t alignment) noexcept {
    if (allocations_before_failure >= 0 && allocations_before_failure-- == 0) {
        injected_failures.fetch_add(1, std::memory_order_relaxed);
        return nullptr;
    }
    if (shared_allocations_before_failure.load(std::memory_order_relaxed) >= 0 &&
        shared_allocations_before_failure.fetch_sub(1, std::memory_order_relaxed) == 0) {
        injected_failures.fetch_add(1, std::memory_order_relaxed);
        return nullptr;
    }
    return system_allocate(size, alignment);
}

namespace {

eventbus::event make(std::string key) {
    return eventbus::event{.id = key, .projection = key, .args = {}};
}

template <class Predicate>
bool wait_until(Predicate&& done) {
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (!done()) {
        if (std::chrono::steady_clock::now() > deadline)
            return false;
        std::this_thread::sleep_for(1ms);
    }
    return true;
}

}  // namespace

TEST_CASE("out of memory while the timer thread collects due events loses none of them",
          "[alloc][schedule]") {
    using eventbus::args;
    using eventbus::context;
    std::atomic<int> armed{0};
    std::atomic<int> handled{0};
    eventbus::dispatcher handlers;
    // Runs on the timer thread (sync store): arms its next allocation to fail. The timer
    // thread's batch of due entries has room for one; the next round brings three due at once,
    // so the second needs a larger batch: that allocation fails.
    (void)handlers.on("arm", [&](const context&, const args&) {
        allocations_before_failure = 0;
        armed.fetch_add(1);
    });
    (void)handlers.on("e", [&](const context&, const args&) { handled.fetch_add(1); });
    eventbus::event_store<> store(handlers, 64);
    const context ctx;
    REQUIRE_FALSE(store.schedule_after(ctx, 1ms, make("arm")).error());
    REQUIRE(wait_until([&] { return armed.load() == 1; }));
    injected_failures = 0;
    const auto due = std::chrono::steady_clock::now() + 50ms;
    for (int i = 0; i < 3; ++i)
        REQUIRE_FALSE(store.schedule(ctx, due, make("e")).error());
    CHECK(wait_until([&] { return handled.load() == 3; }));
    CHECK(injected_failures.load() == 1);  // the failure happened, on the timer thread
    REQUIRE_FALSE(store.close({}));
    const eventbus::store_metrics m = store.metrics();
    CHECK(m.scheduled == 4);
    CHECK(m.cancelled == 0);
    CHECK(m.published == 4);
    CHECK(m.processed == 4);
    CHECK(handled.load() == 3);
}

TEST_CASE(
    "schedule under a failing allocation at every point: an exception or a scheduled "
    "event, never a hang or a lost count",
    "[alloc][schedule]") {
    // Sweeps the failure over the allocations of a first schedule() (its entry, the timer
    // service and queue, the timer thread's start state): each either throws (nothing
    // scheduled) or succeeds (the event is published when due, or cancelled by close()).
    using eventbus::args;
    using eventbus::context;
    int succeeded = 0;
    for (int n = 0; n < 16; ++n) {
        std::atomic<int> handled{0};
        eventbus::dispatcher handlers;
        (void)handlers.on("e", [&](const context&, const args&) { handled.fetch_add(1); });
        eventbus::event_store<> store(handlers, 8);
        bool threw = false;
        eventbus::event ev = make("e");
        allocations_before_failure = n;
        try {
            const eventbus::timer_handle h = store.schedule_after(context{}, 1ms, std::move(ev));
            allocations_before_failure = -1;
            CHECK_FALSE(h.error());
        } catch (const std::exception&) {  // std::bad_alloc, or std::system_error (thread)
            allocations_before_failure = -1;
            threw = true;
        }
        std::atomic<bool> closed{false};
        std::thread watchdog([&] {
            for (int i = 0; i < 2000 && !closed.load(); ++i)
                std::this_thread::sleep_for(5ms);
            if (!closed.load()) {
                std::fputs("alloc_failure: close() hung after a failed schedule()\n", stderr);
                std::abort();
            }
        });
        const std::error_code close_error = store.close({});
        closed.store(true);
        watchdog.join();
        CHECK_FALSE(close_error);
        const eventbus::store_metrics m = store.metrics();
        if (threw) {
            CHECK(m.scheduled == 0);
            CHECK(m.published == 0);
            CHECK(handled.load() == 0);
        } else {
            ++succeeded;
            CHECK(m.scheduled == 1);
            CHECK(m.published + m.cancelled == 1);
            CHECK(static_cast<std::uint64_t>(handled.load()) == m.published);
        }
    }
    CHECK(succeeded > 0);  // the sweep went past the last allocation
}

TEST_CASE("a worker parking an event behind its key allocates nothing, so cannot fail",
          "[alloc][async]") {
    // One worker holds the key "slow" in a handler; the other arms its own next allocation to
    // fail ("arm"), then pops twenty more "slow" events, which it must park for the first, then
    // "release". Parking takes places allocated by the constructor: no allocation fails, and
    // every "slow" event runs, in order.
    using eventbus::args;
    using eventbus::context;
    const eventbus::key slow("slow");
    const eventbus::key arm("arm");
    const eventbus::key release("release");
    const auto stripe_of = [](const eventbus::key& k) {
        return std::hash<eventbus::key>{}(k) % 64;
    };
    REQUIRE(stripe_of(slow) != stripe_of(arm));
    REQUIRE(stripe_of(slow) != stripe_of(release));
    std::atomic<bool> released{false};
    std::atomic<int> failures_seen{-1};
    std::vector<int> order;  // "slow" handlers only: one at a time
    order.reserve(64);
    eventbus::dispatcher handlers;
    (void)handlers.on("slow", [&](const context&, const args& a) {
        order.push_back(std::any_cast<int>(a.at("i")));
        const auto give_up = std::chrono::steady_clock::now() + 30s;
        while (!released.load() && std::chrono::steady_clock::now() < give_up)
            std::this_thread::yield();
    });
    (void)handlers.on("arm", [&](const context&, const args&) {
        injected_failures = 0;
        allocations_before_failure = 0;
    });
    (void)handlers.on("release", [&](const context&, const args&) {
        failures_seen = injected_failures.load();
        allocations_before_failure = -1;
        released = true;
    });
    eventbus::event_store<> store(
        handlers, 64, eventbus::store_options{.async = true, .workers = 2, .ordered_by_key = true});
    const auto slow_event = [](int i) {
        return eventbus::event{.id = {}, .projection = "slow", .args = {{"i", i}}};
    };
    REQUIRE_FALSE(store.subscribe({}, slow_event(0)));
    REQUIRE_FALSE(store.subscribe({}, make("arm")));
    for (int i = 1; i <= 20; ++i)  // more than fit in a first block of any growing container
        REQUIRE_FALSE(store.subscribe({}, slow_event(i)));
    REQUIRE_FALSE(store.subscribe({}, make("release")));
    store.publish();
    REQUIRE_FALSE(store.drain({}));
    CHECK(released.load());
    CHECK(failures_seen.load() == 0);  // nothing between "arm" and "release" allocated
    std::vector<int> expected(21);
    std::iota(expected.begin(), expected.end(), 0);
    CHECK(order == expected);  // all 21, in order
    const eventbus::store_metrics m = store.metrics();
    CHECK(m.handled == 23);
    CHECK(m.errors == 0);
}

namespace {

// What one run of the scenario below saw, from the caller's side.
struct scenario_outcome {
    bool constructed = false;
    std::uint64_t accepted = 0;  // events the store took (subscribe or commit said so)
    std::uint64_t triggered = 0;
    int failures = 0;    // calls that threw std::bad_alloc (or system_error)
    int unexpected = 0;  // errors no allocation failure explains
};

std::atomic<long> typed_calls{0};

struct price {
    long cents = 0;
};

// Fails its first call and succeeds on its retry; each event counts its own calls.
struct flaky {
    std::shared_ptr<std::atomic<int>> calls;
};
constexpr std::uint64_t flaky_events = 2;

// Everything a user does with a store, every call guarded: registration, construction,
// dynamic and typed subscribe, publish, trigger, a transaction, schedules (one cancelled),
// drain. A call that throws is counted and the run goes on.
template <class Policy>
void run_scenario(eventbus::store_options options, scenario_outcome& out,
                  std::unique_ptr<eventbus::event_store<Policy>>& kept,
                  std::unique_ptr<eventbus::dispatcher>& handlers) {
    using eventbus::args;
    using eventbus::context;
    const auto guarded = [&](auto&& step) {
        try {
            step();
        } catch (const std::exception&) {  // std::bad_alloc, std::system_error
            ++out.failures;
        }
    };
    guarded([&] { handlers = std::make_unique<eventbus::dispatcher>(); });
    if (!handlers)
        return;
    guarded([&] {
        (void)handlers->on("dynamic", [](const context&, const args& a) {
            std::string copy(200, 'x');  // a handler that allocates, and may fail
            copy += std::to_string(a.size());
        });
    });
    guarded([&] {
        (void)handlers->on<price>([](const context&, const price&) { typed_calls.fetch_add(1); });
    });
    guarded([&] {
        (void)handlers->on<flaky>(
            [](const context&, const flaky& f) {
                if (f.calls->fetch_add(1) == 0)
                    throw std::runtime_error("first call");
            },
            eventbus::handler_options{
                .name = "flaky",
                .priority = 0,
                .retry = {.max_attempts = 2,
                          .backoff = eventbus::backoff_policy::constant(100us)}});
    });
    guarded(
        [&] { kept = std::make_unique<eventbus::event_store<Policy>>(*handlers, 16, options); });
    if (!kept)
        return;
    out.constructed = true;
    auto& store = *kept;
    const context ctx;
    for (int i = 0; i < 6; ++i) {
        guarded([&] {
            // The id is only the number: g++ 12 at -O3 warns falsely (-Wrestrict) about
            // inlined string concatenation here.
            eventbus::event ev{
                .id = std::to_string(i), .projection = "dynamic", .args = {{"n", i}}};
            if (!store.subscribe(ctx, std::move(ev)))
                ++out.accepted;
        });
        guarded([&] {
            if (!store.subscribe(ctx, price{i}))
                ++out.accepted;
        });
        if (i % 2 == 1)
            store.publish();
    }
    for (std::uint64_t i = 0; i < flaky_events; ++i) {
        guarded([&] {
            if (!store.subscribe(ctx, flaky{std::make_shared<std::atomic<int>>(0)}))
                ++out.accepted;
        });
    }
    guarded([&] {
        if (store.trigger(ctx, price{99}) != eventbus::errc::closed)
            ++out.triggered;
    });
    guarded([&] {
        auto tx = store.begin_transaction();
        guarded([&] {
            if (tx.publish(price{7}))
                ++out.unexpected;
        });
        guarded([&] {
            if (tx.publish(eventbus::event{.id = "t", .projection = "dynamic", .args = {}}))
                ++out.unexpected;
        });
        const std::size_t n = tx.size();
        const std::error_code error = tx.commit(ctx);
        if (!error || error == eventbus::errc::handler_failed || error == eventbus::errc::dropped)
            out.accepted += n;
    });
    guarded([&] { (void)store.schedule_after(ctx, std::chrono::milliseconds(1), price{5}); });
    guarded([&] {
        eventbus::timer_handle later = store.schedule_after(ctx, std::chrono::hours(1), price{6});
        later.cancel();
    });
    store.publish();
    guarded([&] { (void)store.drain(ctx); });
}

template <class Policy>
void sweep(eventbus::store_options options) {
    using eventbus::context;
    long runs = 0;
    long clean_runs = 0;
    for (long n = 0; clean_runs < 3 && n < 20000; ++n, ++runs) {
        CAPTURE(n);
        scenario_outcome out;
        std::unique_ptr<eventbus::dispatcher> handlers;
        std::unique_ptr<eventbus::event_store<Policy>> store;
        std::atomic<bool> finished{false};
        std::thread watchdog([&] {  // before arming: its own start allocates
            const auto give_up = std::chrono::steady_clock::now() + 60s;
            while (!finished.load() && std::chrono::steady_clock::now() < give_up)
                std::this_thread::sleep_for(1ms);
            if (!finished.load()) {
                std::fprintf(stderr, "alloc_failure: scenario hung with failure point %ld\n", n);
                std::abort();
            }
        });
        injected_failures = 0;
        shared_allocations_before_failure = n;
        run_scenario<Policy>(options, out, store, handlers);
        shared_allocations_before_failure = -1;
        const bool injected = injected_failures.load() != 0;
        if (!injected)
            ++clean_runs;
        if (store) {
            // Still usable: a new handler sees a new event; then everything is accounted for.
            struct probe {};
            std::atomic<int> probed{0};
            const eventbus::scoped_registration later =
                handlers->on<probe>([&](const context&, const probe&) { probed.fetch_add(1); });
            REQUIRE_FALSE(store->subscribe(context{}, probe{}));
            store->publish();
            REQUIRE_FALSE(store->drain(context{}));
            CHECK(probed.load() == 1);
            REQUIRE_FALSE(store->close(context{}));
            const eventbus::store_metrics m = store->metrics();
            INFO("published=" << m.published << " triggered=" << m.triggered
                              << " handled=" << m.handled << " unhandled=" << m.unhandled
                              << " dropped=" << m.dropped << " scheduled=" << m.scheduled
                              << " cancelled=" << m.cancelled << " accepted=" << out.accepted);
            CHECK(m.published + m.triggered == m.handled + m.unhandled + m.dropped);
            CHECK(m.errors == m.retried + m.dead_lettered + m.trigger_errors);
            CHECK(m.published == out.accepted + 1 + (m.scheduled - m.cancelled));
            CHECK(m.triggered == out.triggered);
            CHECK(out.unexpected == 0);
            if (!injected) {
                CHECK(out.failures == 0);
                CHECK(m.errors == flaky_events);  // each flaky event's first call
                CHECK(m.retried == flaky_events);
                CHECK(m.dead_lettered == 0);
            }
        } else {
            CHECK(injected);
        }
        store.reset();
        handlers.reset();
        finished = true;
        watchdog.join();
    }
    std::printf("alloc_failure: %ld failure points swept, the last 3 without a failure\n", runs);
    CHECK(clean_runs == 3);  // the sweep went past the scenario's last allocation
    INFO("failure points swept: " << runs);
    CHECK(runs > 10);
}

}  // namespace

TEST_CASE("one failing allocation at every point of a sync store's life", "[alloc][sweep]") {
    sweep<eventbus::drop_oldest>({.dead_letter_capacity = 4});
}

TEST_CASE("one failing allocation at every point of an async store's life", "[alloc][sweep]") {
    sweep<eventbus::return_error>({.async = true, .workers = 2, .dead_letter_capacity = 4});
}

TEST_CASE("one failing allocation at every point of an ordered async store's life",
          "[alloc][sweep]") {
    sweep<eventbus::block>(
        {.async = true, .workers = 2, .ordered_by_key = true, .dead_letter_capacity = 4});
}
