// Keys and the dispatcher: key equality and hashing, braced construction like Go's map literal,
// several handlers per key, removal (also from inside a handler, and waiting for calls in
// flight), and registration racing publication.
#include <eventbus/eventbus.hpp>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "catch.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using eventbus::args;
using eventbus::context;
using eventbus::dispatcher;
using eventbus::event;
using eventbus::event_store;
using eventbus::key;
using eventbus::result;
using eventbus_test::eventually;

namespace {
struct house_was_sold {};
struct user_created {};

event make(key projection, std::string id = "") {
    return event{.id = std::move(id), .projection = std::move(projection), .args = {}};
}
}  // namespace

TEST_CASE("keys compare by value and hash consistently", "[key]") {
    const std::string name = "user_created";
    CHECK(key("user_created") == key(name));
    CHECK(key(std::string_view("user_created")) == key(name));
    CHECK(key("a") != key("b"));
    CHECK(std::hash<key>{}(key("user_created")) == std::hash<key>{}(key(name)));

    CHECK(key::of<house_was_sold>() == key::of<house_was_sold>());
    CHECK(key::of<const house_was_sold&>() == key::of<house_was_sold>());
    CHECK(key::of<house_was_sold>() != key::of<user_created>());
    CHECK(key::of<house_was_sold>().is_type());
    CHECK_FALSE(key("x").is_type());
    CHECK(key::of<house_was_sold>().name().find("house_was_sold") != std::string_view::npos);

    std::unordered_set<key> set{key("a"), key::of<house_was_sold>(), key("a")};
    CHECK(set.size() == 2);
}

TEST_CASE("a type key never equals a string key, whatever the type's name", "[key]") {
    const key type_key = key::of<user_created>();
    CHECK(type_key != key(std::string(type_key.name())));
    CHECK(type_key != key("user_created"));
    CHECK(type_key != key(""));
}

