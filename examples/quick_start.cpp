// The C++ twin of GoEventBus's Quick Start: a string projection and a struct projection, a 64K
// ring with the drop_oldest policy, and the metrics printed at the end.
#include <eventbus/eventbus.hpp>

#include <cstdio>
#include <string>

// A typed projection: the struct itself is the key.
struct house_was_sold {};

int main() {
    // Map projections (a string or a type) to handlers, like Go's map literal.
    eventbus::dispatcher dispatcher{
        {"user_created",
         [](const eventbus::context&, const eventbus::args& args) {
             const auto& user_id = std::any_cast<const std::string&>(args.at("id"));
             std::printf("User created with ID: %s\n", user_id.c_str());
             return eventbus::result{"handled user_created"};
         }},
        {eventbus::key::of<house_was_sold>(),
         [](const eventbus::context&, const eventbus::args& args) {
             const auto& address = std::any_cast<const std::string&>(args.at("address"));
             const int price = std::any_cast<int>(args.at("price"));
             std::printf("House sold at %s for $%d\n", address.c_str(), price);
             return eventbus::result{"handled house_was_sold"};
         }},
    };

    // A store with a 64K ring that drops the oldest event when full.
    eventbus::event_store<eventbus::drop_oldest> store(dispatcher, 1 << 16);

    // Enqueue a string-keyed event and a type-keyed event.
    const eventbus::context ctx;
    if (auto ec = store.subscribe(
            ctx,
            {.id = "evt1", .projection = "user_created", .args = {{"id", std::string("12345")}}})) {
        std::fprintf(stderr, "subscribe failed: %s\n", ec.message().c_str());
        return 1;
    }
    if (auto ec = store.subscribe(
            ctx, {.id = "evt2",
                  .projection = eventbus::key::of<house_was_sold>(),
                  .args = {{"address", std::string("123 Main St")}, {"price", 500000}}})) {
        std::fprintf(stderr, "subscribe failed: %s\n", ec.message().c_str());
        return 1;
    }

    // Dispatch the pending events (sync mode: on this thread, in FIFO order).
    store.publish();

    // Wait for anything still in flight (nothing, in sync mode).
    if (auto ec = store.drain(ctx)) {
        std::fprintf(stderr, "drain failed: %s\n", ec.message().c_str());
        return 1;
    }

    const auto m = store.metrics();
    std::printf(
        "published=%llu processed=%llu errors=%llu\n", static_cast<unsigned long long>(m.published),
        static_cast<unsigned long long>(m.processed), static_cast<unsigned long long>(m.errors));
    return m.published == 2 && m.processed == 2 && m.errors == 0 ? 0 : 1;
}
