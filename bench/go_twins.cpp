// Twins of GoEventBus's benchmarks (its Benchmark* functions in eventstore_test.go and
// transaction_test.go): each twin row is named after its Go benchmark and times the same work on
// eventbus::event_store: the same set-up outside the timer, the same calls inside it, one
// benchmark iteration per Go iteration (`for i := 0; i < b.N; i++`), so the ns per op of the
// table is what Go's ns/op measures. After the twins come rows of our own (not twins, ns per
// event) and the handler-call floor.
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
// plus one more register_twins<...>() and register_own_rows<...>() call.
//
// Timing. Items processed = iterations everywhere, so the console's time column,
// items_per_second and scripts/bench_report.py show the same ns per op (twins) or ns per event
// (our rows). Twin rows carry the counter twin=1, which is how scripts/bench_report.py tells
// them apart. Rows that time only part of each iteration (or batch of events), or whose timed
// part starts before the loop, use manual time (steady_clock around exactly that part); the
// others real time (wall clock, as Go). Each row checks the store's metrics afterwards (events
// accepted, handled, dropped as the scenario implies; no handler error) and fails loudly otherwise.
// main() keeps freed memory in the process (glibc's mallopt), as Go's runtime keeps its heap
// between b.N runs, so that rows filling a new store do not time the kernel's page faults.
//
// Handlers are called through the dispatcher, so not optimized out. The dynamic ones do nothing
// and return a result, as Go's do. The typed handler of numbered events (typed_sync_handler) also
// reads the payload: it adds n to a per-thread sink (made opaque with benchmark::DoNotOptimize),
// and the sync rows check the sum, so the typed rows do a little more work than the dynamic ones,
// never less. Capacity 1 << 16 and drop_oldest unless said otherwise, as in Go. Go's async
// stores run runtime.NumCPU() workers: the async twins use workers = 0, which means
// std::thread::hardware_concurrency() (2 on a 2-core machine).
//
// The twins, Go's code first (b.N = the iteration count):
//   BM_Subscribe/<kind>         Go: NewEventStore; timed: b.N x Subscribe(Event{ID "bench",
//                               Projection "evt", Args nil}). Here: a new store (untimed), timed:
//                               subscribe(ctx, event) (typed: typed_evt{}) per iteration. The
//                               ring starts empty; past 1 << 16 events each subscribe overwrites
//                               the oldest (drop_oldest), as in Go. Checked: all accepted, the
//                               overflow counted as dropped.
//   BM_SubscribeParallel/<kind>/threads:T  Go: the same from b.RunParallel (GOMAXPROCS
//                               goroutines) into one store. Here T = 1 and 2 threads into one
//                               shared store that starts empty; ns per op = wall time / all
//                               subscribes, as RunParallel reports.
//   BM_Publish/<kind>           Go: 1 << 16 events subscribed (untimed); timed: b.N x Publish().
//                               The first call handles the 1 << 16 events, every later one finds
//                               nothing to do, so at Go's iteration counts ns/op is the cost of
//                               an empty Publish(). Here the same: prefill untimed, timed:
//                               publish() per iteration (the first one dispatches the backlog).
//                               Checked: all 1 << 16 handled once.
//   BM_PublishAfterPrefill/<kind>  Go: a copy of BenchmarkPublish (only the events' ID differs).
//                               Here the same as BM_Publish.
//   BM_SubscribeLargePayload/<kind>  Go: BenchmarkSubscribe with Args {"payload": LargeStruct}
//                               (Data [1024]byte), the map literal built inside the timed loop.
//                               Dynamic: args {"payload": the struct}; building the map and the
//                               std::any (one 1 KiB allocation and copy) is timed, as Go's map
//                               literal is. Typed: typed_large, larger than inline_payload_size,
//                               so the store puts it on the heap (one allocation and copy per
//                               event). Freeing an overwritten event's payload is timed too (Go:
//                               its GC).
//   BM_PublishLargePayload/<kind>  Go: 100 such events subscribed (untimed); timed: b.N x
//                               Publish() (the first handles the 100, the rest are empty). Here
//                               the same.
//   BM_EventStore_Async/<kind>  Go: no ResetTimer, so everything is timed: NewEventStore (which
//                               starts NumCPU workers), b.N x Subscribe(Event{ID "event",
//                               Projection "async", Args {"n": i}}), one Publish() that hands the
//                               last 1 << 16 events to the workers; nothing waits for them. Here,
//                               timed (manual time): constructing the async store (which starts
//                               its worker threads) and registering the handlers, b.N subscribes
//                               (typed: typed_sync{i}), one publish(), which makes them eligible
//                               and returns. Untimed afterwards: drain(), then checked: b.N
//                               accepted, the last min(b.N, 1 << 16) handled, the rest dropped.
//   BM_EventStore_Sync/<kind>   Go: the same on a sync store (projection "sync"): the one
//                               Publish() runs the handlers of the last 1 << 16 events on the
//                               caller, timed. Here the same (sync store: no thread to start).
//                               Typed: the handlers' sum is checked too.
//   BM_SubscribeBlockPolicy/<kind>  Go: store of capacity 1024, Block policy, no handler, filled
//                               with 1024 Event{} (untimed); timed per iteration: a context made
//                               and cancelled (context.WithCancel, cancel()), then Subscribe(ctx,
//                               Event{}) on the full ring, which returns ctx.Err(). Here the same
//                               on event_store<block> (capacity 1024): a std::stop_source made
//                               and stopped, an eventbus::context on its token, subscribe(ctx,
//                               event{}) (typed: typed_evt{}); checked: every call returned
//                               errc::cancelled, nothing was added. (A context that has already
//                               ended is read before any wait; Go's Subscribe first calls
//                               runtime.Gosched() and starts a 10 us timer.)
//   BM_DrainSync/<kind>         Go: sync store of capacity 1024, 1000 events subscribed and
//                               published (untimed); timed: b.N x Drain() on that idle store.
//                               Here the same: drain(ctx), which finds nothing pending and no
//                               dispatch in flight. (Go's first Drain also shuts the store down;
//                               ours leaves it usable, close() shuts down.)
//   BM_DrainAsync/<kind>        Go, per iteration: NewEventStore (capacity 1024, async, NumCPU
//                               workers started) timed; then, timer stopped, 1000 events
//                               subscribed and Publish() sends them to the workers; timer
//                               restarted: Drain(), which waits for the handlers still running.
//                               Here the same (manual time): constructing the async store
//                               (starting its threads) and registering the handlers timed; 1000
//                               subscribes and publish() untimed; drain(ctx) timed; the store's
//                               destruction (close, joining the workers) untimed, as Go's
//                               workers exit after the timer. Checked per iteration: all 1000
//                               handled. Difference: our publish() returns at once, so drain()
//                               waits for nearly all 1000 handlers; Go's Publish() sends each
//                               event through a channel while the workers already run, so its
//                               Drain() waits for the last few.
//   BM_Transaction_SyncCommit/<kind>  Go: sync store of capacity 256; timed per iteration:
//                               BeginTransaction(), 16 x tx.Publish(Event{ID "t", Projection "p",
//                               Args {}}), tx.Commit(ctx) (subscribes the 16 and runs their
//                               handlers on the caller), es.Publish() (nothing left). Here the
//                               same calls: begin_transaction(), 16 x publish(event) (typed:
//                               typed_evt{}), commit(ctx), publish(). One op = one transaction
//                               of 16 events.
//   BM_Transaction_AsyncCommit/<kind>  Go: the same on an async store (NumCPU workers) plus
//                               es.Drain(ctx) per iteration; Go's Commit still runs the handlers
//                               on the caller, and its Drain finds nothing in flight. Here the
//                               same calls on an async store; our commit() hands the 16 events to
//                               the workers and waits until they have been handled (a round trip
//                               to the worker threads), then drain(ctx) finds nothing pending.
//
// Not twinned:
//   BenchmarkSubscribePublish   broken in Go: its Sync and Async sub-benchmarks run a closure
//                               that loops on the parent benchmark's b (b.N = 1 there) and calls
//                               ResetTimer/StopTimer on it, so each sub-benchmark times one event
//                               (plus a 10 ms sleep for Async) whatever its own b.N: its ns/op
//                               falls toward 0 as b.N grows and says nothing about Subscribe +
//                               Publish. BM_SyncDispatch below times what it was meant to.
//   BenchmarkPublishWithErrors  1 << 16 events whose handler fails, then b.N x Publish(): after
//                               the first call it is BM_Publish's empty publish(). A failing
//                               handler throws here (Go returns an error value), about 1 us per
//                               exception, so the first call alone (~0.1 s) would outweigh every
//                               iteration count the default run's short minimum time allows.
//   BenchmarkFastHTTP*          they add a fasthttp.RequestCtx to subscribe + publish; there is
//                               no HTTP here.
//
// Our rows (not twins; ns per EVENT, each benchmark iteration is one event):
//   BM_PublishBacklog/<kind>    per batch: 1024 plain events subscribed (untimed), then one
//                               publish() dispatches them to the handler (timed, manual time):
//                               what a publish() that has work costs per event.
//   BM_PublishBacklogFullRing/<kind>  the same with the whole ring (1 << 16 events) per
//                               publish(): a backlog larger than the caches.
//   BM_PublishBacklogLargePayload/<kind>  BM_PublishBacklog with the 1 KiB events; the ring owns
//                               them, so freeing each payload after its handler is timed.
//   BM_SyncDispatch/<kind>      per event, all timed: build it (dynamic: {id "event", projection
//                               "sync", args {"n": i}}; typed: typed_sync{i}), subscribe,
//                               publish() (which runs the handler). Checked: every event handled
//                               once (typed: the sum of the payloads too).
//   BM_AsyncDispatch_w<W>/<kind>  the same on an async store with W workers (1, 2); drain() after
//                               every 16384 events, timed, so all handling is in the time (never
//                               more than 16384 pending: nothing is dropped, checked).
//   BM_PublishDrainBacklog_w<W>/<kind>  async store with W workers (1, 2): per batch, 1024 events
//                               subscribed (untimed); timed: publish() wakes the idle workers,
//                               drain() waits until they have handled the 1024. (In sync mode
//                               publish() does the work and drain() then has nothing to wait for:
//                               that is BM_PublishBacklog.)
// The async pipeline with a full ring (block policy, capacity 1024, one worker) is bench_bus's
// BM_AsyncTyped/eventbus (typed) and bench_event_store's BM_AsyncThroughput_p1_w1/eventbus
// (dynamic), both against peers.
//
// And the handler-call floor, the cost of the handler alone, which no bus can go below:
//   BM_HandlerCall/std_function  per event: build typed_sync{i} and call typed_sync_handler (the
//                               very handler BM_SyncDispatch/typed runs) directly through a
//                               std::function<eventbus::result(const typed_sync&)>, made opaque so
//                               the call cannot be inlined or removed. BM_SyncDispatch/typed
//                               minus this row is what the store adds to each handler call.
//
// Reproduce: scripts/bench, or
//   cmake --preset bench && cmake --build --preset bench
//   build/bench/bench/bench_go_twins --benchmark_min_time=0.2

