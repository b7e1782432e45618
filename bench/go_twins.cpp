// Twins of GoEventBus's benchmarks (its Benchmark* functions): the same scenarios on
// eventbus::event_store, with real work in the timed region and every row reported PER EVENT.
//
// Rows are `BM_<Name>/<kind>` (Google Benchmark appends `/real_time` or `/manual_time`, and
// `/threads:<T>`); <kind> says how the events are made:
//   dynamic  eventbus::event with a string projection and an args map (std::unordered_map<
//            std::string, std::any>), GoEventBus's Event. Handlers take (context, args).
//   typed    a plain struct per event type (typed_evt, typed_sync, typed_large below): the type
//            is the key (eventbus::key::of<T>()) and the payload; handlers registered with
//            dispatcher.on<T> take const T&. Payloads up to eventbus::inline_payload_size bytes
//            live inline in the ring slot (no allocation per event); the 1 KiB one does not.
// The benchmark functions are templates over the kind; a kind is a struct like dynamic_kind below
// plus one more register_twins<...>() call.
//
// Per event everywhere: one benchmark iteration is one event (state.KeepRunningBatch(n) when a
// timed step handles n events), and items processed = iterations, so the console's time column,
// items_per_second and scripts/bench_report.py all show the same ns per event. Rows that time
// only part of each batch use manual time (steady_clock around that part): a batch of 1024 or
// more keeps the two clock reads (~40 ns) below 0.05 ns per event, where PauseTiming and
// ResumeTiming would also read the CPU-time clocks (system calls) on every batch. The other rows
// are timed in real time (wall clock). Each row checks the store's metrics afterwards (every event
// accepted, handled or dropped as expected) and fails loudly otherwise.
//
// Capacity 1 << 16 and a drop_oldest store as in Go, unless said otherwise. Handlers are called
// through the dispatcher, so not optimized out. The dynamic ones do nothing and return a result,
// as Go's do. The typed handler of numbered events (typed_sync_handler) also reads the payload:
// it adds n to a per-thread sink (made opaque with benchmark::DoNotOptimize), and the sync rows
// check the sum, so the typed rows do a little more work than the dynamic ones, never less.
//
//   BM_Subscribe/<kind>         subscribe(ctx, {id "bench", projection "evt", no args}) (typed:
//                               typed_evt{}) on one thread. The ring is filled before timing, so
//                               every timed subscribe overwrites the oldest event (drop_oldest):
//                               the steady state of a store nobody publishes, whatever the
//                               iteration count. Go's twin (BenchmarkSubscribe) does the same from
//                               an empty ring.
//   BM_SubscribeParallel/<kind>/threads:T  the same from T threads (1 and 2; Go's RunParallel
//                               uses GOMAXPROCS) into one shared store; wall time / all events.
//   BM_Publish/<kind>           a batch of 1024 such events is subscribed (untimed), then one
//                               publish() dispatches them to the handler (timed). Go's
//                               BenchmarkPublish fills the ring once and times b.N publish()
//                               calls, of which all but the first find nothing to do.
//   BM_PublishAfterPrefill/<kind>  the same with the whole ring (1 << 16 events) per publish():
//                               a backlog larger than the caches. In Go it is a copy of Publish.
//   BM_SubscribeLargePayload/<kind>  BM_Subscribe with a 1 KiB payload (Go's LargeStruct{Data
//                               [1024]byte}). Dynamic: args {"payload": the struct}; building the
//                               map and the std::any (one 1 KiB allocation and copy) is timed, as
//                               Go's map literal is. Typed: typed_large, larger than
//                               inline_payload_size, so the store puts it on the heap (one
//                               allocation and copy per event). Either way freeing the overwritten
//                               event's payload is timed too (Go: its GC).
//   BM_PublishLargePayload/<kind>  BM_Publish with those events; the ring owns them, so freeing
//                               each payload after its handler is timed. Go's twin fills 100
//                               events and then times empty publish() calls.
//   BM_EventStore_Sync/<kind>   per event: build it (dynamic: {id "event", projection "sync",
//                               args {"n": i}}, the args map included; typed: typed_sync{i}),
//                               subscribe, publish() (which runs the handler). Go's twin
//                               subscribes b.N events and publishes once (the last 1 << 16).
//   BM_EventStore_Async_w<W>/<kind>  async store with W workers (1, 2): per event, build it,
//                               subscribe, publish(); drain() after every 16384 events, timed,
//                               so all handling is in the time (never more than 16384 pending:
//                               nothing is dropped, checked). Go's twin never waits for handlers.
//   BM_SubscribeBlockPolicy/<kind>  event_store<block>, capacity 1024 (as in Go), async with one
//                               worker making room: subscribe (waits while the ring is full),
//                               publish() after every 64, drain() after every 16384, all timed.
//                               The time per subscribe is the pipeline's: when the worker is the
//                               slower side the ring is full and subscribe waits for it. Go's twin
//                               times the error return of a cancelled context on a full ring.
//   BM_DrainSync/<kind>         1024 events subscribed (untimed); timed: publish() + drain(). In
//                               sync mode drain() only waits for other threads' dispatches and
//                               returns at once here; timing it alone would time nothing, so the
//                               row times what gets a backlog handled: publish() does the work.
//   BM_DrainAsync_w<W>/<kind>   the same on an async store with W workers (1, 2): the timed
//                               publish() wakes the idle workers, drain() waits until they have
//                               handled the 1024 events.
//   BM_Transaction_SyncCommit/<kind>  per 16 events, all timed: begin_transaction(), publish 16
//                               numbered events (as in EventStore_Sync) into it, commit(ctx),
//                               which enqueues them as one run and handles them on the caller.
//                               Time per event (the commit's cost spread over its 16 events).
//   BM_Transaction_AsyncCommit_w<W>/<kind>  the same on an async store with W workers (1, 2):
//                               commit() makes the run eligible and sleeps until the workers have
//                               handled all 16, so each commit is a round trip to the workers.
//
// And the handler-call floor, the cost of the handler alone, which no bus can go below:
//   BM_HandlerCall/std_function  per event: build typed_sync{i} and call typed_sync_handler (the
//                               very handler BM_EventStore_Sync/typed runs) directly through a
//                               std::function<eventbus::result(const typed_sync&)>, made opaque so
//                               the call cannot be inlined or removed. BM_EventStore_Sync/typed
//                               minus this row is what the store adds to each handler call.
//
// Not twinned: GoEventBus's FastHTTP benchmarks (they add a fasthttp.RequestCtx to
// subscribe + publish; there is no HTTP here).
//
// Reproduce: scripts/bench, or
//   cmake --preset bench && cmake --build --preset bench
//   build/bench/bench/bench_go_twins --benchmark_min_time=0.2

