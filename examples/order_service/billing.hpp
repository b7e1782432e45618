// Billing: charges each order and announces the verdict as a payment_captured or payment_failed
// event, which inventory and notifications handle.
#ifndef ORDER_SERVICE_BILLING_HPP
#define ORDER_SERVICE_BILLING_HPP

#include "events.hpp"

#include <cstdint>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>

namespace shop {

class billing {
  public:
    struct stats {
        std::uint64_t captured = 0;
        std::uint64_t declined = 0;
        std::int64_t revenue_cents = 0;
    };

    explicit billing(order_bus& bus) : bus_(bus) {
        on_order_ = bus.dispatcher().on<order_placed>(
            [this](const eventbus::context& ctx, const order_placed& order) { charge(ctx, order); },
            {.name = "billing.charge"});
    }

    billing(const billing&) = delete;  // the handler points to this object
    billing& operator=(const billing&) = delete;

    [[nodiscard]] stats snapshot() const {
        const std::lock_guard lock(mutex_);
        return stats_;
    }

  private:
    static constexpr std::int64_t credit_limit_cents = 7'000;

    void charge(const eventbus::context& ctx, const order_placed& order) {
        // Stands in for the payment provider, which now and then times out. A handler fails by
        // throwing: the store counts it in metrics().errors and passes it to the error hooks
        // (see monitoring.hpp); the other handlers of the event still run.
        if (order.order_id % 97 == 0)
            throw std::runtime_error("payment provider timed out");

        std::optional<decline_reason> declined;
        if (order.customer_id % 13 == 0)
            declined = decline_reason::card_declined;
        else if (order.amount_cents > credit_limit_cents)
            declined = decline_reason::over_credit_limit;

        {
            const std::lock_guard lock(mutex_);
            if (declined) {
                ++stats_.declined;
            } else {
                ++stats_.captured;
                stats_.revenue_cents += order.amount_cents;
            }
        }

        // Announce the verdict with trigger(): it runs the handlers of the payment event now, on
        // this thread, before returning. A handler must not subscribe() to its own store under
        // policy block: with the ring full, it would wait for room that only the handlers it
        // holds up can make. (The lock above is released first: the handlers that trigger()
        // runs may call back into this module.)
        const std::error_code error =
            declined ? bus_.trigger(ctx, payment_failed{order.order_id, *declined})
                     : bus_.trigger(ctx, payment_captured{order.order_id, order.amount_cents});
        // handler_failed: one of the payment handlers threw; the error hooks have reported it.
        if (error && error != eventbus::errc::handler_failed)
            throw std::system_error(
                error, "announcing the payment of order " + std::to_string(order.order_id));
    }

    order_bus& bus_;
    mutable std::mutex mutex_;
    stats stats_;

    // Last: destroyed first, so that no handler can run once the state above is gone.
    eventbus::scoped_registration on_order_;
};

}  // namespace shop

#endif
