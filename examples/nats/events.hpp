// The events that examples/nats' producer and consumer share, and how a typed one travels.
#ifndef EVENTBUS_EXAMPLES_NATS_EVENTS_HPP
#define EVENTBUS_EXAMPLES_NATS_EVENTS_HPP

#include <eventbus/nats.hpp>

#include <charconv>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace shop {

/// A typed event: published as itself, forwarded as "<id>:<cents>".
struct order_placed {
    std::int64_t id = 0;
    std::int64_t cents = 0;
};

inline std::int64_t parse_integer(std::string_view text) {
    std::int64_t value = 0;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (error != std::errc{} || end != text.data() + text.size())
        throw std::invalid_argument("not an integer: \"" + std::string(text) + "\"");
    return value;
}

/// The wire form of order_placed, and its Nats-Msg-Id: the same order is the same message, so
/// the server drops a second publish of it and the consumer recognises a redelivery.
inline eventbus::nats::codec<order_placed> order_codec() {
    return {
        .encode =
            [](const order_placed& o) {
                return std::to_string(o.id) + ":" + std::to_string(o.cents);
            },
        .decode =
            [](std::string_view bytes) {
                const std::size_t colon = bytes.find(':');
                if (colon == std::string_view::npos)
                    throw std::invalid_argument("an order is \"<id>:<cents>\"");
                return order_placed{parse_integer(bytes.substr(0, colon)),
                                    parse_integer(bytes.substr(colon + 1))};
            },
        .id = [](const order_placed& o) { return "order-" + std::to_string(o.id); },
    };
}

}  // namespace shop

#endif  // EVENTBUS_EXAMPLES_NATS_EVENTS_HPP