#include <benchmark/benchmark.h>

#include <eventbus/eventbus.hpp>

#include "common.hpp"

#include <any>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>

namespace {

constexpr std::size_t go_capacity = std::size_t{1} << 16;    // GoEventBus's benchmarks
constexpr std::size_t block_capacity = 1024;                 // Go's BenchmarkSubscribeBlockPolicy
constexpr std::int64_t batch = 1024;                         // events per timed publish()/drain()
constexpr std::int64_t async_batch = std::int64_t{1} << 14;  // events between timed drain()s
constexpr std::int64_t block_publish_every = 64;
constexpr std::int64_t tx_events = 16;  // events per transaction

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point start) noexcept {
    return std::chrono::duration<double>(clock_type::now() - start).count();
}

// Event kinds ///////////////////////////////////////////////////////////////////////////////////

// Go's LargeStruct: 1 KiB, copied into the args by value.
struct large_payload {
    std::array<std::byte, 1024> data{};
};

// GoEventBus's Event: a projection name and a map of any. Each kind provides the three events of
// Go's benchmarks and registers a trivial handler for each projection.
struct dynamic_kind {
    static constexpr std::string_view name = "dynamic";
    static constexpr bool sums_payloads = false;  // Go's handlers do not read the args

    static void register_handlers(eventbus::dispatcher& d) {
        auto trivial = [](const eventbus::context&, const eventbus::args&) {
            return eventbus::result{};
        };
        (void)d.on("evt", trivial);
        (void)d.on("evtLarge", trivial);
        (void)d.on("sync", [](const eventbus::context&, const eventbus::args&) {
            return eventbus::result{"done"};  // Go's EventStore handlers return "done"
        });
    }

