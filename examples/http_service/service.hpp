// The service behind the HTTP routes (main.cpp wires them): it turns request bodies into events,
// publishes them on an async event_store<return_error>, handles them, counts every request it
// refuses by reason, and renders /metrics. Nothing here knows about HTTP beyond status codes.
//
// Request bodies are flat JSON objects. Each member becomes one argument of the event: a string
// is a std::string, an integer a std::int64_t, any other number a double, true/false a bool.
// Anything else (null, an array, an object, an integer beyond std::int64_t) is refused with 400
// and reason "unsupported_value": a handler reading args with eventbus::find_arg<T> can rely on
// those four types and nothing else, and a client learns at once that its data was not taken
// as it meant it, rather than finding a JSON string where it sent a list.
#pragma once

#include <eventbus/eventbus.hpp>
#include <eventbus/prometheus.hpp>

#include <prometheus/client_metric.h>
#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>
#include <prometheus/metric_type.h>
#include <nlohmann/json.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

namespace http_service {

// The typed event of POST /orders.
struct order_placed {
    std::string id;
    std::int64_t amount_cents = 0;
};

// Why a request was refused; each is a label value of http_requests_rejected_total.
enum class reason : std::size_t {
    invalid_json,          // 400: the body is not JSON
    not_object,            // 400: JSON, but not an object
    unsupported_value,     // 400: a member is null, an array, an object or an integer too large
    invalid_order,         // 400: POST /orders without a string "id" and an integer "amount_cents"
    too_many_projections,  // 400: a new projection beyond --max-projections
    too_large,             // 413: the body exceeds --max-body (refused by cpp-httplib)
    not_found,             // 404: no such route
    bad_request,           // other 4xx that cpp-httplib answers itself (a malformed request)
    buffer_full,           // 503 + Retry-After: the store's ring is full (return_error)
    closed,                // 503: the store is closed, the service is shutting down
};
inline constexpr std::size_t reason_count = 10;
inline constexpr std::array<std::string_view, reason_count> reason_names = {
    "invalid_json", "not_object", "unsupported_value", "invalid_order", "too_many_projections",
    "too_large",    "not_found",  "bad_request",       "buffer_full",   "closed"};

struct options {
    std::size_t capacity = 4096;  // the store's ring, a power of two
    std::size_t workers = 2;      // the store's worker threads
    std::size_t max_projections = 64;
    std::chrono::microseconds handler_delay{0};  // each handler call sleeps this long (tests)
};

// What a route answers.
struct reply {
    int status = 200;
    std::string body;
    bool retry_after = false;  // 503 for a full ring: the client may retry in a second
};

inline std::string error_body(std::string_view why, std::string_view message) {
    return nlohmann::json{{"error", why}, {"message", message}}.dump();
}

// A parsed body: the arguments, or the reason it was refused.
struct parsed_args {
    eventbus::args args;
    std::string id;  // the "id" member when it is a string
    bool ok = false;
    reason why = reason::invalid_json;
    std::string message;
};

inline parsed_args parse_args(std::string_view body) {
    parsed_args out;
    nlohmann::json doc = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
    if (doc.is_discarded()) {
        out.message = "the body is not valid JSON";
        return out;
    }
    if (!doc.is_object()) {
        out.why = reason::not_object;
        out.message = "the body must be a JSON object";
        return out;
    }
    out.args.reserve(doc.size());
    for (auto it = doc.begin(); it != doc.end(); ++it) {
        nlohmann::json& value = it.value();
        switch (value.type()) {
            case nlohmann::json::value_t::string:
                if (it.key() == "id")
                    out.id = value.get_ref<const std::string&>();
                out.args.emplace(it.key(), std::move(value.get_ref<std::string&>()));
                break;
            case nlohmann::json::value_t::boolean:
                out.args.emplace(it.key(), value.get<bool>());
                break;
            case nlohmann::json::value_t::number_integer:
                out.args.emplace(it.key(), value.get<std::int64_t>());
                break;
            case nlohmann::json::value_t::number_unsigned:
                if (value.get<std::uint64_t>() >
                    static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
                    out.why = reason::unsupported_value;
                    out.message = "member \"" + it.key() + "\": integer out of range";
                    return out;
                }
                out.args.emplace(it.key(), value.get<std::int64_t>());
                break;
            case nlohmann::json::value_t::number_float:
                out.args.emplace(it.key(), value.get<double>());
                break;
            default:
                out.why = reason::unsupported_value;
                out.message = "member \"" + it.key() + "\": " + value.type_name() +
                              " is not supported (strings, numbers and booleans only)";
                return out;
        }
    }
    out.ok = true;
    return out;
}

class service {
  public:
    explicit service(const options& opts)
        : options_(opts)
        , store_(handlers_, opts.capacity,
                 {.async = true, .workers = opts.workers, .latency_histograms = true}) {
        orders_registration_ = handlers_.on<order_placed>([this](const order_placed& order) {
            pause();
            orders_handled_.fetch_add(1, std::memory_order_relaxed);
            order_cents_.fetch_add(order.amount_cents, std::memory_order_relaxed);
        });
        collector_.add("events", store_);
    }