TEST_CASE("a dispatcher is built like a Go map literal and runs handlers in order",
          "[dispatcher]") {
    std::vector<std::string> calls;
    dispatcher handlers{
        {"user_created",
         [&](const context&, const args& a) {
             calls.push_back("user " + std::any_cast<std::string>(a.at("id")));
             return result{"handled user_created"};
         }},
        {key::of<house_was_sold>(), [&](const context&, const args&) { calls.push_back("house"); }},
    };
    (void)handlers.on("user_created",
                      [&](const context&, const args&) { calls.push_back("second"); });

    event_store<> store(handlers, 8);
    REQUIRE_FALSE(store.subscribe(
        {},
        event{.id = "1", .projection = "user_created", .args = {{"id", std::string("12345")}}}));
    REQUIRE_FALSE(store.subscribe({}, make(key::of<house_was_sold>())));
    store.publish();
    CHECK(calls == std::vector<std::string>{"user 12345", "second", "house"});
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("remove() unregisters a handler; dropping the handle does not", "[dispatcher]") {
    int first = 0;
    int second = 0;
    dispatcher handlers;
    auto reg = handlers.on("k", [&](const context&, const args&) { ++first; });
    {
        auto dropped = handlers.on("k", [&](const context&, const args&) { ++second; });
        CHECK(dropped);
    }
    event_store<> store(handlers, 8);
    REQUIRE_FALSE(store.subscribe({}, make("k")));
    store.publish();
    CHECK(first == 1);
    CHECK(second == 1);

    CHECK(reg);
    reg.remove();
    CHECK_FALSE(reg);
    reg.remove();  // idempotent
    REQUIRE_FALSE(store.subscribe({}, make("k")));
    store.publish();
    CHECK(first == 1);
    CHECK(second == 2);
    CHECK(store.metrics().unhandled == 0);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("a handler may remove itself and register others from inside", "[dispatcher]") {
    dispatcher handlers;
    int self_calls = 0;
    int added_calls = 0;
    eventbus::registration self;
    self = handlers.on("k", [&](const context&, const args&) {
        ++self_calls;
        self.remove();  // must not wait for its own call
        (void)handlers.on("k", [&](const context&, const args&) { ++added_calls; });
    });
    event_store<> store(handlers, 8);
    REQUIRE_FALSE(store.subscribe({}, make("k")));
    REQUIRE_FALSE(store.subscribe({}, make("k")));
    store.publish();
    // The snapshot taken by this publish still lists `self`, but removal is seen at once;
    // the handler added inside is seen by the next publish.
    CHECK(self_calls == 1);
    CHECK(added_calls == 0);
    REQUIRE_FALSE(store.subscribe({}, make("k")));
    store.publish();
    CHECK(self_calls == 1);
    CHECK(added_calls == 1);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("remove() waits for the handler's calls in flight on other threads", "[dispatcher]") {
    dispatcher handlers;
    eventbus_test::gate slow;
    std::atomic<bool> finished{false};
    auto reg = handlers.on("slow", [&](const context&, const args&) {
        slow.pass();
        finished = true;
    });
    event_store<> store(handlers, 8);
    REQUIRE_FALSE(store.subscribe({}, make("slow")));
    std::jthread publisher([&] { store.publish(); });
    const eventbus_test::open_at_exit release(slow);
    slow.entered.wait();
    // The call ends once this thread sleeps in remove(), waiting for it.
    auto opener =
        eventbus_test::when_asleep(eventbus_test::current_thread_id(), [&] { slow.opened.set(); });
    reg.remove();
    CHECK(finished);  // remove() returned only after the call finished
}

TEST_CASE("registering and removing while other threads publish", "[dispatcher][stress]") {
    dispatcher handlers;
    std::atomic<long> stable_calls{0};
    (void)handlers.on("k", [&](const context&, const args&) { stable_calls.fetch_add(1); });
    event_store<eventbus::block> store(handlers, 64);
    const long events = static_cast<long>(eventbus_test::scaled(20000, 500));
    std::atomic<bool> done{false};
    std::atomic<long> removed_calls_after_remove{0};
    std::atomic<long> failures{0};
    {
        std::jthread churn([&] {
            while (!done) {
                std::atomic<bool> gone{false};
                auto reg = handlers.on("k", [&](const context&, const args&) {
                    if (gone)
                        removed_calls_after_remove.fetch_add(1);
                });
                std::this_thread::yield();
                reg.remove();
                gone = true;  // after remove() returns, the handler must never run again
            }
        });
        std::vector<std::jthread> threads;
        for (int t = 0; t < 2; ++t) {
            threads.emplace_back([&] {
                for (long i = 0; i < events / 2; ++i) {
                    if (store.subscribe({}, make("k")))
                        failures.fetch_add(1);
                    if (i % 8 == 0)
                        store.publish();
                }
            });
        }
        threads.clear();
        store.publish();
        done = true;
    }
    CHECK(failures == 0);
    CHECK(stable_calls == events);
    CHECK(removed_calls_after_remove == 0);
    const auto m = store.metrics();
    CHECK(m.handled == static_cast<std::uint64_t>(events));  // the stable handler saw each
    CHECK_RECONCILES(m);
}

TEST_CASE("a 'once' handler run by two publishers may remove itself from both", "[dispatcher]") {
    dispatcher handlers;
    std::atomic<int> inside{0};
    std::atomic<int> calls{0};
    eventbus::registration once;
    once = handlers.on("k", [&](const context&, const args&) {
        calls.fetch_add(1);
        inside.fetch_add(1);
        (void)eventually([&] { return inside >= 2; });
        once.remove();  // both threads, same registration, same moment: no deadlock
    });
    event_store<> store(handlers, 8);
    std::atomic<int> subscribe_failures{0};
    {
        // One event each: a publisher claims what was enqueued before it, so the second event
        // is enqueued once the first publisher is inside the handler.
        std::jthread a([&] {
            subscribe_failures += store.subscribe({}, make("k")) ? 1 : 0;
            store.publish();
        });
        std::jthread b([&] {
            while (inside < 1)
                std::this_thread::yield();
            subscribe_failures += store.subscribe({}, make("k")) ? 1 : 0;
            store.publish();
        });
    }
    store.publish();
    CHECK(subscribe_failures == 0);
    CHECK(calls == 2);
    CHECK_FALSE(once);
    REQUIRE_FALSE(store.subscribe({}, make("k")));
    store.publish();
    CHECK(calls == 2);
    const auto m = store.metrics();
    CHECK(m.handled == 2);
    CHECK(m.unhandled == 1);  // the handler had removed itself
    CHECK_RECONCILES(m);
}

TEST_CASE("removed handlers are freed while another handler is still running", "[dispatcher]") {
    // A long-running handler keeps its copy of the table; copies made by later registrations
    // and removals must not pile up behind it, and removed handlers' captures must be freed.
    dispatcher handlers;
    eventbus_test::lifetime_counts counts;
    eventbus_test::gate long_call;
    (void)handlers.on("long", [&](const context&, const args&) { long_call.pass(); });
    event_store<> store(handlers, 8);
    REQUIRE_FALSE(store.subscribe({}, make("long")));
    std::jthread publisher([&] { store.publish(); });
    const eventbus_test::open_at_exit release(long_call);
    long_call.entered.wait();
    for (int i = 0; i < 100; ++i) {
        auto capture = std::make_shared<eventbus_test::tracked>(counts, i);
        auto reg = handlers.on("other", [capture](const context&, const args&) {});
        capture.reset();
        reg.remove();
    }
    // One more update collects what the earlier ones retired while nobody was reading.
    handlers.on("last", [](const context&, const args&) {}).remove();
    CHECK(counts.alive() == 0);
}

TEST_CASE("a handler whose captures call back into the dispatcher when freed", "[dispatcher]") {
    dispatcher handlers;
    int registered_from_destructor = 0;
    struct calls_back {
        dispatcher* d = nullptr;
        int* count = nullptr;
        ~calls_back() {
            if (d != nullptr) {
                (void)d->on("from_destructor", [](const context&, const args&) {});
                ++*count;
            }
        }
    };
    {
        auto guard = std::make_shared<calls_back>();
        guard->d = &handlers;
        guard->count = &registered_from_destructor;
        auto reg = handlers.on("k", [guard](const context&, const args&) {});
        guard.reset();
        reg.remove();  // frees the handler, whose capture registers another handler: no deadlock
        handlers.on("flush", [](const context&, const args&) {}).remove();
    }
    CHECK(registered_from_destructor == 1);
}

TEST_CASE("a copy of a registration keeps the handler removable after the original is gone",
          "[dispatcher]") {
    dispatcher handlers;
    std::atomic<int> calls{0};
    eventbus::registration copy;
    {
        auto original = handlers.on("e", [&](const context&, const args&) { ++calls; });
        copy = original;
        eventbus::registration moved = std::move(original);
        CHECK(moved);
        CHECK_FALSE(original);  // NOLINT: moved-from is empty by contract
    }
    event_store<> store(handlers, 8);
    REQUIRE_FALSE(store.subscribe({}, make("e")));
    store.publish();
    CHECK(calls == 1);
    copy.remove();
    CHECK_FALSE(copy);
    REQUIRE_FALSE(store.subscribe({}, make("e")));
    store.publish();
    CHECK(calls == 1);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("remove() still waits for calls in flight when other handles were dropped",
          "[dispatcher]") {
    dispatcher handlers;
    eventbus_test::gate slow;
    std::atomic<bool> finished{false};
    auto kept = handlers.on("slow", [&](const context&, const args&) {
        slow.pass();
        finished = true;
    });
    { auto dropped_copy = kept; }  // one of two handles gone: still removable
    event_store<> store(handlers, 8);
    REQUIRE_FALSE(store.subscribe({}, make("slow")));
    std::jthread publisher([&] { store.publish(); });
    const eventbus_test::open_at_exit release(slow);
    slow.entered.wait();
    // The call ends once this thread sleeps in remove(), waiting for it.
    auto opener =
        eventbus_test::when_asleep(eventbus_test::current_thread_id(), [&] { slow.opened.set(); });
    kept.remove();
    CHECK(finished);  // remove() returned only after the call in flight ended
}

TEST_CASE("a sync store keeps no removed handler alive once its handles are gone", "[dispatcher]") {
    // A store may cache the handler table between publishes, but only a table whose handlers can
    // never be removed: a removed handler's captures die with its last handle, publish or not.
    dispatcher handlers;
    eventbus_test::lifetime_counts counts;
    event_store<> store(handlers, 8);
    {
        auto capture = std::make_shared<eventbus_test::tracked>(counts, 1);
        auto reg = handlers.on("e", [capture](const context&, const args&) {});
        capture.reset();
        REQUIRE_FALSE(store.subscribe({}, make("e")));
        store.publish();
        reg.remove();
    }
    CHECK(counts.alive() == 0);
    (void)handlers.on("permanent", [](const context&, const args&) {});  // handle dropped
    REQUIRE_FALSE(store.subscribe({}, make("permanent")));
    store.publish();
    CHECK(store.metrics().processed == 2);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("remove() waits for a call in flight even while that call removes its own handler",
          "[dispatcher][stress]") {
    // The exemption that lets two self-removing calls not wait for each other must not let a
    // third remover (here the owner, outside any call) return while such a call still runs.
    dispatcher handlers;
    event_store<> store(handlers, 64);
    std::atomic<bool> stop{false};
    std::jthread publisher([&] {
        while (!stop) {
            (void)store.subscribe({}, make("e"));
            store.publish();
        }
    });
    const std::size_t rounds = eventbus_test::scaled(3000, 100);
    std::size_t returned_early = 0;
    for (std::size_t round = 0; round < rounds; ++round) {
        struct state {
            eventbus::registration reg;
            std::atomic<bool> started{false};
            std::atomic<bool> in_call{false};
        } st;
        std::atomic<bool> armed{false};
        st.reg = handlers.on("e", [&](const context&, const args&) {
            while (!armed)
                std::this_thread::yield();
            st.in_call = true;
            st.started = true;
            st.reg.remove();  // removes itself, then keeps running a little
            const auto until = std::chrono::steady_clock::now() + 20us;
            while (std::chrono::steady_clock::now() < until) {
            }
            st.in_call = false;
        });
        armed = true;
        while (!st.started)
            std::this_thread::yield();
        st.reg.remove();
        if (st.in_call)
            ++returned_early;
        while (st.in_call)  // keep the test itself memory-safe either way
            std::this_thread::yield();
    }
    stop = true;
    publisher.join();
    CHECK(returned_early == 0);
    // Events whose handler had removed itself before their dispatch found none: unhandled.
    REQUIRE_FALSE(store.drain({}));
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("async: registering and removing while two workers call handlers",
          "[dispatcher][stress]") {
    // Removal waits for the calls in flight on the workers without counting every call: after
    // remove() returns, the removed handler never runs again, and the stable one sees every
    // event exactly once.
    dispatcher handlers;
    std::atomic<long> stable_calls{0};
    (void)handlers.on("k", [&](const context&, const args&) { stable_calls.fetch_add(1); });
    event_store<eventbus::block> store(handlers, 256,
                                       eventbus::store_options{.async = true, .workers = 2});
    const long events = static_cast<long>(eventbus_test::scaled(100000, 2000));
    std::atomic<bool> done{false};
    std::atomic<long> calls_after_remove{0};
    std::atomic<long> removals{0};
    {
        std::vector<std::jthread> churn;
        for (int c = 0; c < 2; ++c) {
            churn.emplace_back([&] {
                while (!done) {
                    auto gone = std::make_shared<std::atomic<bool>>(false);
                    auto reg =
                        handlers.on("k", [gone, &calls_after_remove](const context&, const args&) {
                            if (gone->load())
                                calls_after_remove.fetch_add(1);
                        });
                    std::this_thread::yield();
                    reg.remove();
                    gone->store(true);  // after remove() returns, it must never run again
                    removals.fetch_add(1);
                }
            });
        }
        for (long i = 0; i < events; ++i) {
            REQUIRE_FALSE(store.subscribe({}, make("k")));
            if (i % 16 == 0)
                store.publish();
        }
        store.publish();
        REQUIRE_FALSE(store.drain({}));
        done = true;
    }
    CHECK(removals > 0);
    CHECK(calls_after_remove == 0);
    CHECK(stable_calls == events);
    const auto m = store.metrics();
    CHECK(m.processed >= static_cast<std::uint64_t>(events));
    CHECK(m.handled == static_cast<std::uint64_t>(events));  // the stable handler saw each
    CHECK_RECONCILES(m);
}

TEST_CASE("a 'once' handler on each of two workers removes itself without waiting for the other",
          "[dispatcher]") {
    // Each call is of a different handler, each removing itself while the other worker is
    // inside its own: removal waits for calls of the handler removed, not for whole batches.
    dispatcher handlers;
    std::atomic<int> inside{0};
    std::atomic<int> calls{0};
    eventbus::registration first;
    eventbus::registration second;
    const auto once = [&](eventbus::registration& self) {
        return [&](const context&, const args&) {
            calls.fetch_add(1);
            inside.fetch_add(1);
            (void)eventually([&] { return inside >= 2; });
            self.remove();
        };
    };
    first = handlers.on("a", once(first));
    second = handlers.on("b", once(second));
    event_store<> store(handlers, 8, eventbus::store_options{.async = true, .workers = 2});
    REQUIRE_FALSE(store.subscribe({}, make("a")));
    store.publish();
    REQUIRE_FALSE(store.subscribe({}, make("b")));
    store.publish();
    REQUIRE_FALSE(store.drain({}));
    CHECK(calls == 2);
    CHECK(inside == 2);
    CHECK_FALSE(first);
    CHECK_FALSE(second);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("an empty callable is refused at registration, not called at publish", "[dispatcher]") {
    dispatcher handlers;
    void (*null_fn)(const context&, const args&) = nullptr;
    CHECK_THROWS_AS(handlers.on("k", null_fn), std::invalid_argument);
    const std::function<void(const context&, const args&)> empty;
    CHECK_THROWS_AS(handlers.on("k", empty), std::invalid_argument);
    struct tick {
        int n = 0;
    };
    const std::function<void(const tick&)> empty_typed;
    CHECK_THROWS_AS(handlers.on<tick>(empty_typed), std::invalid_argument);
    event_store<> store(handlers, 8);
    CHECK_THROWS_AS(store.on_before(eventbus::before_hook{}), std::invalid_argument);
    CHECK_THROWS_AS(store.use(eventbus::middleware{}), std::invalid_argument);
    CHECK(handlers.handlers()->empty());  // nothing was registered
}
