// Typed events: a struct is its own key and payload; handlers receive `const T&`; dynamic and
// typed events share one store and one FIFO order; payloads too large for a slot go to the heap
// and every payload is destroyed exactly once.
#include <eventbus/eventbus.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using eventbus::args;
using eventbus::context;
using eventbus::dispatcher;
using eventbus::drop_oldest;
using eventbus::errc;
using eventbus::event;
using eventbus::event_store;
using eventbus::key;
using eventbus::result;
using eventbus::store_options;
using eventbus_test::lifetime_counts;
using eventbus_test::tracked;

namespace {

struct house_was_sold {
    std::string address;
    int price = 0;
};

struct big_payload {
    std::array<char, 1024> bytes{};
    int tag = 0;
};

// A move constructor that may throw: stored on the heap, never moved inside the ring.
struct throwing_move {
    int value = 0;
    throwing_move(int v) : value(v) {}  // NOLINT
    throwing_move(const throwing_move&) = default;
    throwing_move(throwing_move&& other) noexcept(false) : value(other.value) {}
};

// A tracked payload too large for a slot: heap-stored, still counted.
struct big_tracked {
    tracked inner;
    std::array<char, 512> padding{};
};

static_assert(eventbus::detail::stored_inline<house_was_sold>);
static_assert(!eventbus::detail::stored_inline<big_payload>);
static_assert(!eventbus::detail::stored_inline<throwing_move>);
static_assert(eventbus::typed_event<house_was_sold>);
static_assert(!eventbus::typed_event<event>);
static_assert(eventbus::inline_payload_size == 48);
// With the ring's sequence number, a slot of a store is one 64-byte line.
static_assert(sizeof(eventbus::detail::envelope) + sizeof(std::uint64_t) == 64);
// Pointers and eventbus's own types are not typed events (a pointer would silently go nowhere).
struct derived_event : event {};
static_assert(!eventbus::typed_event<derived_event>);
static_assert(!eventbus::typed_event<house_was_sold*>);
static_assert(!eventbus::typed_event<const char*>);
static_assert(!eventbus::typed_event<eventbus::key>);
static_assert(!eventbus::typed_event<eventbus::context>);
static_assert(eventbus::typed_event<const house_was_sold&>);

}  // namespace

