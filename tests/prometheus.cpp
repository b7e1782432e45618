// The Prometheus adapter (include/eventbus/prometheus.hpp): what a collector exports for a store
// after a known workload, several stores and removal, invalid arguments, the histograms, and,
// in the hidden [promtool] cases (ctest: prometheus_promtool), promtool's check of the text.
#include <eventbus/prometheus.hpp>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "catch.hpp"

#if defined(EVENTBUS_PROMTOOL)
#include <sys/wait.h>
#include <unistd.h>
#endif

using namespace std::chrono_literals;
using eventbus::args;
using eventbus::context;
using eventbus::dispatcher;
using eventbus::drop_oldest;
using eventbus::errc;
using eventbus::event;
using eventbus::event_store;
using eventbus::return_error;
using eventbus::store_metrics;
using eventbus::store_options;
using eventbus::prometheus::collector;
using eventbus::prometheus::collector_options;
using ::prometheus::ClientMetric;
using ::prometheus::MetricFamily;
using ::prometheus::MetricType;

namespace {

event make(const char* projection) {
    return event{.id = {}, .projection = projection, .args = {}};
}

// Handlers "ok" (counts its calls, sleeping `ok_sleep` in each) and "fail" (throws).
struct workload_handlers {
    std::atomic<int> ok_calls{0};
    std::chrono::nanoseconds ok_sleep{0};
    dispatcher handlers{
        {"ok",
         [this](const context&, const args&) {
             if (ok_sleep > 0ns)
                 std::this_thread::sleep_for(ok_sleep);
             ++ok_calls;
         }},
        {"fail", [](const context&, const args&) { throw std::runtime_error("fails on purpose"); }},
    };
};

// Into a return_error store of capacity 8: 5 "ok", 2 "fail", 1 with no handler, then 2 refused
// as the ring is full; one publish.
void run_workload(event_store<return_error>& store) {
    for (int i = 0; i < 5; ++i)
        REQUIRE_FALSE(store.subscribe({}, make("ok")));
    for (int i = 0; i < 2; ++i)
        REQUIRE_FALSE(store.subscribe({}, make("fail")));
    REQUIRE_FALSE(store.subscribe({}, make("nobody")));
    CHECK(store.subscribe({}, make("ok")) == errc::buffer_full);
    CHECK(store.subscribe({}, make("ok")) == errc::buffer_full);
    store.publish();
}

const MetricFamily* find(const std::vector<MetricFamily>& families, const std::string& name) {
    for (const MetricFamily& f : families)
        if (f.name == name)
            return &f;
    return nullptr;
}

// The metric of `family` labelled store="<store>", or nullptr.
const ClientMetric* of_store(const MetricFamily& family, const std::string& store) {
    for (const ClientMetric& m : family.metric)
        if (m.label.size() == 1 && m.label[0].name == "store" && m.label[0].value == store)
            return &m;
    return nullptr;
}

// Every exported counter and gauge with the store_metrics field it reports, written out here
// (not taken from the header) so that the names are checked too.
const std::map<std::string, std::uint64_t store_metrics::*>& counters() {
    static const std::map<std::string, std::uint64_t store_metrics::*> all{
        {"events_published_total", &store_metrics::published},
        {"handler_calls_total", &store_metrics::processed},
        {"events_handled_total", &store_metrics::handled},
        {"handler_errors_total", &store_metrics::errors},
        {"events_dropped_total", &store_metrics::dropped},
        {"events_unhandled_total", &store_metrics::unhandled},
        {"events_triggered_total", &store_metrics::triggered},
        {"events_scheduled_total", &store_metrics::scheduled},
        {"events_cancelled_total", &store_metrics::cancelled},
        {"events_rejected_total", &store_metrics::rejected},
        {"retries_total", &store_metrics::retried},
        {"dead_letters_total", &store_metrics::dead_lettered},
        {"dead_letters_dropped_total", &store_metrics::dead_letters_dropped},
        {"trigger_errors_total", &store_metrics::trigger_errors},
    };
    return all;
}

const std::map<std::string, std::uint64_t store_metrics::*>& gauges() {
    static const std::map<std::string, std::uint64_t store_metrics::*> all{
        {"queue_depth", &store_metrics::depth},
        {"queue_high_water", &store_metrics::high_water},
    };
    return all;
}

// Checks that `families` reports `m` (and `capacity`) for `store`, under `prefix`.
void check_reports(const std::vector<MetricFamily>& families, const std::string& prefix,
                   const std::string& store, const store_metrics& m, std::size_t capacity) {
    INFO("store " << store);
    for (const auto& [suffix, field] : counters()) {
        INFO(prefix + "_" + suffix);
        const MetricFamily* f = find(families, prefix + "_" + suffix);
        REQUIRE(f != nullptr);
        CHECK(f->type == MetricType::Counter);
        CHECK_FALSE(f->help.empty());
        const ClientMetric* metric = of_store(*f, store);
        REQUIRE(metric != nullptr);
        CHECK(metric->counter.value == static_cast<double>(m.*field));
    }
    for (const auto& [suffix, field] : gauges()) {
        INFO(prefix + "_" + suffix);
        const MetricFamily* f = find(families, prefix + "_" + suffix);
        REQUIRE(f != nullptr);
        CHECK(f->type == MetricType::Gauge);
        CHECK_FALSE(f->help.empty());
        const ClientMetric* metric = of_store(*f, store);
        REQUIRE(metric != nullptr);
        CHECK(metric->gauge.value == static_cast<double>(m.*field));
    }
    const MetricFamily* f = find(families, prefix + "_queue_capacity");
    REQUIRE(f != nullptr);
    CHECK(f->type == MetricType::Gauge);
    const ClientMetric* metric = of_store(*f, store);
    REQUIRE(metric != nullptr);
    CHECK(metric->gauge.value == static_cast<double>(capacity));
}

// Cumulative, non-decreasing buckets with the given bounds, then +Inf holding count().
void check_histogram(const ClientMetric::Histogram& h, const std::vector<double>& bounds) {
    REQUIRE(h.bucket.size() == bounds.size() + 1);
    std::uint64_t previous = 0;
    for (std::size_t i = 0; i < bounds.size(); ++i) {
        INFO("le " << bounds[i]);
        CHECK(h.bucket[i].upper_bound == bounds[i]);
        CHECK(h.bucket[i].cumulative_count >= previous);
        CHECK(h.bucket[i].cumulative_count <= h.sample_count);
        previous = h.bucket[i].cumulative_count;
    }
    CHECK(std::isinf(h.bucket.back().upper_bound));
    CHECK(h.bucket.back().cumulative_count == h.sample_count);
    CHECK(h.sample_sum >= 0.0);
}

}  // namespace

