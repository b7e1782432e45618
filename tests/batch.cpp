// Batch handlers: runs of consecutive events of one key from a claimed batch, as a std::span,
// in FIFO order, at most max_batch per call; handlers of the same key registered one event at a
// time see the same events, in priority order; a failed batch call makes each event of its run
// a dead letter; where no run forms (trigger, ordered_by_key) the span holds one event.
#include <eventbus/eventbus.hpp>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <numeric>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "catch.hpp"
#include "support.hpp"

using eventbus::args;
using eventbus::context;
using eventbus::dispatcher;
using eventbus::errc;
using eventbus::event;
using eventbus::event_store;
using eventbus::handler_options;
using eventbus::store_options;

namespace {

// prefix + number. (Not `"o" + std::to_string(n)`: GCC 12 at -O3 reports a false -Wrestrict
// inside that operator+.)
std::string numbered(const char* prefix, int n) {
    std::string name(prefix);
    name += std::to_string(n);
    return name;
}

struct tick {
    int n = 0;
};

}  // namespace

TEST_CASE("a batch handler gets runs of consecutive events of its type, FIFO, at most max_batch",
          "[batch]") {
    dispatcher handlers;
    std::vector<std::size_t> sizes;
    std::vector<int> seen;
    const eventbus::scoped_registration batch = handlers.on_batch<tick>(
        [&](std::span<const tick> run) {
            sizes.push_back(run.size());
            for (const tick& t : run)
                seen.push_back(t.n);
        },
        {}, 16);
    std::vector<std::string> dynamic_seen;
    const eventbus::scoped_registration other =
        handlers.on("other", [&](const context&, const args& a) {
            dynamic_seen.push_back(eventbus::arg<std::string>(a, "s"));
        });
    event_store<> store(handlers, 128);
    const context ctx;
    for (int i = 0; i < 40; ++i)
        REQUIRE_FALSE(store.subscribe(ctx, tick{i}));
    REQUIRE_FALSE(store.subscribe(
        ctx, event{.id = {}, .projection = "other", .args = {{"s", std::string("x")}}}));
    for (int i = 40; i < 45; ++i)
        REQUIRE_FALSE(store.subscribe(ctx, tick{i}));
    store.publish();
    // One claimed batch of 46: 40 ticks (16 + 16 + 8), the other key, then 5 ticks.
    CHECK(sizes == std::vector<std::size_t>{16, 16, 8, 5});
    std::vector<int> expected(45);
    std::iota(expected.begin(), expected.end(), 0);
    CHECK(seen == expected);
    CHECK(dynamic_seen == std::vector<std::string>{"x"});
    const auto m = store.metrics();
    CHECK(m.processed == 46);  // a batch call counts once per event
    CHECK(m.handled == 46);
    CHECK_RECONCILES(m);
}

