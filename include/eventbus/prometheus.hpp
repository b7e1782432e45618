//  eventbus — optional Prometheus adapter: an event_store's metrics as Prometheus metrics.
//  SPDX-License-Identifier: MIT
//
//  Needs prometheus-cpp's core library (CMake: link eventbus::prometheus, which links
//  prometheus-cpp::core). The core header, eventbus.hpp, never depends on it.
//
//  Serve them with prometheus-cpp's own exposer:
//
//      auto metrics = std::make_shared<eventbus::prometheus::collector>();
//      metrics->add("orders", orders);                 // label store="orders"
//      prometheus::Exposer exposer{"127.0.0.1:9464"};  // prometheus-cpp-pull
//      exposer.RegisterCollectable(metrics);           // scraped at /metrics
//
//  or from any HTTP server's /metrics route, with `eventbus::prometheus::text(*metrics)`
//  (Content-Type: text/plain; version=0.0.4).
//
//  Exported (prefix "eventbus"), one metric per store, labelled store="<name>":
//    counters    eventbus_events_published_total, eventbus_handler_calls_total,
//                eventbus_events_handled_total, eventbus_handler_errors_total,
//                eventbus_events_dropped_total, eventbus_events_unhandled_total,
//                eventbus_events_triggered_total, eventbus_events_scheduled_total,
//                eventbus_events_cancelled_total, eventbus_events_rejected_total,
//                eventbus_retries_total, eventbus_dead_letters_total,
//                eventbus_dead_letters_dropped_total, eventbus_trigger_errors_total
//    gauges      eventbus_queue_depth, eventbus_queue_high_water, eventbus_queue_capacity
//    histograms  eventbus_queue_wait_seconds, eventbus_handler_duration_seconds
//                (only for stores with store_options::latency_histograms)
//  Each is the `store_metrics` field of the same meaning (see eventbus.hpp).

#ifndef EVENTBUS_PROMETHEUS_HPP
#define EVENTBUS_PROMETHEUS_HPP

#include <prometheus/client_metric.h>
#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>
#include <prometheus/metric_type.h>
#include <prometheus/text_serializer.h>
#include <eventbus/eventbus.hpp>

#include <array>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace eventbus::prometheus {

/// The default histogram buckets, in seconds: 1 µs to 60 s (1, 2.5, 5 per decade, then 30 s
/// and 60 s). Allocates.
[[nodiscard]] inline std::vector<double> default_buckets() {
    return {1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3,
            1e-2, 2.5e-2, 5e-2, 0.1,  0.25,   0.5,  1.0,  2.5,    5.0,  10.0, 30.0,   60.0};
}

/// Construction options of a collector.
struct collector_options {
    /// The start of every metric name (`<prefix>_events_published_total`, ...): a letter or
    /// `_` followed by letters, digits and `_`, not starting with `__` (reserved by Prometheus).
    std::string prefix = "eventbus";
    /// Upper bounds, in seconds, of the exported histogram buckets (their "le" labels): finite,
    /// greater than 0 and strictly increasing. A `+Inf` bucket is always added; an empty list
    /// exports only that one.
    std::vector<double> buckets = default_buckets();
};

