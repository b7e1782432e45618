// Helpers shared by the test files: stress scaling, a lifetime-counting element, thread failure
// collection (Catch2 assertions are not thread-safe, so worker threads count failures and the
// test thread asserts on the counts), handshakes that do not depend on timing (waiting with a
// generous deadline, one-way flags, seeing a thread asleep in the kernel), and the identity
// that a store's counters satisfy at quiescence.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <dirent.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace eventbus_test {

/// EVENTBUS_STRESS_SCALE (default 1) shrinks [stress] tests, e.g. 0.05 under ThreadSanitizer.
inline double stress_scale() {
    const char* text = std::getenv("EVENTBUS_STRESS_SCALE");
    if (text == nullptr || *text == '\0')
        return 1.0;
    const double value = std::strtod(text, nullptr);
    return value > 0.0 ? value : 1.0;
}

/// `n` scaled by EVENTBUS_STRESS_SCALE, never below `minimum`.
inline std::size_t scaled(std::size_t n, std::size_t minimum = 1) {
    const auto value = static_cast<std::size_t>(static_cast<double>(n) * stress_scale());
    return value < minimum ? minimum : value;
}

/// How many of `counters[0..n)` are not exactly 1: events handled never or more than once.
template <class Counter>
std::size_t not_exactly_once(const Counter* counters, std::size_t n) {
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < n; ++i)
        if (counters[i].load() != 1)
            ++wrong;
    return wrong;
}

/// Counts constructions and destructions of `tracked` objects and catches double destruction.
struct lifetime_counts {
    std::atomic<long> constructed{0};
    std::atomic<long> destroyed{0};
    std::atomic<long> double_destroyed{0};

    [[nodiscard]] long alive() const { return constructed.load() - destroyed.load(); }
};

/// A nothrow-movable, move-only element whose every instance is counted.
class tracked {
  public:
    tracked(lifetime_counts& counts, int value) noexcept : counts_(&counts), value_(value) {
        counts_->constructed.fetch_add(1);
    }
    tracked(tracked&& other) noexcept : counts_(other.counts_), value_(other.value_) {
        counts_->constructed.fetch_add(1);
    }
    tracked(const tracked&) = delete;
    tracked& operator=(const tracked&) = delete;
    tracked& operator=(tracked&&) = delete;
    ~tracked() {
        if (state_ != live) {
            counts_->double_destroyed.fetch_add(1);
            return;
        }
        state_ = dead;
        counts_->destroyed.fetch_add(1);
    }

    [[nodiscard]] int value() const noexcept { return value_; }

  private:
    static constexpr std::uint32_t live = 0x11fe11feU;
    static constexpr std::uint32_t dead = 0xdeadbeefU;
    lifetime_counts* counts_;
    int value_;
    std::uint32_t state_ = live;
};

// waiting without timing assumptions ////////////////////////////////////////////////////////////

/// How long a test waits for something that must happen before it calls it a failure: so long
/// that only a defect runs into it, never a slow or loaded machine.
inline constexpr std::chrono::seconds patience{30};

