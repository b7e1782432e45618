// Monitoring: what went wrong, from the store's hooks. on_error sees every handler call that
// threw, with the handler's name (handler_options::name) and the event; on_unhandled sees every
// event that no handler took, such as a typo in a dynamic event's key.
#ifndef ORDER_SERVICE_MONITORING_HPP
#define ORDER_SERVICE_MONITORING_HPP

#include "events.hpp"

#include <cstddef>
#include <cstdint>
#include <exception>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace shop {

class monitoring {
  public:
    struct stats {
        std::uint64_t failures = 0;
        std::map<std::string, std::uint64_t> failures_by_handler;
        std::vector<std::string> first_failures;  // the first few, described
        std::uint64_t unhandled = 0;
        std::map<std::string, std::uint64_t> unhandled_by_key;

        [[nodiscard]] std::uint64_t failures_of(const std::string& handler) const {
            const auto found = failures_by_handler.find(handler);
            return found == failures_by_handler.end() ? 0 : found->second;
        }
    };

    explicit monitoring(order_bus& bus) {
        on_error_ = bus.on_error(
            [this](const eventbus::context&, const eventbus::handler_failure& failure) {
                record_failure(failure);
            });
        on_unhandled_ =
            bus.on_unhandled([this](const eventbus::context&, const eventbus::event_view& event) {
                record_unhandled(event);
            });
    }

    monitoring(const monitoring&) = delete;  // the hooks point to this object
    monitoring& operator=(const monitoring&) = delete;

    [[nodiscard]] stats snapshot() const {
        const std::lock_guard lock(mutex_);
        return stats_;
    }

  private:
    static constexpr std::size_t failures_kept = 5;

    void record_failure(const eventbus::handler_failure& failure) {
        // A real service would log every failure; this one keeps the first few and counts.
        const std::string handler(failure.handler);
        const std::lock_guard lock(mutex_);
        ++stats_.failures;
        ++stats_.failures_by_handler[handler];
        if (stats_.first_failures.size() < failures_kept)
            stats_.first_failures.push_back(handler + " failed on " + describe(failure.event) +
                                            ": " + message_of(failure.error));
    }

    void record_unhandled(const eventbus::event_view& event) {
        const std::string key(event.projection().name());
        const std::lock_guard lock(mutex_);
        ++stats_.unhandled;
        ++stats_.unhandled_by_key[key];
    }

    // A typed event's payload is reached with get_if<T>(); a dynamic event with dynamic().
    static std::string describe(const eventbus::event_view& event) {
        if (const auto* order = event.get_if<order_placed>())
            return "order " + std::to_string(order->order_id);
        if (const auto* payment = event.get_if<payment_captured>())
            return "payment_captured of order " + std::to_string(payment->order_id);
        if (const auto* payment = event.get_if<payment_failed>())
            return "payment_failed of order " + std::to_string(payment->order_id);
        if (const eventbus::event* dynamic = event.dynamic())
            return std::string(dynamic->projection.name()) + " '" + dynamic->id + "'";
        return std::string(event.projection().name());
    }

    static std::string message_of(const std::exception_ptr& error) {
        try {
            std::rethrow_exception(error);
        } catch (const std::exception& e) {
            return e.what();
        } catch (...) {
            return "an exception not derived from std::exception";
        }
    }

    mutable std::mutex mutex_;
    stats stats_;

    // Last: destroyed first, so that no hook can run once the state above is gone.
    eventbus::scoped_registration on_error_;
    eventbus::scoped_registration on_unhandled_;
};

}  // namespace shop

#endif