/// A prometheus-cpp Collectable reporting event stores' `metrics()`, each labelled
/// store="<name>". Register it with a `prometheus::Exposer` (as a shared_ptr) or serve
/// `text(collector)`.
///
/// Thread-safety: every member function is thread-safe; a mutex is held by add(), remove()
/// and for the whole of Collect(), so scrapes and add/remove may race. The stores are only
/// read, through their lock-free `metrics()`: the collector never slows their handlers down.
///
/// Allocation: add() and Collect() allocate (std::bad_alloc); remove() does not.
///
/// Lifetime: the collector keeps a pointer to each store added; a store must outlive the
/// collector or be removed from it first.
///
/// Histograms: `latency_histogram` keeps log-linear buckets, each at most 1/32 of its lower
/// bound wide. An exported bucket "le" counts the durations recorded in the histogram's buckets
/// that end at or before `le` (`count_at_or_below`), so a duration within one such bucket
/// below `le` (at most 1/32 of `le`) may be counted in the next exported bucket instead: counts
/// are exact to within one log-linear bucket. `+Inf` is `count()`, the sum is `sum()` (exact),
/// in seconds. Durations beyond 68.7 s are only in the `+Inf` bucket (and in buckets at or
/// beyond the longest duration recorded).
///
/// Values are exported as doubles, exact up to 2^53.
class collector final : public ::prometheus::Collectable {
  public:
    /// Throws std::invalid_argument for a bad prefix or bad buckets (see collector_options).
    explicit collector(collector_options options = {}) : options_(std::move(options)) {
        if (!valid_prefix(options_.prefix))
            throw std::invalid_argument("eventbus::prometheus: invalid metric name prefix \"" +
                                        options_.prefix +
                                        "\" (want [a-zA-Z_][a-zA-Z0-9_]*, not starting with __)");
        limits_.reserve(options_.buckets.size());
        double previous = 0.0;
        for (const double le : options_.buckets) {
            if (!std::isfinite(le) || le <= previous)
                throw std::invalid_argument(
                    "eventbus::prometheus: histogram buckets must be finite, greater than 0 and "
                    "strictly increasing (+Inf is added), got " +
                    std::to_string(le) + " after " + std::to_string(previous));
            limits_.push_back(to_nanoseconds(le));
            previous = le;
        }
    }

    collector(const collector&) = delete;
    collector& operator=(const collector&) = delete;

    /// Reports `store` from the next Collect() on, labelled store="<name>". The store must
    /// outlive the collector or be removed first. Throws std::invalid_argument for an empty
    /// name, one that is not valid UTF-8, or one already added.
    template <overflow_policy P>
    void add(std::string name, const event_store<P>& store) {
        if (name.empty())
            throw std::invalid_argument("eventbus::prometheus: empty store name");
        if (!valid_utf8(name))
            throw std::invalid_argument(
                "eventbus::prometheus: store name is not valid UTF-8 (a Prometheus label value)");
        const std::lock_guard lock(mutex_);
        for (const entry& e : stores_)
            if (e.name == name)
                throw std::invalid_argument("eventbus::prometheus: store \"" + name +
                                            "\" was added already");
        stores_.push_back(entry{
            .name = std::move(name),
            .store = &store,
            .read =
                [](const void* s) noexcept {
                    return static_cast<const event_store<P>*>(s)->metrics();
                },
            .capacity = store.capacity(),
            .histograms = store.options().latency_histograms,
        });
    }

    /// Stops reporting the store added as `name`; true if it was there. After it returns, no
    /// Collect() reads that store any more.
    bool remove(std::string_view name) {
        const std::lock_guard lock(mutex_);
        for (auto it = stores_.begin(); it != stores_.end(); ++it) {
            if (it->name == name) {
                stores_.erase(it);
                return true;
            }
        }
        return false;
    }