TEST_CASE("a collector reports a store's metrics() after a known workload", "[prometheus]") {
    workload_handlers w;
    event_store<return_error> store(w.handlers, 8);
    run_workload(store);
    // A failing trigger: counted in triggered and trigger_errors.
    CHECK(store.trigger({}, make("fail")) == errc::handler_failed);
    const store_metrics m = store.metrics();
    CHECK(m.published == 8);
    CHECK(m.processed == 8);  // 5 ok, 2 fail, 1 triggered
    CHECK(m.unhandled == 1);
    CHECK(m.triggered == 1);
    CHECK(m.trigger_errors == 1);
    CHECK(m.depth == 0);
    CHECK(m.dropped == 0);
    CHECK(w.ok_calls == 5);

    collector c;
    c.add("orders", store);
    const std::vector<MetricFamily> families = c.Collect();
    check_reports(families, "eventbus", "orders", m, 8);
    CHECK(find(families, "eventbus_events_published_total")->metric.at(0).counter.value == 8.0);
    CHECK(find(families, "eventbus_handler_errors_total")->metric.at(0).counter.value ==
          static_cast<double>(m.errors));

    // Every family once, each with exactly one metric labelled store="orders" and nothing else;
    // no histograms without latency_histograms.
    std::set<std::string> names;
    for (const MetricFamily& f : families) {
        INFO(f.name);
        CHECK(names.insert(f.name).second);
        REQUIRE(f.metric.size() == 1);
        REQUIRE(f.metric[0].label.size() == 1);
        CHECK(f.metric[0].label[0].name == "store");
        CHECK(f.metric[0].label[0].value == "orders");
    }
    CHECK(names.size() == counters().size() + gauges().size() + 1);
    CHECK(find(families, "eventbus_queue_wait_seconds") == nullptr);
    CHECK(find(families, "eventbus_handler_duration_seconds") == nullptr);

    const std::string text = eventbus::prometheus::text(c);
    CHECK(text.find("# TYPE eventbus_events_published_total counter\n") != std::string::npos);
    CHECK(text.find("eventbus_events_published_total{store=\"orders\"} 8\n") != std::string::npos);
    CHECK(text.find("eventbus_queue_capacity{store=\"orders\"} 8\n") != std::string::npos);
}

