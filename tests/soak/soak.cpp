// eventbus_soak: runs event stores for a given time and checks, after every round, that every
// event is accounted for.
//
//   eventbus_soak <minutes> [--producers P] [--workers W] [--round-seconds S]
//
// Each round runs one configuration for a few seconds: a policy (drop_oldest, block,
// return_error), a dispatch mode (async, async with ordered_by_key, sync) and a capacity. P
// producer threads subscribe typed events (inline and trivially copyable, inline with a
// destructor, boxed) and dynamic ones, publish, commit and roll back transactions, schedule
// events a few milliseconds ahead and cancel some (by handle and by context), trigger events
// and drain. A churn thread keeps adding and removing handlers (one of which removes itself from
// inside its own call) and an error hook while events flow; some handlers throw. At the end of
// the round (drain, then close) what the producers had accepted and refused, what the handlers
// saw and the store's counters must reconcile exactly:
//
//   - published == events accepted by subscribe or a commit + scheduled events not cancelled
//   - published + triggered == handled + unhandled + dropped
//   - handled == events the handlers saw; processed == handler calls; errors == calls that threw
//   - every value accepted is seen by its handler exactly once (checksums), except what
//     drop_oldest overwrote; events that carry a `witness` also record, when destroyed unseen,
//     that they were dropped, refused, rolled back or cancelled, so that under drop_oldest too
//     each of them is either seen once or lost in a way the counters explain.
//
// RSS is sampled every second; after the warm-up (the first 20% of the run, at least one pass
// over every configuration, at most half the run) it must stay within 8 MiB or 10% of the
// warm-up's peak, whichever is larger. The heap in use between rounds (glibc's count of bytes
// allocated and not freed, once a round's stores, dispatchers and events are gone) must stay
// within 64 KiB of the warm-up's peak.
//
// Exit status: 0 when every round reconciled and memory stayed flat; 1 on a failed check; 2 on a
// usage error; 3 when a round did not finish within its time plus a grace period (a hang).
#include <eventbus/eventbus.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <memory>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <unistd.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace {

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;
using u64 = std::uint64_t;

// Settings //////////////////////////////////////////////////////////////////////////////////////

struct settings {
    double minutes = 0;
    std::size_t producers = 2;
    std::size_t workers = 2;
    double round_seconds = 0;  // 0: chosen from the run's length
};

constexpr std::size_t max_producers = 64;
constexpr std::array<std::size_t, 4> capacities{1024, 64, 4096, 256};

enum class mode { async_plain, async_ordered, sync };

constexpr std::string_view mode_name(mode m) {
    switch (m) {
        case mode::async_plain:
            return "async";
        case mode::async_ordered:
            return "async ordered_by_key";
        case mode::sync:
            return "sync";
    }
    return "?";
}

template <class Policy>
constexpr std::string_view policy_name() {
    if constexpr (std::is_same_v<Policy, eventbus::drop_oldest>)
        return "drop_oldest";
    else if constexpr (std::is_same_v<Policy, eventbus::block>)
        return "block";
    else
        return "return_error";
}

// Values ////////////////////////////////////////////////////////////////////////////////////////

// splitmix64: spreads (round, producer, sequence) over 64 bits, so that checksums (sums modulo
// 2^64) catch an event seen twice or lost.
u64 mix(u64 x) noexcept {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30U)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27U)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31U);
}

// The kinds of events, each with its own counts and checksum.
enum kind : std::size_t {
    k_tick,    // typed, trivially copyable, inline: the bulk
    k_small,   // typed witness, inline, with a destructor
    k_big,     // typed witness, boxed (larger than a slot)
    k_dyn,     // dynamic event
    k_boom,    // dynamic event whose handler throws
    k_orphan,  // typed, no permanent handler: only the churn thread's, when registered
    kind_count
};
constexpr std::array<const char*, kind_count> kind_names{"tick",    "small_witness", "big_witness",
                                                         "dynamic", "throwing",      "orphan"};

// Counters updated from any thread, spread over cache lines by thread.
class striped_counts {
  public:
    void add(kind k, u64 value) noexcept {
        line& l = lines_[stripe()];
        l.count[k].fetch_add(1, std::memory_order_relaxed);
        l.sum[k].fetch_add(value, std::memory_order_relaxed);
    }
    [[nodiscard]] u64 count(kind k) const noexcept {
        u64 total = 0;
        for (const line& l : lines_)
            total += l.count[k].load(std::memory_order_relaxed);
        return total;
    }
    [[nodiscard]] u64 sum(kind k) const noexcept {
        u64 total = 0;
        for (const line& l : lines_)
            total += l.sum[k].load(std::memory_order_relaxed);
        return total;
    }

  private:
    static constexpr std::size_t stripes = 16;
    struct alignas(64) line {
        std::array<std::atomic<u64>, kind_count> count{};
        std::array<std::atomic<u64>, kind_count> sum{};
    };
    static std::size_t stripe() noexcept {
        static std::atomic<std::size_t> next{0};
        thread_local const std::size_t mine =
            next.fetch_add(1, std::memory_order_relaxed) % stripes;
        return mine;
    }
    std::array<line, stripes> lines_{};
};

// What the handlers and the witnesses of one round recorded.
struct round_tally {
    striped_counts seen;    // permanent handler calls, with the values they saw
    striped_counts unseen;  // witnesses destroyed without having been seen
    std::atomic<u64> churn_calls{0};
    std::atomic<u64> churn_throws{0};
    std::atomic<u64> orphan_calls{0};
    std::atomic<u64> seen_twice{0};
    std::atomic<u64> out_of_order{0};
    std::atomic<u64> hook_calls{0};
    std::array<std::atomic<u64>, max_producers> last_seq{};  // ordered mode: per producer
};