/// Polls `done` until it holds (true) or `limit` has passed (false).
template <class Predicate>
bool eventually(Predicate&& done, std::chrono::steady_clock::duration limit = patience) {
    const auto give_up = std::chrono::steady_clock::now() + limit;
    while (!done()) {
        if (std::chrono::steady_clock::now() >= give_up)
            return done();
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return true;
}

/// For what must not happen: watches `happened` for `window`; true if it never held. The window
/// only bounds how long the test looks: a slow machine can make it miss a defect, but never makes
/// it report one that is not there.
template <class Predicate>
bool stays_false(Predicate&& happened, std::chrono::steady_clock::duration window) {
    const auto until = std::chrono::steady_clock::now() + window;
    while (std::chrono::steady_clock::now() < until) {
        if (happened())
            return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return !happened();
}

/// A one-way signal between threads: set() once; wait() sleeps until it is set.
class flag {
  public:
    void set() {
        {
            const std::lock_guard lock(mutex_);
            set_ = true;
        }
        cv_.notify_all();
    }
    [[nodiscard]] bool is_set() const {
        const std::lock_guard lock(mutex_);
        return set_;
    }
    void wait() const {
        std::unique_lock lock(mutex_);
        cv_.wait(lock, [this] { return set_; });
    }

  private:
    mutable std::mutex mutex_;
    mutable std::condition_variable cv_;
    bool set_ = false;
};

/// A call that the test must catch in progress: pass() says it has entered, then waits until the
/// test opens the gate.
struct gate {
    flag entered;
    flag opened;
    void pass() {
        entered.set();
        opened.wait();
    }
};

/// Opens a gate when it goes out of scope, also when an assertion throws: declared after the
/// store whose handler waits at the gate, it lets the store's destructor finish.
class open_at_exit {
  public:
    explicit open_at_exit(gate& g) noexcept : gate_(g) {}
    open_at_exit(const open_at_exit&) = delete;
    open_at_exit& operator=(const open_at_exit&) = delete;
    ~open_at_exit() { gate_.opened.set(); }

  private:
    gate& gate_;
};

// watching threads sleep (Linux) ////////////////////////////////////////////////////////////////
//
// A test that wants another thread to be waiting (blocked in a push, in a removal, idle) before it
// acts asks the kernel whether that thread is asleep, instead of sleeping "long enough". Where the
// kernel cannot be asked, the answers say "asleep": tests then only lose the guarantee that the
// waiting path, rather than a fast path, was taken.

/// A thread's id in the kernel; 0 is "not known yet".
using thread_id = long;

/// True where threads can be watched (Linux, with /proc).
#if defined(__linux__)
inline constexpr bool can_watch_threads = true;
#else
inline constexpr bool can_watch_threads = false;
#endif

/// The calling thread's id in the kernel.
inline thread_id current_thread_id() noexcept {
#if defined(__linux__)
    return static_cast<thread_id>(::syscall(SYS_gettid));
#else
    return -1;
#endif
}

namespace detail {
inline std::string task_file(thread_id id, const char* name) {
    std::ifstream in("/proc/self/task/" + std::to_string(id) + "/" + name);
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
}
}  // namespace detail

/// Whether thread `id` of this process is asleep in the kernel (state S: waiting on a futex, a
/// condition variable, a timer), rather than running or ready to run. False for id 0; true when
/// it cannot tell.
inline bool is_asleep(thread_id id) {
    if (id == 0)
        return false;
    if (!can_watch_threads || id < 0)
        return true;
    const std::string stat = detail::task_file(id, "stat");
    const auto name_end = stat.rfind(')');  // the name in parentheses may contain anything
    if (name_end == std::string::npos || name_end + 2 >= stat.size())
        return true;
    return stat[name_end + 2] == 'S';
}

/// Whether every thread in `ids` is asleep.
inline bool all_asleep(const std::vector<thread_id>& ids) {
    for (const thread_id id : ids)
        if (!is_asleep(id))
            return false;
    return true;
}

/// How often the threads in `ids` have gone to sleep so far (their voluntary context switches):
/// a thread that stays asleep adds nothing, one that polls adds one per nap. 0 when unknown.
inline std::uint64_t naps(const std::vector<thread_id>& ids) {
    std::uint64_t total = 0;
    for (const thread_id id : ids) {
        if (!can_watch_threads || id <= 0)
            continue;
        const std::string status = detail::task_file(id, "status");
        const std::string field = "\nvoluntary_ctxt_switches:";
        const auto at = status.find(field);
        if (at != std::string::npos)
            total += std::strtoull(status.c_str() + at + field.size(), nullptr, 10);
    }
    return total;
}

/// The ids of this process's threads (empty where they cannot be listed).
inline std::vector<thread_id> thread_ids() {
    std::vector<thread_id> ids;
#if defined(__linux__)
    if (DIR* dir = ::opendir("/proc/self/task")) {
        while (const dirent* entry = ::readdir(dir)) {
            const thread_id id = std::strtol(entry->d_name, nullptr, 10);
            if (id > 0)
                ids.push_back(id);
        }
        ::closedir(dir);
    }
#endif
    return ids;
}

/// thread_ids() for comparing with started_since(): first starts and joins a thread, so that
/// helper threads a runtime starts with the first thread (ThreadSanitizer's) are already there.
inline std::vector<thread_id> threads_before() {
    std::thread([] {}).join();
    return thread_ids();
}

/// The threads of this process that are not in `before`: those started since it was taken.
inline std::vector<thread_id> started_since(const std::vector<thread_id>& before) {
    std::vector<thread_id> started;
    for (const thread_id id : thread_ids()) {
        bool known = false;
        for (const thread_id old : before)
            known = known || old == id;
        if (!known)
            started.push_back(id);
    }
    return started;
}

/// Runs `action` on a new thread once thread `id` is asleep (at the latest after `patience`):
/// releases a thread that is expected to wait only once it really waits. `action` must not use
/// Catch2 assertions.
inline std::jthread when_asleep(thread_id id, std::function<void()> action) {
    return std::jthread([id, action = std::move(action)] {
        (void)eventually([id] { return is_asleep(id); });
        action();
    });
}

// a store's counters ///////////////////////////////////////////////////////////////////////////

/// The identity a store's counters satisfy at quiescence (after drain() or close() returned, with
/// no producer, handler or timer running): every event taken in, published or triggered, was
/// handled (at least one handler call ran), found no handler (also: all of its handlers were
/// removed first), or was dropped. `processed` counts handler calls, so it is at least `handled`;
/// `errors` counts the calls that threw. A scheduled event reached the ring (then it is in
/// `published`) or was cancelled; one still pending (after drain(), not after close()) neither.
template <class Metrics>
bool reconciles(const Metrics& m) {
    return m.published + m.triggered == m.handled + m.unhandled + m.dropped &&
           m.processed >= m.handled && m.errors <= m.processed && m.cancelled <= m.scheduled &&
           m.scheduled - m.cancelled <= m.published &&
           // Every failed call of an event from the ring was retried or given up on (a dead
           // letter); trigger()'s caller is told of its own.
           m.errors == m.retried + m.dead_lettered + m.trigger_errors &&
           m.dead_letters_dropped <= m.dead_lettered &&
           // Nothing waits, and with latency histograms every event taken waited once.
           m.depth == 0 && m.high_water >= m.depth &&
           (m.queue_wait.empty() || m.queue_wait.count() == m.published - m.dropped);
}

/// Every counter, for the message of a failed check.
template <class Metrics>
std::string describe(const Metrics& m) {
    std::ostringstream text;
    text << "published " << m.published << " + triggered " << m.triggered << " = "
         << m.published + m.triggered << "; handled " << m.handled << " + unhandled " << m.unhandled
         << " + dropped " << m.dropped << " = " << m.handled + m.unhandled + m.dropped
         << "; processed " << m.processed << ", errors " << m.errors << ", scheduled "
         << m.scheduled << ", cancelled " << m.cancelled << "; retried " << m.retried
         << " + dead_lettered " << m.dead_lettered << " + trigger_errors " << m.trigger_errors
         << " = " << m.retried + m.dead_lettered + m.trigger_errors << " (errors)"
         << ", dead_letters_dropped " << m.dead_letters_dropped << "; depth " << m.depth
         << ", high_water " << m.high_water << ", queue_wait " << m.queue_wait.count()
         << ", handler_duration " << m.handler_duration.count();
    return text.str();
}

}  // namespace eventbus_test

/// Checks `reconciles(metrics)`, printing every counter when it fails (after catch.hpp).
#define CHECK_RECONCILES(metrics)                                   \
    do {                                                            \
        const auto eventbus_test_metrics_ = (metrics);              \
        INFO(::eventbus_test::describe(eventbus_test_metrics_));    \
        CHECK(::eventbus_test::reconciles(eventbus_test_metrics_)); \
    } while (false)
#define REQUIRE_RECONCILES(metrics)                                   \
    do {                                                              \
        const auto eventbus_test_metrics_ = (metrics);                \
        INFO(::eventbus_test::describe(eventbus_test_metrics_));      \
        REQUIRE(::eventbus_test::reconciles(eventbus_test_metrics_)); \
    } while (false)
