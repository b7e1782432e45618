// ring_buffer: capacities, the three policies, FIFO, close, element lifetimes, blocking and
// wake-ups, and [stress] tests counting that every element is popped, dropped or refused exactly
// once, also across the 64-bit wrap-around of positions.
#include <eventbus/eventbus.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using eventbus::block;
using eventbus::context;
using eventbus::drop_oldest;
using eventbus::errc;
using eventbus::return_error;
using eventbus::ring_buffer;
using eventbus_test::eventually;
using eventbus_test::lifetime_counts;
using eventbus_test::scaled;
using eventbus_test::stays_false;
using eventbus_test::tracked;

namespace {

template <class Policy>
constexpr bool is_drop_oldest = std::is_same_v<Policy, drop_oldest>;

// Start `laps` laps before the 64-bit position counter wraps (positions advance by 2).
std::uint64_t near_wrap(std::size_t capacity, std::uint64_t laps) {
    return std::uint64_t{0} - 2 * capacity * laps;
}

}  // namespace

// construction ///////////////////////////////////////////////////////////////////////////////////

TEMPLATE_TEST_CASE("capacity must be a power of two greater than zero", "[ring]", drop_oldest,
                   block, return_error) {
    for (const std::size_t bad :
         {std::size_t{0}, std::size_t{3}, std::size_t{6}, std::size_t{1000}, std::size_t{1025}}) {
        CAPTURE(bad);
        try {
            ring_buffer<int, TestType> ring(bad);
            FAIL("no exception for capacity " << bad);
        } catch (const std::invalid_argument& error) {
            CHECK(std::string(error.what()).find(std::to_string(bad)) != std::string::npos);
        }
    }
    for (const std::size_t good : {std::size_t{1}, std::size_t{2}, std::size_t{1024}}) {
        ring_buffer<int, TestType> ring(good);
        CHECK(ring.capacity() == good);
        CHECK(ring.approx_empty());
        CHECK(ring.approx_size() == 0);
        CHECK(ring.dropped() == 0);
        CHECK_FALSE(ring.is_closed());
    }
}

// the three policies at capacity 1, 2 and 1024
// /////////////////////////////////////////////////////

TEMPLATE_TEST_CASE("a full ring applies its policy", "[ring]", drop_oldest, block, return_error) {
    for (const std::size_t capacity : {std::size_t{1}, std::size_t{2}, std::size_t{1024}}) {
        CAPTURE(capacity);
        ring_buffer<int, TestType> ring(capacity);
        const int n = static_cast<int>(capacity);
        for (int i = 0; i < n; ++i)
            REQUIRE_FALSE(ring.try_push(i));
        CHECK(ring.approx_size() == capacity);

        const std::error_code overflow = ring.try_push(n);
        if constexpr (is_drop_oldest<TestType>) {
            // Exactly the oldest (0) is discarded and counted; FIFO is kept.
            CHECK_FALSE(overflow);
            CHECK(ring.dropped() == 1);
            CHECK(ring.approx_size() == capacity);
            for (int i = 1; i <= n; ++i) {
                auto value = ring.try_pop();
                REQUIRE(value);
                CHECK(*value == i);
            }
        } else {
            CHECK(overflow == errc::buffer_full);
            CHECK(ring.dropped() == 0);
            for (int i = 0; i < n; ++i) {
                auto value = ring.try_pop();
                REQUIRE(value);
                CHECK(*value == i);
            }
        }
        CHECK_FALSE(ring.try_pop());
        CHECK(ring.approx_empty());

        // Room again: pushes succeed without any drop.
        const auto dropped_before = ring.dropped();
        for (int i = 0; i < n; ++i)
            REQUIRE_FALSE(ring.try_push(i));
        CHECK(ring.dropped() == dropped_before);
    }
}

TEMPLATE_TEST_CASE("drop_oldest discards exactly one element per overwrite", "[ring]",
                   drop_oldest) {
    ring_buffer<int, TestType> ring(4);
    for (int i = 0; i < 7; ++i)
        REQUIRE_FALSE(ring.try_push(i));
    CHECK(ring.dropped() == 3);
    std::vector<int> got;
    while (auto value = ring.try_pop())
        got.push_back(*value);
    CHECK(got == std::vector<int>{3, 4, 5, 6});
}

