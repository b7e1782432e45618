// The NATS JetStream bridge (eventbus/nats.hpp) against the NATS C client (cnats) used by hand,
// every row in this binary, against one real nats-server (tests/nats_server.hpp: started with
// JetStream on 127.0.0.1 and a free port, stopped at exit).
//
// Streams: THROUGHPUT (subjects tput.>) and LATENCY (lat.>), both memory storage, so that the
// disk does not dominate; limited to 100000 messages (old ones discarded) and purged after every
// iteration (untimed), so each iteration writes to an empty stream and it never fills. The
// duplicate window is 5 s (the server remembers each Nats-Msg-Id that long), so that every row
// meets about the same de-duplication table.
//
//   BM_NatsPublish/<variant>/<bytes>   per iteration, 1000 messages of <bytes> bytes (64, 1024)
//                      published and every one acknowledged by the server (stored). Manual time:
//                      from the first publish to the last acknowledgement, so the purge is not
//                      counted. One item = one message: items_per_second is messages/s.
//     raw_async          REFERENCE: the best by hand. js_PublishAsync of each message with a
//                        Nats-Msg-Id (jsPubOptions::MsgId, as the bridge sets one), an ack
//                        handler counting acknowledgements, MaxPending 4096 (the bridge's
//                        default), then js_PublishAsyncComplete.
//     raw_sync           the naive way: js_Publish, one at a time, each waiting for its
//                        acknowledgement (same Nats-Msg-Id).
//     eventbus_outbound  typed events `message` subscribed to an event_store<block> (capacity
//                        1024, async, 1 worker) whose dispatcher eventbus::nats::outbound
//                        forwards through a codec that copies the payload; then publish() and
//                        drain(), which returns once the forwarding handler saw every run
//                        acknowledged. Counter time_vs_raw_async: this row's time per message
//                        over raw_async's (same size, measured earlier in this process); the
//                        target is at most 2.
//   The payload bytes are made once per row: the event holds a pointer to them, and each side
//   copies them into the message (the C client's natsMsg, and for the bridge the codec's
//   std::string too), so neither side pays for making them.
//
//   BM_NatsLatency/<variant>   ping-pong on loopback, one 64-byte message at a time: the
//                      producer stamps steady_clock into the message, the receiving side takes
//                      now - stamp when it has the message, and the next message goes only once
//                      that is done. The iteration time is that latency (manual time), so the time
//                      column is the mean; p50_us and p99_us are counters over the row's samples.
//     eventbus_inbound   subscribe(stamp) + publish() into a producer event_store<block> (async,
//                        1 worker) forwarded by outbound -> nats-server -> inbound<block> (durable
//                        pull consumer, default options) -> a consumer event_store<block> (async,
//                        1 worker) whose handler takes the delta. Two connections, as two
//                        processes would have.
//     raw_fetch          REFERENCE: js_Publish (waits for the acknowledgement) on the producer
//                        connection, then natsSubscription_Fetch(1) on a durable pull
//                        subscription of the consumer connection, the delta, natsMsg_Ack.
//
// What bounds these rows: the C client writes what was published asynchronously (and pull
// requests) from a flusher thread that first waits 1 ms for more, unless the connection was made
// with natsOptions_SetSendAsap or the caller flushes. Requests (js_Publish) are written at once.
// raw_fetch sends a new pull request per message, which waits for the flusher: about 1 ms. The
// bridge's inbound has its pull request waiting at the server already, and its outbound flushes
// each run (up to 64 events), whose acknowledgements it waits for before the next run.
//
// At the end the executable prints eventbus / reference for each size and for the latencies
// (over everything it ran). Rows depend on the machine's load: compare rows of one run only.
//
// Reproduce: scripts/bench (its tables "The JetStream bridge against the NATS C client" and
// "Ping-pong latency"), or
//   cmake --preset bench && cmake --build --preset bench --target bench_nats
//   build/bench/bench/bench_nats --benchmark_min_time=0.2

#include <benchmark/benchmark.h>
#include <nats/nats.h>

#include <eventbus/eventbus.hpp>
#include <eventbus/nats.hpp>

#include "../tests/nats_server.hpp"
#include "common.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace {

