// examples/nats producer: publishes orders (typed) and sign-ups (dynamic) into a local store
// whose events are forwarded to JetStream, then drains and reports what JetStream stored.
//
//   example_nats_producer --server nats://127.0.0.1:4222 --count 1000 [--first 0]
//
// Ids are "order-<n>" and "user-<n>": running it twice with the same numbers stores nothing
// new (the server drops the duplicates, reported as such). Exits 0 when every event was stored.
#include <eventbus/eventbus.hpp>
#include <eventbus/nats.hpp>

#include <cstdio>
#include <exception>
#include <string>
#include <string_view>

#include "events.hpp"

int main(int argc, char** argv) {
    std::string server = "nats://127.0.0.1:4222";
    long count = 1000;
    long first = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string_view flag = argv[i];
        if (flag == "--server")
            server = argv[i + 1];
        else if (flag == "--count")
            count = std::stol(argv[i + 1]);
        else if (flag == "--first")
            first = std::stol(argv[i + 1]);
        else {
            std::fprintf(stderr, "usage: %s [--server URL] [--count N] [--first N]\n", argv[0]);
            return 2;
        }
    }
    try {
        eventbus::nats::connection nats({.servers = {server}, .name = "example-producer"});
        eventbus::nats::ensure_stream(nats, {.name = "EVENTS", .subjects = {"events.>"}});

        eventbus::dispatcher handlers;
        eventbus::nats::outbound out(nats);  // subjects events.<projection>
        out.forward<shop::order_placed>(handlers, "orders", shop::order_codec());
        out.forward(handlers, "user_signed_up");  // dynamic: JSON
        // Events the bridge gave up on (JetStream unreachable for every attempt) are dead
        // letters of its handler, "nats.outbound": kept here, and replayable.
        eventbus::event_store<eventbus::block> store(
            handlers, 4096, {.async = true, .workers = 2, .dead_letter_capacity = 1024});

        const eventbus::context ctx;
        for (long n = first; n < first + count; ++n) {
            if (store.subscribe(ctx, shop::order_placed{n, 100 * n}) ||
                store.subscribe(ctx, eventbus::event{.id = "user-" + std::to_string(n),
                                                     .projection = "user_signed_up",
                                                     .args = {{"name", std::string("user")},
                                                              {"number", std::int64_t{n}}}}))
                return 1;
            store.publish();
        }
        if (store.drain(ctx))
            return 1;
        const eventbus::nats::outbound_metrics m = out.metrics();
        std::printf("stored %llu (duplicates %llu), retried %llu, failed %llu\n",
                    static_cast<unsigned long long>(m.published),
                    static_cast<unsigned long long>(m.duplicates),
                    static_cast<unsigned long long>(m.republished),
                    static_cast<unsigned long long>(m.failed + m.encode_errors));
        return m.published == static_cast<unsigned long long>(2 * count) ? 0 : 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
