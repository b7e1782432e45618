// Consumer smoke test: the public header and the eventbus::eventbus target, and the NATS
// bridge's wire format where eventbus::nats was found (no server needed).
#include <eventbus/eventbus.hpp>
#if defined(EVENTBUS_CONSUMER_NATS)
#include <eventbus/nats.hpp>
#endif

int main() {
    eventbus::ring_buffer<int, eventbus::return_error> r{8};
    (void)r.try_push(1);
    auto v = r.try_pop();
#if defined(EVENTBUS_CONSUMER_NATS)
    const eventbus::event sent{.id = "e1", .projection = "p", .args = {{"n", 7}}};
    const eventbus::event got = eventbus::nats::from_json(eventbus::nats::to_json(sent));
    if (eventbus::arg<int>(got.args, "n") != 7)
        return 1;
#endif
    return v && *v == 1 ? 0 : 1;
}