// Needs the core to count refusals and the ring's high-water mark in metrics().
TEST_CASE("rejected and high_water after the workload", "[prometheus]") {
    workload_handlers w;
    event_store<return_error> store(w.handlers, 8);
    run_workload(store);
    const std::vector<MetricFamily> families = [&] {
        collector c;
        c.add("orders", store);
        return c.Collect();
    }();
    CHECK(of_store(*find(families, "eventbus_events_rejected_total"), "orders")->counter.value ==
          2.0);
    CHECK(of_store(*find(families, "eventbus_queue_high_water"), "orders")->gauge.value == 8.0);
}

TEST_CASE("one collector, two stores of different policies", "[prometheus]") {
    workload_handlers w;
    event_store<return_error> orders(w.handlers, 8);
    event_store<drop_oldest> audit(w.handlers, 4);
    run_workload(orders);
    for (int i = 0; i < 6; ++i)  // 2 dropped
        REQUIRE_FALSE(audit.subscribe({}, make("ok")));
    audit.publish();

    collector c;
    c.add("orders", orders);
    c.add("audit", audit);
    const std::vector<MetricFamily> families = c.Collect();
    check_reports(families, "eventbus", "orders", orders.metrics(), 8);
    check_reports(families, "eventbus", "audit", audit.metrics(), 4);
    CHECK(of_store(*find(families, "eventbus_events_dropped_total"), "audit")->counter.value ==
          2.0);
    std::set<std::string> names;
    for (const MetricFamily& f : families) {
        INFO(f.name);
        CHECK(names.insert(f.name).second);  // each family once, with both stores in it
        REQUIRE(f.metric.size() == 2);
        CHECK(f.metric[0].label.at(0).value == "orders");  // in the order added
        CHECK(f.metric[1].label.at(0).value == "audit");
    }
}

TEST_CASE("remove stops reporting a store", "[prometheus]") {
    workload_handlers w;
    collector c;
    CHECK(c.Collect().empty());
    CHECK(eventbus::prometheus::text(c).empty());
    event_store<> kept(w.handlers, 8);
    c.add("kept", kept);
    {
        event_store<> gone(w.handlers, 16);
        c.add("gone", gone);
        CHECK(c.Collect().at(0).metric.size() == 2);
        CHECK(c.remove("gone"));
        CHECK_FALSE(c.remove("gone"));
    }  // destroyed after removal: never read again
    const std::vector<MetricFamily> families = c.Collect();
    for (const MetricFamily& f : families) {
        REQUIRE(f.metric.size() == 1);
        CHECK(f.metric[0].label.at(0).value == "kept");
    }
    CHECK_FALSE(c.remove("never added"));
    CHECK(c.remove("kept"));
    CHECK(c.Collect().empty());
    c.add("kept", kept);  // the name is free again
    CHECK(c.Collect().at(0).metric.size() == 1);
}