// Events ////////////////////////////////////////////////////////////////////////////////////////

struct tick {
    u64 value;
    u64 seq;  // per producer, from 1
    std::size_t producer;
};

struct orphan {
    u64 value;
};

// A typed event that knows whether its handler saw it. Destroyed unseen (overwritten by
// drop_oldest, refused, rolled back, cancelled), it records its value in the round's tally.
template <std::size_t Words, kind K>
class witness {
  public:
    static constexpr kind kind_of = K;

    witness(round_tally& tally, u64 value) noexcept : tally_(&tally), value_(value) {}
    witness(witness&& other) noexcept
        : tally_(other.tally_)
        , value_(other.value_)
        , seen_(other.seen_)
        , live_(std::exchange(other.live_, false))
        , pad_(other.pad_) {}
    witness(const witness&) = delete;
    witness& operator=(const witness&) = delete;
    witness& operator=(witness&&) = delete;
    ~witness() {
        if (live_ && !seen_)
            tally_->unseen.add(K, value_);
    }

    [[nodiscard]] u64 value() const noexcept { return value_; }
    // The permanent handler's mark; false when the event had been seen already.
    [[nodiscard]] bool see() const noexcept { return !std::exchange(seen_, true); }

  private:
    round_tally* tally_;
    u64 value_;
    mutable bool seen_ = false;
    bool live_ = true;
    std::array<u64, Words> pad_{};
};
using small_witness = witness<1, k_small>;
using big_witness = witness<8, k_big>;
static_assert(sizeof(small_witness) <= eventbus::inline_payload_size);
static_assert(sizeof(big_witness) > eventbus::inline_payload_size);

eventbus::event dynamic_event(const char* projection, u64 value) {
    return eventbus::event{.id = {}, .projection = projection, .args = {{"v", value}}};
}

u64 value_of(const eventbus::args& a) {
    return eventbus::arg<u64>(a, "v");
}

// What one producer did; summed by the main thread after the round.
struct produced {
    std::array<u64, kind_count> created{};       // events made
    std::array<u64, kind_count> created_sum{};   // and their values
    std::array<u64, kind_count> accepted{};      // entered the ring (subscribe or commit)
    std::array<u64, kind_count> accepted_sum{};  //
    std::array<u64, kind_count> triggered{};     // run by trigger()
    std::array<u64, kind_count> triggered_sum{};
    std::array<u64, kind_count> refused{};      // subscribe or schedule refused
    std::array<u64, kind_count> rolled_back{};  // in a transaction rolled back
    u64 buffer_full = 0;
    u64 deadline = 0;
    u64 tx_committed = 0;
    u64 tx_refused = 0;  // commit enqueued nothing: rolled back afterwards
    u64 tx_rolled_back = 0;
    u64 tx_lost = 0;    // commit said errc::dropped
    u64 tx_failed = 0;  // commit said errc::handler_failed
    u64 scheduled = 0;
    u64 cancelled_by_handle = 0;
    u64 stopped_by_context = 0;
    u64 drains = 0;
    std::vector<std::string> problems;  // unexpected results, reported after the round

    void problem(std::string text) {
        if (problems.size() < 8)
            problems.push_back(std::move(text));
    }
    void add(const produced& o) {
        for (std::size_t k = 0; k < kind_count; ++k) {
            created[k] += o.created[k];
            created_sum[k] += o.created_sum[k];
            accepted[k] += o.accepted[k];
            accepted_sum[k] += o.accepted_sum[k];
            triggered[k] += o.triggered[k];
            triggered_sum[k] += o.triggered_sum[k];
            refused[k] += o.refused[k];
            rolled_back[k] += o.rolled_back[k];
        }
        buffer_full += o.buffer_full;
        deadline += o.deadline;
        tx_committed += o.tx_committed;
        tx_refused += o.tx_refused;
        tx_rolled_back += o.tx_rolled_back;
        tx_lost += o.tx_lost;
        tx_failed += o.tx_failed;
        scheduled += o.scheduled;
        cancelled_by_handle += o.cancelled_by_handle;
        stopped_by_context += o.stopped_by_context;
        drains += o.drains;
        for (const std::string& p : o.problems)
            problem(p);
    }
};

std::string describe(const std::error_code& ec) {
    return ec ? ec.message() : std::string("no error");
}

// Producer //////////////////////////////////////////////////////////////////////////////////////

template <class Policy>
class producer {
  public:
    producer(eventbus::event_store<Policy>& store, round_tally& tally, produced& out,
             std::size_t id, std::size_t producers, u64 round_number, bool sync,
             const std::atomic<bool>& stop)
        : store_(store)
        , tally_(tally)
        , out_(out)
        , id_(id)
        , base_((round_number << 40U) ^ (static_cast<u64>(id) << 56U))
        // Under block in async mode, events subscribed but not published hold their slots
        // while the workers sit idle: all producers' unpublished events together stay below
        // half the capacity (a step subscribes 1.15 events on average, at most 2).
        , publish_every_(std::clamp<u64>(store.capacity() / (4 * producers), 1, 32))
        , sync_(sync)
        , stop_(stop) {}

    void run() {
        while (!stop_.load(std::memory_order_relaxed)) {
            for (int step = 0; step < 64; ++step)
                once();
        }
    }

  private:
    static constexpr bool blocks = std::is_same_v<Policy, eventbus::block>;

    u64 next_value() noexcept { return mix(base_ + ++values_); }