TEMPLATE_TEST_CASE("FIFO order over many laps, also across the 64-bit wrap-around", "[ring]",
                   drop_oldest, block, return_error) {
    for (const std::uint64_t start : {std::uint64_t{0}, near_wrap(8, 3)}) {
        CAPTURE(start);
        ring_buffer<std::uint64_t, TestType> ring(8, eventbus::detail::initial_position{start});
        std::uint64_t next_in = 0;
        std::uint64_t next_out = 0;
        for (int round = 0; round < 50; ++round) {
            const auto burst = static_cast<std::uint64_t>(round % 8 + 1);
            for (std::uint64_t i = 0; i < burst; ++i)
                REQUIRE_FALSE(ring.try_push(next_in++));
            CHECK(ring.approx_size() == burst);
            for (std::uint64_t i = 0; i < burst; ++i) {
                auto value = ring.try_pop();
                REQUIRE(value);
                REQUIRE(*value == next_out++);
            }
            REQUIRE(ring.approx_empty());
        }
    }
}

TEST_CASE("an odd start position is refused", "[ring]") {
    CHECK_THROWS_AS((ring_buffer<int, block>(8, eventbus::detail::initial_position{3})),
                    std::invalid_argument);
}

// close //////////////////////////////////////////////////////////////////////////////////////////

TEMPLATE_TEST_CASE("close refuses pushes and lets pops drain", "[ring]", drop_oldest, block,
                   return_error) {
    ring_buffer<int, TestType> ring(4);
    REQUIRE_FALSE(ring.try_push(1));
    REQUIRE_FALSE(ring.try_push(2));
    ring.close();
    CHECK(ring.is_closed());
    CHECK(ring.try_push(3) == errc::closed);
    CHECK(ring.push(context{}, 3) == errc::closed);
    ring.close();  // idempotent
    CHECK(ring.is_closed());

    auto first = ring.pop(context{});
    REQUIRE(first);
    CHECK(*first.value == 1);
    CHECK_FALSE(first.error);
    auto second = ring.try_pop();
    REQUIRE(second);
    CHECK(*second == 2);

    CHECK_FALSE(ring.try_pop());
    const auto drained = ring.pop(context{});
    CHECK_FALSE(drained);
    CHECK(drained.error == errc::closed);
}

TEST_CASE("close of a full drop_oldest ring refuses without dropping", "[ring]") {
    ring_buffer<int, drop_oldest> ring(2);
    REQUIRE_FALSE(ring.try_push(1));
    REQUIRE_FALSE(ring.try_push(2));
    ring.close();
    CHECK(ring.try_push(3) == errc::closed);
    CHECK(ring.dropped() == 0);
    CHECK(*ring.try_pop() == 1);
    CHECK(*ring.try_pop() == 2);
}

TEST_CASE("close never costs drop_oldest an element that was inside", "[ring][stress]") {
    // Producers keep overwriting a full ring while close() lands; with no consumer, the ring must
    // still be full afterwards, and every accepted push must be either inside or counted dropped.
    const std::size_t runs = scaled(2000, 100);
    for (const std::size_t capacity : {std::size_t{1}, std::size_t{4}}) {
        for (std::size_t run = 0; run < runs; ++run) {
            ring_buffer<int, drop_oldest> ring(capacity);
            for (std::size_t i = 0; i < capacity; ++i)
                REQUIRE_FALSE(ring.try_push(-1));
            std::atomic<std::uint64_t> accepted{capacity};
            std::atomic<int> started{0};
            {
                std::vector<std::jthread> threads;
                for (int p = 0; p < 2; ++p) {
                    threads.emplace_back([&, p] {
                        started.fetch_add(1);
                        while (!ring.try_push(p))
                            accepted.fetch_add(1);
                    });
                }
                while (started < 2)
                    std::this_thread::yield();
                ring.close();
            }
            std::uint64_t left = 0;
            while (ring.try_pop())
                ++left;
            CAPTURE(capacity, run);
            REQUIRE(left == capacity);
            REQUIRE(left + ring.dropped() == accepted);
        }
    }
}

// element lifetimes //////////////////////////////////////////////////////////////////////////////

TEMPLATE_TEST_CASE("every element is destroyed exactly once", "[ring][lifetime]", drop_oldest,
                   block, return_error) {
    lifetime_counts counts;
    {
        ring_buffer<tracked, TestType> ring(8);
        for (int i = 0; i < 12; ++i) {
            const auto ec = ring.try_emplace(counts, i);  // constructed in place
            CHECK((!ec || ec == errc::buffer_full));
        }
        CHECK(counts.alive() == 8);  // the ring's elements, nothing else
        if constexpr (is_drop_oldest<TestType>)
            CHECK(ring.dropped() == 4);
        for (int i = 0; i < 3; ++i) {
            auto value = ring.try_pop();
            REQUIRE(value);
            CHECK(counts.alive() == 8 - i);  // the popped copy is alive, its slot's one is not
        }
        CHECK(counts.alive() == 5);
        // The ring is destroyed with 5 elements inside.
    }
    CHECK(counts.alive() == 0);
    CHECK(counts.double_destroyed == 0);
    CHECK(counts.constructed > 0);
}