namespace nats = eventbus::nats;
using eventbus::block;
using eventbus::context;
using eventbus::dispatcher;
using eventbus::event_store;
using steady = std::chrono::steady_clock;

constexpr std::int64_t batch = 1000;  // messages per iteration, BM_NatsPublish
constexpr std::size_t store_capacity = 1024;
constexpr std::int64_t max_pending = 4096;  // outbound_options::max_pending's default
constexpr std::int64_t ack_wait_ms = 5000;  // outbound_options::ack_timeout's default
constexpr std::size_t latency_bytes = 64;
constexpr std::chrono::seconds give_up{10};  // a message that takes this long is an error

constexpr const char* throughput_stream = "THROUGHPUT";
constexpr const char* latency_stream = "LATENCY";

// The server and two connections (producer and consumer side), made by the first row that needs
// them and ended at the end of main(): listing the benchmarks starts no server.
struct environment {
    eventbus_test::nats_server server{EVENTBUS_NATS_SERVER};
    nats::connection producer{{.servers = {server.url()}, .name = "bench-producer"}};
    nats::connection consumer{{.servers = {server.url()}, .name = "bench-consumer"}};

    environment() {
        const std::pair<const char*, const char*> streams[] = {{throughput_stream, "tput.>"},
                                                               {latency_stream, "lat.>"}};
        for (const auto& [name, subjects] : streams)
            nats::ensure_stream(producer, {.name = name,
                                           .subjects = {subjects},
                                           .memory_storage = true,
                                           .duplicate_window = std::chrono::seconds(5),
                                           .max_messages = 100000});
    }
};

std::unique_ptr<environment>& environment_slot() {
    static std::unique_ptr<environment> slot;
    return slot;
}

environment& env() {
    std::unique_ptr<environment>& slot = environment_slot();
    if (!slot)
        slot = std::make_unique<environment>();
    return *slot;
}

bool purge(const char* stream) {
    jsErrCode code{};
    return js_PurgeStream(env().producer.jetstream(), stream, nullptr, &code) == NATS_OK;
}

// Unique Nats-Msg-Ids for the raw rows, made as the bridge makes its own: a random prefix, then
// a count.
class message_ids {
  public:
    message_ids() {
        std::random_device random;
        prefix_ = (static_cast<std::uint64_t>(random()) << 32) ^ random();
    }
    const char* next() {
        (void)std::snprintf(text_, sizeof text_, "%016llx-%llu",
                            static_cast<unsigned long long>(prefix_),
                            static_cast<unsigned long long>(++count_));
        return text_;
    }

  private:
    std::uint64_t prefix_ = 0;
    std::uint64_t count_ = 0;
    char text_[48]{};
};

// What each row measured, over every call of its function in this process: for the summary
// and the time_vs_raw_async counter.
struct totals {
    double seconds = 0;
    std::int64_t items = 0;
    std::vector<double> p50_us;  // latency rows: each call's p50
};

std::map<std::string, totals>& measured() {
    static std::map<std::string, totals> rows;
    return rows;
}

double seconds_since(steady::time_point start) {
    return std::chrono::duration<double>(steady::now() - start).count();
}

// BM_NatsPublish ///////////////////////////////////////////////////////////////////////////////

// The typed event of eventbus_outbound: its sequence and the row's payload bytes.
struct message {
    std::uint64_t sequence = 0;
    const std::string* payload = nullptr;
};

std::string make_payload(std::int64_t size) {
    std::string bytes(static_cast<std::size_t>(size), '\0');
    for (std::size_t i = 0; i < bytes.size(); ++i)
        bytes[i] = static_cast<char>('a' + i % 26);
    return bytes;
}

struct ack_counter {
    std::atomic<std::int64_t> acked{0};
    std::atomic<std::int64_t> refused{0};
};

void count_ack(jsCtx*, natsMsg* msg, jsPubAck* pa, jsPubAckErr*, void* closure) {
    auto* counter = static_cast<ack_counter*>(closure);
    (pa != nullptr ? counter->acked : counter->refused).fetch_add(1, std::memory_order_relaxed);
    natsMsg_Destroy(msg);
}