    // Subscribe's context: under block, a deadline. A sync store whose producers all wait for
    // room would otherwise wait for ever (the producers are the ones that publish); in async
    // mode the workers make room, and waiting out the deadline is a failure.
    [[nodiscard]] eventbus::context wait_context() const {
        if constexpr (blocks)
            return never_.with_timeout(sync_ ? std::chrono::milliseconds(10) : 2000ms);
        else
            return never_;
    }

    void once() {
        ++seq_;
        const u64 value = next_value();
        offer(k_tick, value, tick{value, seq_, id_});
        if (seq_ % 8 == 0)
            offer_witness<small_witness>();
        if (seq_ % 256 == 2)
            offer_witness<big_witness>();
        if (seq_ % 64 == 1) {
            const u64 v = next_value();
            offer(k_dyn, v, dynamic_event("dyn", v));
        }
        if (seq_ % 512 == 3) {
            const u64 v = next_value();
            offer(k_boom, v, dynamic_event("boom", v));
        }
        if (seq_ % 128 == 4) {
            const u64 v = next_value();
            offer(k_orphan, v, orphan{v});
        }
        if (seq_ % 1024 == 5)
            trigger_one();
        if (seq_ % 2048 == 6)
            schedule_one();
        if (seq_ % 4096 == 7)
            transaction_one();
        if (id_ == 0 && seq_ % 65536 == 8)
            drain_once();
        if (seq_ % publish_every_ == 0)
            store_.publish();
    }

    template <class E>
    void offer(kind k, u64 value, E&& ev) {
        ++out_.created[k];
        out_.created_sum[k] += value;
        const std::error_code ec = store_.subscribe(wait_context(), std::forward<E>(ev));
        if (!ec) {
            ++out_.accepted[k];
            out_.accepted_sum[k] += value;
            return;
        }
        refused(k, ec, "subscribe");
    }

    template <class W>
    void offer_witness() {
        const u64 v = next_value();
        W w(tally_, v);
        offer(W::kind_of, v, std::move(w));
    }

    void refused(kind k, const std::error_code& ec, const char* what) {
        ++out_.refused[k];
        if (ec == eventbus::errc::buffer_full && std::is_same_v<Policy, eventbus::return_error>) {
            ++out_.buffer_full;
        } else if (ec == eventbus::errc::deadline_exceeded && blocks) {
            ++out_.deadline;
            if (!sync_)
                out_.problem(std::string(what) + " of a " + kind_names[k] +
                             " event waited 2 s for room while the workers ran");
        } else {
            out_.problem(std::string(what) + " of a " + kind_names[k] + " event: unexpected " +
                         describe(ec));
        }
        // Make room: sync, by dispatching here; async, by making everything eligible.
        store_.publish();
        if (!sync_)
            std::this_thread::yield();
    }

    void trigger_one() {
        const u64 v = next_value();
        ++out_.created[k_small];
        out_.created_sum[k_small] += v;
        const small_witness w(tally_, v);
        const std::error_code ec = store_.trigger(never_, w);
        if (ec) {
            out_.problem("trigger: unexpected " + describe(ec));
            return;
        }
        ++out_.triggered[k_small];
        out_.triggered_sum[k_small] += v;
    }

    // Schedules a witness 0.2 to 3 ms ahead; a third are cancelled by handle, one in eight is
    // scheduled with a context stopped right after.
    void schedule_one() {
        const u64 v = next_value();
        ++out_.created[k_small];
        out_.created_sum[k_small] += v;
        ++schedules_;
        const auto delay =
            std::chrono::microseconds(200 + static_cast<std::int64_t>(mix(v) % 2800));
        eventbus::timer_handle handle;
        if (schedules_ % 8 == 0) {
            std::stop_source stop;
            handle = store_.schedule_after(eventbus::context(stop.get_token()), delay,
                                           small_witness(tally_, v));
            stop.request_stop();
            ++out_.stopped_by_context;
        } else {
            handle = store_.schedule_after(never_, delay, small_witness(tally_, v));
        }
        if (const std::error_code ec = handle.error()) {
            refused(k_small, ec, "schedule");
            return;
        }
        ++out_.scheduled;
        // Cancelled at once, or a while later (usually too late: it has run by then).
        if (schedules_ % 6 == 0 && handle.cancel())
            ++out_.cancelled_by_handle;
        eventbus::timer_handle& kept = pending_[schedules_ % pending_.size()];
        if (schedules_ % 6 == 3 && kept.cancel())
            ++out_.cancelled_by_handle;
        kept = std::move(handle);
    }