TEMPLATE_TEST_CASE("move-only elements; a failed push leaves the value with the caller", "[ring]",
                   block, return_error) {
    ring_buffer<std::unique_ptr<int>, TestType> ring(1);
    auto one = std::make_unique<int>(1);
    REQUIRE_FALSE(ring.try_push(std::move(one)));
    CHECK(one == nullptr);

    auto two = std::make_unique<int>(2);
    CHECK(ring.try_push(std::move(two)) == errc::buffer_full);
    REQUIRE(two != nullptr);  // not moved from
    CHECK(*two == 2);

    const auto deadline = context{}.with_timeout(1ms);
    CHECK(ring.push(deadline, std::move(two)) ==
          (std::is_same_v<TestType, block> ? errc::deadline_exceeded : errc::buffer_full));
    REQUIRE(two != nullptr);

    auto popped = ring.try_pop();
    REQUIRE(popped);
    CHECK(**popped == 1);
}

TEST_CASE("copyable elements can be pushed by const reference", "[ring]") {
    ring_buffer<std::string, return_error> ring(2);
    const std::string text = "hello";
    REQUIRE_FALSE(ring.try_push(text));
    REQUIRE_FALSE(ring.push(context{}, text));
    CHECK(text == "hello");
    CHECK(*ring.try_pop() == "hello");
    CHECK(*ring.try_pop() == "hello");
}

// blocking ///////////////////////////////////////////////////////////////////////////////////////

namespace {

// A full block ring of capacity 1 and a producer thread blocked in push(ctx, 2).
struct blocked_producer {
    ring_buffer<int, block> ring{1};
    std::atomic<eventbus_test::thread_id> id{0};
    std::atomic<bool> returned{false};
    std::error_code result;
    std::chrono::steady_clock::time_point finished_at{};
    std::jthread thread;

    explicit blocked_producer(context ctx) {
        REQUIRE_FALSE(ring.try_push(1));
        thread = std::jthread([this, ctx] {
            id = eventbus_test::current_thread_id();
            result = ring.push(ctx, 2);
            finished_at = std::chrono::steady_clock::now();
            returned = true;
        });
    }
    // It waits: asleep in the kernel, and it stays in push() for a while. (A push that returned
    // early fails this whatever the machine's speed; a slow machine only shortens the look.)
    void check_waits() {
        CHECK(eventually([&] { return eventbus_test::is_asleep(id) || returned; }));
        CHECK(stays_false([&] { return returned.load(); }, 20ms));
    }
    void join() { thread.join(); }
};

}  // namespace

TEST_CASE("a blocked producer is released by a pop", "[ring][blocking]") {
    blocked_producer producer{context{}};
    producer.check_waits();
    auto first = producer.ring.try_pop();
    REQUIRE(first);
    CHECK(*first == 1);
    producer.join();
    CHECK_FALSE(producer.result);
    CHECK(*producer.ring.try_pop() == 2);
}

TEST_CASE("a blocked producer is released by its stop_token", "[ring][blocking]") {
    std::stop_source source;
    blocked_producer producer{context(source.get_token())};
    producer.check_waits();
    source.request_stop();
    producer.join();
    CHECK(producer.result == errc::cancelled);
    CHECK(*producer.ring.try_pop() == 1);  // the waiting producer held no slot
    CHECK_FALSE(producer.ring.try_pop());
}

TEST_CASE("a blocked producer is released at its deadline, not before", "[ring][blocking]") {
    const auto start = std::chrono::steady_clock::now();
    blocked_producer producer{context{}.with_timeout(40ms)};
    producer.join();
    CHECK(producer.result == errc::deadline_exceeded);
    CHECK(producer.finished_at - start >= 40ms);
    CHECK(*producer.ring.try_pop() == 1);
    CHECK_FALSE(producer.ring.try_pop());
}

TEST_CASE("a blocked producer is released by close", "[ring][blocking]") {
    blocked_producer producer{context{}};
    producer.check_waits();
    producer.ring.close();
    producer.join();
    CHECK(producer.result == errc::closed);
    CHECK(*producer.ring.try_pop() == 1);
}