TEST_CASE("invalid arguments throw std::invalid_argument", "[prometheus]") {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const double inf = std::numeric_limits<double>::infinity();
    for (const std::vector<double>& buckets : std::vector<std::vector<double>>{
             {0.1, 0.01}, {0.1, 0.1}, {0.0, 1.0}, {-1.0}, {nan}, {0.1, nan}, {1.0, inf}}) {
        CHECK_THROWS_AS(collector(collector_options{.buckets = buckets}), std::invalid_argument);
    }
    for (const char* prefix :
         {"", "1bus", "event-bus", "event bus", "__bus", "bus:x", "bus\xc3\xa9"})
        CHECK_THROWS_AS(collector(collector_options{.prefix = prefix}), std::invalid_argument);
    CHECK_NOTHROW(collector(collector_options{.prefix = "_my_App2", .buckets = {}}));
    CHECK_NOTHROW(collector(collector_options{.buckets = {1e-9, 1e3}}));

    workload_handlers w;
    event_store<> store(w.handlers, 8);
    collector c;
    CHECK_THROWS_AS(c.add("", store), std::invalid_argument);
    // Not UTF-8: a stray continuation byte, an overlong '/', a surrogate, a truncated sequence,
    // and a code point beyond U+10FFFF.
    for (const char* name :
         {"\x80", "a\xff", "\xc0\xaf", "\xed\xa0\x80", "\xe2\x82", "\xf4\x90\x80\x80"})
        CHECK_THROWS_AS(c.add(name, store), std::invalid_argument);
    CHECK(c.Collect().empty());
    c.add("caf\xc3\xa9 \xe2\x82\xac", store);
    CHECK_THROWS_AS(c.add("caf\xc3\xa9 \xe2\x82\xac", store), std::invalid_argument);
    // Quotes, backslashes and newlines are fine in a label value: the text format escapes them.
    c.add("a \"quoted\" \\ name\n", store);
    CHECK(eventbus::prometheus::text(c).find("store=\"a \\\"quoted\\\" \\\\ name\\n\"") !=
          std::string::npos);
}

TEST_CASE("a prefix and buckets of one's own", "[prometheus]") {
    workload_handlers w;
    event_store<> store(w.handlers, 8, store_options{.latency_histograms = true});
    const std::vector<double> bounds{0.001, 0.5, 2.0};
    collector c(collector_options{.prefix = "app_bus", .buckets = bounds});
    c.add("s", store);
    REQUIRE_FALSE(store.subscribe({}, make("ok")));
    store.publish();
    const std::vector<MetricFamily> families = c.Collect();
    for (const MetricFamily& f : families)
        CHECK(f.name.starts_with("app_bus_"));
    check_reports(families, "app_bus", "s", store.metrics(), 8);
    for (const char* name : {"app_bus_queue_wait_seconds", "app_bus_handler_duration_seconds"}) {
        INFO(name);
        const MetricFamily* f = find(families, name);
        REQUIRE(f != nullptr);
        check_histogram(of_store(*f, "s")->histogram, bounds);
    }
}

TEST_CASE("histogram families only for stores recording latency histograms", "[prometheus]") {
    workload_handlers w;
    w.ok_sleep = 2ms;
    event_store<return_error> timed(w.handlers, 8, store_options{.latency_histograms = true});
    event_store<return_error> plain(w.handlers, 8);
    run_workload(timed);
    run_workload(plain);

    collector only_plain;
    only_plain.add("plain", plain);
    const std::vector<MetricFamily> without = only_plain.Collect();
    CHECK(find(without, "eventbus_queue_wait_seconds") == nullptr);
    CHECK(find(without, "eventbus_handler_duration_seconds") == nullptr);

    collector c;
    c.add("plain", plain);
    c.add("timed", timed);
    const std::vector<MetricFamily> families = c.Collect();
    const store_metrics m = timed.metrics();
    const std::vector<double> bounds = eventbus::prometheus::default_buckets();
    const MetricFamily* wait = find(families, "eventbus_queue_wait_seconds");
    const MetricFamily* duration = find(families, "eventbus_handler_duration_seconds");
    REQUIRE(wait != nullptr);
    REQUIRE(duration != nullptr);
    for (const MetricFamily* f : {wait, duration}) {
        INFO(f->name);
        CHECK(f->type == MetricType::Histogram);
        CHECK_FALSE(f->help.empty());
        REQUIRE(f->metric.size() == 1);  // not the plain store
        REQUIRE(of_store(*f, "timed") != nullptr);
    }
    const ClientMetric::Histogram& w_hist = of_store(*wait, "timed")->histogram;
    const ClientMetric::Histogram& d_hist = of_store(*duration, "timed")->histogram;
    check_histogram(w_hist, bounds);
    check_histogram(d_hist, bounds);
    // The conversion itself: count and sum as the store's histograms have them.
    CHECK(w_hist.sample_count == m.queue_wait.count());
    CHECK(d_hist.sample_count == m.handler_duration.count());
    CHECK(d_hist.sample_sum == static_cast<double>(m.handler_duration.sum().count()) / 1e9);

    // One handler duration per handler call, one queue wait per event taken from the ring
    // (the unhandled one too).
    CHECK(d_hist.sample_count == m.processed);
    CHECK(w_hist.sample_count == m.published - m.dropped);
    // The 5 "ok" calls sleep 2 ms: none is at or below 1 ms, all are at or below 60 s.
    const auto at = [&](double le) {
        for (const ClientMetric::Bucket& b : d_hist.bucket)
            if (b.upper_bound == le)
                return b.cumulative_count;
        FAIL("no bucket le=" << le);
        return std::uint64_t{0};
    };
    CHECK(d_hist.sample_count - at(1e-3) >= 5);
    CHECK(at(60.0) == d_hist.sample_count);
    CHECK(d_hist.sample_sum >= 5 * 0.002);
}