    // 1 to 16 events (witnesses and dynamic events); one transaction in four is rolled back.
    void transaction_one() {
        ++transactions_;
        auto tx = store_.begin_transaction();
        const std::size_t n = 1 + transactions_ % 16;
        std::array<u64, kind_count> count{};
        std::array<u64, kind_count> sum{};
        for (std::size_t i = 0; i < n; ++i) {
            const u64 v = next_value();
            const kind k = i % 4 == 3 ? k_dyn : k_small;
            ++out_.created[k];
            out_.created_sum[k] += v;
            ++count[k];
            sum[k] += v;
            const std::error_code ec = k == k_dyn ? tx.publish(dynamic_event("dyn", v))
                                                  : tx.publish(small_witness(tally_, v));
            if (ec)
                out_.problem("transaction publish: unexpected " + describe(ec));
        }
        auto roll_back = [&] {
            if (const std::error_code ec = tx.rollback())
                out_.problem("rollback: unexpected " + describe(ec));
            for (std::size_t k = 0; k < kind_count; ++k)
                out_.rolled_back[k] += count[k];
        };
        if (transactions_ % 4 == 0) {
            roll_back();
            ++out_.tx_rolled_back;
            return;
        }
        const std::error_code ec = tx.commit(never_.with_timeout(10s));
        if (tx.is_open()) {  // nothing enqueued
            const bool expected = (ec == eventbus::errc::buffer_full &&
                                   std::is_same_v<Policy, eventbus::return_error>) ||
                                  (ec == eventbus::errc::deadline_exceeded && blocks);
            if (!expected)
                out_.problem("commit left open: unexpected " + describe(ec));
            roll_back();
            ++out_.tx_refused;
            store_.publish();
            return;
        }
        ++out_.tx_committed;
        for (std::size_t k = 0; k < kind_count; ++k) {
            out_.accepted[k] += count[k];
            out_.accepted_sum[k] += sum[k];
        }
        // handler_failed: a churn handler of dynamic events throws at times.
        if (ec == eventbus::errc::dropped && std::is_same_v<Policy, eventbus::drop_oldest>)
            ++out_.tx_lost;
        else if (ec == eventbus::errc::handler_failed)
            ++out_.tx_failed;
        else if (ec)
            out_.problem("commit: unexpected " + describe(ec));
    }

    void drain_once() {
        if (const std::error_code ec = store_.drain(never_.with_timeout(60s)))
            out_.problem("drain: " + describe(ec));
        ++out_.drains;
    }

    eventbus::event_store<Policy>& store_;
    round_tally& tally_;
    produced& out_;
    std::size_t id_;
    u64 base_;
    u64 publish_every_;
    bool sync_;
    const std::atomic<bool>& stop_;
    const eventbus::context never_;
    u64 seq_ = 0;
    u64 values_ = 0;
    u64 schedules_ = 0;
    u64 transactions_ = 0;
    std::array<eventbus::timer_handle, 8> pending_{};  // kept for a while, some to cancel
};

// Churn /////////////////////////////////////////////////////////////////////////////////////////

// Adds and removes handlers (of ticks, dynamic events and orphans; at most one orphan handler at
// a time), a handler that removes itself from inside its call, and an error hook.
template <class Policy>
void churn(eventbus::dispatcher& handlers, eventbus::event_store<Policy>& store, round_tally& tally,
           const std::atomic<bool>& stop) {
    for (u64 turn = 1; !stop.load(std::memory_order_relaxed); ++turn) {
        const bool throwing = turn % 4 == 0;
        eventbus::scoped_registration on_tick = handlers.on<tick>(
            [&tally](const tick&) { tally.churn_calls.fetch_add(1, std::memory_order_relaxed); });
        eventbus::scoped_registration on_dyn =
            handlers.on("dyn",
                        [&tally, throwing](const eventbus::context&, const eventbus::args&) {
                            tally.churn_calls.fetch_add(1, std::memory_order_relaxed);
                            if (throwing) {
                                tally.churn_throws.fetch_add(1, std::memory_order_relaxed);
                                throw std::runtime_error("churn");
                            }
                        },
                        {.name = "churn"});
        eventbus::scoped_registration on_orphan = handlers.on<orphan>([&tally](const orphan&) {
            tally.churn_calls.fetch_add(1, std::memory_order_relaxed);
            tally.orphan_calls.fetch_add(1, std::memory_order_relaxed);
        });
        eventbus::scoped_registration hook;
        if (turn % 8 == 0)
            hook = store.on_error(
                [&tally](const eventbus::context&, const eventbus::handler_failure&) {
                    tally.hook_calls.fetch_add(1, std::memory_order_relaxed);
                });
        // Removes itself at its first call (on whichever thread that is); the handle is
        // published to the handler once it is complete.
        std::shared_ptr<eventbus::registration> self;
        if (turn % 16 == 0) {
            self = std::make_shared<eventbus::registration>();
            auto ready = std::make_shared<std::atomic<bool>>(false);
            *self = handlers.on<tick>([&tally, handle = self.get(), ready](const tick&) {
                tally.churn_calls.fetch_add(1, std::memory_order_relaxed);
                if (ready->load(std::memory_order_acquire))
                    handle->remove();
            });
            ready->store(true, std::memory_order_release);
        }
        std::this_thread::sleep_for(200us);
        if (self)
            self->remove();  // waits for calls in flight: `handle` is not used after this
    }
}

// Round /////////////////////////////////////////////////////////////////////////////////////////

struct round_result {
    eventbus::store_metrics metrics;
    produced total;
    double seconds = 0;
    u64 checksum = 0;  // of the values the permanent handlers saw
    std::vector<std::string> failures;
};

// Reconciliation: collects failures as readable lines.
class checker {
  public:
    explicit checker(std::vector<std::string>& failures) : failures_(failures) {}
    void equal(const char* what, u64 got, u64 expected) {
        if (got != expected)
            fail(what, got, "expected", expected);
    }
    void at_most(const char* what, u64 got, u64 limit) {
        if (got > limit)
            fail(what, got, "at most", limit);
    }
    void at_least(const char* what, u64 got, u64 limit) {
        if (got < limit)
            fail(what, got, "at least", limit);
    }

  private:
    void fail(const char* what, u64 got, const char* relation, u64 other) {
        char line[256];
        std::snprintf(line, sizeof line, "%s: %" PRIu64 ", %s %" PRIu64, what, got, relation,
                      other);
        failures_.emplace_back(line);
    }
    std::vector<std::string>& failures_;
};