    // Event{ID: "bench", Projection: "evt", Args: nil}: no allocation (short strings, empty map).
    static eventbus::event plain() {
        return eventbus::event{.id = "bench", .projection = "evt", .args = {}};
    }
    // Event{ID: "event", Projection: "sync", Args: map[string]any{"n": i}}
    static eventbus::event numbered(std::int64_t n) {
        return eventbus::event{.id = "event", .projection = "sync", .args = {{"n", n}}};
    }
    // Event{ID: "bench", Projection: "evtLarge", Args: map[string]any{"payload": payload}}
    static eventbus::event large(const large_payload& payload) {
        return eventbus::event{
            .id = "bench", .projection = "evtLarge", .args = {{"payload", payload}}};
    }
};

// The typed kind: one struct per event of Go's benchmarks; the type is the key.
struct typed_evt {  // Event{ID: "bench", Projection: "evt"}: an id, stored inline
    std::int64_t id = 0;
};
struct typed_sync {  // Event{Projection: "sync", Args: {"n": i}}: stored inline
    std::int64_t n = 0;
};
struct typed_large {  // Event{Projection: "evtLarge", Args: {"payload": LargeStruct}}
    large_payload payload;
};
// Larger than a ring slot's inline storage: the store puts each one on the heap (one allocation
// and a 1 KiB copy per event, freed after its handler or when overwritten), as the dynamic kind's
// std::any does.
static_assert(sizeof(typed_large) > eventbus::inline_payload_size);
static_assert(sizeof(typed_sync) <= eventbus::inline_payload_size);
static_assert(sizeof(typed_evt) <= eventbus::inline_payload_size);

// Where typed_sync_handler adds the payloads: one per thread (async rows run it on several
// workers), never volatile; DoNotOptimize makes each addition a store the compiler must keep.
thread_local std::int64_t handler_sink = 0;

// The typed handler of numbered events, and the floor's (BM_HandlerCall/std_function): reads the
// payload into the sink and returns "done" as Go's EventStore handlers do.
struct typed_sync_handler {
    eventbus::result operator()(const typed_sync& ev) const {
        handler_sink += ev.n;
        benchmark::DoNotOptimize(handler_sink);
        return eventbus::result{"done"};
    }
};

struct typed_kind {
    static constexpr std::string_view name = "typed";
    static constexpr bool sums_payloads = true;  // its numbered events' handler fills the sink

    static void register_handlers(eventbus::dispatcher& d) {
        (void)d.on<typed_evt>([](const typed_evt&) { return eventbus::result{}; });
        (void)d.on<typed_large>([](const typed_large&) { return eventbus::result{}; });
        (void)d.on<typed_sync>(typed_sync_handler{});
    }

    static typed_evt plain() { return typed_evt{}; }
    static typed_sync numbered(std::int64_t n) { return typed_sync{n}; }
    static typed_large large(const large_payload& payload) { return typed_large{payload}; }
};

// A store and its dispatcher, on the heap (over-aligned members), the dispatcher first so that
// it outlives the store (whose destructor still dispatches what is left).
template <class Policy>
struct bus {
    bus(std::size_t capacity, eventbus::store_options options)
        : store(dispatcher, capacity, options) {}

    eventbus::dispatcher dispatcher;
    eventbus::event_store<Policy> store;
};

template <class Kind, class Policy = eventbus::drop_oldest>
std::unique_ptr<bus<Policy>> make_bus(std::size_t capacity, eventbus::store_options options = {}) {
    auto b = std::make_unique<bus<Policy>>(capacity, options);
    Kind::register_handlers(b->dispatcher);  // seen by the next publish(), async workers too
    return b;
}

// Subscribes `count` events made by `make`; false if one was refused.
template <class Store, class MakeEvent>
bool fill(Store& store, const eventbus::context& ctx, std::int64_t count, MakeEvent& make) {
    for (std::int64_t i = 0; i < count; ++i)
        if (store.subscribe(ctx, make()))
            return false;
    return true;
}

// What every row checks after its loop (unless it already failed): the store's counters.
struct expected {
    std::uint64_t published;
    std::uint64_t processed;
    std::uint64_t dropped;
};

template <class Store>
void check(benchmark::State& state, const Store& store, const expected& want) {
    const auto m = store.metrics();
    if (m.published != want.published || m.processed != want.processed ||
        m.dropped != want.dropped || m.errors != 0 || m.unhandled != 0)
        state.SkipWithError("the store's metrics do not match the events of the run");
}

std::uint64_t count_of(std::int64_t n) noexcept {
    return static_cast<std::uint64_t>(n);
}

