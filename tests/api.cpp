// The API that is hard to misuse: scoped registrations, lifetimes of dispatchers, stores and
// registrations in either order, removable hooks, immediate dispatch (trigger), typed access to
// dynamic arguments, and hooks that see the payload, the handler's name and unhandled events.
#include "catch.hpp"

#include <eventbus/eventbus.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"

using namespace eventbus;
using namespace std::chrono_literals;

namespace {

struct order_placed {
    int id = 0;
    double total = 0;
};

// Counts its copies, to show that trigger() hands handlers the caller's object.
struct counted {
    static inline std::atomic<int> copies{0};
    int value = 0;
    explicit counted(int v) noexcept : value(v) {}
    counted(const counted& other) noexcept : value(other.value) { copies.fetch_add(1); }
    counted(counted&&) noexcept = default;
    counted& operator=(const counted&) = delete;
    counted& operator=(counted&&) = delete;
    ~counted() = default;
};

event make(std::string key, args a = {}) {
    return event{.id = "id-" + key, .projection = key, .args = std::move(a)};
}

store_options async_with(std::size_t workers) {
    return store_options{.async = true, .workers = workers};
}

}  // namespace

// scoped registrations ///////////////////////////////////////////////////////////////////////

TEST_CASE("a scoped_registration removes its handler when it goes out of scope", "[api]") {
    dispatcher handlers;
    int calls = 0;
    event_store<> store(handlers, 8);
    {
        scoped_registration scoped =
            handlers.on<order_placed>([&](const order_placed&) { ++calls; });
        CHECK(scoped);
        REQUIRE_FALSE(store.subscribe({}, order_placed{1, 2.0}));
        store.publish();
        CHECK(calls == 1);
    }
    REQUIRE_FALSE(store.subscribe({}, order_placed{2, 2.0}));
    store.publish();
    CHECK(calls == 1);
    CHECK(store.metrics().unhandled == 1);
    CHECK(store.metrics().handled == 1);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("an object that owns scoped registrations unsubscribes before it dies", "[api]") {
    // The situation that is a use-after-free with a plain registration: the handler captures
    // `this` and the object dies while the handler is still registered.
    struct order_book {
        int seen = 0;
        scoped_registration on_order;
        explicit order_book(dispatcher& d)
            : on_order(d.on<order_placed>([this](const order_placed&) { ++seen; })) {}
    };
    dispatcher handlers;
    event_store<> store(handlers, 8);
    auto book = std::make_unique<order_book>(handlers);
    REQUIRE_FALSE(store.subscribe({}, order_placed{1, 1.0}));
    store.publish();
    CHECK(book->seen == 1);
    book.reset();  // ASan reports a heap-use-after-free below if the handler were still there
    REQUIRE_FALSE(store.subscribe({}, order_placed{2, 1.0}));
    store.publish();
    CHECK(store.metrics().unhandled == 1);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("scoped_registration: move, release and explicit remove", "[api]") {
    dispatcher handlers;
    int calls = 0;
    event_store<> store(handlers, 8);
    const auto publish_one = [&] {
        REQUIRE_FALSE(store.subscribe({}, order_placed{}));
        store.publish();
    };
    scoped_registration a = handlers.on<order_placed>([&](const order_placed&) { ++calls; });
    scoped_registration b = std::move(a);
    CHECK_FALSE(a);  // NOLINT(bugprone-use-after-move): moved-from is empty by contract
    CHECK(b);
    publish_one();
    CHECK(calls == 1);

    // Move assignment removes what the target held before.
    int other_calls = 0;
    scoped_registration c = handlers.on<order_placed>([&](const order_placed&) { ++other_calls; });
    c = std::move(b);
    publish_one();
    CHECK(calls == 2);
    CHECK(other_calls == 0);

    // release() keeps the handler; the returned registration can still remove it.
    registration kept = c.release();
    CHECK_FALSE(c);
    publish_one();
    CHECK(calls == 3);
    kept.remove();
    publish_one();
    CHECK(calls == 3);

    scoped_registration d = handlers.on<order_placed>([&](const order_placed&) { ++calls; });
    d.remove();
    CHECK_FALSE(d);
    publish_one();
    CHECK(calls == 3);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("destroying a scoped_registration waits for its call in flight", "[api][async]") {
    dispatcher handlers;
    eventbus_test::gate g;
    std::atomic<bool> finished{false};
    auto scoped =
        std::make_unique<scoped_registration>(handlers.on<order_placed>([&](const order_placed&) {
            g.pass();
            finished.store(true);
        }));
    event_store<> store(handlers, 8, async_with(1));
    const eventbus_test::open_at_exit release(g);
    REQUIRE_FALSE(store.subscribe({}, order_placed{}));
    store.publish();
    g.entered.wait();
    // The gate opens once this thread sleeps in the destructor, waiting for the call.
    auto opener =
        eventbus_test::when_asleep(eventbus_test::current_thread_id(), [&] { g.opened.set(); });
    scoped.reset();  // returns only once the handler has returned
    CHECK(finished.load());
    opener.join();
    REQUIRE_FALSE(store.drain({}));
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("a scoped_registration destroyed inside its own handler does not wait for itself",
          "[api]") {
    dispatcher handlers;
    auto scoped = std::make_unique<scoped_registration>();
    int calls = 0;
    *scoped = handlers.on<order_placed>([&](const order_placed&) {
        ++calls;
        scoped.reset();  // a "once" handler
    });
    event_store<> store(handlers, 8);
    REQUIRE_FALSE(store.subscribe({}, order_placed{}));
    REQUIRE_FALSE(store.subscribe({}, order_placed{}));
    store.publish();
    CHECK(calls == 1);
}

// lifetimes //////////////////////////////////////////////////////////////////////////////////

TEST_CASE("a dispatcher destroyed before its store leaves the store working", "[api]") {
    int calls = 0;
    auto handlers = std::make_unique<dispatcher>();
    (void)handlers->on<order_placed>([&](const order_placed&) { ++calls; });
    for (const bool async : {false, true}) {
        calls = 0;
        auto owned = std::make_unique<dispatcher>();
        (void)owned->on<order_placed>([&](const order_placed&) { ++calls; });
        event_store<> store(*owned, 8, store_options{.async = async, .workers = 1});
        owned.reset();
        REQUIRE_FALSE(store.subscribe({}, order_placed{}));
        REQUIRE_FALSE(store.drain({}));
        CHECK(calls == 1);
        // The store's own handle on the shared table still registers handlers.
        int more = 0;
        scoped_registration extra =
            store.dispatcher().on<order_placed>([&](const order_placed&) { ++more; });
        REQUIRE_FALSE(store.subscribe({}, order_placed{}));
        REQUIRE_FALSE(store.drain({}));
        CHECK(calls == 2);
        CHECK(more == 1);
    }
}

TEST_CASE("registrations outlive their dispatcher and store safely", "[api]") {
    registration handler_registration;
    registration hook_registration;
    scoped_registration scoped;
    {
        dispatcher handlers;
        event_store<> store(handlers, 8);
        handler_registration = handlers.on("k", [](const context&, const args&) {});
        scoped = handlers.on("k", [](const context&, const args&) {});
        hook_registration = store.on_before([](const context&, const event&) {});
        CHECK(handler_registration);
        CHECK(hook_registration);
    }
    handler_registration.remove();  // nothing left to remove from: no effect, no crash
    hook_registration.remove();
    scoped.remove();
    CHECK_FALSE(handler_registration);
    CHECK_FALSE(hook_registration);
}

TEST_CASE("a store destroyed before its dispatcher leaves the dispatcher working", "[api]") {
    dispatcher handlers;
    int calls = 0;
    (void)handlers.on("k", [&](const context&, const args&) { ++calls; });
    {
        event_store<> first(handlers, 8, async_with(1));
        REQUIRE_FALSE(first.subscribe({}, make("k")));
    }
    event_store<> second(handlers, 8);
    REQUIRE_FALSE(second.subscribe({}, make("k")));
    second.publish();
    CHECK(calls == 2);
}

// hooks //////////////////////////////////////////////////////////////////////////////////////

TEST_CASE("hooks and middleware return registrations that remove them", "[api][hooks]") {
    dispatcher handlers{{"k", [](const context&, const args&) {}}};
    event_store<> store(handlers, 8);
    int before = 0;
    int after = 0;
    int wrapped = 0;
    registration b = store.on_before([&](const context&, const event&) { ++before; });
    scoped_registration a = store.on_after(
        [&](const context&, const event&, const result&, std::exception_ptr) { ++after; });
    registration m = store.use([&](const context& ctx, const event& ev, const next_handler& next) {
        ++wrapped;
        return next(ctx, ev);
    });
    REQUIRE_FALSE(store.subscribe({}, make("k")));
    store.publish();
    CHECK(before == 1);
    CHECK(after == 1);
    CHECK(wrapped == 1);
    b.remove();
    a.remove();
    m.remove();
    REQUIRE_FALSE(store.subscribe({}, make("k")));
    store.publish();
    CHECK(before == 1);
    CHECK(after == 1);
    CHECK(wrapped == 1);
    CHECK(store.metrics().processed == 2);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("removing a hook waits for its call in flight, and it is never called again",
          "[api][hooks][async]") {
    dispatcher handlers;
    (void)handlers.on("k", [](const context&, const args&) {});
    eventbus_test::gate g;
    event_store<> store(handlers, 8, async_with(1));
    const eventbus_test::open_at_exit release(g);
    std::atomic<int> hook_calls{0};
    std::atomic<bool> hook_returned{false};
    std::atomic<int> after_calls{0};
    registration hook = store.on_before([&](const context&, const event&) {
        if (hook_calls.fetch_add(1) == 0)
            g.pass();
        hook_returned.store(true);
    });
    // Another hook, kept: removing one hook leaves the others.
    (void)store.on_after([&](const context&, const event&, const result&, std::exception_ptr) {
        after_calls.fetch_add(1);
    });
    REQUIRE_FALSE(store.subscribe({}, make("k")));
    store.publish();
    g.entered.wait();
    // The gate opens once this thread sleeps in remove(), waiting for the hook.
    auto opener =
        eventbus_test::when_asleep(eventbus_test::current_thread_id(), [&] { g.opened.set(); });
    hook.remove();  // the worker is inside the hook: remove() waits for it to return
    CHECK(hook_returned.load());
    opener.join();
    REQUIRE_FALSE(store.subscribe({}, make("k")));
    REQUIRE_FALSE(store.drain({}));
    CHECK(hook_calls == 1);
    CHECK(after_calls == 2);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("a hook may remove itself from inside its own call", "[api][hooks]") {
    dispatcher handlers{{"k", [](const context&, const args&) {}}};
    event_store<> store(handlers, 8);
    int calls = 0;
    registration self;
    self = store.on_before([&](const context&, const event&) {
        ++calls;
        self.remove();
    });
    for (int i = 0; i < 3; ++i)
        REQUIRE_FALSE(store.subscribe({}, make("k")));
    store.publish();
    CHECK(calls == 1);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("error hooks see the typed payload and the failing handler's name", "[api][hooks]") {
    dispatcher handlers;
    (void)handlers.on<order_placed>(
        [](const order_placed& o) {
            if (o.id == 7)
                throw std::runtime_error("no stock");
        },
        handler_options{.name = "inventory"});
    (void)handlers.on("refund",
                      [](const context&, const args&) { throw std::logic_error("refunds closed"); },
                      {.name = "refunds"});
    event_store<> store(handlers, 8);
    std::vector<std::string> seen;
    int plain_error_hook = 0;
    (void)store.on_error(
        [&](const context&, const event&, std::exception_ptr) { ++plain_error_hook; });
    (void)store.on_error([&](const context&, const handler_failure& failure) {
        std::string what;
        try {
            std::rethrow_exception(failure.error);
        } catch (const std::exception& e) {
            what = e.what();
        }
        if (const auto* o = failure.event.get_if<order_placed>())
            seen.push_back(std::string(failure.handler) + ":" + std::to_string(o->id) + ":" + what);
        else if (const event* ev = failure.event.dynamic())
            seen.push_back(std::string(failure.handler) + ":" + ev->id + ":" + what);
        CHECK(failure.event.get_if<int>() == nullptr);
    });
    REQUIRE_FALSE(store.subscribe({}, order_placed{6, 1.0}));
    REQUIRE_FALSE(store.subscribe({}, order_placed{7, 1.0}));
    REQUIRE_FALSE(store.subscribe({}, make("refund")));
    store.publish();
    REQUIRE(seen.size() == 2);
    CHECK(seen[0] == "inventory:7:no stock");
    CHECK(seen[1] == "refunds:id-refund:refunds closed");
    CHECK(plain_error_hook == 2);
    CHECK(store.metrics().errors == 2);
    CHECK(store.metrics().processed == 3);
    CHECK(store.metrics().handled == 3);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("on_unhandled sees every event that found no handler, once", "[api][hooks]") {
    dispatcher handlers{{"order_placed", [](const context&, const args&) {}}};
    event_store<> store(handlers, 8);
    std::vector<std::string> unhandled;
    (void)store.on_unhandled([&](const context&, const event_view& ev) {
        unhandled.emplace_back(ev.is_typed() ? "typed" : ev.projection().name());
    });
    REQUIRE_FALSE(store.subscribe({}, make("order_placed")));
    REQUIRE_FALSE(store.subscribe({}, make("order_plcaed")));  // a typo
    REQUIRE_FALSE(store.subscribe({}, order_placed{}));        // nobody handles the type
    store.publish();
    REQUIRE(unhandled.size() == 2);
    CHECK(unhandled[0] == "order_plcaed");
    CHECK(unhandled[1] == "typed");
    CHECK(store.metrics().unhandled == 2);
    CHECK_RECONCILES(store.metrics());
}

// immediate dispatch ///////////////////////////////////////////////////////////////////////

TEST_CASE("trigger runs the handlers now, on the caller, without the ring", "[api][trigger]") {
    dispatcher handlers;
    std::vector<int> got;
    const auto caller = std::this_thread::get_id();
    bool on_caller = true;
    (void)handlers.on<counted>([&](const counted& c) {
        got.push_back(c.value);
        on_caller = on_caller && std::this_thread::get_id() == caller;
    });
    (void)handlers.on<counted>([&](const counted& c) { got.push_back(c.value * 10); });
    for (const bool async : {false, true}) {
        got.clear();
        event_store<> store(handlers, 8, store_options{.async = async, .workers = 1});
        const counted value(4);
        counted::copies = 0;
        CHECK_FALSE(store.trigger({}, value));
        CHECK(counted::copies == 0);  // handlers received the caller's object
        CHECK(got == std::vector<int>{4, 40});
        CHECK(on_caller);
        const store_metrics m = store.metrics();
        CHECK(m.triggered == 1);
        CHECK(m.published == 0);
        CHECK(m.processed == 2);
        CHECK(m.handled == 1);  // one event, two handler calls
        CHECK_RECONCILES(m);
    }
}

TEST_CASE("trigger isolates failures, runs hooks and reports handler_failed", "[api][trigger]") {
    dispatcher handlers;
    int second = 0;
    (void)handlers.on("pay", [](const context&, const args& a) {
        if (arg<int>(a, "amount") < 0)
            throw std::invalid_argument("negative amount");
    });
    (void)handlers.on("pay", [&](const context&, const args&) { ++second; });
    event_store<> store(handlers, 8);
    int before = 0;
    int failures = 0;
    (void)store.on_before([&](const context&, const event&) { ++before; });
    (void)store.on_error([&](const context&, const handler_failure& f) {
        CHECK(f.event.projection().name() == "pay");
        ++failures;
    });
    CHECK_FALSE(store.trigger({}, make("pay", {{"amount", 5}})));
    CHECK(store.trigger({}, make("pay", {{"amount", -5}})) == errc::handler_failed);
    CHECK(second == 2);  // the other handler still ran
    CHECK(before == 4);
    CHECK(failures == 1);
    CHECK(store.metrics().errors == 1);
    CHECK(store.metrics().handled == 2);  // a failed call still handles its event
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("trigger: ended context, closed store, no handler, from inside a handler",
          "[api][trigger]") {
    dispatcher handlers;
    int inner = 0;
    event_store<> store(handlers, 8);
    (void)handlers.on("outer", [&](const context& ctx, const args&) {
        CHECK_FALSE(store.trigger(ctx, make("inner")));
    });
    (void)handlers.on("inner", [&](const context&, const args&) { ++inner; });
    std::stop_source stop;
    stop.request_stop();
    CHECK(store.trigger(context(stop.get_token()), make("inner")) == errc::cancelled);
    CHECK(inner == 0);
    CHECK_FALSE(store.trigger({}, make("nobody")));
    CHECK(store.metrics().unhandled == 1);
    REQUIRE_FALSE(store.subscribe({}, make("outer")));
    store.publish();
    CHECK(inner == 1);
    CHECK(store.metrics().triggered == 2);
    REQUIRE_FALSE(store.close({}));
    CHECK(store.trigger({}, make("inner")) == errc::closed);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("trigger from several threads while others publish: every call counted once",
          "[api][trigger][stress]") {
    dispatcher handlers;
    std::atomic<std::uint64_t> sum{0};
    (void)handlers.on<order_placed>(
        [&](const order_placed& o) { sum.fetch_add(static_cast<std::uint64_t>(o.id)); });
    event_store<> store(handlers, 1024);
    constexpr int per_thread = 20000;
    std::vector<std::thread> threads;
    for (int t = 0; t < 2; ++t)
        threads.emplace_back([&, t] {
            for (int i = 1; i <= per_thread; ++i) {
                if (t == 0) {
                    (void)store.trigger({}, order_placed{i, 0});
                } else {
                    while (store.subscribe({}, order_placed{i, 0}))
                        store.publish();
                    if (i % 64 == 0)
                        store.publish();
                }
            }
        });
    for (auto& t : threads)
        t.join();
    REQUIRE_FALSE(store.drain({}));
    const std::uint64_t expected = 2ull * per_thread * (per_thread + 1) / 2;
    CHECK(sum.load() == expected);
    const store_metrics m = store.metrics();
    CHECK(m.triggered == per_thread);
    CHECK(m.processed == 2ull * per_thread - m.dropped);
    CHECK(m.handled == m.processed);  // one handler: one call per event
    CHECK_RECONCILES(m);
}

// dynamic arguments //////////////////////////////////////////////////////////////////////////

TEST_CASE("arg<T> names the argument and both types when it fails", "[api][args]") {
    const args a{{"order_id", 42}, {"customer", std::string("ada")}};
    CHECK(arg<int>(a, "order_id") == 42);
    CHECK(arg<std::string>(a, "customer") == "ada");
    CHECK(find_arg<int>(a, "customer") == nullptr);
    CHECK(find_arg<int>(a, "missing") == nullptr);
    REQUIRE(find_arg<int>(a, "order_id") != nullptr);

    try {
        (void)arg<std::string>(a, "order_id");
        FAIL("no exception");
    } catch (const arg_error& e) {
        CHECK(std::string(e.what()) ==
              "eventbus: argument \"order_id\" holds int, not the std::string asked for");
    }
    try {
        (void)arg<long>(a, "orderid");
        FAIL("no exception");
    } catch (const arg_error& e) {
        CHECK(std::string(e.what()) ==
              "eventbus: no argument \"orderid\" (asked for long); the "
              "event has \"customer\", \"order_id\"");
    }
    CHECK_THROWS_AS(arg<int>(args{}, "x"), std::invalid_argument);
}

TEST_CASE("removals from inside handlers on two threads at once never wait for each other",
          "[api][hooks][async]") {
    // Two workers each inside a batch, each removing what the other may be running: a hook
    // that removes itself, and two handlers that remove each other. Either would wait forever
    // if each removal waited for the other's batch.
    for (int round = 0; round < 20; ++round) {
        dispatcher handlers;
        std::atomic<int> arrived{0};
        const auto meet = [&] {  // both workers inside their batch before either removes
            arrived.fetch_add(1);
            const auto deadline = std::chrono::steady_clock::now() + 200ms;
            while (arrived.load() < 2 && std::chrono::steady_clock::now() < deadline)
                std::this_thread::yield();
        };
        registration first;
        registration second;
        first = handlers.on("a", [&](const context&, const args&) {
            meet();
            second.remove();
        });
        second = handlers.on("b", [&](const context&, const args&) {
            meet();
            first.remove();
        });
        event_store<> store(handlers, 64, store_options{.async = true, .workers = 2});
        registration hook;
        hook = store.on_after([&](const context&, const event&, const result&, std::exception_ptr) {
            hook.remove();
        });
        REQUIRE_FALSE(store.subscribe({}, make("a")));
        REQUIRE_FALSE(store.subscribe({}, make("b")));
        store.publish();
        REQUIRE_FALSE(store.drain(context{}.with_timeout(eventbus_test::patience)));
        CHECK_RECONCILES(store.metrics());
    }
}

TEST_CASE("a handler subscribing into its own full block store gets would_deadlock, not a hang",
          "[api]") {
    for (const bool async : {false, true}) {
        dispatcher handlers;
        std::vector<std::error_code> inner;
        event_store<block>* self = nullptr;
        std::atomic<bool> release{false};
        (void)handlers.on("outer", [&](const context&, const args&) {
            // Fill the ring from inside the handler: the last subscribe finds it full.
            for (int i = 0; i < 3; ++i)
                inner.push_back(self->subscribe({}, make("inner")));
        });
        (void)handlers.on("inner", [](const context&, const args&) {});
        event_store<block> store(handlers, 2, store_options{.async = async, .workers = 1});
        self = &store;
        REQUIRE_FALSE(store.subscribe({}, make("outer")));
        REQUIRE_FALSE(store.drain(context{}.with_timeout(eventbus_test::patience)));
        release.store(true);
        REQUIRE(inner.size() == 3);
        CHECK_FALSE(inner[0]);
        CHECK_FALSE(inner[1]);
        CHECK(inner[2] == errc::would_deadlock);
        REQUIRE_FALSE(store.drain({}));
        const store_metrics m = store.metrics();
        CHECK(m.published == 3);
        CHECK(m.processed == 3);
        CHECK_RECONCILES(m);
    }
}

TEST_CASE("close() lets the handlers it is finishing trigger follow-ups", "[api][trigger]") {
    for (const bool async : {false, true}) {
        dispatcher handlers;
        std::atomic<int> follow_ups{0};
        std::atomic<int> refused{0};
        event_store<>* self = nullptr;
        (void)handlers.on("order", [&](const context& ctx, const args&) {
            if (self->trigger(ctx, make("shipped")))
                refused.fetch_add(1);
        });
        (void)handlers.on("shipped", [&](const context&, const args&) { follow_ups.fetch_add(1); });
        event_store<> store(handlers, 128, store_options{.async = async, .workers = 2});
        self = &store;
        for (int i = 0; i < 100; ++i)
            REQUIRE_FALSE(store.subscribe({}, make("order")));
        store.publish();
        REQUIRE_FALSE(store.close({}));
        CHECK(follow_ups == 100);
        CHECK(refused == 0);
        CHECK(store.trigger({}, make("shipped")) == errc::closed);
        const store_metrics m = store.metrics();
        CHECK(m.triggered == 100);
        CHECK(m.handled == 200);
        CHECK_RECONCILES(m);
    }
}

TEST_CASE("a sync handler committing into its own full block store gets would_deadlock", "[api]") {
    dispatcher handlers;
    std::error_code inner;
    event_store<block>* self = nullptr;
    (void)handlers.on("outer", [&](const context&, const args&) {
        // One slot is left after subscribing twice; the run of two does not fit.
        REQUIRE_FALSE(self->subscribe({}, make("filler")));
        auto tx = self->begin_transaction();
        REQUIRE_FALSE(tx.publish(make("inner")));
        REQUIRE_FALSE(tx.publish(make("inner")));
        inner = tx.commit({});
        CHECK(tx.is_open());
        CHECK_FALSE(tx.rollback());
    });
    event_store<block> store(handlers, 2);
    self = &store;
    REQUIRE_FALSE(store.subscribe({}, make("outer")));
    REQUIRE_FALSE(store.subscribe({}, make("other")));
    REQUIRE_FALSE(store.drain(context{}.with_timeout(eventbus_test::patience)));
    CHECK(inner == errc::would_deadlock);
    REQUIRE_FALSE(store.drain({}));  // the filler, subscribed by the handler, waited for this
    CHECK(store.metrics().unhandled == 2);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("a full block store returns at once for a context that has already ended", "[api]") {
    dispatcher handlers;
    event_store<block> store(handlers, 1);
    REQUIRE_FALSE(store.subscribe({}, make("a")));
    std::stop_source stop;
    stop.request_stop();
    CHECK(store.subscribe(context(stop.get_token()), make("b")) == errc::cancelled);
    CHECK(store.metrics().published == 1);
}