    service(const service&) = delete;
    service& operator=(const service&) = delete;

    // POST /events/<projection>
    reply post_event(std::string_view projection, std::string_view body) {
        parsed_args parsed = parse_args(body);
        if (!parsed.ok)
            return refuse(parsed.why, 400, parsed.message);
        if (!ensure_projection(projection))
            return refuse(
                reason::too_many_projections, 400,
                "at most " + std::to_string(options_.max_projections) + " distinct projections");
        std::string id = parsed.id.empty() ? next_id() : std::move(parsed.id);
        std::string answer = nlohmann::json{{"accepted", true}, {"id", id}}.dump();
        const std::error_code ec =
            store_.subscribe(context_, eventbus::event{.id = std::move(id),
                                                       .projection = eventbus::key(projection),
                                                       .args = std::move(parsed.args)});
        return accepted_or_refused(ec, events_accepted_, std::move(answer));
    }

    // POST /orders: {"id": "<string>", "amount_cents": <integer>}
    reply post_order(std::string_view body) {
        parsed_args parsed = parse_args(body);
        if (!parsed.ok)
            return refuse(parsed.why, 400, parsed.message);
        const auto* cents = eventbus::find_arg<std::int64_t>(parsed.args, "amount_cents");
        if (parsed.id.empty() || cents == nullptr)
            return refuse(reason::invalid_order, 400,
                          "an order needs a non-empty string \"id\" and an integer "
                          "\"amount_cents\"");
        std::string answer = nlohmann::json{{"accepted", true}, {"id", parsed.id}}.dump();
        const std::error_code ec =
            store_.subscribe(context_, order_placed{std::move(parsed.id), *cents});
        return accepted_or_refused(ec, orders_accepted_, std::move(answer));
    }

    // POST /baseline: the parsing and the event of POST /events, without the bus.
    reply baseline(std::string_view body) {
        parsed_args parsed = parse_args(body);
        if (!parsed.ok)
            return refuse(parsed.why, 400, parsed.message);
        std::string id = parsed.id.empty() ? next_id() : std::move(parsed.id);
        std::string answer = nlohmann::json{{"accepted", true}, {"id", id}}.dump();
        const eventbus::event ev{.id = std::move(id),
                                 .projection = eventbus::key("baseline"),
                                 .args = std::move(parsed.args)};
        baseline_requests_.fetch_add(1, std::memory_order_relaxed);
        return {.status = 202, .body = std::move(answer)};
    }

    // Counts a refusal made outside the routes (cpp-httplib's 404 and 413).
    void count(reason why) noexcept {
        rejected_[static_cast<std::size_t>(why)].fetch_add(1, std::memory_order_relaxed);
    }

    [[nodiscard]] std::uint64_t rejected(reason why) const noexcept {
        return rejected_[static_cast<std::size_t>(why)].load(std::memory_order_relaxed);
    }
    [[nodiscard]] std::uint64_t rejected_total() const noexcept {
        std::uint64_t total = 0;
        for (const auto& counter : rejected_)
            total += counter.load(std::memory_order_relaxed);
        return total;
    }
    [[nodiscard]] std::uint64_t accepted() const noexcept {
        return events_accepted_.load(std::memory_order_relaxed) +
               orders_accepted_.load(std::memory_order_relaxed);
    }