std::atomic<std::int64_t> watchdog_deadline{0};  // steady-clock ns; 0: no round running
std::atomic<u64> watchdog_round{0};

template <class Policy>
round_result run_round(const settings& s, u64 number, mode m, std::size_t capacity,
                       std::chrono::duration<double> length) {
    constexpr bool lossy = std::is_same_v<Policy, eventbus::drop_oldest>;
    const bool sync = m == mode::sync;
    const bool ordered = m == mode::async_ordered;
    round_result r;
    round_tally tally;
    std::vector<produced> outs(s.producers);
    const auto start = clock_type::now();
    watchdog_round.store(number);
    watchdog_deadline.store(
        std::chrono::duration_cast<std::chrono::nanoseconds>(
            (start + std::chrono::duration_cast<clock_type::duration>(length) + 300s)
                .time_since_epoch())
            .count());
    {
        eventbus::dispatcher handlers;
        // The permanent handlers: one per kind but orphan, adding what they see to the tally.
        handlers.on<tick>([&tally, ordered](const tick& t) {
            tally.seen.add(k_tick, t.value);
            if (ordered) {
                std::atomic<u64>& last = tally.last_seq[t.producer];
                if (t.seq <= last.load(std::memory_order_relaxed))
                    tally.out_of_order.fetch_add(1, std::memory_order_relaxed);
                last.store(t.seq, std::memory_order_relaxed);
            }
        });
        handlers.on<small_witness>([&tally](const small_witness& w) {
            if (!w.see())
                tally.seen_twice.fetch_add(1, std::memory_order_relaxed);
            tally.seen.add(k_small, w.value());
        });
        handlers.on<big_witness>([&tally](const big_witness& w) {
            if (!w.see())
                tally.seen_twice.fetch_add(1, std::memory_order_relaxed);
            tally.seen.add(k_big, w.value());
        });
        handlers.on("dyn", [&tally](const eventbus::context&, const eventbus::args& a) {
            tally.seen.add(k_dyn, value_of(a));
        });
        handlers.on("boom",
                    [&tally](const eventbus::context&, const eventbus::args& a) {
                        tally.seen.add(k_boom, value_of(a));
                        throw std::runtime_error("boom");
                    },
                    {.name = "boom"});

        eventbus::event_store<Policy> store(
            handlers, capacity,
            eventbus::store_options{
                .async = !sync, .workers = sync ? 0 : s.workers, .ordered_by_key = ordered});
        std::atomic<bool> stop{false};
        {
            std::vector<std::jthread> threads;
            threads.emplace_back([&] { churn(handlers, store, tally, stop); });
            for (std::size_t i = 0; i < s.producers; ++i)
                threads.emplace_back([&, i] {
                    producer<Policy>(store, tally, outs[i], i, s.producers, number, sync, stop)
                        .run();
                });
            std::this_thread::sleep_until(start +
                                          std::chrono::duration_cast<clock_type::duration>(length));
            stop.store(true);
        }
        const eventbus::context shutdown = eventbus::context{}.with_timeout(120s);
        if (const std::error_code ec = store.drain(shutdown))
            r.failures.push_back("drain at the end of the round: " + describe(ec));
        if (const std::error_code ec = store.close(shutdown))
            r.failures.push_back("close: " + describe(ec));
        if (const std::error_code ec = store.subscribe(shutdown, tick{0, 0, 0});
            ec != eventbus::errc::closed)
            r.failures.push_back("subscribe after close: " + describe(ec));
        r.metrics = store.metrics();
    }  // the store, then the dispatcher: every witness has been destroyed now
    r.seconds = std::chrono::duration<double>(clock_type::now() - start).count();
    watchdog_deadline.store(0);

    for (const produced& o : outs)
        r.total.add(o);
    const produced& p = r.total;
    const eventbus::store_metrics& mt = r.metrics;
    for (const std::string& problem : p.problems)
        r.failures.push_back(problem);
    for (std::size_t k = 0; k < kind_count; ++k)
        r.checksum += tally.seen.sum(static_cast<kind>(k));

    checker check(r.failures);
    u64 accepted = 0;
    u64 triggered = 0;
    u64 permanent_calls = 0;
    for (std::size_t k = 0; k < kind_count; ++k) {
        accepted += p.accepted[k];
        triggered += p.triggered[k];
        if (k != k_orphan)
            permanent_calls += tally.seen.count(static_cast<kind>(k));
    }
    const u64 churn_calls = tally.churn_calls.load();
    const u64 orphan_calls = tally.orphan_calls.load();
    const u64 unseen_small_expected = p.refused[k_small] + p.rolled_back[k_small] + mt.cancelled;
    const u64 unseen_big_expected = p.refused[k_big] + p.rolled_back[k_big];

    // Counters against what the producers did.
    check.at_most("cancelled", mt.cancelled, p.scheduled);
    check.equal("published (accepted + scheduled - cancelled)", mt.published,
                accepted + p.scheduled - std::min(mt.cancelled, p.scheduled));
    check.at_most("scheduled", mt.scheduled, p.scheduled);
    check.at_least("cancelled (by handle at least)", mt.cancelled, p.cancelled_by_handle);
    check.equal("triggered", mt.triggered, triggered);
    check.equal("processed (handler calls)", mt.processed, permanent_calls + churn_calls);
    check.equal("errors (calls that threw)", mt.errors,
                tally.seen.count(k_boom) + tally.churn_throws.load());
    check.at_most("error hook calls", tally.hook_calls.load(), mt.errors);
    check.equal("handled (events the handlers saw)", mt.handled, permanent_calls + orphan_calls);
    check.equal("published + triggered == handled + unhandled + dropped",
                mt.published + mt.triggered, mt.handled + mt.unhandled + mt.dropped);
    check.at_most("orphans seen", orphan_calls, p.accepted[k_orphan]);
    check.equal("events seen twice", tally.seen_twice.load(), 0);
    check.equal("ticks out of per-key order", tally.out_of_order.load(), 0);

    // Every witness is seen exactly once or destroyed unseen exactly once.
    for (kind k : {k_small, k_big}) {
        char what[96];
        std::snprintf(what, sizeof what, "%s: made == seen + destroyed unseen", kind_names[k]);
        check.equal(what, p.created[k], tally.seen.count(k) + tally.unseen.count(k));
        std::snprintf(what, sizeof what, "%s: checksum made == seen + destroyed unseen",
                      kind_names[k]);
        check.equal(what, p.created_sum[k], tally.seen.sum(k) + tally.unseen.sum(k));
    }
    if constexpr (!lossy) {
        check.equal("dropped", mt.dropped, 0);
        check.equal("small_witness destroyed unseen (refused + rolled back + cancelled)",
                    tally.unseen.count(k_small), unseen_small_expected);
        check.equal("big_witness destroyed unseen (refused + rolled back)",
                    tally.unseen.count(k_big), unseen_big_expected);
        for (kind k : {k_tick, k_dyn, k_boom}) {
            char what[96];
            std::snprintf(what, sizeof what, "%s: seen == accepted + triggered", kind_names[k]);
            check.equal(what, tally.seen.count(k), p.accepted[k] + p.triggered[k]);
            std::snprintf(what, sizeof what, "%s: checksum seen == accepted + triggered",
                          kind_names[k]);
            check.equal(what, tally.seen.sum(k), p.accepted_sum[k] + p.triggered_sum[k]);
        }
        check.equal("unhandled (orphans accepted - orphans seen)", mt.unhandled,
                    p.accepted[k_orphan] - std::min(orphan_calls, p.accepted[k_orphan]));
    } else {
        // What drop_oldest overwrote, as the events themselves tell it.
        u64 lost = 0;
        for (kind k : {k_tick, k_dyn, k_boom}) {
            const u64 offered = p.accepted[k] + p.triggered[k];
            char what[96];
            std::snprintf(what, sizeof what, "%s: seen", kind_names[k]);
            check.at_most(what, tally.seen.count(k), offered);
            lost += offered - std::min(offered, tally.seen.count(k));
        }
        check.at_least("small_witness destroyed unseen", tally.unseen.count(k_small),
                       unseen_small_expected);
        check.at_least("big_witness destroyed unseen", tally.unseen.count(k_big),
                       unseen_big_expected);
        lost += tally.unseen.count(k_small) -
                std::min(tally.unseen.count(k_small), unseen_small_expected);
        lost +=
            tally.unseen.count(k_big) - std::min(tally.unseen.count(k_big), unseen_big_expected);
        const u64 orphans_left =
            p.accepted[k_orphan] - std::min(orphan_calls, p.accepted[k_orphan]);
        check.at_least("orphans not seen", orphans_left, mt.unhandled);
        lost += orphans_left - std::min(orphans_left, mt.unhandled);
        check.equal("dropped (as the events tell it)", mt.dropped, lost);
    }
    return r;
}