TEST_CASE("an already cancelled context still pushes when there is room", "[ring][blocking]") {
    std::stop_source source;
    source.request_stop();
    ring_buffer<int, block> ring(1);
    CHECK_FALSE(ring.push(context(source.get_token()), 1));  // the context matters only to wait
    CHECK(ring.push(context(source.get_token()), 2) == errc::cancelled);
}

TEST_CASE("many producers blocked at once are all released, none lost", "[ring][blocking]") {
    ring_buffer<int, block> ring(2);
    REQUIRE_FALSE(ring.try_push(0));
    REQUIRE_FALSE(ring.try_push(0));
    constexpr int producers = 6;
    std::atomic<int> failures{0};
    std::vector<std::atomic<eventbus_test::thread_id>> ids(producers);
    {
        std::vector<std::jthread> threads;
        for (int p = 1; p <= producers; ++p) {
            threads.emplace_back([&, p] {
                ids[static_cast<std::size_t>(p - 1)] = eventbus_test::current_thread_id();
                if (ring.push(context{}, p))
                    ++failures;
            });
        }
        // All of them asleep in push() before the first pop.
        CHECK(eventually([&] {
            for (const auto& id : ids)
                if (!eventbus_test::is_asleep(id))
                    return false;
            return true;
        }));
        int sum = 0;
        for (int popped = 0; popped < producers + 2; ++popped) {
            auto value = ring.pop(context{}.with_timeout(eventbus_test::patience));
            REQUIRE(value);
            sum += *value.value;
        }
        CHECK(sum == producers * (producers + 1) / 2);
    }
    CHECK(failures == 0);
    CHECK(ring.approx_empty());
}

TEST_CASE("a blocked consumer is released by a push, its deadline, its stop_token or close",
          "[ring][blocking]") {
    ring_buffer<int, return_error> ring(4);
    // Each releaser acts once this thread, the consumer, is asleep in pop().
    const auto consumer = eventbus_test::current_thread_id();

    SECTION("push") {
        auto producer = eventbus_test::when_asleep(consumer, [&] { (void)ring.try_push(7); });
        auto value = ring.pop(context{});
        REQUIRE(value);
        CHECK(*value.value == 7);
    }
    SECTION("deadline") {
        const auto start = std::chrono::steady_clock::now();
        auto value = ring.pop(context{}.with_timeout(40ms));
        CHECK_FALSE(value);
        CHECK(value.error == errc::deadline_exceeded);
        CHECK(std::chrono::steady_clock::now() - start >= 40ms);
    }
    SECTION("stop_token") {
        std::stop_source source;
        auto canceller = eventbus_test::when_asleep(consumer, [&] { source.request_stop(); });
        auto value = ring.pop(context(source.get_token()));
        CHECK(value.error == errc::cancelled);
    }
    SECTION("close") {
        auto closer = eventbus_test::when_asleep(consumer, [&] { ring.close(); });
        auto value = ring.pop(context{});
        CHECK(value.error == errc::closed);
    }
}

#if defined(__linux__)
TEST_CASE("a waiting producer sleeps: no spinning, no polling", "[ring][blocking]") {
    ring_buffer<int, block> ring(1);
    REQUIRE_FALSE(ring.try_push(1));
    std::stop_source stop;
    std::atomic<eventbus_test::thread_id> id{0};
    std::error_code result;
    std::jthread producer([&] {
        id = eventbus_test::current_thread_id();
        result = ring.push(context(stop.get_token()), 2);
    });
    // A thread that spins or yields is never asleep in the kernel.
    REQUIRE(eventually([&] { return eventbus_test::is_asleep(id); }));
    // Nothing wakes it while the ring stays full: a thread that polls would keep taking naps.
    // (A couple are allowed for spurious wake-ups.)
    const std::vector<eventbus_test::thread_id> ids{id.load()};
    const auto napped = eventbus_test::naps(ids);
    CHECK(stays_false([&] { return eventbus_test::naps(ids) > napped + 2; }, 100ms));
    stop.request_stop();
    producer.join();
    CHECK(result == errc::cancelled);
}
#endif

// stress //////////////////////////////////////////////////////////////////////////////////////////