TEST_CASE("scrapes race add and remove", "[prometheus]") {
    workload_handlers w;
    event_store<> a(w.handlers, 8, store_options{.latency_histograms = true});
    event_store<> b(w.handlers, 8);
    collector c;
    c.add("a", a);
    std::atomic<bool> stop{false};
    std::atomic<int> inconsistent{0};
    std::atomic<int> scrapes{0};
    std::thread scraper([&] {
        while (!stop.load()) {
            const std::vector<MetricFamily> families = c.Collect();
            for (const MetricFamily& f : families)
                if (f.metric.empty() || f.metric.size() > 2)
                    ++inconsistent;
            if (eventbus::prometheus::text(c).empty())
                ++inconsistent;
            ++scrapes;
        }
    });
    for (int i = 0; i < 200 || scrapes.load() < 10; ++i) {
        c.add("b", b);
        REQUIRE_FALSE(b.subscribe({}, make("ok")));
        b.publish();
        CHECK(c.remove("b"));
    }
    stop = true;
    scraper.join();
    CHECK(inconsistent == 0);
}

#if defined(EVENTBUS_PROMTOOL)

TEST_CASE("promtool check metrics accepts text(collector) without complaints", "[.][promtool]") {
    workload_handlers w;
    event_store<return_error> timed(w.handlers, 8, store_options{.latency_histograms = true});
    event_store<drop_oldest> plain(w.handlers, 4);
    run_workload(timed);
    for (int i = 0; i < 6; ++i)
        REQUIRE_FALSE(plain.subscribe({}, make("fail")));
    plain.publish();
    collector c;
    c.add("timed", timed);
    c.add("plain \"eu\" \\ caf\xc3\xa9", plain);
    const std::string text = eventbus::prometheus::text(c);

    const std::filesystem::path file =
        std::filesystem::temp_directory_path() /
        ("eventbus_prometheus_" + std::to_string(::getpid()) + ".prom");
    {
        std::ofstream out(file, std::ios::binary);
        out << text;
        REQUIRE(out.good());
    }
    const std::string command =
        std::string("'") + EVENTBUS_PROMTOOL + "' check metrics < '" + file.string() + "' 2>&1";
    FILE* pipe = ::popen(command.c_str(), "r");
    REQUIRE(pipe != nullptr);
    std::string output;
    char chunk[512];
    while (const std::size_t n = std::fread(chunk, 1, sizeof chunk, pipe))
        output.append(chunk, n);
    const int status = ::pclose(pipe);
    std::filesystem::remove(file);
    INFO("command: " << command);
    INFO("promtool said: " << output);
    INFO("the text:\n" << text);
    REQUIRE(status != -1);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    CHECK(output.empty());
}

#endif
