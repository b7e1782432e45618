// order_service: a small order-processing service, written the way an application uses eventbus.
//
//   events.hpp         the events: typed structs (order_placed, payment_captured,
//                      payment_failed) and dynamic events with named arguments
//                      (customer_feedback, loyalty_points_earned)
//   audit.hpp          records every handled event
//   inventory.hpp      reserves, ships and releases stock
//   billing.hpp        charges orders, and triggers payment_captured / payment_failed
//   notifications.hpp  receipts, payment problems, answers to feedback (eventbus::arg<T>)
//   monitoring.hpp     store-wide hooks: failed handler calls (on_error) and events that no
//                      handler took (on_unhandled)
//   main.cpp           this file: options, signals, producers, shutdown and the final report
//
// Each module is a class that registers its handlers in its constructor and keeps them in
// eventbus::scoped_registration members, declared after the state the handlers use: they are
// destroyed first, so no handler runs on a half-destroyed module.
//
// Two producer threads place orders on an async store with two worker threads. On SIGINT or
// SIGTERM, after --orders N orders, or after --duration-ms, main stops the producers, drains and
// closes the store, prints what each module did and checks that the store's counters reconcile.
// It exits 0 if they do, 1 if they don't.
#include "audit.hpp"
#include "billing.hpp"
#include "events.hpp"
#include "inventory.hpp"
#include "monitoring.hpp"
#include "notifications.hpp"

#include <eventbus/eventbus.hpp>

#include <atomic>
#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <initializer_list>
#include <iomanip>
#include <iostream>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

// Signals ////////////////////////////////////////////////////////////////////////////////////////
// A signal handler may do very little: storing to a lock-free atomic is one of the few things
// it may do. It records the signal; the main thread sees it and does the actual shutdown.

namespace {
std::atomic<int> received_signal{0};
static_assert(std::atomic<int>::is_always_lock_free);
}  // namespace

extern "C" void on_stop_signal(int signal_number) {
    received_signal.store(signal_number);
}

namespace {

using namespace std::chrono_literals;

constexpr int producer_count = 2;

// Options ////////////////////////////////////////////////////////////////////////////////////////

constexpr const char* usage =
    "usage: example_order_service [--orders N] [--duration-ms MS]\n"
    "  --orders N         stop after placing N orders, then shut down as if signalled\n"
    "  --duration-ms MS   stop after MS milliseconds (0: run until SIGINT or SIGTERM)\n"
    "With no option it runs for 1000 ms; with --orders alone, until the orders are placed.\n";

struct options {
    std::uint64_t orders = 0;               // 0: no limit
    std::chrono::milliseconds duration{0};  // 0: no limit
};

std::optional<std::uint64_t> parse_number(std::string_view text) {
    std::uint64_t value = 0;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (error != std::errc() || end != text.data() + text.size())
        return std::nullopt;
    return value;
}

std::optional<options> parse_options(int argc, char** argv) {
    options parsed;
    bool duration_given = false;
    for (int i = 1; i < argc; ++i) {
        const std::string_view name = argv[i];
        if (i + 1 == argc)
            return std::nullopt;
        const std::optional<std::uint64_t> value = parse_number(argv[++i]);
        if (!value)
            return std::nullopt;
        if (name == "--orders") {
            parsed.orders = *value;
        } else if (name == "--duration-ms") {
            parsed.duration = std::chrono::milliseconds(static_cast<std::int64_t>(*value));
            duration_given = true;
        } else {
            return std::nullopt;
        }
    }
    if (!duration_given && parsed.orders == 0)
        parsed.duration = 1000ms;
    return parsed;
}

// Producers //////////////////////////////////////////////////////////////////////////////////////

// Order numbers 1, 2, 3, ... shared by the producers, up to a limit (0: none).
class order_numbers {
  public:
    explicit order_numbers(std::uint64_t limit) : limit_(limit) {}

    std::optional<std::uint64_t> next() {
        const std::uint64_t id = next_.fetch_add(1);
        if (limit_ != 0 && id > limit_)
            return std::nullopt;
        return id;
    }