namespace {

constexpr int producer_shift = 40;

struct mpmc_outcome {
    std::vector<std::vector<std::uint64_t>> per_consumer;
    std::uint64_t dropped = 0;
    long failures = 0;
};

// Pops with pop(ctx), sleeping when empty, until the ring is closed and drained; any other
// error counts as a failure.
template <class Ring, class Counter>
void pop_until_closed(Ring& ring, std::vector<std::uint64_t>& got, Counter& failures) {
    for (;;) {
        auto popped = ring.pop(context{});
        if (!popped) {
            if (popped.error != errc::closed)
                ++failures;
            return;
        }
        got.push_back(*popped.value);
    }
}

// P producers push tagged values (producer << 40 | sequence); the last one to finish closes the
// ring; C consumers pop until the ring is closed and drained. Even consumers sleep in pop(ctx),
// odd ones spin on try_pop, so both consumer paths race.
template <class Policy>
mpmc_outcome run_mpmc(std::size_t producers, std::size_t consumers, std::size_t capacity,
                      std::uint64_t per_producer, std::uint64_t start) {
    ring_buffer<std::uint64_t, Policy> ring(capacity, eventbus::detail::initial_position{start});
    mpmc_outcome out;
    out.per_consumer.resize(consumers);
    std::atomic<long> failures{0};
    std::atomic<std::size_t> producers_left{producers};
    {
        std::vector<std::jthread> threads;
        for (std::size_t c = 0; c < consumers; ++c) {
            threads.emplace_back([&, c] {
                auto& got = out.per_consumer[c];
                if (c % 2 == 0) {
                    pop_until_closed(ring, got, failures);
                    return;
                }
                for (;;) {
                    if (auto value = ring.try_pop()) {
                        got.push_back(*value);
                    } else if (ring.is_closed()) {
                        // Closed: tail is final, so an empty try_pop now means drained.
                        if (auto last = ring.try_pop()) {
                            got.push_back(*last);
                            continue;
                        }
                        return;
                    } else {
                        std::this_thread::yield();
                    }
                }
            });
        }
        for (std::size_t p = 0; p < producers; ++p) {
            threads.emplace_back([&, p] {
                for (std::uint64_t i = 0; i < per_producer; ++i) {
                    const std::uint64_t value = (std::uint64_t{p} << producer_shift) | i;
                    if constexpr (std::is_same_v<Policy, return_error>) {
                        std::error_code ec;
                        while ((ec = ring.try_push(value)) == errc::buffer_full)
                            std::this_thread::yield();
                        if (ec)
                            ++failures;
                    } else {
                        if (ring.push(context{}, value))
                            ++failures;
                    }
                }
                if (producers_left.fetch_sub(1) == 1)
                    ring.close();
            });
        }
    }
    out.dropped = ring.dropped();
    out.failures = failures.load();
    if (ring.try_pop())
        ++out.failures;  // nothing may be left behind
    return out;
}

// Checks the counting claims: popped + dropped == pushed, no duplicates, nothing invented, and
// every consumer sees each producer's values in increasing order (per-producer FIFO).
void check_outcome(const mpmc_outcome& out, std::size_t producers, std::uint64_t per_producer,
                   bool may_drop) {
    REQUIRE(out.failures == 0);
    std::vector<std::uint64_t> all;
    for (const auto& got : out.per_consumer) {
        std::vector<std::uint64_t> last(producers, 0);
        std::vector<bool> seen(producers, false);
        for (const std::uint64_t value : got) {
            const auto p = static_cast<std::size_t>(value >> producer_shift);
            const std::uint64_t i = value & ((std::uint64_t{1} << producer_shift) - 1);
            REQUIRE(p < producers);
            REQUIRE(i < per_producer);
            if (seen[p])
                REQUIRE(i > last[p]);
            seen[p] = true;
            last[p] = i;
        }
        all.insert(all.end(), got.begin(), got.end());
    }
    std::sort(all.begin(), all.end());
    REQUIRE(std::adjacent_find(all.begin(), all.end()) == all.end());  // none twice
    const std::uint64_t pushed = producers * per_producer;
    REQUIRE(all.size() + out.dropped == pushed);
    if (!may_drop)
        REQUIRE(out.dropped == 0);
}

}  // namespace

TEMPLATE_TEST_CASE("P producers x C consumers: every element popped or dropped exactly once",
                   "[ring][stress]", drop_oldest, block, return_error) {
    const std::uint64_t per_producer = scaled(20000, 200);
    for (const std::size_t capacity : {std::size_t{1}, std::size_t{16}, std::size_t{1024}}) {
        for (std::size_t producers = 1; producers <= 4; ++producers) {
            for (std::size_t consumers = 1; consumers <= 4; ++consumers) {
                // Start a few laps before the 64-bit position wraps, so every run crosses it.
                const std::uint64_t start = near_wrap(capacity, 3);
                CAPTURE(capacity, producers, consumers, per_producer);
                const auto out =
                    run_mpmc<TestType>(producers, consumers, capacity, per_producer, start);
                check_outcome(out, producers, per_producer, is_drop_oldest<TestType>);
            }
        }
    }
}