// A JetStream context of the producer connection, as the bridge makes its own.
struct js_context {
    jsCtx* js = nullptr;
    explicit js_context(ack_counter* counter) {
        jsOptions options;
        jsOptions_Init(&options);
        options.Wait = ack_wait_ms;
        options.PublishAsync.MaxPending = max_pending;
        if (counter != nullptr) {
            options.PublishAsync.AckHandler = &count_ack;
            options.PublishAsync.AckHandlerClosure = counter;
        }
        if (natsConnection_JetStream(&js, env().producer.native(), &options) != NATS_OK)
            throw std::runtime_error("cannot create a JetStream context");
    }
    js_context(const js_context&) = delete;
    js_context& operator=(const js_context&) = delete;
    ~js_context() { jsCtx_Destroy(js); }
};

// A publish row's key in measured(): `<variant>/<bytes>`.
std::string row_key(const char* variant, const benchmark::State& state) {
    return std::string(variant) + "/" + std::to_string(state.range(0));
}

void record(const std::string& key, double seconds, std::int64_t items) {
    totals& t = measured()[key];
    t.seconds += seconds;
    t.items += items;
}

void finish_publish_row(benchmark::State& state, const char* error) {
    if (error != nullptr) {
        state.SkipWithError(error);
        return;
    }
    state.SetItemsProcessed(state.iterations() * batch);
    state.SetBytesProcessed(state.iterations() * batch * state.range(0));
}

void bm_raw_async(benchmark::State& state) {
    const char* error = nullptr;
    try {
        const std::string key = row_key("raw_async", state);
        const std::string payload = make_payload(state.range(0));
        ack_counter counter;
        const js_context js(&counter);
        message_ids ids;
        jsPubOptions wait;
        jsPubOptions_Init(&wait);
        wait.MaxWait = ack_wait_ms;
        std::int64_t expected = 0;
        for (auto _ : state) {
            const auto start = steady::now();
            for (std::int64_t i = 0; i < batch && error == nullptr; ++i) {
                jsPubOptions options;
                jsPubOptions_Init(&options);
                options.MsgId = ids.next();
                if (js_PublishAsync(js.js, "tput.raw_async", payload.data(),
                                    static_cast<int>(payload.size()), &options) != NATS_OK)
                    error = "js_PublishAsync failed";
            }
            if (error == nullptr && js_PublishAsyncComplete(js.js, &wait) != NATS_OK)
                error = "js_PublishAsyncComplete timed out";
            const double seconds = seconds_since(start);
            state.SetIterationTime(seconds);
            record(key, seconds, batch);
            expected += batch;
            // The ack handler of the last message may still be returning: a moment for it.
            const auto deadline = steady::now() + give_up;
            while (error == nullptr && counter.acked.load() + counter.refused.load() < expected &&
                   steady::now() < deadline)
                std::this_thread::yield();
            if (error == nullptr && counter.acked.load() != expected)
                error = "a message was not acknowledged";
            if (error == nullptr && !purge(throughput_stream))
                error = "purge failed";
            if (error != nullptr)
                break;
        }
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
        return;
    }
    finish_publish_row(state, error);
}

void bm_raw_sync(benchmark::State& state) {
    const char* error = nullptr;
    try {
        const std::string key = row_key("raw_sync", state);
        const std::string payload = make_payload(state.range(0));
        const js_context js(nullptr);
        message_ids ids;
        for (auto _ : state) {
            const auto start = steady::now();
            for (std::int64_t i = 0; i < batch && error == nullptr; ++i) {
                jsPubOptions options;
                jsPubOptions_Init(&options);
                options.MsgId = ids.next();
                jsPubAck* ack = nullptr;
                jsErrCode code{};
                if (js_Publish(&ack, js.js, "tput.raw_sync", payload.data(),
                               static_cast<int>(payload.size()), &options, &code) != NATS_OK)
                    error = "js_Publish failed";
                jsPubAck_Destroy(ack);
            }
            const double seconds = seconds_since(start);
            state.SetIterationTime(seconds);
            record(key, seconds, batch);
            if (error == nullptr && !purge(throughput_stream))
                error = "purge failed";
            if (error != nullptr)
                break;
        }
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
        return;
    }
    finish_publish_row(state, error);
}