  private:
    const std::uint64_t limit_;
    std::atomic<std::uint64_t> next_{1};
};

// What the store accepted from the producers, by kind of event.
struct traffic {
    std::atomic<std::uint64_t> orders{0};
    std::atomic<std::uint64_t> feedback{0};
    std::atomic<std::uint64_t> loyalty_points{0};
};

shop::order_placed make_order(std::uint64_t id) {
    const auto quantity = static_cast<std::uint32_t>(1 + id % 3);
    return {.order_id = id,
            .customer_id = static_cast<std::uint32_t>(1 + id % 500),
            .sku = static_cast<std::uint32_t>(id % 20),
            .quantity = quantity,
            .amount_cents = static_cast<std::int64_t>(quantity * 1999 + id % 10 * 150)};
}

eventbus::event make_feedback(std::uint64_t order_id) {
    const int rating = static_cast<int>(1 + order_id / 10 % 5);
    eventbus::event feedback{
        .id = "feedback-" + std::to_string(order_id),
        .projection = shop::customer_feedback,
        .args = {{"order_id", order_id},
                 {"rating", rating},
                 {"comment", std::string(rating <= 2 ? "arrived damaged" : "quick delivery")}}};
    // An older client still sends the rating as text: notifications' arg<int> refuses it.
    if (order_id % 70 == 0)
        feedback.args["rating"] = std::to_string(rating);
    return feedback;
}

eventbus::event make_loyalty_points(const shop::order_placed& order) {
    return {.id = "points-" + std::to_string(order.order_id),
            .projection = shop::loyalty_points_earned,
            .args = {{"customer_id", order.customer_id},
                     {"points", static_cast<int>(order.amount_cents / 100)}}};
}

// Counts an event that subscribe accepted. A producer that is stopped (errc::cancelled) or
// finds the store closed ends quietly; any other error is reported too.
bool accepted(std::error_code error, std::atomic<std::uint64_t>& counter) {
    if (!error) {
        ++counter;
        return true;
    }
    if (error != eventbus::errc::cancelled && error != eventbus::errc::closed)
        std::cerr << "subscribe failed: " << error.message() << '\n';
    return false;
}

// One producer thread: places orders until it is stopped or the order numbers run out. Every
// tenth order brings customer feedback, every 25th loyalty points.
void produce(std::stop_token stop, shop::order_bus& bus, order_numbers& numbers, traffic& sent) {
    // The stop token is subscribe's context: a producer waiting for room in a full ring (policy
    // block) wakes up with errc::cancelled once it is asked to stop.
    const eventbus::context ctx(stop);
    while (!stop.stop_requested()) {
        const std::optional<std::uint64_t> id = numbers.next();
        if (!id)
            return;
        const shop::order_placed order = make_order(*id);
        if (!accepted(bus.subscribe(ctx, order), sent.orders))
            return;
        if (*id % 10 == 0 && !accepted(bus.subscribe(ctx, make_feedback(*id)), sent.feedback))
            return;
        if (*id % 25 == 0 &&
            !accepted(bus.subscribe(ctx, make_loyalty_points(order)), sent.loyalty_points))
            return;
        // Async mode: publish() hands what was subscribed to the workers and returns at once.
        bus.publish();
    }
}

// Shutdown ///////////////////////////////////////////////////////////////////////////////////////

enum class stop_reason { signal, orders_placed, producers_stopped, time_up };

stop_reason wait_for_shutdown(const options& opts, const std::atomic<int>& producers_done) {
    const auto deadline = std::chrono::steady_clock::now() + opts.duration;
    for (;;) {
        if (received_signal.load() != 0)
            return stop_reason::signal;
        if (producers_done.load() == producer_count)
            return opts.orders != 0 ? stop_reason::orders_placed : stop_reason::producers_stopped;
        if (opts.duration != 0ms && std::chrono::steady_clock::now() >= deadline)
            return stop_reason::time_up;
        std::this_thread::sleep_for(10ms);
    }
}

std::string describe(stop_reason reason, const options& opts) {
    switch (reason) {
        case stop_reason::signal:
            return received_signal.load() == SIGINT ? "received SIGINT" : "received SIGTERM";
        case stop_reason::orders_placed:
            return "all " + std::to_string(opts.orders) + " orders placed";
        case stop_reason::producers_stopped:
            return "the producers stopped";
        case stop_reason::time_up:
            return "ran for " + std::to_string(opts.duration.count()) + " ms";
    }
    return "unknown";
}

// Report /////////////////////////////////////////////////////////////////////////////////////////

std::string dollars(std::int64_t cents) {
    std::string fraction = std::to_string(cents % 100);
    if (fraction.size() < 2)
        fraction.insert(0, "0");
    return "$" + std::to_string(cents / 100) + "." + fraction;
}

// Prints one line per check ("left == a + b + c") and remembers whether all of them held.
class reconciliation {
  public:
    void check(std::string_view what, std::uint64_t left,
               std::initializer_list<std::uint64_t> right_terms) {
        std::uint64_t right = 0;
        std::string terms;
        for (const std::uint64_t term : right_terms) {
            right += term;
            terms += (terms.empty() ? "" : " + ") + std::to_string(term);
        }
        const bool holds = left == right;
        all_hold_ = all_hold_ && holds;
        std::cout << "  " << (holds ? "ok  " : "FAIL") << "  " << what << ": " << left
                  << " == " << terms << '\n';
    }

