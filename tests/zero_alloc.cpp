// Typed events allocate nothing per event: this binary replaces the global operator new with a
// counting one and asserts that 10^5 subscribe + publish cycles, after warm-up, allocate
// nothing, in sync mode and in async mode (the workers' allocations are counted too).
#include <eventbus/eventbus.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <span>

#include "catch.hpp"
#include "replaced_new.hpp"
#include "support.hpp"

namespace {
std::atomic<std::uint64_t> allocations{0};
}  // namespace

void* eventbus_test::observed_allocate(std::size_t size, std::size_t alignment) noexcept {
    allocations.fetch_add(1, std::memory_order_relaxed);
    return system_allocate(size, alignment);
}

namespace {

struct house_was_sold {
    char address[24];
    std::int64_t price;
};
static_assert(eventbus::detail::stored_inline<house_was_sold>);

}  // namespace

TEST_CASE("the counting allocator sees allocations (the test can fail)", "[alloc]") {
    const std::uint64_t before = allocations.load();
    auto* p = new int(1);
    delete p;
    eventbus::event ev{.id = "a string too long for the small string buffer",
                       .projection = "k",
                       .args = {{"x", 1}}};
    CHECK(allocations.load() - before >= 3);
}

TEST_CASE("sync: 10^5 typed subscribe + publish cycles allocate nothing", "[alloc]") {
    std::int64_t total = 0;
    eventbus::dispatcher handlers;
    (void)handlers.on<house_was_sold>([&](const house_was_sold& sale) { total += sale.price; });
    eventbus::event_store store(handlers, 1024);
    const eventbus::context ctx;
    for (int i = 0; i < 1000; ++i) {  // warm-up
        (void)store.subscribe(ctx, house_was_sold{"1 Main St", 1});
        store.publish();
    }
    const std::uint64_t before = allocations.load();
    std::size_t failures = 0;
    for (int i = 0; i < 100000; ++i) {
        if (store.subscribe(ctx, house_was_sold{"123 Main St", 1}))
            ++failures;
        store.publish();
    }
    const std::uint64_t during = allocations.load() - before;
    CHECK(during == 0);
    CHECK(failures == 0);
    CHECK(total == 101000);
}

TEST_CASE("sync: 10^5 typed events in runs for a batch handler allocate nothing", "[alloc]") {
    std::int64_t total = 0;
    std::size_t calls = 0;
    eventbus::dispatcher handlers;
    (void)handlers.on_batch<house_was_sold>([&](std::span<const house_was_sold> run) {
        ++calls;
        for (const house_was_sold& sale : run)
            total += sale.price;
    });
    (void)handlers.on<house_was_sold>([&](const house_was_sold& sale) { total += sale.price; });
    eventbus::event_store store(handlers, 1024);
    const eventbus::context ctx;
    const auto round = [&] {
        std::size_t failures = 0;
        for (int i = 0; i < 64; ++i)
            failures += store.subscribe(ctx, house_was_sold{"123 Main St", 1}) ? 1u : 0u;
        store.publish();
        return failures;
    };
    for (int i = 0; i < 10; ++i)  // warm-up
        (void)round();
    const std::uint64_t before = allocations.load();
    std::size_t failures = 0;
    for (int i = 0; i < 1563; ++i)  // 100032 events
        failures += round();
    const std::uint64_t during = allocations.load() - before;
    CHECK(during == 0);
    CHECK(failures == 0);
    CHECK(calls == 1573);  // one call per publish: each batch is one run of 64
    CHECK(total == 2 * 64 * 1573);
}

TEST_CASE("async: 10^5 typed subscribe + publish cycles allocate nothing", "[alloc]") {
    std::atomic<std::int64_t> total{0};
    eventbus::dispatcher handlers;
    (void)handlers.on<house_was_sold>([&](const house_was_sold& sale) {
        total.fetch_add(sale.price, std::memory_order_relaxed);
    });
    eventbus::event_store<eventbus::block> store(
        handlers, 1024, eventbus::store_options{.async = true, .workers = 2});
    const eventbus::context ctx;
    for (int i = 0; i < 1000; ++i) {  // warm-up: workers have run and cached their tables
        (void)store.subscribe(ctx, house_was_sold{"1 Main St", 1});
        store.publish();
    }
    REQUIRE_FALSE(store.drain(ctx));
    const std::uint64_t before = allocations.load();
    std::size_t failures = 0;
    for (int i = 0; i < 100000; ++i) {
        if (store.subscribe(ctx, house_was_sold{"123 Main St", 1}))
            ++failures;
        store.publish();
    }
    if (store.drain(ctx))
        ++failures;
    const std::uint64_t during = allocations.load() - before;
    CHECK(during == 0);
    CHECK(failures == 0);
    CHECK(total.load() == 101000);
}

TEST_CASE("a sync store allocates its slots and its stop state; async adds its workers only",
          "[alloc]") {
    eventbus::dispatcher handlers;
    (void)handlers.on<house_was_sold>([](const house_was_sold&) {});
    {
        const std::uint64_t before = allocations.load();
        eventbus::event_store store(handlers, 1024);
        // The slots, the hooks' shared state (registrations of hooks may outlive the store)
        // and the stop state of the handlers' context (std::stop_source allocates it); no
        // thread, no timer, no ordered_by_key stripes.
        CHECK(allocations.load() - before == 3);
    }
    {
        const std::uint64_t before = allocations.load();
        eventbus::event_store store(handlers, 1024,
                                    eventbus::store_options{.async = true, .workers = 2});
        // As above, plus the pool, its per-worker state, its thread list and the two threads
        // (each std::thread allocates its start state).
        CHECK(allocations.load() - before == 8);
    }
}
