// Inventory: reserves stock when an order is placed, ships it once the payment is captured, and
// puts it back on the shelf when the payment fails.
#ifndef ORDER_SERVICE_INVENTORY_HPP
#define ORDER_SERVICE_INVENTORY_HPP

#include "events.hpp"

#include <cstdint>
#include <mutex>
#include <unordered_map>

namespace shop {

class inventory {
  public:
    struct stats {
        std::uint64_t reserved = 0;
        std::uint64_t shipped = 0;
        std::uint64_t released = 0;
        std::uint64_t still_reserved = 0;  // orders whose payment never got a verdict
        std::uint64_t restocks = 0;
    };

    explicit inventory(order_bus& bus) {
        eventbus::dispatcher& handlers = bus.dispatcher();
        on_order_ = handlers.on<order_placed>([this](const order_placed& order) { reserve(order); },
                                              {.name = "inventory.reserve"});
        on_captured_ = handlers.on<payment_captured>(
            [this](const payment_captured& payment) { ship(payment.order_id); },
            {.name = "inventory.ship"});
        on_failed_ = handlers.on<payment_failed>(
            [this](const payment_failed& failure) { release(failure.order_id); },
            {.name = "inventory.release"});
    }

    inventory(const inventory&) = delete;  // the handlers point to this object
    inventory& operator=(const inventory&) = delete;

    [[nodiscard]] stats snapshot() const {
        const std::lock_guard lock(mutex_);
        stats now = stats_;
        now.still_reserved = reservations_.size();
        return now;
    }

  private:
    struct reservation {
        std::uint32_t sku;
        std::uint32_t quantity;
    };

    static constexpr std::uint32_t restock_quantity = 1000;

    void reserve(const order_placed& order) {
        const std::lock_guard lock(mutex_);
        std::uint32_t& on_hand = stock_[order.sku];
        if (on_hand < order.quantity) {
            on_hand += restock_quantity;  // a supplier that always delivers at once
            ++stats_.restocks;
        }
        on_hand -= order.quantity;
        reservations_[order.order_id] = {order.sku, order.quantity};
        ++stats_.reserved;
    }

    void ship(std::uint64_t order_id) {
        const std::lock_guard lock(mutex_);
        if (reservations_.erase(order_id) == 1)
            ++stats_.shipped;
    }

    void release(std::uint64_t order_id) {
        const std::lock_guard lock(mutex_);
        const auto found = reservations_.find(order_id);
        if (found == reservations_.end())
            return;
        stock_[found->second.sku] += found->second.quantity;
        reservations_.erase(found);
        ++stats_.released;
    }

    // Handlers run on the store's worker threads, several at a time: the state is guarded.
    mutable std::mutex mutex_;
    std::unordered_map<std::uint32_t, std::uint32_t> stock_;       // by sku
    std::unordered_map<std::uint64_t, reservation> reservations_;  // by order id
    stats stats_;

    // Last: destroyed first, so that no handler can run once the state above is gone.
    eventbus::scoped_registration on_order_;
    eventbus::scoped_registration on_captured_;
    eventbus::scoped_registration on_failed_;
};

}  // namespace shop

#endif