TEST_CASE("batch and per-event handlers of one key run in priority order over the run",
          "[batch][priority]") {
    dispatcher handlers;
    std::vector<std::string> log;
    const eventbus::scoped_registration low =
        handlers.on<tick>([&](const tick& t) { log.push_back(numbered("low ", t.n)); },
                          handler_options{.name = "low", .priority = -1});
    const eventbus::scoped_registration batch = handlers.on_batch<tick>(
        [&](std::span<const tick> run) {
            std::string line = numbered("batch ", run.front().n);
            line += "..";
            line += std::to_string(run.back().n);
            log.push_back(std::move(line));
        },
        handler_options{.name = "batch", .priority = 0});
    const eventbus::scoped_registration high =
        handlers.on<tick>([&](const tick& t) { log.push_back(numbered("high ", t.n)); },
                          handler_options{.name = "high", .priority = 1});
    event_store<> store(handlers, 16);
    for (int i = 0; i < 3; ++i)
        REQUIRE_FALSE(store.subscribe(context{}, tick{i}));
    store.publish();
    CHECK(log == std::vector<std::string>{"high 0", "high 1", "high 2", "batch 0..2", "low 0",
                                          "low 1", "low 2"});
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("a dynamic batch handler gets the events of its key", "[batch][dynamic]") {
    dispatcher handlers;
    std::vector<std::string> ids;
    std::size_t calls = 0;
    const eventbus::scoped_registration batch =
        handlers.on_batch("order", [&](const context&, std::span<const event> run) {
            ++calls;
            for (const event& e : run)
                ids.push_back(numbered((e.id + "=").c_str(), eventbus::arg<int>(e.args, "n")));
        });
    event_store<> store(handlers, 16);
    for (int i = 0; i < 4; ++i)
        REQUIRE_FALSE(store.subscribe(
            context{}, event{.id = numbered("o", i), .projection = "order", .args = {{"n", i}}}));
    store.publish();
    CHECK(calls == 1);
    CHECK(ids == std::vector<std::string>{"o0=0", "o1=1", "o2=2", "o3=3"});
    // The events are back in their envelopes afterwards: a trigger sees its own one.
    CHECK_FALSE(
        store.trigger(context{}, event{.id = "t", .projection = "order", .args = {{"n", 9}}}));
    CHECK(ids.back() == "t=9");
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("a failed batch call makes every event of its run a dead letter of the handler",
          "[batch][dead_letter]") {
    dispatcher handlers;
    std::atomic<int> others{0};
    const eventbus::scoped_registration fails = handlers.on_batch<tick>(
        [&](std::span<const tick> run) {
            if (run.size() > 1)
                throw std::runtime_error("bad batch");
        },
        handler_options{.name = "batch"});
    const eventbus::scoped_registration fine =
        handlers.on<tick>([&](const tick&) { others.fetch_add(1); });
    event_store<> store(handlers, 16, store_options{.dead_letter_capacity = 16});
    std::atomic<int> reported{0};
    const auto hook = store.on_error([&](const context&, const eventbus::handler_failure& f) {
        CHECK(f.handler == "batch");
        CHECK(f.event.get_if<tick>() != nullptr);
        reported.fetch_add(1);
    });
    for (int i = 0; i < 5; ++i)
        REQUIRE_FALSE(store.subscribe(context{}, tick{i}));
    store.publish();
    CHECK(others.load() == 5);
    CHECK(reported.load() == 5);
    const auto letters = store.dead_letters();
    REQUIRE(letters.size() == 5);
    for (std::size_t i = 0; i < letters.size(); ++i) {
        CHECK(letters[i].handler() == "batch");
        CHECK(letters[i].event().get_if<tick>()->n == static_cast<int>(i));
    }
    const auto m = store.metrics();
    CHECK(m.errors == 5);
    CHECK(m.dead_lettered == 5);
    CHECK_RECONCILES(m);
    // Replayed one at a time, each is a run of one, which the handler accepts.
    REQUIRE_FALSE(store.replay(context{}, letters[2]));
    store.publish();
    CHECK(store.metrics().dead_lettered == 5);
    CHECK(others.load() == 6);
}

TEST_CASE("batch handlers: bad options are refused with invalid_argument", "[batch][errors]") {
    dispatcher handlers;
    const auto fn = [](std::span<const tick>) {};
    CHECK_THROWS_AS(handlers.on_batch<tick>(fn, {}, 65), std::invalid_argument);
    struct big {
        char bytes[3000];
    };
    // 8 KiB hold two: the default takes what fits, more is refused.
    const auto big_fn = [](std::span<const big>) {};
    CHECK_NOTHROW(eventbus::scoped_registration(handlers.on_batch<big>(big_fn)));
    CHECK_THROWS_AS(handlers.on_batch<big>(big_fn, {}, 3), std::invalid_argument);
    CHECK_THROWS_AS(
        handlers.on_batch<tick>(
            fn, handler_options{.name = {}, .priority = 0, .retry = {.max_attempts = 2}}),
        std::invalid_argument);
    CHECK(handlers.handlers()->empty());
}

TEST_CASE("async stores: every event reaches the batch handler exactly once", "[batch][stress]") {
    const bool ordered = GENERATE(false, true);
    CAPTURE(ordered);
    const std::size_t events = eventbus_test::scaled(200'000, 2'000);
    dispatcher handlers;
    std::vector<std::atomic<int>> seen(events);
    std::atomic<std::size_t> largest{0};
    const eventbus::scoped_registration batch =
        handlers.on_batch<tick>([&](std::span<const tick> run) {
            std::size_t now = largest.load();
            while (run.size() > now && !largest.compare_exchange_weak(now, run.size())) {
            }
            for (const tick& t : run)
                seen[static_cast<std::size_t>(t.n)].fetch_add(1);
        });
    event_store<eventbus::block> store(
        handlers, 1024, store_options{.async = true, .workers = 2, .ordered_by_key = ordered});
    std::vector<std::jthread> producers;
    std::atomic<int> refused{0};
    for (std::size_t p = 0; p < 2; ++p) {
        producers.emplace_back([&, p] {
            for (std::size_t i = p; i < events; i += 2) {
                if (store.subscribe(context{}, tick{static_cast<int>(i)}))
                    refused.fetch_add(1);
                if ((i / 2) % 64 == 0)
                    store.publish();
            }
            store.publish();
        });
    }
    producers.clear();
    REQUIRE_FALSE(store.drain(context{}));
    CHECK(refused.load() == 0);
    std::size_t wrong = 0;
    for (auto& count : seen)
        wrong += count.load() == 1 ? 0u : 1u;
    CHECK(wrong == 0);
    if (ordered)
        CHECK(largest.load() == 1);  // ordered_by_key hands out one event at a time
    const auto m = store.metrics();
    CHECK(m.processed == events);
    CHECK(m.handled == events);
    CHECK_RECONCILES(m);
}

TEST_CASE("a handler that removes itself inside a run is not called for the rest of it",
          "[batch][removal]") {
    dispatcher handlers;
    int once_calls = 0;
    eventbus::registration once;
    once = handlers.on<tick>(
        [&](const tick&) {
            ++once_calls;
            once.remove();
        },
        handler_options{.name = "once", .priority = 10});
    std::size_t batched = 0;
    const eventbus::scoped_registration batch =
        handlers.on_batch<tick>([&](std::span<const tick> run) { batched += run.size(); });
    event_store<> store(handlers, 64);
    for (int i = 0; i < 5; ++i)
        REQUIRE_FALSE(store.subscribe(context{}, tick{i}));
    store.publish();
    CHECK(once_calls == 1);
    CHECK(batched == 5);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("events reached by no handler of a run are unhandled, one by one", "[batch][removal]") {
    dispatcher handlers;
    eventbus::registration self;
    int calls = 0;
    self = handlers.on_batch<tick>([&](std::span<const tick>) {}, {}, 1);  // no runs from it
    // A run needs a batch handler of max_batch > 1: this one removes itself on its first call,
    // before the per-event handler below (lower priority) has been entered.
    eventbus::registration runner;
    runner = handlers.on_batch<tick>([&](std::span<const tick>) { runner.remove(); },
                                     handler_options{.name = "runner", .priority = 5});
    self.remove();
    eventbus::registration single;
    single = handlers.on<tick>(
        [&](const tick&) {
            ++calls;
            single.remove();
        },
        handler_options{.name = "single", .priority = 1});
    event_store<> store(handlers, 64);
    for (int i = 0; i < 4; ++i)
        REQUIRE_FALSE(store.subscribe(context{}, tick{i}));
    store.publish();
    CHECK(calls == 1);
    const auto m = store.metrics();
    CHECK(m.handled == 4);  // the batch call reached all four
    CHECK_RECONCILES(m);
}

TEST_CASE("a dynamic event under a type's key never forms a run for that type's batch handler",
          "[batch][errors]") {
    struct wide {
        std::string s;
        char pad[512];
    };
    dispatcher handlers;
    std::size_t called = 0;
    const eventbus::scoped_registration batch =
        handlers.on_batch<wide>([&](std::span<const wide> run) { called += run.size(); }, {}, 8);
    event_store<> store(handlers, 16);
    for (int i = 0; i < 3; ++i)
        REQUIRE_FALSE(store.subscribe(
            context{}, event{.id = "e", .projection = eventbus::key::of<wide>(), .args = {}}));
    store.publish();
    CHECK(called == 0);
    const auto m = store.metrics();
    CHECK(m.errors == 3);  // each refused by the handler's type check
    CHECK_RECONCILES(m);
}

TEST_CASE("a batch_error fails only the events it names: their dead letters, the others succeed",
          "[batch][retry]") {
    struct tick {
        int n;
    };
    dispatcher handlers;
    std::vector<std::string> seen_errors;
    (void)handlers.on_batch<tick>(
        [](std::span<const tick> run) {
            std::uint64_t failed = 0;
            for (std::size_t k = 0; k < run.size(); ++k)
                if (run[k].n % 2 == 0)
                    failed |= std::uint64_t{1} << k;
            if (failed != 0)
                throw eventbus::batch_error(
                    failed, std::make_exception_ptr(std::runtime_error("even numbers refused")));
        },
        {.name = "odd_only"});
    event_store<> store(handlers, 16, {.dead_letter_capacity = 16});
    (void)store.on_error([&](const context&, const event&, const std::exception_ptr& e) {
        try {
            std::rethrow_exception(e);
        } catch (const std::exception& what) {
            seen_errors.emplace_back(what.what());
        }
    });
    for (int n = 1; n <= 5; ++n)
        REQUIRE_FALSE(store.subscribe(context{}, tick{n}));
    store.publish();
    const auto m = store.metrics();
    CHECK(m.processed == 5);
    CHECK(m.errors == 2);
    CHECK(m.dead_lettered == 2);
    CHECK_RECONCILES(m);
    CHECK(seen_errors == std::vector<std::string>{"even numbers refused", "even numbers refused"});
    const auto letters = store.take_dead_letters();
    REQUIRE(letters.size() == 2);
    CHECK(letters[0].event().get_if<tick>()->n == 2);
    CHECK(letters[1].event().get_if<tick>()->n == 4);
    CHECK(letters[0].handler() == "odd_only");

    // No bit set (or only bits beyond the run): the call succeeded.
    dispatcher quiet;
    (void)quiet.on_batch<tick>([](std::span<const tick> run) {
        throw eventbus::batch_error(std::uint64_t{1} << run.size());
    });
    event_store<> other(quiet, 8);
    REQUIRE_FALSE(other.subscribe(context{}, tick{1}));
    other.publish();
    CHECK(other.metrics().errors == 0);
    CHECK_RECONCILES(other.metrics());
    CHECK(std::string(eventbus::batch_error(0b101).what()) ==
          "eventbus: 2 events of a batch failed");
}
