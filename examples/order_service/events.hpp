// The events of the order service, and the bus they travel on.
#ifndef ORDER_SERVICE_EVENTS_HPP
#define ORDER_SERVICE_EVENTS_HPP

#include <eventbus/eventbus.hpp>

#include <cstdint>

namespace shop {

// One store for the whole service. Policy block: when the ring is full, a producer waits for
// room instead of losing an order.
using order_bus = eventbus::event_store<eventbus::block>;

// Typed events: the struct is both the key and the payload, and handlers receive it as
// const T&. Small structs like these are stored in the ring slot itself, with no allocation.

struct order_placed {
    std::uint64_t order_id;
    std::uint32_t customer_id;
    std::uint32_t sku;
    std::uint32_t quantity;
    std::int64_t amount_cents;
};

// Billing's verdict on an order, announced from inside billing's order_placed handler.
struct payment_captured {
    std::uint64_t order_id;
    std::int64_t amount_cents;
};

enum class decline_reason { card_declined, over_credit_limit };

struct payment_failed {
    std::uint64_t order_id;
    decline_reason reason;
};

// Dynamic events: a string key and named arguments of any type (eventbus::args), for data that
// arrives in a looser shape. Their arguments, by name and type:

// "customer_feedback": order_id (std::uint64_t), rating (int), comment (std::string).
inline constexpr const char* customer_feedback = "customer_feedback";

// "loyalty_points_earned": customer_id (std::uint32_t), points (int). No module of this
// service handles it yet: monitoring's on_unhandled hook reports it.
inline constexpr const char* loyalty_points_earned = "loyalty_points_earned";

}  // namespace shop

#endif