    /// One family per metric, one metric per store (in the order added), reading each store's
    /// `metrics()` once. The histogram families are left out when no store records
    /// histograms; nothing at all when no store is added.
    [[nodiscard]] std::vector<::prometheus::MetricFamily> Collect() const override {
        using ::prometheus::MetricType;
        const std::lock_guard lock(mutex_);
        std::vector<::prometheus::MetricFamily> families;
        if (stores_.empty())
            return families;
        bool any_histograms = false;
        for (const entry& e : stores_)
            any_histograms = any_histograms || e.histograms;

        families.reserve(counters.size() + gauges.size() + 1 + (any_histograms ? 2 : 0));
        for (const field& f : counters)
            families.push_back(family(f.suffix, f.help, MetricType::Counter));
        for (const field& f : gauges)
            families.push_back(family(f.suffix, f.help, MetricType::Gauge));
        families.push_back(family(capacity_suffix, capacity_help, MetricType::Gauge));
        if (any_histograms) {
            families.push_back(family(queue_wait_suffix, queue_wait_help, MetricType::Histogram));
            families.push_back(family(duration_suffix, duration_help, MetricType::Histogram));
        }

        for (const entry& e : stores_) {
            const store_metrics m = e.read(e.store);
            std::size_t i = 0;
            for (const field& f : counters)
                metric(families[i++], e).counter.value = static_cast<double>(m.*f.value);
            for (const field& f : gauges)
                metric(families[i++], e).gauge.value = static_cast<double>(m.*f.value);
            metric(families[i++], e).gauge.value = static_cast<double>(e.capacity);
            if (e.histograms) {
                metric(families[i], e).histogram = histogram(m.queue_wait);
                metric(families[i + 1], e).histogram = histogram(m.handler_duration);
            }
        }
        return families;
    }

    [[nodiscard]] const collector_options& options() const noexcept { return options_; }

  private:
    struct entry {
        std::string name;
        const void* store;
        store_metrics (*read)(const void*) noexcept;
        std::size_t capacity;
        bool histograms;
    };

    struct field {
        std::string_view suffix;
        std::string_view help;
        std::uint64_t store_metrics::*value;
    };

    static constexpr std::array<field, 14> counters{{
        {"events_published_total", "Events accepted by subscribe.", &store_metrics::published},
        {"handler_calls_total", "Handler calls finished, failed ones and retries included.",
         &store_metrics::processed},
        {"events_handled_total",
         "Events (published or triggered) that reached at least one handler call.",
         &store_metrics::handled},
        {"handler_errors_total", "Handler calls that threw.", &store_metrics::errors},
        {"events_dropped_total", "Events overwritten in a full ring (drop_oldest).",
         &store_metrics::dropped},
        {"events_unhandled_total", "Events with no handler.", &store_metrics::unhandled},
        {"events_triggered_total", "Events run at once by trigger() (not counted as published).",
         &store_metrics::triggered},
        {"events_scheduled_total", "Events accepted by schedule() for later.",
         &store_metrics::scheduled},
        {"events_cancelled_total",
         "Scheduled events that never reached the ring (cancelled, pending at close, or refused "
         "when due).",
         &store_metrics::cancelled},
        {"events_rejected_total",
         "Subscribes refused: ring full (return_error), would deadlock, closed, or context ended.",
         &store_metrics::rejected},
        {"retries_total", "Handler calls that were retries.", &store_metrics::retried},
        {"dead_letters_total", "Events whose handler gave up (last attempt failed or no retry).",
         &store_metrics::dead_lettered},
        {"dead_letters_dropped_total",
         "Dead letters not kept (beyond dead_letter_capacity, or no memory).",
         &store_metrics::dead_letters_dropped},
        {"trigger_errors_total", "Failed handler calls of trigger().",
         &store_metrics::trigger_errors},
    }};

    static constexpr std::array<field, 2> gauges{{
        {"queue_depth", "Events in the ring, accepted and not yet taken for handling.",
         &store_metrics::depth},
        {"queue_high_water", "The most events seen waiting in the ring at once.",
         &store_metrics::high_water},
    }};

    static constexpr std::string_view capacity_suffix = "queue_capacity";
    static constexpr std::string_view capacity_help = "How many events the ring holds.";
    static constexpr std::string_view queue_wait_suffix = "queue_wait_seconds";
    static constexpr std::string_view queue_wait_help =
        "Time from subscribe to the start of the event's first handler call.";
    static constexpr std::string_view duration_suffix = "handler_duration_seconds";
    static constexpr std::string_view duration_help =
        "Duration of handler calls, retries and trigger() included.";