TEST_CASE("return_error never accepts more than capacity, and never refuses when there is room",
          "[ring][stress]") {
    // Rounds: producers race to fill the ring with no consumer running; exactly the free slots
    // must be accepted. Then consumers race to take some out, and the producers race again.
    constexpr std::size_t capacity = 64;
    constexpr std::size_t producers = 4;
    ring_buffer<std::uint64_t, return_error> ring(
        capacity, eventbus::detail::initial_position{near_wrap(capacity, 5)});
    const std::size_t rounds = scaled(200, 20);
    std::size_t in_ring = 0;
    for (std::size_t round = 0; round < rounds; ++round) {
        std::atomic<std::size_t> accepted{0};
        {
            std::vector<std::jthread> threads;
            for (std::size_t p = 0; p < producers; ++p) {
                threads.emplace_back([&] {
                    while (!ring.try_push(round))
                        accepted.fetch_add(1);
                });
            }
        }
        REQUIRE(accepted == capacity - in_ring);  // not more, and no false "full" either
        in_ring = capacity;
        REQUIRE(ring.approx_size() == capacity);

        const std::size_t take = round % capacity + 1;
        std::atomic<std::size_t> taken{0};
        {
            std::vector<std::jthread> threads;
            for (int c = 0; c < 3; ++c) {
                threads.emplace_back([&] {
                    while (taken.fetch_add(1) < take) {
                        if (!ring.try_pop())
                            taken.fetch_add(std::size_t{1} << 32);  // a failure
                    }
                });
            }
        }
        REQUIRE(taken.load() >> 32 == 0);  // never "empty" while elements were there
        in_ring -= take;
        REQUIRE(ring.approx_size() == in_ring);
    }
}

TEMPLATE_TEST_CASE("close racing producers and consumers loses nothing", "[ring][stress]",
                   drop_oldest, block, return_error) {
    const std::size_t runs = scaled(40, 4);
    for (std::size_t run = 0; run < runs; ++run) {
        ring_buffer<std::uint64_t, TestType> ring(
            8, eventbus::detail::initial_position{near_wrap(8, 2)});
        std::atomic<std::uint64_t> accepted{0};
        std::atomic<std::uint64_t> popped{0};
        std::atomic<long> failures{0};
        {
            std::vector<std::jthread> threads;
            for (int p = 0; p < 3; ++p) {
                threads.emplace_back([&] {
                    for (std::uint64_t i = 0;; ++i) {
                        const auto ec = ring.push(context{}, i);
                        if (!ec) {
                            accepted.fetch_add(1);
                        } else if (ec == errc::closed) {
                            return;
                        } else if (ec != errc::buffer_full) {
                            ++failures;
                        }
                    }
                });
            }
            for (int c = 0; c < 2; ++c) {
                threads.emplace_back([&] {
                    for (;;) {
                        auto value = ring.pop(context{});
                        if (!value) {
                            if (value.error != errc::closed)
                                ++failures;
                            return;
                        }
                        popped.fetch_add(1);
                    }
                });
            }
            std::this_thread::sleep_for(std::chrono::microseconds(200 * (run % 10)));
            ring.close();
        }
        CHECK(failures == 0);
        CHECK(popped + ring.dropped() == accepted);
        CHECK_FALSE(ring.try_pop());
    }
}

TEMPLATE_TEST_CASE("lifetimes stay exact under concurrency", "[ring][stress][lifetime]",
                   drop_oldest, block, return_error) {
    lifetime_counts counts;
    std::atomic<long> popped{0};
    std::atomic<int> producers_left{2};
    const int per_producer = static_cast<int>(scaled(20000, 500));
    {
        ring_buffer<tracked, TestType> ring(4);
        {
            std::vector<std::jthread> threads;
            for (int p = 0; p < 2; ++p) {
                threads.emplace_back([&] {
                    const struct done_t {
                        std::atomic<int>& left;
                        ~done_t() { left.fetch_sub(1); }
                    } done{producers_left};
                    for (int i = 0; i < per_producer; ++i) {
                        if constexpr (std::is_same_v<TestType, return_error>) {
                            while (ring.try_emplace(counts, i) == errc::buffer_full)
                                std::this_thread::yield();
                        } else {
                            (void)ring.emplace(context{}, counts, i);
                        }
                    }
                });
            }
            threads.emplace_back([&] {
                // Pop while producers run; what is left goes to the ring's destructor.
                while (producers_left > 0) {
                    if (ring.try_pop())
                        ++popped;
                }
            });
        }
        CHECK(static_cast<std::uint64_t>(2 * per_producer - popped) - ring.dropped() ==
              ring.approx_size());
    }
    CHECK(counts.alive() == 0);
    CHECK(counts.double_destroyed == 0);
}

