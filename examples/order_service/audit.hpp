// Audit: records every event the service handles, once. Constructed first, so its handlers run
// before those of the other modules (the handlers of an event run in the order they were added).
#ifndef ORDER_SERVICE_AUDIT_HPP
#define ORDER_SERVICE_AUDIT_HPP

#include "events.hpp"

#include <atomic>
#include <cstdint>

namespace shop {

class audit {
  public:
    struct stats {
        std::uint64_t orders = 0;
        std::uint64_t feedback = 0;
        std::uint64_t payments_captured = 0;
        std::uint64_t payments_failed = 0;
    };

    explicit audit(order_bus& bus) {
        eventbus::dispatcher& handlers = bus.dispatcher();
        on_order_ = handlers.on<order_placed>([this](const order_placed&) { ++orders_; },
                                              {.name = "audit.order_placed"});
        on_captured_ =
            handlers.on<payment_captured>([this](const payment_captured&) { ++payments_captured_; },
                                          {.name = "audit.payment_captured"});
        on_failed_ =
            handlers.on<payment_failed>([this](const payment_failed&) { ++payments_failed_; },
                                        {.name = "audit.payment_failed"});
        // A dynamic event's handler receives its arguments as eventbus::args.
        on_feedback_ =
            handlers.on(customer_feedback,
                        [this](const eventbus::context&, const eventbus::args&) { ++feedback_; },
                        {.name = "audit.customer_feedback"});
    }

    audit(const audit&) = delete;  // the handlers point to this object
    audit& operator=(const audit&) = delete;

    [[nodiscard]] stats snapshot() const {
        return {.orders = orders_.load(),
                .feedback = feedback_.load(),
                .payments_captured = payments_captured_.load(),
                .payments_failed = payments_failed_.load()};
    }

  private:
    // Handlers run on the store's worker threads, several at a time: shared state is atomic or
    // guarded by a mutex.
    std::atomic<std::uint64_t> orders_{0};
    std::atomic<std::uint64_t> feedback_{0};
    std::atomic<std::uint64_t> payments_captured_{0};
    std::atomic<std::uint64_t> payments_failed_{0};

    // Last: destroyed first, so that no handler can run once the state above is gone.
    eventbus::scoped_registration on_order_;
    eventbus::scoped_registration on_captured_;
    eventbus::scoped_registration on_failed_;
    eventbus::scoped_registration on_feedback_;
};

}  // namespace shop

#endif