nats::codec<message> message_codec() {
    return {.encode = [](const message& m) { return *m.payload; },
            .decode = [](std::string_view) -> message {
                throw std::logic_error("not received in this benchmark");
            }};
}

// The store's workers forward runs in parallel: one keeps the events' order, two overlap one
// run's wait for acknowledgements with the next run's publishing.
template <std::size_t Workers>
void bm_eventbus_outbound(benchmark::State& state) {
    const char* error = nullptr;
    std::string name = "eventbus_outbound";
    if (Workers != 1)
        name += "_" + std::to_string(Workers) + "_workers";
    const std::string key = row_key(name.c_str(), state);
    try {
        const std::string payload = make_payload(state.range(0));
        dispatcher handlers;
        nats::outbound out(env().producer, {.prefix = "tput"});
        out.forward<message>(handlers, name, message_codec());
        event_store<block> store(handlers, store_capacity,
                                 eventbus::store_options{.async = true, .workers = Workers});
        const context ctx;
        std::uint64_t sequence = 0;
        for (auto _ : state) {
            const auto start = steady::now();
            for (std::int64_t i = 0; i < batch && error == nullptr; ++i)
                if (store.subscribe(ctx, message{sequence++, &payload}))
                    error = "subscribe refused an event";
            store.publish();
            if (store.drain(ctx))
                error = "drain failed";
            const double seconds = seconds_since(start);
            state.SetIterationTime(seconds);
            record(key, seconds, batch);
            const nats::outbound_metrics m = out.metrics();
            if (error == nullptr && (m.failed != 0 || m.encode_errors != 0 ||
                                     m.published != sequence || m.duplicates != 0))
                error = "the bridge did not publish every event exactly once";
            if (error == nullptr && !purge(throughput_stream))
                error = "purge failed";
            if (error != nullptr)
                break;
        }
        (void)store.close(ctx);
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
        return;
    }
    finish_publish_row(state, error);
    if (error != nullptr)
        return;
    const auto& rows = measured();
    const auto mine = rows.find(key);
    const auto peer = rows.find(row_key("raw_async", state));
    if (mine != rows.end() && peer != rows.end() && peer->second.items != 0)
        state.counters["time_vs_raw_async"] =
            (mine->second.seconds / static_cast<double>(mine->second.items)) /
            (peer->second.seconds / static_cast<double>(peer->second.items));
}

// BM_NatsLatency ///////////////////////////////////////////////////////////////////////////////

struct stamp {
    std::int64_t sent_ns = 0;  // steady_clock, since its epoch
};

std::int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(steady::now().time_since_epoch())
        .count();
}

std::string encode_stamp(const stamp& s) {
    std::string bytes(latency_bytes, 'p');
    std::memcpy(bytes.data(), &s.sent_ns, sizeof s.sent_ns);
    return bytes;
}

stamp decode_stamp(std::string_view bytes) {
    if (bytes.size() < sizeof(std::int64_t))
        throw std::invalid_argument("short stamp");
    stamp s;
    std::memcpy(&s.sent_ns, bytes.data(), sizeof s.sent_ns);
    return s;
}

// The receiving side's deltas, handed to the benchmark thread one at a time.
class latency_probe {
  public:
    void record(std::int64_t ns) {
        {
            const std::lock_guard lock(mutex_);
            last_ = ns;
            ++count_;
        }
        arrived_.notify_one();
    }
    /// The delta of message `n` (counted from 1); false after `give_up`.
    bool wait(std::uint64_t n, std::int64_t& ns) {
        std::unique_lock lock(mutex_);
        if (!arrived_.wait_for(lock, give_up, [&] { return count_ >= n; }))
            return false;
        ns = last_;
        return true;
    }

  private:
    std::mutex mutex_;
    std::condition_variable arrived_;
    std::uint64_t count_ = 0;
    std::int64_t last_ = 0;
};

std::int64_t percentile(std::vector<std::int64_t>& samples, std::size_t percent) {
    if (samples.empty())
        return 0;
    const std::size_t index = std::min(samples.size() - 1, samples.size() * percent / 100);
    std::nth_element(samples.begin(), samples.begin() + static_cast<std::ptrdiff_t>(index),
                     samples.end());
    return samples[index];
}