    // GET /metrics: the store's metrics (eventbus_*) followed by the service's own.
    [[nodiscard]] std::string metrics_text() const {
        std::string text = eventbus::prometheus::text(collector_);
        if (!text.empty() && text.back() != '\n')
            text += '\n';
        text += eventbus::prometheus::text(own_metrics_);
        return text;
    }

    [[nodiscard]] eventbus::store_metrics store_metrics() const noexcept {
        return store_.metrics();
    }

    // Stops accepting and waits until everything accepted has been handled, or `ctx` ends.
    [[nodiscard]] std::error_code close(const eventbus::context& ctx) { return store_.close(ctx); }

    // The last line main prints: what was accepted, what the store handled, what was refused.
    [[nodiscard]] std::string final_line() const {
        const eventbus::store_metrics m = store_.metrics();
        std::string line =
            "handled: accepted=" + std::to_string(accepted()) +
            " published=" + std::to_string(m.published) + " handled=" + std::to_string(m.handled) +
            " unhandled=" + std::to_string(m.unhandled) + " errors=" + std::to_string(m.errors) +
            " rejected=" + std::to_string(rejected_total());
        for (std::size_t i = 0; i < reason_count; ++i)
            line += " rejected_" + std::string(reason_names[i]) + "=" +
                    std::to_string(rejected_[i].load(std::memory_order_relaxed));
        return line;
    }

    // After close: every accepted request was published and handled once, without errors.
    [[nodiscard]] bool reconciles() const noexcept {
        const eventbus::store_metrics m = store_.metrics();
        return m.published == accepted() && m.handled == accepted() && m.unhandled == 0 &&
               m.errors == 0;
    }

  private:
    // One handler per projection, registered by the first request that names it; each counts
    // its events and their arguments.
    struct projection_state {
        std::atomic<std::uint64_t> events{0};
        std::atomic<std::uint64_t> arguments{0};
        eventbus::scoped_registration registration;
    };

    // The service's own families: refusals by reason, acceptances by route, and what the
    // handlers counted.
    class own_metrics : public ::prometheus::Collectable {
      public:
        explicit own_metrics(const service& owner) : owner_(owner) {}

        std::vector<::prometheus::MetricFamily> Collect() const override {
            std::vector<::prometheus::MetricFamily> families;
            auto& rejected = family(families, "http_requests_rejected_total",
                                    "HTTP requests refused, by reason");
            for (std::size_t i = 0; i < reason_count; ++i)
                add(rejected, {{"reason", std::string(reason_names[i])}},
                    owner_.rejected_[i].load(std::memory_order_relaxed));
            auto& accepted = family(families, "http_requests_accepted_total",
                                    "HTTP requests answered 202, by route");
            add(accepted, {{"route", "events"}},
                owner_.events_accepted_.load(std::memory_order_relaxed));
            add(accepted, {{"route", "orders"}},
                owner_.orders_accepted_.load(std::memory_order_relaxed));
            add(accepted, {{"route", "baseline"}},
                owner_.baseline_requests_.load(std::memory_order_relaxed));
            auto& projections = family(families, "service_projection_events_total",
                                       "Dynamic events handled, by projection");
            auto& arguments = family(families, "service_projection_arguments_total",
                                     "Arguments of the dynamic events handled, by projection");
            {
                const std::shared_lock lock(owner_.projections_mutex_);
                for (const auto& [name, state] : owner_.projections_) {
                    add(projections, {{"projection", name}},
                        state->events.load(std::memory_order_relaxed));
                    add(arguments, {{"projection", name}},
                        state->arguments.load(std::memory_order_relaxed));
                }
            }
            add(family(families, "service_orders_handled_total", "Orders handled"), {},
                owner_.orders_handled_.load(std::memory_order_relaxed));
            add(family(families, "service_order_amount_cents_total",
                       "Sum of the amounts of the orders handled, in cents"),
                {},
                static_cast<std::uint64_t>(owner_.order_cents_.load(std::memory_order_relaxed)));
            return families;
        }

