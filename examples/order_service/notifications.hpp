// Notifications: e-mails customers about their payments, and answers their feedback. Feedback
// is a dynamic event, whose arguments are read with eventbus::arg<T>.
#ifndef ORDER_SERVICE_NOTIFICATIONS_HPP
#define ORDER_SERVICE_NOTIFICATIONS_HPP

#include "events.hpp"

#include <cstdint>
#include <mutex>
#include <string>

namespace shop {

class notifications {
  public:
    struct stats {
        std::uint64_t receipts = 0;
        std::uint64_t payment_problems = 0;
        std::uint64_t thank_yous = 0;
        std::uint64_t escalations = 0;  // poor ratings, passed on to customer support
        std::string last_escalation;
    };

    explicit notifications(order_bus& bus) {
        eventbus::dispatcher& handlers = bus.dispatcher();
        on_captured_ = handlers.on<payment_captured>(
            [this](const payment_captured&) { count(stats_.receipts); },
            {.name = "notifications.receipt"});
        on_failed_ = handlers.on<payment_failed>(
            [this](const payment_failed&) { count(stats_.payment_problems); },
            {.name = "notifications.payment_problem"});
        on_feedback_ = handlers.on(
            customer_feedback,
            [this](const eventbus::context&, const eventbus::args& args) { answer(args); },
            {.name = "notifications.feedback"});
    }

    notifications(const notifications&) = delete;  // the handlers point to this object
    notifications& operator=(const notifications&) = delete;

    [[nodiscard]] stats snapshot() const {
        const std::lock_guard lock(mutex_);
        return stats_;
    }

  private:
    void count(std::uint64_t& counter) {
        const std::lock_guard lock(mutex_);
        ++counter;
    }

    void answer(const eventbus::args& args) {
        // arg<T> returns the argument if it holds exactly a T; otherwise it throws
        // eventbus::arg_error, whose message names the argument and both types, and the
        // handler fails like any other that throws.
        const std::uint64_t order_id = eventbus::arg<std::uint64_t>(args, "order_id");
        const int rating = eventbus::arg<int>(args, "rating");
        const std::string& comment = eventbus::arg<std::string>(args, "comment");

        const std::lock_guard lock(mutex_);
        if (rating <= 2) {
            ++stats_.escalations;
            stats_.last_escalation = "order " + std::to_string(order_id) + ": " + comment;
        } else {
            ++stats_.thank_yous;
        }
    }

    // Handlers run on the store's worker threads, several at a time: the state is guarded.
    mutable std::mutex mutex_;
    stats stats_;

    // Last: destroyed first, so that no handler can run once the state above is gone.
    eventbus::scoped_registration on_captured_;
    eventbus::scoped_registration on_failed_;
    eventbus::scoped_registration on_feedback_;
};

}  // namespace shop

#endif