// bulk push: one contiguous run or nothing //////////////////////////////////////////////////////

TEMPLATE_TEST_CASE("push_n refuses more than the capacity, whatever the policy", "[ring][bulk]",
                   drop_oldest, block, return_error) {
    ring_buffer<int, TestType> ring(4);
    std::vector<int> five{1, 2, 3, 4, 5};
    CHECK(ring.try_push_n(five) == errc::exceeds_capacity);
    CHECK(ring.push_n(context{}, five) == errc::exceeds_capacity);
    CHECK(ring.accepted() == 0);
    std::vector<int> none;
    CHECK_FALSE(ring.try_push_n(none));
    std::vector<int> four{1, 2, 3, 4};
    REQUIRE_FALSE(ring.try_push_n(four));
    for (int expected = 1; expected <= 4; ++expected)
        CHECK(ring.try_pop() == expected);
    CHECK_FALSE(ring.try_pop());
}

TEMPLATE_TEST_CASE("push_n without room for the whole run enqueues nothing", "[ring][bulk]", block,
                   return_error) {
    ring_buffer<std::unique_ptr<int>, TestType> ring(4);
    REQUIRE_FALSE(ring.try_push(std::make_unique<int>(0)));
    REQUIRE_FALSE(ring.try_push(std::make_unique<int>(1)));
    std::vector<std::unique_ptr<int>> three;
    for (int i = 10; i < 13; ++i)
        three.push_back(std::make_unique<int>(i));
    CHECK(ring.try_push_n(three) == errc::buffer_full);
    CHECK(ring.approx_size() == 2);
    for (const auto& value : three)
        REQUIRE(value != nullptr);  // still the caller's
    // One pop makes room for the run: it goes in whole, after the older elements.
    CHECK(*ring.try_pop().value() == 0);
    REQUIRE_FALSE(ring.try_push_n(three));
    for (const auto& value : three)
        CHECK(value == nullptr);
    for (int expected : {1, 10, 11, 12})
        CHECK(*ring.try_pop().value() == expected);
}

TEST_CASE("drop_oldest push_n makes room by dropping exactly the oldest", "[ring][bulk]") {
    ring_buffer<int, drop_oldest> ring(4);
    for (int i = 0; i < 4; ++i)
        REQUIRE_FALSE(ring.try_push(i));
    std::vector<int> three{10, 11, 12};
    REQUIRE_FALSE(ring.try_push_n(three));
    CHECK(ring.dropped() == 3);
    for (int expected : {3, 10, 11, 12})
        CHECK(ring.try_pop() == expected);
    CHECK_FALSE(ring.try_pop());
}

TEMPLATE_TEST_CASE("push_n after close is refused", "[ring][bulk]", drop_oldest, block,
                   return_error) {
    ring_buffer<int, TestType> ring(4);
    ring.close();
    std::vector<int> two{1, 2};
    CHECK(ring.try_push_n(two) == errc::closed);
    CHECK(ring.push_n(context{}, two) == errc::closed);
    std::vector<int> none;
    CHECK(ring.try_push_n(none) == errc::closed);
    CHECK(ring.accepted() == 0);
}

TEST_CASE("block push_n waits until the whole run fits, or its context ends", "[ring][bulk]") {
    ring_buffer<int, block> ring(4);
    for (int i = 0; i < 3; ++i)
        REQUIRE_FALSE(ring.try_push(i));
    std::vector<int> run{10, 11, 12};
    CHECK(ring.push_n(context{}.with_timeout(20ms), run) == errc::deadline_exceeded);
    CHECK(ring.approx_size() == 3);

    std::atomic<eventbus_test::thread_id> id{0};
    std::atomic<bool> pushed{false};
    std::error_code result;
    std::jthread producer([&] {
        id = eventbus_test::current_thread_id();
        result = ring.push_n(context{}, run);
        pushed = true;
    });
    CHECK(eventually([&] { return eventbus_test::is_asleep(id) || pushed; }));
    CHECK(ring.try_pop() == 0);  // room for 2: not enough
    CHECK(stays_false([&] { return pushed.load(); }, 20ms));
    CHECK(ring.try_pop() == 1);  // room for 3
    producer.join();
    CHECK_FALSE(result);
    for (int expected : {2, 10, 11, 12})
        CHECK(ring.try_pop() == expected);
}