      private:
        static ::prometheus::MetricFamily& family(std::vector<::prometheus::MetricFamily>& all,
                                                  std::string name, std::string help) {
            all.push_back({.name = std::move(name),
                           .help = std::move(help),
                           .type = ::prometheus::MetricType::Counter,
                           .metric = {}});
            return all.back();
        }
        static void add(::prometheus::MetricFamily& family,
                        std::vector<::prometheus::ClientMetric::Label> labels,
                        std::uint64_t value) {
            ::prometheus::ClientMetric metric;
            metric.label = std::move(labels);
            metric.counter.value = static_cast<double>(value);
            family.metric.push_back(std::move(metric));
        }

        const service& owner_;
    };

    reply refuse(reason why, int status, std::string_view message) {
        count(why);
        return {.status = status,
                .body = error_body(reason_names[static_cast<std::size_t>(why)], message),
                .retry_after = why == reason::buffer_full};
    }

    reply accepted_or_refused(std::error_code ec, std::atomic<std::uint64_t>& accepted,
                              std::string answer) {
        if (!ec) {
            accepted.fetch_add(1, std::memory_order_relaxed);
            store_.publish();
            return {.status = 202, .body = std::move(answer)};
        }
        if (ec == eventbus::errc::buffer_full)
            return refuse(reason::buffer_full, 503, "the event queue is full; retry later");
        if (ec == eventbus::errc::closed)
            return refuse(reason::closed, 503, "the service is shutting down");
        // return_error with a context that never ends refuses with nothing else.
        return refuse(reason::closed, 503, ec.message());
    }

    bool ensure_projection(std::string_view name) {
        {
            const std::shared_lock lock(projections_mutex_);
            if (projections_.find(name) != projections_.end())
                return true;
        }
        const std::unique_lock lock(projections_mutex_);
        if (projections_.find(name) != projections_.end())
            return true;
        if (projections_.size() >= options_.max_projections)
            return false;
        auto state = std::make_unique<projection_state>();
        projection_state* counters = state.get();
        // Registered before the request's subscribe: the publish() after it sees the handler.
        state->registration = handlers_.on(
            eventbus::key(name),
            [this, counters](const eventbus::context&, const eventbus::args& arguments) {
                pause();
                counters->events.fetch_add(1, std::memory_order_relaxed);
                counters->arguments.fetch_add(arguments.size(), std::memory_order_relaxed);
            });
        projections_.emplace(std::string(name), std::move(state));
        return true;
    }

    void pause() const {
        if (options_.handler_delay.count() > 0)
            std::this_thread::sleep_for(options_.handler_delay);
    }

    std::string next_id() {
        return "evt-" + std::to_string(next_id_.fetch_add(1, std::memory_order_relaxed) + 1);
    }

    const options options_;
    const eventbus::context context_;  // subscribe never waits under return_error

    std::array<std::atomic<std::uint64_t>, reason_count> rejected_{};
    std::atomic<std::uint64_t> events_accepted_{0};
    std::atomic<std::uint64_t> orders_accepted_{0};
    std::atomic<std::uint64_t> baseline_requests_{0};
    std::atomic<std::uint64_t> next_id_{0};
    std::atomic<std::uint64_t> orders_handled_{0};
    std::atomic<std::int64_t> order_cents_{0};

    // Declared before the store and destroyed after it: the store's destructor (close) still
    // runs handlers, which use the counters above and below; then the registrations go, and the
    // dispatcher last.
    eventbus::dispatcher handlers_;
    mutable std::shared_mutex projections_mutex_;
    std::map<std::string, std::unique_ptr<projection_state>, std::less<>> projections_;
    eventbus::scoped_registration orders_registration_;

    eventbus::event_store<eventbus::return_error> store_;
    eventbus::prometheus::collector collector_;
    own_metrics own_metrics_{*this};
};

}  // namespace http_service
