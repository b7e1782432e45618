// Delivery order within an event: handlers of one key run in descending priority, those of
// equal priority in registration order, in sync and async stores, and removal keeps the rest
// in place.
#include <eventbus/eventbus.hpp>

#include <mutex>
#include <string>
#include <vector>

#include "catch.hpp"

using eventbus::args;
using eventbus::context;
using eventbus::dispatcher;
using eventbus::event;
using eventbus::event_store;
using eventbus::handler_options;

namespace {
struct order_placed {
    int id = 0;
};
}  // namespace

TEST_CASE("handlers of a key run by descending priority, ties in registration order",
          "[delivery][priority]") {
    const bool async = GENERATE(false, true);
    CAPTURE(async);
    dispatcher handlers;
    std::mutex m;
    std::vector<std::string> seen;
    const auto record = [&](std::string name) {
        return [&, name](const context&, const order_placed&) {
            const std::lock_guard lock(m);
            seen.push_back(name);
        };
    };
    (void)handlers.on<order_placed>(record("default-1"));
    (void)handlers.on<order_placed>(record("low"), handler_options{.name = {}, .priority = -5});
    (void)handlers.on<order_placed>(record("high-1"), handler_options{.name = {}, .priority = 10});
    (void)handlers.on<order_placed>(record("default-2"));
    eventbus::registration removed =
        handlers.on<order_placed>(record("removed"), handler_options{.name = {}, .priority = 10});
    (void)handlers.on<order_placed>(record("high-2"), handler_options{.name = {}, .priority = 10});
    (void)handlers.on<order_placed>(record("top"), handler_options{.name = {}, .priority = 99});
    removed.remove();
    event_store<> store(handlers, 8, eventbus::store_options{.async = async, .workers = 1});
    REQUIRE_FALSE(store.subscribe({}, order_placed{1}));
    store.publish();
    REQUIRE_FALSE(store.drain({}));
    CHECK(seen ==
          std::vector<std::string>{"top", "high-1", "high-2", "default-1", "default-2", "low"});
}

TEST_CASE("dynamic handlers and trigger() follow priorities too", "[delivery][priority]") {
    dispatcher handlers;
    std::vector<int> seen;
    for (const int priority : {0, 3, -1, 3, 7})
        (void)handlers.on(
            "k", [&seen, priority](const context&, const args&) { seen.push_back(priority); },
            handler_options{.name = {}, .priority = priority});
    event_store<> store(handlers, 8);
    REQUIRE_FALSE(store.trigger({}, event{.id = {}, .projection = "k", .args = {}}));
    CHECK(seen == std::vector<int>{7, 3, 3, 0, -1});
}