// Sync rows of a kind whose handler fills this thread's sink: the numbered events 0 .. events-1
// were each handled exactly once, with their own payload.
template <class Kind>
void check_sink(benchmark::State& state, std::int64_t sink_before, std::int64_t events) {
    if constexpr (Kind::sums_payloads) {
        if (state.error_occurred())
            return;
        if (handler_sink - sink_before != events * (events - 1) / 2)
            state.SkipWithError("the handler did not see every payload exactly once");
    } else {
        (void)state;
        (void)sink_before;
        (void)events;
    }
}

// Subscribe rows ////////////////////////////////////////////////////////////////////////////////

// One subscribe per iteration into a full drop_oldest ring: each overwrites the oldest event.
template <class Kind, class MakeEvent>
void subscribe_into_full_ring(benchmark::State& state, MakeEvent make) {
    auto b = make_bus<Kind>(go_capacity);
    const eventbus::context ctx;
    const auto prefill = static_cast<std::int64_t>(go_capacity);
    if (!fill(b->store, ctx, prefill, make)) {
        state.SkipWithError("prefill refused");
        return;
    }
    std::int64_t refused = 0;
    for (auto _ : state)
        if (b->store.subscribe(ctx, make()))
            ++refused;
    const std::int64_t events = state.iterations();
    if (refused != 0)
        state.SkipWithError("subscribe refused an event");
    else
        check(state, b->store, {count_of(prefill + events), 0, count_of(events)});
    state.SetItemsProcessed(events);
}

template <class Kind>
void bm_subscribe(benchmark::State& state) {
    subscribe_into_full_ring<Kind>(state, [] { return Kind::plain(); });
}

template <class Kind>
void bm_subscribe_large_payload(benchmark::State& state) {
    const large_payload payload;
    subscribe_into_full_ring<Kind>(state, [&payload] { return Kind::large(payload); });
}

// The store is shared: thread 0 makes it before the loop and frees it after; the loop's start and
// end are barriers for all threads, so no thread sees it before it exists or after it is gone.
template <class Kind>
void bm_subscribe_parallel(benchmark::State& state) {
    static std::unique_ptr<bus<eventbus::drop_oldest>> shared;
    static bool prefilled = false;
    const eventbus::context ctx;
    auto make = [] { return Kind::plain(); };
    const auto prefill = static_cast<std::int64_t>(go_capacity);
    if (state.thread_index() == 0) {
        shared = make_bus<Kind>(go_capacity);
        prefilled = fill(shared->store, ctx, prefill, make);
    }
    std::int64_t refused = 0;
    for (auto _ : state)
        if (shared->store.subscribe(ctx, make()))
            ++refused;
    if (refused != 0)
        state.SkipWithError("subscribe refused an event");
    if (state.thread_index() == 0) {
        if (!prefilled) {
            state.SkipWithError("prefill refused");
        } else if (refused == 0) {
            // Every thread's events: accepted() counts them all; all of them overwrote one.
            const auto m = shared->store.metrics();
            if (m.published < count_of(prefill) || m.dropped != m.published - count_of(prefill) ||
                m.processed != 0)
                state.SkipWithError("the store's metrics do not match the events of the run");
        }
        shared.reset();
    }
    state.SetItemsProcessed(state.iterations());
}

// Publish and drain rows ////////////////////////////////////////////////////////////////////////

// Per batch: `events` events subscribed (untimed), then `timed` runs (manual time).
template <class Policy, class MakeEvent, class Timed>
void backlog_rows(benchmark::State& state, bus<Policy>& b, std::int64_t events, MakeEvent make,
                  Timed timed) {
    const eventbus::context ctx;
    while (state.KeepRunningBatch(events)) {
        if (!fill(b.store, ctx, events, make)) {
            state.SkipWithError("subscribe refused an event");
            break;
        }
        const auto start = clock_type::now();
        if (!timed(ctx)) {
            state.SkipWithError("drain failed");
            break;
        }
        state.SetIterationTime(seconds_since(start));
    }
    const std::int64_t handled = state.iterations();
    if (!state.error_occurred())
        check(state, b.store, {count_of(handled), count_of(handled), 0});
    state.SetItemsProcessed(handled);
}

template <class Kind, class MakeEvent>
void publish_backlog(benchmark::State& state, std::int64_t events, MakeEvent make) {
    auto b = make_bus<Kind>(go_capacity);
    backlog_rows(state, *b, events, make, [&b](const eventbus::context&) {
        b->store.publish();
        return true;
    });
}