#include <benchmark/benchmark.h>

#include <eventbus/eventbus.hpp>

#include "common.hpp"

#include <algorithm>
#include <any>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <memory>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>

namespace {

constexpr std::size_t go_capacity = std::size_t{1} << 16;    // GoEventBus's benchmarks
constexpr std::size_t block_capacity = 1024;                 // BenchmarkSubscribeBlockPolicy
constexpr std::size_t drain_capacity = 1024;                 // BenchmarkDrainSync, DrainAsync
constexpr std::int64_t drain_events = 1000;                  // events they subscribe
constexpr std::size_t tx_capacity = 256;                     // BenchmarkTransaction_*
constexpr std::int64_t tx_events = 16;                       // events per transaction
constexpr std::int64_t large_prefill = 100;                  // BenchmarkPublishLargePayload
constexpr std::int64_t batch = 1024;                         // our rows: events per timed publish()
constexpr std::int64_t async_batch = std::int64_t{1} << 14;  // our rows: events between drain()s

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point start) noexcept {
    return std::chrono::duration<double>(clock_type::now() - start).count();
}

// Event kinds ///////////////////////////////////////////////////////////////////////////////////

// Go's LargeStruct: 1 KiB, copied into the args by value.
struct large_payload {
    std::array<std::byte, 1024> data{};
};