TEST_CASE("a typed event reaches its typed handlers as const T&, in every handler form",
          "[typed]") {
    std::vector<std::string> seen;
    dispatcher handlers;
    (void)handlers.on<house_was_sold>([&](const context&, const house_was_sold& sale) {
        seen.push_back("ctx " + sale.address + " " + std::to_string(sale.price));
    });
    (void)handlers.on<house_was_sold>(
        [&](const house_was_sold& sale) { seen.push_back("plain " + sale.address); });
    (void)handlers.on<house_was_sold>([&](const house_was_sold&) -> result {
        seen.emplace_back("result");
        return result{"ok"};
    });
    (void)handlers.on<house_was_sold>([&](const auto& sale) {  // generic: T given explicitly
        seen.push_back("generic " + std::to_string(sale.price));
    });
    event_store store(handlers, 8);
    REQUIRE_FALSE(store.subscribe(context{}, house_was_sold{"123 Main St", 500000}));
    store.publish();
    CHECK(seen == std::vector<std::string>{"ctx 123 Main St 500000", "plain 123 Main St", "result",
                                           "generic 500000"});
    CHECK(store.metrics().processed == 4);
    CHECK(store.metrics().unhandled == 0);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("typed handlers fit the braced dispatcher list next to dynamic ones", "[typed]") {
    int typed_calls = 0;
    int dynamic_calls = 0;
    dispatcher handlers{
        {"user_created", [&](const context&, const args&) { ++dynamic_calls; }},
        {key::of<house_was_sold>(),
         [&](const context&, const house_was_sold& sale) { typed_calls += sale.price; }},
    };
    event_store store(handlers, 8);
    REQUIRE_FALSE(store.subscribe(context{}, house_was_sold{"a", 2}));
    REQUIRE_FALSE(
        store.subscribe(context{}, event{.id = "1", .projection = "user_created", .args = {}}));
    store.publish();
    CHECK(typed_calls == 2);
    CHECK(dynamic_calls == 1);
}

TEST_CASE("a typed handler under another key is refused at registration", "[typed]") {
    // Under a string literal it does not compile (tests/compile_fail); under a key held in a
    // variable it is refused at run time.
    dispatcher handlers;
    const auto typed = [](const house_was_sold&) {};
    const key by_name("house_was_sold");
    CHECK_THROWS_AS(handlers.on(by_name, typed), std::invalid_argument);
    CHECK_THROWS_AS(handlers.on(key::of<big_payload>(), typed), std::invalid_argument);
    CHECK_NOTHROW(handlers.on(key::of<house_was_sold>(), typed));
}

TEST_CASE("dynamic and typed events share one FIFO order", "[typed]") {
    std::vector<std::string> order;
    dispatcher handlers;
    (void)handlers.on<house_was_sold>(
        [&](const house_was_sold& sale) { order.push_back(sale.address); });
    (void)handlers.on("dyn", [&](const context&, const args& a) {
        order.push_back(std::any_cast<std::string>(a.at("v")));
    });
    event_store store(handlers, 16);
    for (int i = 0; i < 3; ++i) {
        REQUIRE_FALSE(store.subscribe(context{}, house_was_sold{"t" + std::to_string(i), i}));
        REQUIRE_FALSE(store.subscribe(
            context{},
            event{.id = "", .projection = "dyn", .args = {{"v", "d" + std::to_string(i)}}}));
    }
    store.publish();
    CHECK(order == std::vector<std::string>{"t0", "d0", "t1", "d1", "t2", "d2"});
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("payloads too large for a slot, or with a throwing move, go to the heap", "[typed]") {
    int tags = 0;
    int values = 0;
    dispatcher handlers;
    (void)handlers.on<big_payload>([&](const big_payload& p) { tags += p.tag + p.bytes[1023]; });
    (void)handlers.on<throwing_move>([&](const throwing_move& p) { values += p.value; });
    event_store store(handlers, 4);
    big_payload big;
    big.tag = 5;
    big.bytes[1023] = 1;
    REQUIRE_FALSE(store.subscribe(context{}, big));  // an lvalue: copied
    REQUIRE_FALSE(store.subscribe(context{}, throwing_move(7)));
    store.publish();
    CHECK(tags == 6);
    CHECK(values == 7);
}

TEST_CASE("every typed payload is destroyed exactly once: handled, dropped or left in the store",
          "[typed][lifetime]") {
    lifetime_counts counts;
    {
        int handled = 0;
        dispatcher handlers;
        (void)handlers.on<tracked>([&](const tracked&) { ++handled; });
        (void)handlers.on<big_tracked>([&](const big_tracked&) { ++handled; });
        event_store<drop_oldest> store(handlers, 4);
        for (int i = 0; i < 6; ++i)  // two dropped
            REQUIRE_FALSE(store.subscribe(context{}, tracked(counts, i)));
        store.publish();
        CHECK(handled == 4);
        CHECK(store.metrics().dropped == 2);
        REQUIRE_FALSE(store.subscribe(context{}, big_tracked{tracked(counts, 9)}));
        REQUIRE_FALSE(store.subscribe(context{}, tracked(counts, 10)));
        auto tx = store.begin_transaction();
        (void)tx.publish(tracked(counts, 11));
        // Left pending in the ring and in the transaction: the destructors free them.
    }
    CHECK(counts.alive() == 0);
    CHECK(counts.double_destroyed == 0);
    CHECK(counts.constructed > 0);
}

TEST_CASE("hooks see a typed event by its key; middleware passes it through", "[typed]") {
    std::vector<std::string> log;
    dispatcher handlers;
    (void)handlers.on<house_was_sold>(
        [&](const house_was_sold& sale) { log.push_back("handler " + sale.address); });
    event_store store(handlers, 8);
    store.on_before([&](const context&, const event& ev) {
        CHECK(ev.projection == key::of<house_was_sold>());
        log.emplace_back("before");
    });
    store.use([&](const context& ctx, const event& ev, const eventbus::next_handler& next) {
        log.emplace_back("middleware");
        return next(ctx, ev);
    });
    store.on_after([&](const context&, const event&, const result&, std::exception_ptr error) {
        CHECK_FALSE(error);
        log.emplace_back("after");
    });
    REQUIRE_FALSE(store.subscribe(context{}, house_was_sold{"x", 1}));
    store.publish();
    CHECK(log == std::vector<std::string>{"before", "middleware", "handler x", "after"});
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("a dynamic event under a type's key fails that type's handler, reported once",
          "[typed]") {
    dispatcher handlers;
    (void)handlers.on<house_was_sold>([](const house_was_sold&) {});
    event_store store(handlers, 8);
    std::string message;
    store.on_error([&](const context&, const event&, std::exception_ptr error) {
        try {
            std::rethrow_exception(error);
        } catch (const std::invalid_argument& e) {
            message = e.what();
        }
    });
    REQUIRE_FALSE(store.subscribe(
        context{}, event{.id = "", .projection = key::of<house_was_sold>(), .args = {}}));
    store.publish();
    CHECK(store.metrics().errors == 1);
    CHECK(message.find("eventbus") != std::string::npos);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("typed events in transactions and schedules", "[typed]") {
    std::atomic<int> total{0};
    dispatcher handlers;
    (void)handlers.on<house_was_sold>([&](const house_was_sold& sale) { total += sale.price; });
    event_store store(handlers, 8);
    auto tx = store.begin_transaction();
    REQUIRE_FALSE(tx.publish(house_was_sold{"a", 1}));
    const house_was_sold lvalue{"b", 2};
    REQUIRE_FALSE(tx.publish(lvalue));
    REQUIRE_FALSE(tx.commit(context{}));
    CHECK(total == 3);
    (void)store.schedule_after(context{}, 0ms, house_was_sold{"c", 4});  // due: at once
    CHECK(total == 7);
    auto handle = store.schedule_after(context{}, 5ms, house_was_sold{"d", 8});
    CHECK(eventbus_test::eventually([&] { return total == 15; }));
    CHECK_FALSE(handle);
    REQUIRE_FALSE(store.close(context{}));
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("async typed events with ordered_by_key: each handled once, per type in order",
          "[typed][async]") {
    struct tick {
        int n;
    };
    std::vector<int> ticks;  // one key, ordered: handled one at a time
    std::atomic<int> sales{0};
    dispatcher handlers;
    (void)handlers.on<tick>([&](const tick& t) { ticks.push_back(t.n); });
    (void)handlers.on<house_was_sold>([&](const house_was_sold&) { ++sales; });
    event_store store(handlers, 64,
                      store_options{.async = true, .workers = 2, .ordered_by_key = true});
    const int n = static_cast<int>(eventbus_test::scaled(5000, 200));
    for (int i = 0; i < n; ++i) {
        REQUIRE_FALSE(store.subscribe(context{}, tick{i}));
        REQUIRE_FALSE(store.subscribe(context{}, house_was_sold{"s", i}));
        store.publish();
    }
    REQUIRE_FALSE(store.close(context{}));
    const auto m = store.metrics();
    CHECK(static_cast<int>(ticks.size()) + sales.load() + static_cast<int>(m.dropped) == 2 * n);
    CHECK(std::is_sorted(ticks.begin(), ticks.end()));
    CHECK(m.handled == ticks.size() + static_cast<std::size_t>(sales.load()));
    CHECK_RECONCILES(m);
}

TEST_CASE("type keys are named by their type; on<const T> is on<T>", "[typed]") {
    const auto name = key::of<house_was_sold>().name();
    CHECK(name.find("house_was_sold") != std::string_view::npos);
    CHECK(name.find("type_name") == std::string_view::npos);
    CHECK(name.size() < 60);
    int calls = 0;
    dispatcher handlers;
    (void)handlers.on<const house_was_sold>([&](const house_was_sold&) { ++calls; });
    event_store store(handlers, 8);
    REQUIRE_FALSE(store.subscribe(context{}, house_was_sold{"a", 1}));
    store.publish();
    CHECK(calls == 1);
    CHECK_RECONCILES(store.metrics());
}