    [[nodiscard]] bool all_hold() const { return all_hold_; }

  private:
    bool all_hold_ = true;
};

}  // namespace

int main(int argc, char** argv) {
    const std::optional<options> opts = parse_options(argc, argv);
    if (!opts) {
        std::cerr << usage;
        return 2;
    }

    std::signal(SIGINT, on_stop_signal);
    std::signal(SIGTERM, on_stop_signal);

    // The bus: a ring of 1024 events, handled by two worker threads. (ordered_by_key is left
    // off: it orders the events of one key, here of one event type, which would put every
    // order on one worker at a time; no order here depends on another.)
    eventbus::dispatcher handlers;
    shop::order_bus bus(handlers, 1024, {.async = true, .workers = 2});

    // The modules, declared after the bus they register on. Each event's handlers run in the
    // order the modules were constructed: audit first.
    shop::monitoring monitoring(bus);
    shop::audit audit(bus);
    shop::inventory inventory(bus);
    shop::billing billing(bus);
    shop::notifications notifications(bus);

    std::cout << "running: " << producer_count << " producers, " << bus.options().workers
              << " workers, a ring of " << bus.capacity() << " events; stops on SIGINT/SIGTERM";
    if (opts->orders != 0)
        std::cout << ", after " << opts->orders << " orders";
    if (opts->duration != 0ms)
        std::cout << ", after " << opts->duration.count() << " ms";
    std::cout << std::endl;  // flushed: a script waits for this line before signalling

    order_numbers numbers(opts->orders);
    traffic sent;
    std::atomic<int> producers_done{0};
    std::vector<std::jthread> producers;
    for (int i = 0; i < producer_count; ++i) {
        producers.emplace_back([&](std::stop_token stop) {
            produce(stop, bus, numbers, sent);
            ++producers_done;
        });
    }

    const stop_reason reason = wait_for_shutdown(*opts, producers_done);
    std::cout << "shutdown: " << describe(reason, *opts) << std::endl;

    // 1. Stop the producers; request_stop() also wakes one that waits for room in subscribe.
    for (std::jthread& producer : producers)
        producer.request_stop();
    for (std::jthread& producer : producers)
        producer.join();

    // 2. Drain: publish what the producers subscribed but had not published yet, and wait until
    //    every event has been handled. Drain before closing: once closed, the store refuses
    //    trigger(), so billing could not announce the payments of the last orders.
    // 3. Close: accept no more events, and let the worker threads exit.
    const auto shutdown_started = std::chrono::steady_clock::now();
    const eventbus::context shutdown_ctx = eventbus::context{}.with_timeout(10s);
    if (const std::error_code error = bus.drain(shutdown_ctx)) {
        std::cerr << "drain failed: " << error.message() << '\n';
        return 1;
    }
    if (const std::error_code error = bus.close(shutdown_ctx)) {
        std::cerr << "close failed: " << error.message() << '\n';
        return 1;
    }
    const std::chrono::duration<double, std::milli> shutdown_time =
        std::chrono::steady_clock::now() - shutdown_started;
    std::cout << "drained and closed in " << std::fixed << std::setprecision(1)
              << shutdown_time.count() << " ms\n";

    // Everything has been handled and the workers have exited: the numbers below are final.
    const eventbus::store_metrics m = bus.metrics();
    const shop::audit::stats audited = audit.snapshot();
    const shop::inventory::stats stock = inventory.snapshot();
    const shop::billing::stats payments = billing.snapshot();
    const shop::notifications::stats mail = notifications.snapshot();
    const shop::monitoring::stats problems = monitoring.snapshot();

    std::cout << "inventory: " << stock.reserved << " reserved, " << stock.shipped << " shipped, "
              << stock.released << " released, " << stock.still_reserved << " still reserved, "
              << stock.restocks << " restocks\n";
    std::cout << "billing: " << payments.captured << " captured ("
              << dollars(payments.revenue_cents) << "), " << payments.declined << " declined\n";
    std::cout << "notifications: " << mail.receipts << " receipts, " << mail.payment_problems
              << " payment problems, " << mail.thank_yous << " thank-yous, " << mail.escalations
              << " escalations";
    if (!mail.last_escalation.empty())
        std::cout << " (last: " << mail.last_escalation << ")";
    std::cout << '\n';
    std::cout << "audit: " << audited.orders << " orders, " << audited.feedback << " feedback, "
              << audited.payments_captured << " payments captured, " << audited.payments_failed
              << " payments failed\n";
    std::cout << "failed handler calls: " << problems.failures << '\n';
    for (const auto& [handler, count] : problems.failures_by_handler)
        std::cout << "  " << handler << ": " << count << '\n';
    for (const std::string& failure : problems.first_failures)
        std::cout << "  e.g. " << failure << '\n';
    std::cout << "events with no handler: " << problems.unhandled << '\n';
    for (const auto& [key, count] : problems.unhandled_by_key)
        std::cout << "  " << key << ": " << count << '\n';
    std::cout << "store: published " << m.published << ", triggered " << m.triggered
              << ", processed " << m.processed << ", errors " << m.errors << ", unhandled "
              << m.unhandled << ", dropped " << m.dropped << '\n';

    // Every event the producers got into the ring ended one way: handled (audit records each
    // handled event once, whether or not another of its handlers failed), unhandled, or dropped
    // (never, under policy block). Payment events do not travel through the ring: billing
    // triggers them, so the store counts them in `triggered`, not in `published`.
    std::cout << "reconciliation:\n";
    reconciliation checks;
    checks.check("published == accepted by subscribe", m.published,
                 {sent.orders.load(), sent.feedback.load(), sent.loyalty_points.load()});
    checks.check("published == handled + unhandled + dropped", m.published,
                 {audited.orders + audited.feedback, m.unhandled, m.dropped});
    checks.check("triggered == payment events handled", m.triggered,
                 {audited.payments_captured, audited.payments_failed});
    checks.check("triggered == billing's verdicts", m.triggered,
                 {payments.captured, payments.declined});
    checks.check("errors == failures seen by on_error", m.errors, {problems.failures});
    checks.check("unhandled == events seen by on_unhandled", m.unhandled, {problems.unhandled});
    // An order whose charge failed got no verdict, so its stock is still reserved.
    checks.check("still reserved == failures of billing.charge", stock.still_reserved,
                 {problems.failures_of("billing.charge")});
    if (reason == stop_reason::orders_placed)
        checks.check("orders placed == --orders", sent.orders.load(), {opts->orders});

    if (!checks.all_hold()) {
        std::cout << "counters do NOT reconcile\n";
        return 1;
    }
    std::cout << "counters reconcile\n";
    return 0;
}