void finish_latency_row(benchmark::State& state, const char* key,
                        std::vector<std::int64_t>& samples, const char* error) {
    if (error != nullptr) {
        state.SkipWithError(error);
        return;
    }
    const double p50 = static_cast<double>(percentile(samples, 50)) / 1e3;
    const double p99 = static_cast<double>(percentile(samples, 99)) / 1e3;
    state.counters["p50_us"] = p50;
    state.counters["p99_us"] = p99;
    state.SetItemsProcessed(state.iterations());
    measured()[key].p50_us.push_back(p50);
}

// Deletes a durable consumer left by an earlier call, so that each call starts afresh.
void delete_consumer(const char* durable) {
    jsErrCode code{};
    (void)js_DeleteConsumer(env().producer.jetstream(), latency_stream, durable, nullptr, &code);
}

nats::codec<stamp> stamp_codec() {
    return {.encode = encode_stamp, .decode = decode_stamp};
}

void bm_eventbus_inbound(benchmark::State& state) {
    const char* error = nullptr;
    std::vector<std::int64_t> samples;
    try {
        delete_consumer("eventbus_latency");
        if (!purge(latency_stream))
            throw std::runtime_error("purge failed");
        latency_probe probe;
        dispatcher producer_handlers;
        nats::outbound out(env().producer, {.prefix = "lat.eventbus"});
        out.forward<stamp>(producer_handlers, "ping", stamp_codec());
        event_store<block> producer(producer_handlers, store_capacity,
                                    eventbus::store_options{.async = true, .workers = 1});
        dispatcher consumer_handlers;
        (void)consumer_handlers.on<stamp>(
            [&probe](const stamp& s) { probe.record(now_ns() - s.sent_ns); });
        event_store<block> consumer(consumer_handlers, store_capacity,
                                    eventbus::store_options{.async = true, .workers = 1});
        nats::inbound<block> in(
            env().consumer, consumer,
            {.stream = latency_stream, .durable = "eventbus_latency", .prefix = "lat.eventbus"});
        in.route<stamp>("ping", stamp_codec());
        in.start();
        const context ctx;
        std::uint64_t sent = 0;
        for (auto _ : state) {
            if (producer.subscribe(ctx, stamp{now_ns()})) {
                error = "subscribe refused an event";
                break;
            }
            producer.publish();
            std::int64_t ns = 0;
            if (!probe.wait(++sent, ns)) {
                error = "a message did not arrive";
                break;
            }
            state.SetIterationTime(static_cast<double>(ns) * 1e-9);
            samples.push_back(ns);
        }
        in.stop();
        (void)consumer.close(ctx);
        (void)producer.close(ctx);
        if (error == nullptr && in.metrics().acked != sent)
            error = "inbound did not acknowledge every message";
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
        return;
    }
    delete_consumer("eventbus_latency");
    finish_latency_row(state, "eventbus_inbound", samples, error);
}