// RSS ///////////////////////////////////////////////////////////////////////////////////////////

u64 rss_bytes() {
    std::FILE* f = std::fopen("/proc/self/statm", "r");
    if (f == nullptr)
        return 0;
    unsigned long long size = 0;
    unsigned long long resident = 0;
    const int n = std::fscanf(f, "%llu %llu", &size, &resident);
    std::fclose(f);
    if (n != 2)
        return 0;
    return static_cast<u64>(resident) * static_cast<u64>(sysconf(_SC_PAGESIZE));
}

// Bytes the allocator has handed out and not got back (glibc 2.33 and later), else 0.
u64 heap_in_use() {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
    const struct mallinfo2 info = mallinfo2();
    return static_cast<u64>(info.uordblks) + static_cast<u64>(info.hblkhd);
#else
    return 0;
#endif
}

double kib(u64 bytes) {
    return static_cast<double>(bytes) / 1024.0;
}

double mib(u64 bytes) {
    return static_cast<double>(bytes) / (1024.0 * 1024.0);
}

struct rss_sample {
    double at;  // seconds since the start
    u64 bytes;
};

// Samples RSS every second into a buffer reserved up front, and ends the process when a round
// runs far past its time.
class sampler {
  public:
    explicit sampler(std::size_t seconds) {
        samples_.reserve(seconds + 64);
        thread_ = std::jthread([this](const std::stop_token& stop) { run(stop); });
    }
    std::vector<rss_sample> stop() {
        thread_.request_stop();
        thread_.join();
        return std::move(samples_);
    }

  private:
    void run(const std::stop_token& stop) {
        auto next = start_;
        while (!stop.stop_requested()) {
            const u64 bytes = rss_bytes();
            if (samples_.size() < samples_.capacity())
                samples_.push_back(
                    {std::chrono::duration<double>(clock_type::now() - start_).count(), bytes});
            const std::int64_t deadline = watchdog_deadline.load();
            if (deadline != 0 &&
                clock_type::now().time_since_epoch() > std::chrono::nanoseconds(deadline)) {
                std::fprintf(stderr,
                             "FAIL: round %" PRIu64
                             " has not finished 5 minutes after its end: a hang\n",
                             watchdog_round.load());
                std::fflush(stdout);
                std::fflush(stderr);
                std::_Exit(3);
            }
            next += 1s;
            while (!stop.stop_requested() && clock_type::now() < next)
                std::this_thread::sleep_for(50ms);
        }
    }

