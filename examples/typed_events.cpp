// Typed events, a transaction and a scheduled event (the README's second example): the struct is
// the key and the payload, handlers receive it as const T&, and no allocation happens per event.
#include <eventbus/eventbus.hpp>

#include <chrono>
#include <iostream>
#include <string>
#include <thread>

struct house_was_sold {
    std::string address;
    int price;
};

struct order_placed {
    int order_id;
    double amount;
};

int main() {
    using namespace std::chrono_literals;
    const eventbus::context ctx;

    int sold = 0;
    double revenue = 0;
    eventbus::dispatcher handlers;
    handlers.on<house_was_sold>([&](const house_was_sold& sale) {
        std::cout << sale.address << " sold for " << sale.price << '\n';
        ++sold;
    });
    handlers.on<order_placed>(
        [&](const eventbus::context&, const order_placed& order) { revenue += order.amount; });

    eventbus::event_store store(handlers, 1024);
    (void)store.subscribe(ctx, house_was_sold{"123 Main St", 500000});
    store.publish();

    // Both orders reach the ring as one contiguous run, or neither does.
    auto tx = store.begin_transaction();
    (void)tx.publish(order_placed{1, 19.5});
    (void)tx.publish(order_placed{2, 0.5});
    if (std::error_code error = tx.commit(ctx)) {  // sync: handled before commit returns
        std::cerr << "commit failed: " << error.message() << '\n';
        return 1;
    }

    // Published by the store's timer thread 20 ms from now, unless cancelled first.
    eventbus::timer_handle later = store.schedule_after(ctx, 20ms, house_was_sold{"1 Elm St", 1});
    eventbus::timer_handle never = store.schedule_after(ctx, 1h, house_was_sold{"nowhere", 0});
    never.cancel();
    while (later)
        std::this_thread::sleep_for(1ms);
    (void)store.close(ctx);  // waits for the timer thread's last event

    const auto m = store.metrics();
    std::cout << "sold " << sold << ", revenue " << revenue << ", cancelled " << m.cancelled
              << '\n';
    return sold == 2 && revenue == 20.0 && m.cancelled == 1 ? 0 : 1;
}
