// Retries and dead letters in a small payment pipeline.
//
// Orders arrive as typed events. Two handlers take each one: `inventory` always succeeds, and
// `payments` talks to a gateway that fails now and then (a seeded pseudo-random outage). The
// payment handler retries with exponential backoff and jitter; what still fails after four
// attempts goes to the store's dead letters. When the gateway is back, the operator replays the
// dead letters, and every order ends up charged exactly once, while inventory saw each order
// once only (retries call only the handler that failed).
//
// The store is async with ordered_by_key: orders (one key, their type) are charged in the order
// they were placed, even when one of them waits for a retry; the others wait behind it.
#include <eventbus/eventbus.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

using namespace std::chrono_literals;

namespace {

struct order_placed {
    int id;
};

// A gateway that fails for the first `failures_of(id)` calls of each order while it is "flaky".
class gateway {
  public:
    void charge(int order) {
        std::lock_guard lock(mutex_);
        int& calls = calls_[order];
        ++calls;
        if (flaky_ && calls <= failures_of(order))
            throw std::runtime_error("gateway timeout");
        charged_[order] += 1;
    }
    void recover() {
        std::lock_guard lock(mutex_);
        flaky_ = false;
    }
    int charged(int order) {
        std::lock_guard lock(mutex_);
        return charged_[order];
    }
    // 0 to 5 failures, seeded by the order's id: some orders outlast four attempts.
    static int failures_of(int order) {
        return static_cast<int>((static_cast<std::uint32_t>(order) * 2654435761u) >> 29) % 6;
    }

  private:
    std::mutex mutex_;
    bool flaky_ = true;
    std::map<int, int> calls_;
    std::map<int, int> charged_;
};

}  // namespace

int main() {
    constexpr int orders = 200;
    gateway payments_gateway;
    std::atomic<int> reserved{0};
    std::mutex order_mutex;
    std::vector<int> charged_in_order;  // order ids, as charged

    eventbus::dispatcher handlers;
    eventbus::scoped_registration payments = handlers.on<order_placed>(
        [&](const order_placed& o) {
            payments_gateway.charge(o.id);
            std::lock_guard lock(order_mutex);
            charged_in_order.push_back(o.id);
        },
        {.name = "payments",
         .priority = 0,
         .retry = {.max_attempts = 4,
                   .backoff = eventbus::backoff_policy::exponential(200us, 2.0, 5ms, 0.5)}});
    eventbus::scoped_registration inventory =
        handlers.on<order_placed>([&](const order_placed&) { ++reserved; }, {.name = "inventory"});

    eventbus::event_store<eventbus::block> store(
        handlers, 256,
        {.async = true, .workers = 2, .ordered_by_key = true, .dead_letter_capacity = orders});
    std::atomic<int> hooked{0};
    eventbus::scoped_registration alarms =
        store.on_dead_letter([&](const eventbus::dead_letter&) { ++hooked; });

    const eventbus::context ctx;
    for (int i = 0; i < orders; ++i) {
        if (store.subscribe(ctx, order_placed{i}))
            return 1;
        if (i % 16 == 15)
            store.publish();
    }
    store.publish();
    if (store.drain(ctx))
        return 1;

    const eventbus::store_metrics before = store.metrics();
    bool ordered = true;
    {
        std::lock_guard lock(order_mutex);
        for (std::size_t k = 1; k < charged_in_order.size(); ++k)
            ordered = ordered && charged_in_order[k - 1] < charged_in_order[k];
    }
    std::vector<eventbus::dead_letter> letters = store.take_dead_letters();
    std::printf(
        "first pass: %llu orders, %llu handler calls, %llu failed, %llu retries, "
        "%zu dead letters\n",
        static_cast<unsigned long long>(before.published),
        static_cast<unsigned long long>(before.processed),
        static_cast<unsigned long long>(before.errors),
        static_cast<unsigned long long>(before.retried), letters.size());

    payments_gateway.recover();
    for (const eventbus::dead_letter& letter : letters) {
        // Replay re-subscribes to every handler of the key: inventory sees these orders again
        // (the check below counts it), so its handler must tolerate a replayed event.
        if (letter.handler() != "payments" || letter.attempts() != 4)
            return 1;
        if (store.replay(ctx, letter))
            return 1;
    }
    store.publish();
    if (store.close(ctx))
        return 1;

    const eventbus::store_metrics after = store.metrics();
    int missing = 0;
    int expected_dead = 0;
    for (int i = 0; i < orders; ++i) {
        missing += payments_gateway.charged(i) == 1 ? 0 : 1;
        expected_dead += gateway::failures_of(i) >= 4 ? 1 : 0;
    }
    std::printf(
        "after replay: every order charged once: %s; charged in order: %s; dead letters "
        "%d (expected %d); errors %llu == retried %llu + dead_lettered %llu\n",
        missing == 0 ? "yes" : "no", ordered ? "yes" : "no", static_cast<int>(letters.size()),
        expected_dead, static_cast<unsigned long long>(after.errors),
        static_cast<unsigned long long>(after.retried),
        static_cast<unsigned long long>(after.dead_lettered));
    const bool reconciled = missing == 0 && static_cast<int>(letters.size()) == expected_dead &&
                            hooked.load() == expected_dead &&
                            after.errors == after.retried + after.dead_lettered &&
                            reserved.load() == orders + expected_dead &&
                            after.published == static_cast<std::uint64_t>(orders + expected_dead) &&
                            after.handled == after.published && ordered;
    return reconciled ? 0 : 1;
}