    clock_type::time_point start_ = clock_type::now();
    std::vector<rss_sample> samples_;
    std::jthread thread_;
};

// Main //////////////////////////////////////////////////////////////////////////////////////////

struct totals {
    u64 rounds = 0;
    u64 failed_rounds = 0;
    eventbus::store_metrics m;
    produced p;
    u64 checksum = 0;
    double seconds = 0;
    // Heap in use between rounds, when every store, dispatcher and event of the round is gone.
    clock_type::time_point start;
    double warm_up = 0;
    u64 heap_warm_peak = 0;
    u64 heap_later_peak = 0;
    u64 heap_later_rounds = 0;
};

void add_metrics(eventbus::store_metrics& sum, const eventbus::store_metrics& m) {
    sum.published += m.published;
    sum.processed += m.processed;
    sum.handled += m.handled;
    sum.errors += m.errors;
    sum.dropped += m.dropped;
    sum.unhandled += m.unhandled;
    sum.triggered += m.triggered;
    sum.scheduled += m.scheduled;
    sum.cancelled += m.cancelled;
}

void print_counters(const char* indent, const eventbus::store_metrics& m, const produced& p) {
    std::printf("%spublished %" PRIu64 ", triggered %" PRIu64 ", handled %" PRIu64
                ", unhandled %" PRIu64 ", dropped %" PRIu64 "\n",
                indent, m.published, m.triggered, m.handled, m.unhandled, m.dropped);
    std::printf("%sprocessed %" PRIu64 ", errors %" PRIu64 ", scheduled %" PRIu64
                ", cancelled %" PRIu64 " (%" PRIu64 " by handle, %" PRIu64
                " scheduled with a stopped context)\n",
                indent, m.processed, m.errors, m.scheduled, m.cancelled, p.cancelled_by_handle,
                p.stopped_by_context);
    u64 refused = 0;
    for (u64 n : p.refused)
        refused += n;
    std::printf("%srefused %" PRIu64 " (buffer_full %" PRIu64 ", deadline %" PRIu64
                "); transactions: %" PRIu64 " committed (%" PRIu64 " with a lost event, %" PRIu64
                " with a failed handler), %" PRIu64 " refused, %" PRIu64
                " rolled back; drains %" PRIu64 "\n",
                indent, refused, p.buffer_full, p.deadline, p.tx_committed, p.tx_lost, p.tx_failed,
                p.tx_refused, p.tx_rolled_back, p.drains);
}

[[noreturn]] void usage(const char* message) {
    std::fprintf(stderr,
                 "error: %s\nusage: eventbus_soak <minutes> [--producers P] [--workers W] "
                 "[--round-seconds S]\n",
                 message);
    std::exit(2);
}

settings parse(int argc, char** argv) {
    settings s;
    if (argc < 2)
        usage("missing <minutes>");
    auto number = [](const char* text, const char* what) {
        char* end = nullptr;
        const double v = std::strtod(text, &end);
        if (end == text || *end != '\0' || !(v > 0) || v > 1e6)
            usage(what);
        return v;
    };
    s.minutes = number(argv[1], "<minutes> must be a positive number");
    for (int i = 2; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (i + 1 >= argc)
            usage("an option without its value");
        const char* value = argv[++i];
        if (arg == "--producers")
            s.producers = static_cast<std::size_t>(number(value, "--producers: 1 to 64"));
        else if (arg == "--workers")
            s.workers = static_cast<std::size_t>(number(value, "--workers: at least 1"));
        else if (arg == "--round-seconds")
            s.round_seconds = number(value, "--round-seconds: a positive number");
        else
            usage("unknown option");
    }
    if (s.producers < 1 || s.producers > max_producers)
        usage("--producers: 1 to 64");
    if (s.workers < 1 || s.workers > 256)
        usage("--workers: 1 to 256");
    return s;
}

constexpr std::array<mode, 3> modes{mode::async_plain, mode::async_ordered, mode::sync};
constexpr std::size_t configurations = modes.size() * 3;

template <class Policy>
void run_one(const settings& s, u64 number, mode m, std::size_t capacity,
             std::chrono::duration<double> length, totals& t) {
    round_result r = run_round<Policy>(s, number, m, capacity, length);
    const u64 heap = heap_in_use();
    if (std::chrono::duration<double>(clock_type::now() - t.start).count() <= t.warm_up) {
        t.heap_warm_peak = std::max(t.heap_warm_peak, heap);
    } else {
        t.heap_later_peak = std::max(t.heap_later_peak, heap);
        ++t.heap_later_rounds;
    }
    const u64 events = r.metrics.published + r.metrics.triggered;
    const u64 handled = r.metrics.handled;
    std::printf(
        "round %" PRIu64 " %.*s %.*s cap %zu: %.2f s, %" PRIu64 " events (%.0f/s), %" PRIu64
        " handled (%.0f/s), checksum %016" PRIx64 ", rss %.1f MiB, heap %.1f KiB: %s\n",
        number, static_cast<int>(policy_name<Policy>().size()), policy_name<Policy>().data(),
        static_cast<int>(mode_name(m).size()), mode_name(m).data(), capacity, r.seconds, events,
        static_cast<double>(events) / r.seconds, handled, static_cast<double>(handled) / r.seconds,
        r.checksum, mib(rss_bytes()), kib(heap), r.failures.empty() ? "OK" : "FAILED");
    print_counters("    ", r.metrics, r.total);
    for (const std::string& f : r.failures)
        std::printf("    FAIL: %s\n", f.c_str());
    std::fflush(stdout);
    ++t.rounds;
    if (!r.failures.empty())
        ++t.failed_rounds;
    add_metrics(t.m, r.metrics);
    t.p.add(r.total);
    t.checksum += r.checksum;
    t.seconds += r.seconds;
}

}  // namespace