    [[nodiscard]] ::prometheus::MetricFamily family(std::string_view suffix, std::string_view help,
                                                    ::prometheus::MetricType type) const {
        ::prometheus::MetricFamily f;
        f.name.reserve(options_.prefix.size() + 1 + suffix.size());
        f.name.append(options_.prefix).append(1, '_').append(suffix);
        f.help = help;
        f.type = type;
        f.metric.reserve(stores_.size());
        return f;
    }

    static ::prometheus::ClientMetric& metric(::prometheus::MetricFamily& f, const entry& e) {
        ::prometheus::ClientMetric& m = f.metric.emplace_back();
        m.label.push_back({"store", e.name});
        return m;
    }

    [[nodiscard]] ::prometheus::ClientMetric::Histogram histogram(
        const latency_histogram& h) const {
        ::prometheus::ClientMetric::Histogram out;
        out.sample_count = h.count();
        out.sample_sum = static_cast<double>(h.sum().count()) / 1e9;
        out.bucket.reserve(limits_.size() + 1);
        for (std::size_t i = 0; i < limits_.size(); ++i)
            out.bucket.push_back({h.count_at_or_below(limits_[i]), options_.buckets[i]});
        out.bucket.push_back({h.count(), std::numeric_limits<double>::infinity()});
        return out;
    }

    static std::chrono::nanoseconds to_nanoseconds(double seconds) noexcept {
        const double ns = std::round(seconds * 1e9);
        if (ns >= 9.2e18)  // beyond int64 nanoseconds (292 years): everything tracked
            return std::chrono::nanoseconds::max();
        return std::chrono::nanoseconds(static_cast<std::int64_t>(ns));
    }

    static bool valid_prefix(std::string_view p) noexcept {
        const auto letter = [](char c) {
            return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
        };
        if (p.empty() || !letter(p[0]) || p.starts_with("__"))
            return false;
        for (const char c : p)
            if (!letter(c) && !(c >= '0' && c <= '9'))
                return false;
        return true;
    }

    // Well-formed UTF-8: no stray continuation bytes, overlong forms, surrogates, or code
    // points beyond U+10FFFF.
    static bool valid_utf8(std::string_view s) noexcept {
        constexpr std::array<std::uint32_t, 4> shortest{0, 0x80, 0x800, 0x10000};
        std::size_t i = 0;
        while (i < s.size()) {
            const auto lead = static_cast<unsigned char>(s[i]);
            std::size_t more = 0;
            std::uint32_t cp = 0;
            if (lead < 0x80) {
                ++i;
                continue;
            }
            if ((lead & 0xE0) == 0xC0) {
                more = 1;
                cp = lead & 0x1Fu;
            } else if ((lead & 0xF0) == 0xE0) {
                more = 2;
                cp = lead & 0x0Fu;
            } else if ((lead & 0xF8) == 0xF0) {
                more = 3;
                cp = lead & 0x07u;
            } else {
                return false;
            }
            if (s.size() - i <= more)
                return false;
            for (std::size_t k = 1; k <= more; ++k) {
                const auto next = static_cast<unsigned char>(s[i + k]);
                if ((next & 0xC0) != 0x80)
                    return false;
                cp = (cp << 6) | (next & 0x3Fu);
            }
            if (cp < shortest[more] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
                return false;
            i += more + 1;
        }
        return true;
    }

    collector_options options_;
    std::vector<std::chrono::nanoseconds> limits_;  // options_.buckets in nanoseconds
    mutable std::mutex mutex_;
    std::vector<entry> stores_;
};

/// The Prometheus text exposition format (version 0.0.4) of `c`'s metrics, from
/// prometheus-cpp's TextSerializer: the body of a /metrics response for any HTTP server, with
/// `Content-Type: text/plain; version=0.0.4`. Allocates; thread-safe if `c.Collect()` is.
[[nodiscard]] inline std::string text(const ::prometheus::Collectable& c) {
    return ::prometheus::TextSerializer{}.Serialize(c.Collect());
}

}  // namespace eventbus::prometheus

#endif  // EVENTBUS_PROMETHEUS_HPP
