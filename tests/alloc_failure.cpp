// Allocation failure on background threads: this binary replaces the global operator new with
// one that a thread can arm to fail (std::bad_alloc, or nullptr for the nothrow forms) at its
// n-th next allocation, so a test can make exactly one allocation of a store's own thread fail
// and check that nothing terminates, nothing is lost and the counters still add up.
#include <eventbus/eventbus.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <string>
#include <thread>

#include "catch.hpp"
#include "replaced_new.hpp"

using namespace std::chrono_literals;

namespace {

// Allocations left on this thread before one fails; negative: none is armed.
thread_local int allocations_before_failure = -1;
std::atomic<int> injected_failures{0};

}  // namespace

void* eventbus_test::observed_allocate(std::size_t size, std::size_t alignment) noexcept {
    if (allocations_before_failure >= 0 && allocations_before_failure-- == 0) {
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