template <class Kind>
void bm_publish(benchmark::State& state) {
    publish_backlog<Kind>(state, batch, [] { return Kind::plain(); });
}

template <class Kind>
void bm_publish_after_prefill(benchmark::State& state) {
    publish_backlog<Kind>(state, static_cast<std::int64_t>(go_capacity),
                          [] { return Kind::plain(); });
}

template <class Kind>
void bm_publish_large_payload(benchmark::State& state) {
    const large_payload payload;
    publish_backlog<Kind>(state, batch, [&payload] { return Kind::large(payload); });
}

// publish() + drain(): sync, publish() handles the backlog; async, the workers do.
template <class Kind>
void bm_drain(benchmark::State& state, eventbus::store_options options) {
    auto b = make_bus<Kind>(go_capacity, options);
    backlog_rows(
        state, *b, batch, [] { return Kind::plain(); },
        [&b](const eventbus::context& ctx) {
            b->store.publish();
            return !b->store.drain(ctx);
        });
}

template <class Kind>
void bm_drain_sync(benchmark::State& state) {
    bm_drain<Kind>(state, {});
}

template <class Kind>
void bm_drain_async(benchmark::State& state, std::size_t workers) {
    bm_drain<Kind>(state, {.async = true, .workers = workers});
}

// Subscribe + publish + handler rows ////////////////////////////////////////////////////////////

template <class Kind>
void bm_event_store_sync(benchmark::State& state) {
    auto b = make_bus<Kind>(go_capacity);
    const eventbus::context ctx;
    const std::int64_t sink_before = handler_sink;
    std::int64_t n = 0;
    std::int64_t refused = 0;
    for (auto _ : state) {
        if (b->store.subscribe(ctx, Kind::numbered(n++)))
            ++refused;
        b->store.publish();
    }
    const std::int64_t events = state.iterations();
    if (refused != 0)
        state.SkipWithError("subscribe refused an event");
    else
        check(state, b->store, {count_of(events), count_of(events), 0});
    check_sink<Kind>(state, sink_before, events);
    state.SetItemsProcessed(events);
}

// Async: subscribe (+ publish every `publish_every`) `async_batch` events, publish, drain; all
// timed. Used for EventStore_Async (drop_oldest, a publish per event) and SubscribeBlockPolicy.
template <class Kind, class Policy, class MakeEvent>
void async_pipeline(benchmark::State& state, std::size_t capacity, std::size_t workers,
                    std::int64_t publish_every, MakeEvent make) {
    auto b = make_bus<Kind, Policy>(capacity, {.async = true, .workers = workers});
    const eventbus::context ctx;
    bool ok = true;
    while (ok && state.KeepRunningBatch(async_batch)) {
        for (std::int64_t i = 1; i <= async_batch; ++i) {
            if (b->store.subscribe(ctx, make())) {
                ok = false;
                break;
            }
            if (i % publish_every == 0)
                b->store.publish();
        }
        b->store.publish();
        if (b->store.drain(ctx))
            ok = false;
    }
    const std::int64_t events = state.iterations();
    if (!ok)
        state.SkipWithError("subscribe or drain failed");
    else
        check(state, b->store, {count_of(events), count_of(events), 0});
    state.SetItemsProcessed(events);
}

template <class Kind>
void bm_event_store_async(benchmark::State& state, std::size_t workers) {
    std::int64_t n = 0;
    async_pipeline<Kind, eventbus::drop_oldest>(state, go_capacity, workers, 1,
                                                [&n] { return Kind::numbered(n++); });
}

template <class Kind>
void bm_subscribe_block_policy(benchmark::State& state) {
    async_pipeline<Kind, eventbus::block>(state, block_capacity, 1, block_publish_every,
                                          [] { return Kind::plain(); });
}

// Transaction rows //////////////////////////////////////////////////////////////////////////////

// Per iteration batch: begin, publish tx_events numbered events, commit (which returns once they
// are handled: on this thread in sync mode, by the workers in async mode). All timed.
template <class Kind>
void bm_transaction(benchmark::State& state, eventbus::store_options options) {
    auto b = make_bus<Kind>(go_capacity, options);
    const eventbus::context ctx;
    const std::int64_t sink_before = handler_sink;
    std::int64_t n = 0;
    std::error_code failure;
    while (!failure && state.KeepRunningBatch(tx_events)) {
        auto tx = b->store.begin_transaction();
        for (std::int64_t i = 0; i < tx_events && !failure; ++i)
            failure = tx.publish(Kind::numbered(n++));
        if (!failure)
            failure = tx.commit(ctx);
    }
    const std::int64_t events = state.iterations();
    if (failure) {
        state.SkipWithError(("transaction failed: " + failure.message()).c_str());
    } else {
        check(state, b->store, {count_of(events), count_of(events), 0});
        if (!options.async)
            check_sink<Kind>(state, sink_before, events);
    }
    state.SetItemsProcessed(events);
}

