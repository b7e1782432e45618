// Retries and dead letters: a failed handler call is tried again after its backoff, on the
// store's timer, and only for the handler that failed; when its attempts run out (or its retry
// cannot run) the event goes to the dead letters, which can be inspected, taken and replayed.
// Every failed call is retried or dead-lettered exactly once: errors == retried + dead_lettered.
#include <eventbus/eventbus.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
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
using eventbus::backoff_policy;
using eventbus::context;
using eventbus::dead_letter;
using eventbus::dispatcher;
using eventbus::errc;
using eventbus::event;
using eventbus::event_store;
using eventbus::handler_options;
using eventbus::retry_policy;
using eventbus::store_options;

namespace {

struct order_placed {
    int id = 0;
};

// A payload that cannot be copied: retries and dead letters share it, never copy it.
struct move_only {
    std::unique_ptr<int> value;
};

handler_options retrying(std::string name, std::uint32_t attempts,
                         backoff_policy backoff = backoff_policy::constant(1ms)) {
    return handler_options{.name = std::move(name),
                           .priority = 0,
                           .retry = {.max_attempts = attempts, .backoff = backoff}};
}

}  // namespace

TEST_CASE("backoff_policy: constant, exponential with a cap, jitter within bounds, no overflow",
          "[retry][backoff]") {
    const auto constant = backoff_policy::constant(5ms);
    CHECK(constant.delay(1) == 5ms);
    CHECK(constant.delay(1000) == 5ms);

    const auto growing = backoff_policy::exponential(1ms, 2.0, 50ms);
    CHECK(growing.delay(1) == 1ms);
    CHECK(growing.delay(2) == 2ms);
    CHECK(growing.delay(4) == 8ms);
    CHECK(growing.delay(7) == 50ms);  // 64 ms, capped
    CHECK(growing.delay(4'000'000'000u) == 50ms);

    const auto unbounded = backoff_policy{.initial = 1s, .factor = 10.0};
    CHECK(unbounded.delay(100) == std::chrono::nanoseconds::max());  // no overflow

    const auto jittered = backoff_policy::exponential(100ms, 2.0, 1s, 0.5);
    CHECK(jittered.delay(1, 0.0) == 100ms);
    CHECK(jittered.delay(1, 0.999) > 50ms);
    CHECK(jittered.delay(1, 0.999) <= 100ms);
    CHECK(jittered.delay(1, 0.5) == 75ms);
}

TEST_CASE("a retry policy that cannot be followed is refused with invalid_argument",
          "[retry][errors]") {
    dispatcher handlers;
    const auto fn = [](const context&, const args&) {};
    const auto refused = [&](retry_policy policy) {
        CHECK_THROWS_AS(
            handlers.on("k", fn, handler_options{.name = {}, .priority = 0, .retry = policy}),
            std::invalid_argument);
    };
    refused({.max_attempts = 0, .backoff = {}});
    refused({.max_attempts = 2, .backoff = {.initial = -1ms}});
    refused({.max_attempts = 2, .backoff = {.initial = 1ms, .factor = 0.5}});
    refused({.max_attempts = 2, .backoff = {.initial = 1ms, .factor = std::nan("")}});
    refused(
        {.max_attempts = 2, .backoff = {.initial = 1ms, .factor = 2, .cap = 1s, .jitter = 1.5}});
    CHECK(handlers.handlers()->empty());
}

TEST_CASE("a failing handler is retried until it succeeds; the others are not called again",
          "[retry]") {
    const bool async = GENERATE(false, true);
    CAPTURE(async);
    dispatcher handlers;
    std::atomic<int> flaky_calls{0};
    std::atomic<int> steady_calls{0};
    std::mutex m;
    std::vector<std::uint32_t> attempts_seen;
    const eventbus::scoped_registration flaky = handlers.on<order_placed>(
        [&](const order_placed&) {
            if (flaky_calls.fetch_add(1) < 2)
                throw std::runtime_error("not yet");
        },
        retrying("flaky", 5, backoff_policy::exponential(1ms, 2.0, 10ms)));
    const eventbus::scoped_registration steady =
        handlers.on<order_placed>([&](const order_placed&) { steady_calls.fetch_add(1); });
    event_store<> store(handlers, 16, store_options{.async = async, .workers = 2});
    const auto hook = store.on_error([&](const context&, const eventbus::handler_failure& f) {
        std::lock_guard lock(m);
        CHECK(f.handler == "flaky");
        CHECK(f.max_attempts == 5);
        CHECK(f.event.get_if<order_placed>() != nullptr);
        attempts_seen.push_back(f.attempt);
    });
    REQUIRE_FALSE(store.subscribe(context{}, order_placed{7}));
    store.publish();
    REQUIRE_FALSE(store.drain(context{}));  // waits for the retries too
    CHECK(flaky_calls.load() == 3);
    CHECK(steady_calls.load() == 1);
    const auto metrics = store.metrics();
    CHECK(metrics.processed == 4);
    CHECK(metrics.errors == 2);
    CHECK(metrics.retried == 2);
    CHECK(metrics.dead_lettered == 0);
    CHECK(metrics.handled == 1);
    CHECK_RECONCILES(metrics);
    std::lock_guard lock(m);
    CHECK(attempts_seen == std::vector<std::uint32_t>{1, 2});
}

TEST_CASE("when the attempts run out the event is a dead letter, kept, taken and replayed",
          "[retry][dead_letter]") {
    const bool async = GENERATE(false, true);
    CAPTURE(async);
    dispatcher handlers;
    std::atomic<int> calls{0};
    std::atomic<bool> healthy{false};
    const eventbus::scoped_registration always = handlers.on(
        "payment",
        [&](const context&, const args& a) {
            calls.fetch_add(1);
            if (!healthy.load())
                throw std::runtime_error("card " + eventbus::arg<std::string>(a, "card"));
        },
        retrying("charge", 3));
    event_store<> store(handlers, 16,
                        store_options{.async = async, .workers = 2, .dead_letter_capacity = 4});
    std::atomic<int> hooked{0};
    const auto hook = store.on_dead_letter([&](const dead_letter& letter) {
        CHECK(letter.handler() == "charge");
        hooked.fetch_add(1);
    });
    REQUIRE_FALSE(store.subscribe(
        context{},
        event{.id = "p1", .projection = "payment", .args = {{"card", std::string("4242")}}}));
    store.publish();
    REQUIRE_FALSE(store.drain(context{}));
    CHECK(calls.load() == 3);
    CHECK(hooked.load() == 1);

    const std::vector<dead_letter> kept = store.dead_letters();
    REQUIRE(kept.size() == 1);
    const dead_letter& letter = kept.front();
    CHECK(letter.attempts() == 3);
    CHECK(letter.reason() == errc::handler_failed);
    CHECK(letter.projection() == eventbus::key("payment"));
    REQUIRE(letter.event().dynamic() != nullptr);
    CHECK(letter.event().id() == "p1");
    CHECK(letter.sequence() == 1);
    CHECK(letter.failed_at() <= std::chrono::system_clock::now());
    REQUIRE(letter.error());
    CHECK_THROWS_WITH(std::rethrow_exception(letter.error()), "card 4242");
    auto metrics = store.metrics();
    CHECK(metrics.errors == 3);
    CHECK(metrics.retried == 2);
    CHECK(metrics.dead_lettered == 1);
    CHECK(metrics.dead_letters_dropped == 0);
    CHECK_RECONCILES(metrics);

    // Once the handler is healthy again, the replay succeeds and the letter is no longer kept.
    healthy.store(true);
    REQUIRE_FALSE(store.replay(context{}, letter));
    CHECK(store.dead_letters().empty());
    store.publish();
    REQUIRE_FALSE(store.drain(context{}));
    CHECK(calls.load() == 4);
    metrics = store.metrics();
    CHECK(metrics.published == 2);
    CHECK(metrics.handled == 2);
    CHECK(metrics.dead_lettered == 1);
    CHECK_RECONCILES(metrics);
    CHECK(store.take_dead_letters().empty());
}

TEST_CASE("dead letters: a typed move-only event is kept and replayed without a copy",
          "[retry][dead_letter][typed]") {
    dispatcher handlers;
    std::atomic<int> calls{0};
    const eventbus::scoped_registration fails = handlers.on<move_only>([&](const move_only& m) {
        calls.fetch_add(1);
        REQUIRE(m.value);
        if (*m.value == 41)
            throw std::runtime_error("41");
    });
    event_store<> store(handlers, 8, store_options{.dead_letter_capacity = 2});
    REQUIRE_FALSE(store.subscribe(context{}, move_only{std::make_unique<int>(41)}));
    store.publish();
    std::vector<dead_letter> letters = store.take_dead_letters();
    REQUIRE(letters.size() == 1);
    CHECK(store.dead_letters().empty());
    const move_only* held = letters[0].event().get_if<move_only>();
    REQUIRE(held != nullptr);
    CHECK(*held->value == 41);
    CHECK(letters[0].attempts() == 1);  // no retry policy: one attempt
    // Replayed twice: the same object each time, shared with the letter.
    REQUIRE_FALSE(store.replay(context{}, letters[0]));
    REQUIRE_FALSE(store.replay(context{}, letters[0]));
    store.publish();
    CHECK(calls.load() == 3);
    CHECK(store.dead_letters().size() == 2);
    CHECK(store.dead_letters()[0].event().get_if<move_only>() == held);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("dead letters beyond the capacity drop the oldest, counted; capacity 0 keeps none",
          "[retry][dead_letter]") {
    const std::size_t capacity = GENERATE(std::size_t{0}, std::size_t{3});
    CAPTURE(capacity);
    dispatcher handlers;
    const eventbus::scoped_registration fails =
        handlers.on<order_placed>([](const order_placed&) { throw std::runtime_error("no"); });
    event_store<> store(handlers, 16, store_options{.dead_letter_capacity = capacity});
    for (int i = 0; i < 5; ++i)
        REQUIRE_FALSE(store.subscribe(context{}, order_placed{i}));
    store.publish();
    const auto metrics = store.metrics();
    CHECK(metrics.dead_lettered == 5);
    CHECK(metrics.dead_letters_dropped == 5 - capacity);
    const auto letters = store.dead_letters();
    REQUIRE(letters.size() == capacity);
    for (std::size_t i = 0; i < capacity; ++i) {
        CHECK(letters[i].event().get_if<order_placed>()->id == static_cast<int>(i + 2));
        CHECK(letters[i].sequence() == i + 3);
    }
    CHECK_RECONCILES(metrics);
}

TEST_CASE("close() does not wait for a retry's backoff: the retry is given up as closed",
          "[retry][dead_letter][close]") {
    const bool async = GENERATE(false, true);
    CAPTURE(async);
    dispatcher handlers;
    std::atomic<int> calls{0};
    const eventbus::scoped_registration slow_retry = handlers.on<order_placed>(
        [&](const order_placed&) {
            calls.fetch_add(1);
            throw std::runtime_error("down");
        },
        retrying("later", 10, backoff_policy::constant(1h)));
    event_store<> store(handlers, 16,
                        store_options{.async = async, .workers = 2, .dead_letter_capacity = 8});
    REQUIRE_FALSE(store.subscribe(context{}, order_placed{1}));
    store.publish();
    REQUIRE(eventbus_test::eventually([&] { return store.metrics().errors == 1; }));
    // drain() would wait an hour for the retry: with a deadline it gives up.
    CHECK(store.drain(context{}.with_timeout(20ms)) == errc::deadline_exceeded);
    REQUIRE_FALSE(store.close(context{}));
    CHECK(calls.load() == 1);
    const auto letters = store.dead_letters();
    REQUIRE(letters.size() == 1);
    CHECK(letters[0].reason() == errc::closed);
    CHECK(letters[0].attempts() == 1);
    const auto metrics = store.metrics();
    CHECK(metrics.retried == 0);
    CHECK(metrics.dead_lettered == 1);
    CHECK_RECONCILES(metrics);
}

TEST_CASE("a handler removed while its retry waits is given up on (cancelled), never called",
          "[retry][dead_letter][removal]") {
    const bool async = GENERATE(false, true);
    CAPTURE(async);
    dispatcher handlers;
    std::atomic<int> calls{0};
    std::atomic<bool> release{false};
    eventbus::registration flaky = handlers.on<order_placed>(
        [&](const order_placed&) {
            calls.fetch_add(1);
            throw std::runtime_error("down");
        },
        retrying("gone", 3, backoff_policy::constant(1ms)));
    event_store<> store(handlers, 16,
                        store_options{.async = async, .workers = 2, .dead_letter_capacity = 8});
    // The first failure is seen by a hook that removes the handler before the retry is due:
    // the removal waits for the call in flight, which is this one, so it runs from the hook.
    const auto hook = store.on_error([&](const context&, const eventbus::handler_failure&) {
        if (!release.exchange(true))
            flaky.remove();
    });
    REQUIRE_FALSE(store.subscribe(context{}, order_placed{1}));
    store.publish();
    REQUIRE_FALSE(store.drain(context{}));
    CHECK(calls.load() == 1);
    const auto letters = store.dead_letters();
    REQUIRE(letters.size() == 1);
    CHECK(letters[0].reason() == errc::cancelled);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("trigger(): failed calls are its caller's, never retried or dead-lettered",
          "[retry][trigger]") {
    dispatcher handlers;
    std::atomic<int> calls{0};
    const eventbus::scoped_registration fails = handlers.on<order_placed>(
        [&](const order_placed&) {
            calls.fetch_add(1);
            throw std::runtime_error("no");
        },
        retrying("t", 3));
    event_store<> store(handlers, 8, store_options{.dead_letter_capacity = 4});
    CHECK(store.trigger(context{}, order_placed{1}) == errc::handler_failed);
    REQUIRE_FALSE(store.drain(context{}));
    CHECK(calls.load() == 1);
    const auto metrics = store.metrics();
    CHECK(metrics.trigger_errors == 1);
    CHECK(metrics.retried == 0);
    CHECK(metrics.dead_lettered == 0);
    CHECK_RECONCILES(metrics);
}

TEST_CASE("ordered_by_key: later events of a key wait for its retried event, other keys go on",
          "[retry][ordered]") {
    dispatcher handlers;
    std::mutex m;
    std::map<std::string, std::vector<int>> seen;  // successful calls per key, in order
    std::atomic<int> failures_left{3};
    event_store<> store(handlers, 64,
                        store_options{.async = true, .workers = 2, .ordered_by_key = true});
    const eventbus::scoped_registration under_a = handlers.on(
        "ka",
        [&](const context&, const args& a) {
            const int n = eventbus::arg<int>(a, "n");
            if (n == 0 && failures_left.fetch_sub(1) > 0)
                throw std::runtime_error("first event of ka fails three times");
            std::lock_guard lock(m);
            seen["ka"].push_back(n);
        },
        retrying("ordered", 5, backoff_policy::constant(2ms)));
    const eventbus::scoped_registration under_b =
        handlers.on("kb", [&](const context&, const args& a) {
            std::lock_guard lock(m);
            seen["kb"].push_back(eventbus::arg<int>(a, "n"));
        });
    constexpr int per_key = 20;
    for (int n = 0; n < per_key; ++n) {
        REQUIRE_FALSE(
            store.subscribe(context{}, event{.id = {}, .projection = "ka", .args = {{"n", n}}}));
        REQUIRE_FALSE(
            store.subscribe(context{}, event{.id = {}, .projection = "kb", .args = {{"n", n}}}));
    }
    store.publish();
    REQUIRE_FALSE(store.drain(context{}));
    std::vector<int> expected(per_key);
    for (int n = 0; n < per_key; ++n)
        expected[static_cast<std::size_t>(n)] = n;
    std::lock_guard lock(m);
    CHECK(seen["ka"] == expected);  // event 0 first, after its three failures
    CHECK(seen["kb"] == expected);
    const auto metrics = store.metrics();
    CHECK(metrics.retried == 3);
    CHECK(metrics.errors == 3);
    CHECK(metrics.dead_lettered == 0);
    CHECK_RECONCILES(metrics);
}

TEST_CASE("stress: every event succeeds exactly once or is dead-lettered exactly once",
          "[retry][stress]") {
    const bool ordered = GENERATE(false, true);
    CAPTURE(ordered);
    constexpr std::uint32_t max_attempts = 4;
    const std::size_t events = eventbus_test::scaled(20'000, 500);
    const std::size_t producers = 2;
    dispatcher handlers;
    // Event i fails (i * 2654435761) % 7 times: 0..6, so those failing 4 or more times die.
    const auto failures_of = [](std::size_t i) { return static_cast<int>((i * 2654435761u) % 7); };
    std::vector<std::atomic<int>> calls(events);
    std::vector<std::atomic<int>> successes(events);
    const auto handle = [&](std::size_t i) {
        if (calls[i].fetch_add(1) < failures_of(i))
            throw std::runtime_error("flaky");
        successes[i].fetch_add(1);
    };
    const eventbus::scoped_registration typed = handlers.on<order_placed>(
        [&](const order_placed& o) { handle(static_cast<std::size_t>(o.id)); },
        retrying("typed", max_attempts, backoff_policy::exponential(10us, 2.0, 200us, 0.5)));
    const eventbus::scoped_registration dynamic = handlers.on(
        "dynamic",
        [&](const context&, const args& a) {
            handle(static_cast<std::size_t>(eventbus::arg<int>(a, "i")));
        },
        retrying("dynamic", max_attempts, backoff_policy::constant(50us)));
    std::mutex m;
    std::vector<int> dead(events, 0);
    int odd_letters = 0;
    std::atomic<int> refused{0};
    event_store<eventbus::block> store(
        handlers, 256, store_options{.async = true, .workers = 2, .ordered_by_key = ordered});
    const auto hook = store.on_dead_letter([&](const dead_letter& letter) {
        std::size_t i = 0;
        if (const auto* typed_event = letter.event().get_if<order_placed>())
            i = static_cast<std::size_t>(typed_event->id);
        else
            i = static_cast<std::size_t>(eventbus::arg<int>(letter.event().dynamic()->args, "i"));
        std::lock_guard lock(m);  // Catch2's checks are for the test's own thread
        ++dead[i];
        if (letter.attempts() != max_attempts || letter.reason() != errc::handler_failed)
            ++odd_letters;
    });
    std::vector<std::jthread> threads;
    for (std::size_t p = 0; p < producers; ++p) {
        threads.emplace_back([&, p] {
            for (std::size_t i = p; i < events; i += producers) {
                const auto n = static_cast<int>(i);
                const std::error_code error =
                    i % 2 == 0 ? store.subscribe(context{}, order_placed{n})
                               : store.subscribe(
                                     context{},
                                     event{.id = {}, .projection = "dynamic", .args = {{"i", n}}});
                if (error)
                    refused.fetch_add(1);
                if ((i / producers) % 8 == 0)  // a block store waits for room: publish often
                    store.publish();
            }
            store.publish();
        });
    }
    threads.clear();
    REQUIRE_FALSE(store.drain(context{}));
    CHECK(refused.load() == 0);
    CHECK(odd_letters == 0);
    std::size_t succeeded = 0;
    std::size_t died = 0;
    std::uint64_t expected_errors = 0;
    for (std::size_t i = 0; i < events; ++i) {
        const int fails = failures_of(i);
        const bool dies = fails >= static_cast<int>(max_attempts);
        INFO("event " << i << " fails " << fails << " times");
        CHECK(successes[i].load() == (dies ? 0 : 1));
        CHECK(dead[i] == (dies ? 1 : 0));
        CHECK(calls[i].load() == (dies ? static_cast<int>(max_attempts) : fails + 1));
        expected_errors +=
            static_cast<std::uint64_t>(dies ? max_attempts : static_cast<std::uint32_t>(fails));
        succeeded += dies ? 0 : 1;
        died += dies ? 1 : 0;
    }
    const auto metrics = store.metrics();
    CHECK(metrics.published == events);
    CHECK(metrics.handled == events);
    CHECK(metrics.errors == expected_errors);
    CHECK(metrics.dead_lettered == died);
    CHECK(succeeded + died == events);
    CHECK_RECONCILES(metrics);
}

TEST_CASE("ordered_by_key with one worker: a later event of a key waiting for its retry parks",
          "[retry][ordered]") {
    dispatcher handlers;
    std::atomic<int> fails{1};
    std::mutex m;
    std::vector<int> order;
    const eventbus::scoped_registration flaky = handlers.on<order_placed>(
        [&](const order_placed& o) {
            if (o.id == 1 && fails.fetch_sub(1) > 0)
                throw std::runtime_error("flaky");
            std::lock_guard lock(m);
            order.push_back(o.id);
        },
        retrying("h", 3, backoff_policy::constant(5ms)));
    event_store<> store(handlers, 16,
                        store_options{.async = true, .workers = 1, .ordered_by_key = true});
    REQUIRE_FALSE(store.subscribe(context{}, order_placed{1}));
    REQUIRE_FALSE(store.subscribe(context{}, order_placed{2}));
    store.publish();
    REQUIRE_FALSE(store.drain(context{}));
    std::lock_guard lock(m);
    CHECK(order == std::vector<int>{1, 2});
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("close() with events parked behind a waiting retry handles them all",
          "[retry][ordered][close]") {
    const std::size_t max_parked = GENERATE(std::size_t{2}, std::size_t{8});
    CAPTURE(max_parked);
    dispatcher handlers;
    std::atomic<int> calls{0};
    const eventbus::scoped_registration down = handlers.on<order_placed>(
        [&](const order_placed& o) {
            calls.fetch_add(1);
            if (o.id == 0)
                throw std::runtime_error("down");
        },
        retrying("h", 5, backoff_policy::constant(1h)));
    event_store<> store(handlers, 64,
                        store_options{.async = true,
                                      .workers = 2,
                                      .ordered_by_key = true,
                                      .max_parked = max_parked,
                                      .dead_letter_capacity = 8});
    REQUIRE_FALSE(store.subscribe(context{}, order_placed{0}));
    store.publish();
    REQUIRE(eventbus_test::eventually([&] { return store.metrics().errors == 1; }));
    // Only as many as can be parked: beyond, subscribe would be the one to wait.
    for (int i = 1; i <= static_cast<int>(max_parked); ++i)
        REQUIRE_FALSE(store.subscribe(context{}, order_placed{i}));
    store.publish();
    REQUIRE_FALSE(store.close(context{}));
    CHECK(calls.load() == static_cast<int>(max_parked) + 1);
    const auto letters = store.dead_letters();
    REQUIRE(letters.size() == 1);
    CHECK(letters[0].reason() == errc::closed);
    const auto metrics = store.metrics();
    CHECK(metrics.handled == max_parked + 1);
    CHECK_RECONCILES(metrics);
}

TEST_CASE("removing a handler frees its callable even while its retry waits", "[retry][removal]") {
    const bool async = GENERATE(false, true);
    CAPTURE(async);
    dispatcher handlers;
    auto capture = std::make_shared<int>(0);
    const std::weak_ptr<int> alive = capture;
    eventbus::registration flaky = handlers.on<order_placed>(
        [capture = std::move(capture)](const order_placed&) { throw std::runtime_error("down"); },
        retrying("h", 3, backoff_policy::constant(1h)));
    event_store<> store(handlers, 16,
                        store_options{.async = async, .workers = 2, .dead_letter_capacity = 4});
    REQUIRE_FALSE(store.subscribe(context{}, order_placed{1}));
    store.publish();
    REQUIRE(eventbus_test::eventually([&] { return store.metrics().errors == 1; }));
    flaky.remove();
    flaky = eventbus::registration{};  // the handle owned the entry too
    // An async worker may still hold the table it last read until it next looks or sleeps;
    // the retry, due in an hour, must not hold it.
    CHECK(eventbus_test::eventually([&] { return alive.expired(); }));
    REQUIRE_FALSE(store.close(context{}));
    CHECK(store.dead_letters().size() == 1);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("a sync single_producer store does not retry: the timer thread would produce",
          "[retry][single_producer]") {
    dispatcher handlers;
    std::atomic<int> calls{0};
    const eventbus::scoped_registration flaky = handlers.on<order_placed>(
        [&](const order_placed&) {
            calls.fetch_add(1);
            throw std::runtime_error("down");
        },
        retrying("h", 3));
    event_store<> store(handlers, 16,
                        store_options{.single_producer = true, .dead_letter_capacity = 4});
    REQUIRE_FALSE(store.subscribe(context{}, order_placed{1}));
    store.publish();
    REQUIRE_FALSE(store.drain(context{}));
    CHECK(calls.load() == 1);
    const auto letters = store.dead_letters();
    REQUIRE(letters.size() == 1);
    CHECK(letters[0].reason() == errc::not_supported);
    CHECK_RECONCILES(store.metrics());
}