// GoEventBus's Event: a projection name and a map of any. Each kind provides the events of Go's
// benchmarks and registers a trivial handler for each projection.
struct dynamic_kind {
    static constexpr std::string_view name = "dynamic";
    static constexpr bool sums_payloads = false;  // Go's handlers do not read the args

    static void register_handlers(eventbus::dispatcher& d) {
        auto trivial = [](const eventbus::context&, const eventbus::args&) {
            return eventbus::result{};
        };
        auto done = [](const eventbus::context&, const eventbus::args&) {
            return eventbus::result{"done"};  // Go's EventStore_* handlers return "done"
        };
        (void)d.on("evt", trivial);
        (void)d.on("evtLarge", trivial);
        (void)d.on("sync", done);
        (void)d.on("async", done);
    }

    // Event{ID: "bench", Projection: "evt", Args: nil}: no allocation (short strings, empty map).
    static eventbus::event plain() {
        return eventbus::event{.id = "bench", .projection = "evt", .args = {}};
    }
    // Event{}: BenchmarkSubscribeBlockPolicy's (no handler; never published while timed).
    static eventbus::event empty() { return eventbus::event{}; }
    // Event{ID: "event", Projection: "sync", Args: map[string]any{"n": i}}
    static eventbus::event numbered(std::int64_t n) {
        return eventbus::event{.id = "event", .projection = "sync", .args = {{"n", n}}};
    }
    // Event{ID: "event", Projection: "async", Args: map[string]any{"n": i}}
    static eventbus::event numbered_async(std::int64_t n) {
        return eventbus::event{.id = "event", .projection = "async", .args = {{"n", n}}};
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
struct typed_sync {  // Event{Projection: "sync" or "async", Args: {"n": i}}: stored inline
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
    static typed_evt empty() { return typed_evt{}; }
    static typed_sync numbered(std::int64_t n) { return typed_sync{n}; }
    static typed_sync numbered_async(std::int64_t n) { return typed_sync{n}; }
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

// Go's async stores: runtime.NumCPU() workers; 0 = std::thread::hardware_concurrency().
constexpr eventbus::store_options go_async{.async = true, .workers = 0};

// Subscribes `count` events made by `make`; false if one was refused.
template <class Store, class MakeEvent>
bool fill(Store& store, const eventbus::context& ctx, std::int64_t count, MakeEvent&& make) {
    for (std::int64_t i = 0; i < count; ++i)
        if (store.subscribe(ctx, make()))
            return false;
    return true;
}

// What a row checks after its loop (unless it already failed): the store's counters.
struct expected {
    std::uint64_t published;
    std::uint64_t processed;
    std::uint64_t dropped;
};

template <class Store>
bool metrics_match(const Store& store, const expected& want) {
    const auto m = store.metrics();
    return m.published == want.published && m.processed == want.processed &&
           m.dropped == want.dropped && m.errors == 0 && m.unhandled == 0;
}

template <class Store>
void check(benchmark::State& state, const Store& store, const expected& want) {
    if (!state.error_occurred() && !metrics_match(store, want))
        state.SkipWithError("the store's metrics do not match the events of the run");
}

std::uint64_t count_of(std::int64_t n) noexcept {
    return static_cast<std::uint64_t>(n);
}

// Of `events` subscribed into an unpublished drop_oldest ring: how many it still holds, and how
// many were overwritten.
std::int64_t kept(std::int64_t events, std::size_t capacity) noexcept {
    return std::min(events, static_cast<std::int64_t>(capacity));
}
std::uint64_t overwritten(std::int64_t events, std::size_t capacity) noexcept {
    return count_of(events - kept(events, capacity));
}

// Sync rows of a kind whose handler fills this thread's sink: the numbered events first .. end-1
// were each handled exactly once, with their own payload.
template <class Kind>
void check_sink(benchmark::State& state, std::int64_t sink_before, std::int64_t first,
                std::int64_t end) {
    if constexpr (Kind::sums_payloads) {
        if (state.error_occurred())
            return;
        const std::int64_t want = end * (end - 1) / 2 - first * (first - 1) / 2;
        if (handler_sink - sink_before != want)
            state.SkipWithError("the handler did not see every payload exactly once");
    } else {
        (void)state;
        (void)sink_before;
        (void)first;
        (void)end;
    }
}

// Twin rows: ns per Go op (one iteration); marked for scripts/bench_report.py. Threaded rows
// mark on thread 0 only (counters are summed over threads).
void report_twin(benchmark::State& state) {
    state.SetItemsProcessed(state.iterations());
    if (state.thread_index() == 0)
        state.counters["twin"] = 1;
}

// Our rows: one iteration per event.
void report_events(benchmark::State& state) {
    state.SetItemsProcessed(state.iterations());
}

// Twins: Subscribe ////////////////////////////////////////////////////////////////////////////

// One subscribe per iteration into a store that starts empty (drop_oldest overwrites past its
// capacity).
template <class Kind, class MakeEvent>
void subscribe_from_empty(benchmark::State& state, MakeEvent make) {
    auto b = make_bus<Kind>(go_capacity);
    const eventbus::context ctx;
    std::int64_t refused = 0;
    for (auto _ : state)
        if (b->store.subscribe(ctx, make()))
            ++refused;
    const std::int64_t ops = state.iterations();
    if (refused != 0)
        state.SkipWithError("subscribe refused an event");
    check(state, b->store, {count_of(ops), 0, overwritten(ops, go_capacity)});
    report_twin(state);
}

template <class Kind>
void bm_subscribe(benchmark::State& state) {
    subscribe_from_empty<Kind>(state, [] { return Kind::plain(); });
}

template <class Kind>
void bm_subscribe_large_payload(benchmark::State& state) {
    const large_payload payload;
    subscribe_from_empty<Kind>(state, [&payload] { return Kind::large(payload); });
}

// The store is shared: thread 0 makes it before the loop and frees it after; the loop's start and
// end are barriers for all threads, so no thread sees it before it exists or after it is gone,
// and thread 0's check sees every thread's subscribes. Every thread runs state.iterations().
template <class Kind>
void bm_subscribe_parallel(benchmark::State& state) {
    static std::unique_ptr<bus<eventbus::drop_oldest>> shared;
    const eventbus::context ctx;
    if (state.thread_index() == 0)
        shared = make_bus<Kind>(go_capacity);
    std::int64_t refused = 0;
    for (auto _ : state)
        if (shared->store.subscribe(ctx, Kind::plain()))
            ++refused;
    if (refused != 0)
        state.SkipWithError("subscribe refused an event");
    if (state.thread_index() == 0) {
        const std::int64_t ops = state.iterations() * state.threads();
        check(state, shared->store, {count_of(ops), 0, overwritten(ops, go_capacity)});
        shared.reset();
    }
    report_twin(state);
}

// Twins: Publish ///////////////////////////////////////////////////////////////////////////////

// `prefill` events subscribed untimed; timed: one publish() per iteration (the first one
// dispatches them, the others find nothing).
template <class Kind, class MakeEvent>
void publish_after_prefill(benchmark::State& state, std::int64_t prefill, MakeEvent make) {
    auto b = make_bus<Kind>(go_capacity);
    const eventbus::context ctx;
    if (!fill(b->store, ctx, prefill, make)) {
        state.SkipWithError("prefill refused");
        return;
    }
    for (auto _ : state)
        b->store.publish();
    check(state, b->store, {count_of(prefill), count_of(prefill), 0});
    report_twin(state);
}

template <class Kind>
void bm_publish(benchmark::State& state) {
    publish_after_prefill<Kind>(state, static_cast<std::int64_t>(go_capacity),
                                [] { return Kind::plain(); });
}

template <class Kind>
void bm_publish_large_payload(benchmark::State& state) {
    const large_payload payload;
    publish_after_prefill<Kind>(state, large_prefill, [&payload] { return Kind::large(payload); });
}

// Twins: EventStore_Sync, EventStore_Async ////////////////////////////////////////////////////

// Timed (manual time): making the store, b.N subscribes, one publish(). Then, untimed, drain()
// and the checks.
template <class Kind, bool Async>
void bm_event_store(benchmark::State& state) {
    const eventbus::context ctx;
    const std::int64_t sink_before = handler_sink;
    std::int64_t n = 0;
    std::int64_t refused = 0;
    const auto start = clock_type::now();
    auto b = make_bus<Kind>(go_capacity, Async ? go_async : eventbus::store_options{});
    for (auto _ : state) {
        if constexpr (Async) {
            if (b->store.subscribe(ctx, Kind::numbered_async(n++)))
                ++refused;
        } else {
            if (b->store.subscribe(ctx, Kind::numbered(n++)))
                ++refused;
        }
    }
    b->store.publish();
    state.SetIterationTime(seconds_since(start));

    const std::int64_t ops = state.iterations();
    const std::int64_t handled = kept(ops, go_capacity);
    if (refused != 0)
        state.SkipWithError("subscribe refused an event");
    else if (b->store.drain(ctx))
        state.SkipWithError("drain failed");
    check(state, b->store, {count_of(ops), count_of(handled), overwritten(ops, go_capacity)});
    if constexpr (!Async)
        check_sink<Kind>(state, sink_before, ops - handled, ops);
    report_twin(state);
}

// Twin: SubscribeBlockPolicy ///////////////////////////////////////////////////////////////////

template <class Kind>
void bm_subscribe_block_policy(benchmark::State& state) {
    auto b = make_bus<Kind, eventbus::block>(block_capacity);
    const eventbus::context background;
    if (!fill(b->store, background, static_cast<std::int64_t>(block_capacity),
              [] { return Kind::empty(); })) {
        state.SkipWithError("prefill refused");
        return;
    }
    const std::error_code cancelled_error = eventbus::errc::cancelled;
    std::int64_t unexpected = 0;
    for (auto _ : state) {
        std::stop_source cancel;  // ctx, cancel := context.WithCancel(context.Background())
        cancel.request_stop();    // cancel()
        const eventbus::context ctx(cancel.get_token());
        if (b->store.subscribe(ctx, Kind::empty()) != cancelled_error)
            ++unexpected;
    }
    if (unexpected != 0)
        state.SkipWithError("subscribe on the full ring did not return errc::cancelled");
    check(state, b->store, {count_of(static_cast<std::int64_t>(block_capacity)), 0, 0});
    report_twin(state);
}

// Twins: DrainSync, DrainAsync /////////////////////////////////////////////////////////////////

template <class Kind>
void bm_drain_sync(benchmark::State& state) {
    auto b = make_bus<Kind>(drain_capacity);
    const eventbus::context ctx;
    if (!fill(b->store, ctx, drain_events, [] { return Kind::plain(); })) {
        state.SkipWithError("subscribe refused an event");
        return;
    }
    b->store.publish();
    std::int64_t failed = 0;
    for (auto _ : state)
        if (b->store.drain(ctx))
            ++failed;
    if (failed != 0)
        state.SkipWithError("drain failed");
    check(state, b->store, {count_of(drain_events), count_of(drain_events), 0});
    report_twin(state);
}

// Per iteration (manual time): making the store timed; subscribes and publish() untimed; drain()
// timed; destroying the store untimed.
template <class Kind>
void bm_drain_async(benchmark::State& state) {
    const eventbus::context ctx;
    for (auto _ : state) {
        const auto made = clock_type::now();
        auto b = make_bus<Kind>(drain_capacity, go_async);
        const double make_time = seconds_since(made);
        if (!fill(b->store, ctx, drain_events, [] { return Kind::plain(); })) {
            state.SkipWithError("subscribe refused an event");
            break;
        }
        b->store.publish();
        const auto drained = clock_type::now();
        const std::error_code error = b->store.drain(ctx);
        state.SetIterationTime(make_time + seconds_since(drained));
        if (error) {
            state.SkipWithError("drain failed");
            break;
        }
        if (!metrics_match(b->store, {count_of(drain_events), count_of(drain_events), 0})) {
            state.SkipWithError("the store's metrics do not match the events of the run");
            break;
        }
    }
    report_twin(state);
}

// Twins: Transaction_SyncCommit, Transaction_AsyncCommit ///////////////////////////////////////

// Timed per iteration: begin, 16 publishes into the transaction, commit, publish() (and, async,
// drain()).
template <class Kind, bool Async>
void bm_transaction(benchmark::State& state) {
    auto b = make_bus<Kind>(tx_capacity, Async ? go_async : eventbus::store_options{});
    const eventbus::context ctx;
    std::error_code failure;
    for (auto _ : state) {
        auto tx = b->store.begin_transaction();
        for (std::int64_t j = 0; j < tx_events && !failure; ++j)
            failure = tx.publish(Kind::plain());
        if (!failure)
            failure = tx.commit(ctx);
        b->store.publish();
        if constexpr (Async) {
            if (!failure)
                failure = b->store.drain(ctx);
        }
        if (failure) {
            state.SkipWithError(("transaction failed: " + failure.message()).c_str());
            break;
        }
    }
    const std::int64_t events = state.iterations() * tx_events;
    if (!state.error_occurred() && b->store.drain(ctx))
        state.SkipWithError("drain failed");
    check(state, b->store, {count_of(events), count_of(events), 0});
    report_twin(state);
}

// Our rows: backlogs ///////////////////////////////////////////////////////////////////////////

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
    check(state, b.store, {count_of(handled), count_of(handled), 0});
    report_events(state);
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
void bm_publish_backlog(benchmark::State& state) {
    publish_backlog<Kind>(state, batch, [] { return Kind::plain(); });
}

template <class Kind>
void bm_publish_backlog_full_ring(benchmark::State& state) {
    publish_backlog<Kind>(state, static_cast<std::int64_t>(go_capacity),
                          [] { return Kind::plain(); });
}

template <class Kind>
void bm_publish_backlog_large_payload(benchmark::State& state) {
    const large_payload payload;
    publish_backlog<Kind>(state, batch, [&payload] { return Kind::large(payload); });
}

// publish() + drain() on an async store: the workers handle the backlog.
template <class Kind>
void bm_publish_drain_backlog(benchmark::State& state, std::size_t workers) {
    auto b = make_bus<Kind>(go_capacity, {.async = true, .workers = workers});
    backlog_rows(
        state, *b, batch, [] { return Kind::plain(); },
        [&b](const eventbus::context& ctx) {
            b->store.publish();
            return !b->store.drain(ctx);
        });
}

// Our rows: subscribe + publish + handler ///////////////////////////////////////////////////////

template <class Kind>
void bm_sync_dispatch(benchmark::State& state) {
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
    check(state, b->store, {count_of(events), count_of(events), 0});
    check_sink<Kind>(state, sink_before, 0, events);
    report_events(state);
}

// Async: per event subscribe + publish; after every `async_batch` events a drain(); all timed.
template <class Kind>
void bm_async_dispatch(benchmark::State& state, std::size_t workers) {
    auto b = make_bus<Kind>(go_capacity, {.async = true, .workers = workers});
    const eventbus::context ctx;
    std::int64_t n = 0;
    bool ok = true;
    while (ok && state.KeepRunningBatch(async_batch)) {
        for (std::int64_t i = 0; i < async_batch; ++i) {
            if (b->store.subscribe(ctx, Kind::numbered(n++))) {
                ok = false;
                break;
            }
            b->store.publish();
        }
        if (b->store.drain(ctx))
            ok = false;
    }
    const std::int64_t events = state.iterations();
    if (!ok)
        state.SkipWithError("subscribe or drain failed");
    check(state, b->store, {count_of(events), count_of(events), 0});
    report_events(state);
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
    check_sink<typed_kind>(state, sink_before, 0, events);
    report_events(state);
}

// Registration //////////////////////////////////////////////////////////////////////////////////

template <class Kind>
auto row_name(std::string_view scenario) {
    return std::string(scenario) + "/" + std::string(Kind::name);
}

// The twins of one event kind, in the order of GoEventBus's README table, then the rest of its
// benchmark files.
template <class Kind>
void register_twins() {
    const auto real_time = [](std::string_view scenario, auto fn) {
        return benchmark::RegisterBenchmark(row_name<Kind>(scenario).c_str(), fn)->UseRealTime();
    };
    const auto manual_time = [](std::string_view scenario, auto fn) {
        return benchmark::RegisterBenchmark(row_name<Kind>(scenario).c_str(), fn)->UseManualTime();
    };

    real_time("BM_Subscribe", bm_subscribe<Kind>);
    real_time("BM_SubscribeParallel", bm_subscribe_parallel<Kind>)->Threads(1)->Threads(2);
    real_time("BM_Publish", bm_publish<Kind>);
    real_time("BM_PublishAfterPrefill", bm_publish<Kind>);
    real_time("BM_SubscribeLargePayload", bm_subscribe_large_payload<Kind>);
    real_time("BM_PublishLargePayload", bm_publish_large_payload<Kind>);
    manual_time("BM_EventStore_Async", bm_event_store<Kind, true>);
    manual_time("BM_EventStore_Sync", bm_event_store<Kind, false>);
    real_time("BM_SubscribeBlockPolicy", bm_subscribe_block_policy<Kind>);
    real_time("BM_DrainSync", bm_drain_sync<Kind>);
    manual_time("BM_DrainAsync", bm_drain_async<Kind>);
    real_time("BM_Transaction_SyncCommit", bm_transaction<Kind, false>);
    real_time("BM_Transaction_AsyncCommit", bm_transaction<Kind, true>);
}

// Our rows of one event kind.
template <class Kind>
void register_own_rows() {
    const auto real_time = [](std::string_view scenario, auto fn, auto... args) {
        return benchmark::RegisterBenchmark(row_name<Kind>(scenario).c_str(), fn, args...)
            ->UseRealTime();
    };
    const auto manual_time = [](std::string_view scenario, auto fn, auto... args) {
        return benchmark::RegisterBenchmark(row_name<Kind>(scenario).c_str(), fn, args...)
            ->UseManualTime();
    };

    manual_time("BM_PublishBacklog", bm_publish_backlog<Kind>);
    manual_time("BM_PublishBacklogFullRing", bm_publish_backlog_full_ring<Kind>);
    manual_time("BM_PublishBacklogLargePayload", bm_publish_backlog_large_payload<Kind>);
    real_time("BM_SyncDispatch", bm_sync_dispatch<Kind>);
    for (const std::size_t workers : {std::size_t{1}, std::size_t{2}})
        real_time("BM_AsyncDispatch_w" + std::to_string(workers), bm_async_dispatch<Kind>, workers);
    for (const std::size_t workers : {std::size_t{1}, std::size_t{2}})
        manual_time("BM_PublishDrainBacklog_w" + std::to_string(workers),
                    bm_publish_drain_backlog<Kind>, workers);
}

void register_benchmarks() {
    register_twins<dynamic_kind>();
    register_twins<typed_kind>();
    register_own_rows<dynamic_kind>();
    register_own_rows<typed_kind>();
    benchmark::RegisterBenchmark("BM_HandlerCall/std_function", bm_handler_call_std_function)
        ->UseRealTime();
}

}  // namespace

int main(int argc, char** argv) {
#if defined(__GLIBC__)
    // Keep freed memory in the process for reuse, as Go's runtime keeps its heap from one b.N
    // run to the next. By default glibc hands a run's freed memory back to the kernel (the 64 MiB
    // of a ring of 1 KiB payloads; each 4 MiB ring is its own mapping), and the next run's first
    // touch of every page, a page fault (several microseconds each in a VM), would be timed: the
    // rows that subscribe into a new store (Subscribe*, EventStore_*) would measure the kernel.
    (void)mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's maximum: rings come from the heap
    (void)mallopt(M_TRIM_THRESHOLD, 1 << 30);   // and the heap is never trimmed
#endif
    return eventbus_bench::run(argc, argv, register_benchmarks);
}