template <class Kind>
void bm_transaction_sync_commit(benchmark::State& state) {
    bm_transaction<Kind>(state, {});
}

template <class Kind>
void bm_transaction_async_commit(benchmark::State& state, std::size_t workers) {
    bm_transaction<Kind>(state, {.async = true, .workers = workers});
}

// The floor ////////////////////////////////////////////////////////////////////////////////////

// typed_sync_handler called directly through a std::function, per event. The function object is
// reached through a pointer the compiler must assume changed (DoNotOptimize), and every result
// goes through DoNotOptimize (whose memory clobber also keeps each store to the sink): the call
// can be neither inlined nor skipped.
void bm_handler_call_std_function(benchmark::State& state) {
    const std::function<eventbus::result(const typed_sync&)> handler = typed_sync_handler{};
    const auto* call = &handler;
    benchmark::DoNotOptimize(call);
    const std::int64_t sink_before = handler_sink;
    std::int64_t n = 0;
    for (auto _ : state) {
        const typed_sync ev{n++};
        eventbus::result outcome = (*call)(ev);
        benchmark::DoNotOptimize(outcome);
    }
    const std::int64_t events = state.iterations();
    check_sink<typed_kind>(state, sink_before, events);
    state.SetItemsProcessed(events);
}

// Registration //////////////////////////////////////////////////////////////////////////////////

// Every row of one event kind, in the order of GoEventBus's README table.
template <class Kind>
void register_twins() {
    const auto row = [](std::string_view scenario) {
        return std::string(scenario) + "/" + std::string(Kind::name);
    };
    const auto real_time = [&row](std::string_view scenario, auto fn, auto... args) {
        return benchmark::RegisterBenchmark(row(scenario).c_str(), fn, args...)->UseRealTime();
    };
    const auto manual_time = [&row](std::string_view scenario, auto fn, auto... args) {
        return benchmark::RegisterBenchmark(row(scenario).c_str(), fn, args...)->UseManualTime();
    };

    real_time("BM_Subscribe", bm_subscribe<Kind>);
    real_time("BM_SubscribeParallel", bm_subscribe_parallel<Kind>)->Threads(1)->Threads(2);
    manual_time("BM_Publish", bm_publish<Kind>);
    manual_time("BM_PublishAfterPrefill", bm_publish_after_prefill<Kind>);
    real_time("BM_SubscribeLargePayload", bm_subscribe_large_payload<Kind>);
    manual_time("BM_PublishLargePayload", bm_publish_large_payload<Kind>);
    for (const std::size_t workers : {std::size_t{1}, std::size_t{2}})
        real_time("BM_EventStore_Async_w" + std::to_string(workers), bm_event_store_async<Kind>,
                  workers);
    real_time("BM_EventStore_Sync", bm_event_store_sync<Kind>);
    real_time("BM_SubscribeBlockPolicy", bm_subscribe_block_policy<Kind>);
    manual_time("BM_DrainSync", bm_drain_sync<Kind>);
    for (const std::size_t workers : {std::size_t{1}, std::size_t{2}})
        manual_time("BM_DrainAsync_w" + std::to_string(workers), bm_drain_async<Kind>, workers);
    real_time("BM_Transaction_SyncCommit", bm_transaction_sync_commit<Kind>);
    for (const std::size_t workers : {std::size_t{1}, std::size_t{2}})
        real_time("BM_Transaction_AsyncCommit_w" + std::to_string(workers),
                  bm_transaction_async_commit<Kind>, workers);
}

void register_benchmarks() {
    register_twins<dynamic_kind>();
    register_twins<typed_kind>();
    benchmark::RegisterBenchmark("BM_HandlerCall/std_function", bm_handler_call_std_function)
        ->UseRealTime();
}

}  // namespace

int main(int argc, char** argv) {
    return eventbus_bench::run(argc, argv, register_benchmarks);
}