int main(int argc, char** argv) {
    const settings s = parse(argc, argv);
    const double total_seconds = s.minutes * 60.0;
    const double round_seconds =
        s.round_seconds > 0
            ? s.round_seconds
            : std::clamp(total_seconds / (3.0 * static_cast<double>(configurations)), 0.25, 10.0);
    const double cycle = round_seconds * static_cast<double>(configurations);
    const double warm_up = std::min(std::max(0.2 * total_seconds, cycle), 0.5 * total_seconds);

    std::printf(
        "eventbus_soak: %.2f min, %zu producers, %zu workers, rounds of %.2f s over 3 "
        "policies x 3 modes x capacities 1024/64/4096/256; warm-up %.1f s; %u hardware "
        "threads\n",
        s.minutes, s.producers, s.workers, round_seconds, warm_up,
        std::thread::hardware_concurrency());
    std::fflush(stdout);

    sampler rss(static_cast<std::size_t>(total_seconds) + 600);
    totals t;
    const auto start = clock_type::now();
    t.start = start;
    t.warm_up = warm_up;
    const auto end = start + std::chrono::duration_cast<clock_type::duration>(
                                 std::chrono::duration<double>(total_seconds));
    for (u64 number = 0;; ++number) {
        const auto left = std::chrono::duration<double>(end - clock_type::now());
        if (left.count() < 0.05)
            break;
        const std::chrono::duration<double> length(std::min(round_seconds, left.count()));
        const mode m = modes[(number / 3) % modes.size()];
        const std::size_t capacity = capacities[(number / configurations) % capacities.size()];
        switch (number % 3) {
            case 0:
                run_one<eventbus::drop_oldest>(s, number, m, capacity, length, t);
                break;
            case 1:
                run_one<eventbus::block>(s, number, m, capacity, length, t);
                break;
            default:
                run_one<eventbus::return_error>(s, number, m, capacity, length, t);
                break;
        }
    }
    const double elapsed = std::chrono::duration<double>(clock_type::now() - start).count();
    const std::vector<rss_sample> samples = rss.stop();

    // RSS: the warm-up's peak against every later sample.
    u64 warm_peak = 0;
    u64 later_peak = 0;
    std::size_t later = 0;
    for (const rss_sample& x : samples) {
        if (x.at <= warm_up) {
            warm_peak = std::max(warm_peak, x.bytes);
        } else {
            later_peak = std::max(later_peak, x.bytes);
            ++later;
        }
    }
    const u64 final_rss = rss_bytes();
    const u64 tolerance = std::max<u64>(8ULL << 20U, warm_peak / 10);
    bool rss_ok = true;
    std::string rss_verdict;
    if (later < 5) {
        rss_verdict = "not checked (fewer than 5 samples after the warm-up)";
    } else if (later_peak > warm_peak + tolerance) {
        rss_ok = false;
        rss_verdict = "FAIL: grew by more than the tolerance";
    } else {
        rss_verdict = "OK";
    }
    // Heap in use between rounds: what the rounds leave behind, a finer view than RSS (which
    // also moves with the allocator's free pages).
    const u64 heap_tolerance = 64ULL << 10U;
    bool heap_ok = true;
    std::string heap_verdict;
    if (t.heap_warm_peak == 0) {
        heap_verdict = "not checked (no allocator statistics)";
    } else if (t.heap_later_rounds < 3) {
        heap_verdict = "not checked (fewer than 3 rounds after the warm-up)";
    } else if (t.heap_later_peak > t.heap_warm_peak + heap_tolerance) {
        heap_ok = false;
        heap_verdict = "FAIL: grew by more than the tolerance";
    } else {
        heap_verdict = "OK";
    }

    const u64 events = t.m.published + t.m.triggered;
    std::printf("\nsummary: %" PRIu64 " rounds in %.1f s (%" PRIu64 " failed)\n", t.rounds, elapsed,
                t.failed_rounds);
    std::printf("  events: %" PRIu64 " (published + triggered), %.0f/s; handled %" PRIu64
                ", %.0f/s\n",
                events, static_cast<double>(events) / t.seconds, t.m.handled,
                static_cast<double>(t.m.handled) / t.seconds);
    print_counters("  ", t.m, t.p);
    std::printf("  checksum: %016" PRIx64 "\n", t.checksum);
    std::printf(
        "  rss: warm-up peak %.1f MiB (first %.0f s), peak after %.1f MiB (%zu samples), "
        "final %.1f MiB, limit %.1f MiB: %s\n",
        mib(warm_peak), warm_up, mib(later_peak), later, mib(final_rss), mib(warm_peak + tolerance),
        rss_verdict.c_str());
    std::printf("  heap in use between rounds: warm-up peak %.1f KiB, peak after %.1f KiB (%" PRIu64
                " rounds), limit %.1f KiB: %s\n",
                kib(t.heap_warm_peak), kib(t.heap_later_peak), t.heap_later_rounds,
                kib(t.heap_warm_peak + heap_tolerance), heap_verdict.c_str());
    const bool ok = t.failed_rounds == 0 && rss_ok && heap_ok && t.rounds > 0;
    std::printf("%s\n", ok ? "PASS" : "FAIL");
    return ok ? 0 : 1;
}