namespace {

// Producers push runs of 1..max_run consecutive values (and single values in between); one
// consumer checks that each run arrives contiguous: no other producer's value inside it.
template <class Policy>
void check_runs_contiguous(std::size_t capacity, std::size_t max_run) {
    constexpr std::size_t producers = 3;
    const std::uint64_t per_producer = scaled(30000, 600);
    ring_buffer<std::uint64_t, Policy> ring(
        capacity, eventbus::detail::initial_position{near_wrap(capacity, 2)});
    std::atomic<std::size_t> failures{0};
    std::atomic<std::size_t> producers_left{producers};
    // Value layout: producer << 48 | run start << 24 | index; single pushes have run length 1.
    std::vector<std::uint64_t> got;
    {
        std::vector<std::jthread> threads;
        threads.emplace_back([&] { pop_until_closed(ring, got, failures); });
        for (std::size_t p = 0; p < producers; ++p) {
            threads.emplace_back([&, p] {
                std::uint64_t next = 0;
                std::size_t length = 1;
                std::vector<std::uint64_t> run;
                while (next < per_producer) {
                    const std::uint64_t count =
                        std::min<std::uint64_t>(length, per_producer - next);
                    run.clear();
                    for (std::uint64_t i = 0; i < count; ++i)
                        run.push_back((std::uint64_t{p} << 48) | (next << 24) | (next + i));
                    std::error_code ec;
                    while ((ec = ring.push_n(context{}, run)) == errc::buffer_full)
                        std::this_thread::yield();
                    if (ec)
                        ++failures;
                    next += count;
                    length = length % max_run + 1;
                }
                if (producers_left.fetch_sub(1) == 1)
                    ring.close();
            });
        }
    }
    REQUIRE(failures == 0);
    // Every value once (or dropped); each run's surviving values adjacent and in order.
    std::vector<std::uint64_t> sorted = got;
    std::sort(sorted.begin(), sorted.end());
    REQUIRE(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end());
    REQUIRE(got.size() + ring.dropped() == producers * per_producer);
    if (!is_drop_oldest<Policy>)
        REQUIRE(ring.dropped() == 0);
    // Runs: a value continues the previous value's run, or starts a run never seen before.
    // Without drops, a run starts at its first value and continues without gaps.
    std::size_t interleaved = 0;
    std::vector<std::uint64_t> runs_seen;
    for (std::size_t i = 0; i < got.size(); ++i) {
        const std::uint64_t run = got[i] >> 24;
        const std::uint64_t index = got[i] & 0xffffff;
        const std::uint64_t first = run & 0xffffff;
        if (i > 0 && run == got[i - 1] >> 24) {
            const std::uint64_t previous = got[i - 1] & 0xffffff;
            if (index <= previous || (!is_drop_oldest<Policy> && index != previous + 1))
                ++interleaved;
            continue;
        }
        runs_seen.push_back(run);
        if (!is_drop_oldest<Policy> && index != first)
            ++interleaved;
    }
    std::sort(runs_seen.begin(), runs_seen.end());
    CHECK(std::adjacent_find(runs_seen.begin(), runs_seen.end()) == runs_seen.end());
    CHECK(interleaved == 0);
}

}  // namespace

TEMPLATE_TEST_CASE("concurrent push_n runs arrive contiguous and exactly once", "[ring][stress]",
                   drop_oldest, block, return_error) {
    for (const std::size_t capacity : {std::size_t{8}, std::size_t{64}}) {
        CAPTURE(capacity);
        check_runs_contiguous<TestType>(capacity, 8);
    }
}

TEST_CASE("capacities beyond the maximum are refused as arguments, with the reason", "[ring]") {
    for (const std::size_t capacity : {std::size_t{1} << 40, std::size_t{1} << 62}) {
        try {
            ring_buffer<int> ring(capacity);
            FAIL("accepted " << capacity);
        } catch (const std::invalid_argument& e) {
            const std::string what = e.what();
            CHECK(what.find("exceeds the maximum") != std::string::npos);
            CHECK(what.find(std::to_string(capacity)) != std::string::npos);
        }
    }
    try {
        ring_buffer<int> ring(3);
        FAIL("accepted 3");
    } catch (const std::invalid_argument& e) {
        CHECK(std::string(e.what()).find("power of two") != std::string::npos);
    }
}