void bm_raw_fetch(benchmark::State& state) {
    const char* error = nullptr;
    std::vector<std::int64_t> samples;
    natsSubscription* sub = nullptr;
    try {
        delete_consumer("raw_latency");
        if (!purge(latency_stream))
            throw std::runtime_error("purge failed");
        jsSubOptions sub_options;
        jsSubOptions_Init(&sub_options);
        sub_options.Stream = latency_stream;
        jsErrCode code{};
        if (js_PullSubscribe(&sub, env().consumer.jetstream(), "lat.raw.ping", "raw_latency",
                             nullptr, &sub_options, &code) != NATS_OK)
            throw std::runtime_error("js_PullSubscribe failed");
        const js_context js(nullptr);
        message_ids ids;
        for (auto _ : state) {
            const std::string bytes = encode_stamp(stamp{now_ns()});
            jsPubOptions options;
            jsPubOptions_Init(&options);
            options.MsgId = ids.next();
            jsPubAck* ack = nullptr;
            if (js_Publish(&ack, js.js, "lat.raw.ping", bytes.data(),
                           static_cast<int>(bytes.size()), &options, &code) != NATS_OK) {
                error = "js_Publish failed";
                break;
            }
            jsPubAck_Destroy(ack);
            natsMsgList list{nullptr, 0};
            const auto wait_ms = std::chrono::milliseconds(give_up).count();
            if (natsSubscription_Fetch(&list, sub, 1, wait_ms, &code) != NATS_OK ||
                list.Count != 1) {
                natsMsgList_Destroy(&list);
                error = "natsSubscription_Fetch failed";
                break;
            }
            const std::string_view got(
                natsMsg_GetData(list.Msgs[0]),
                static_cast<std::size_t>(natsMsg_GetDataLength(list.Msgs[0])));
            const std::int64_t ns = now_ns() - decode_stamp(got).sent_ns;
            const natsStatus acked = natsMsg_Ack(list.Msgs[0], nullptr);
            natsMsgList_Destroy(&list);
            if (acked != NATS_OK) {
                error = "natsMsg_Ack failed";
                break;
            }
            state.SetIterationTime(static_cast<double>(ns) * 1e-9);
            samples.push_back(ns);
        }
    } catch (const std::exception& e) {
        natsSubscription_Destroy(sub);
        state.SkipWithError(e.what());
        return;
    }
    natsSubscription_Destroy(sub);
    delete_consumer("raw_latency");
    finish_latency_row(state, "raw_fetch", samples, error);
}

// Registration and summary //////////////////////////////////////////////////////////////////////

void register_benchmarks() {
    const auto publish_row = [](const char* name, void (*fn)(benchmark::State&)) {
        benchmark::RegisterBenchmark(name, fn)->Arg(64)->Arg(1024)->UseManualTime()->Unit(
            benchmark::kMillisecond);
    };
    publish_row("BM_NatsPublish/raw_async", bm_raw_async);
    publish_row("BM_NatsPublish/raw_sync", bm_raw_sync);
    publish_row("BM_NatsPublish/eventbus_outbound", bm_eventbus_outbound<1>);
    publish_row("BM_NatsPublish/eventbus_outbound_2_workers", bm_eventbus_outbound<2>);
    publish_row("BM_NatsPublish/eventbus_outbound_4_workers", bm_eventbus_outbound<4>);
    benchmark::RegisterBenchmark("BM_NatsLatency/eventbus_inbound", bm_eventbus_inbound)
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark("BM_NatsLatency/raw_fetch", bm_raw_fetch)
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
}

double median(std::vector<double> values) {
    std::sort(values.begin(), values.end());
    return values.empty() ? 0.0 : values[values.size() / 2];
}

// eventbus / reference over everything this process ran (nothing when a row was filtered out).
void print_summary() {
    const auto& rows = measured();
    const auto per_item = [&](const std::string& name) -> double {
        const auto at = rows.find(name);
        return at == rows.end() || at->second.items == 0
                   ? 0.0
                   : at->second.seconds / static_cast<double>(at->second.items);
    };
    for (const char* variant :
         {"eventbus_outbound", "eventbus_outbound_2_workers", "eventbus_outbound_4_workers"}) {
        for (const char* size : {"64", "1024"}) {
            const double ours = per_item(std::string(variant) + "/" + size);
            const double reference = per_item(std::string("raw_async/") + size);
            if (ours > 0 && reference > 0)
                std::printf(
                    "%s / raw_async, time per message, %s bytes: %.2fx (%.0f vs %.0f "
                    "messages/s; target: at most 2x)\n",
                    variant, size, ours / reference, 1 / ours, 1 / reference);
        }
    }
    const auto p50 = [&](const std::string& name) {
        const auto at = rows.find(name);
        return at == rows.end() ? 0.0 : median(at->second.p50_us);
    };
    const double ours = p50("eventbus_inbound");
    const double reference = p50("raw_fetch");
    if (ours > 0 && reference > 0)
        std::printf("eventbus_inbound / raw_fetch, p50 latency: %.2fx (%.1f us vs %.1f us)\n",
                    ours / reference, ours, reference);
    std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
    int status = 0;
    try {
        status = eventbus_bench::run(argc, argv, register_benchmarks);
        print_summary();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_nats: %s\n", e.what());
        status = 1;
    }
    environment_slot().reset();  // the connections, then the server
    return status;
}
