//  eventbus — a lock-free, in-process event bus for C++20.
//  https://github.com/eventbus/eventbus (version: EVENTBUS_VERSION_* below)
//  SPDX-License-Identifier: MIT
//
//  One header, read top-down in the order an event travels:
//    configuration     cache-line size, inline payload size
//    errors            errc and its std::error_category
//    context           cancellation (stop_token) and deadlines
//    wait primitives   backoff, fences, the eventcount that sleepers wait on
//    ring buffer       the bounded lock-free MPMC ring: policies, batch claims, single producer
//    keys and events   key, args, event, typed_event
//    envelopes         what an event_store's slot holds (a 64-byte line with its sequence)
//    dispatcher        handlers, registrations, and the pin records that let removal wait
//    hooks and options store_options, store_metrics, middleware and hooks
//    dispatch core     runs the handlers of a claimed batch, counting what happened
//    worker pool       async mode's threads (created only in async mode)
//    timers            scheduled entries and their handles
//    timer thread      created by the first schedule of a future time
//    event store       the bus, composed of the parts above
//    transactions      all-or-nothing runs of events
//
//  Everything public lives in namespace `eventbus`; internals in `eventbus::detail`.

#ifndef EVENTBUS_EVENTBUS_HPP
#define EVENTBUS_EVENTBUS_HPP

#define EVENTBUS_VERSION_MAJOR 0
#define EVENTBUS_VERSION_MINOR 1
#define EVENTBUS_VERSION_PATCH 0

#include <algorithm>
#include <any>
#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <concepts>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <initializer_list>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <span>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <type_traits>
#include <typeinfo>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#if defined(_MSC_VER) && (defined(_M_X64) || defined(_M_IX86))
#include <intrin.h>
#endif
#if __has_include(<cxxabi.h>)
#include <cxxabi.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace eventbus {
inline namespace v0 {

// configuration ///////////////////////////////////////////////////////////////////////////////////

/// Bytes that must separate two atomics written by different threads so that they never share a
/// cache line (false sharing). A per-architecture constant rather than
/// `std::hardware_destructive_interference_size`, whose value may change with compiler flags and
/// so must not shape an ABI (GCC warns about it with -Winterference-size).
/// Define EVENTBUS_CACHE_LINE_SIZE (a power of two) to override it for hardware not listed here.
#if defined(EVENTBUS_CACHE_LINE_SIZE)
inline constexpr std::size_t cache_line_size = EVENTBUS_CACHE_LINE_SIZE;
#elif defined(__aarch64__) || defined(_M_ARM64) || defined(__powerpc64__)
inline constexpr std::size_t cache_line_size = 128;  // Apple M-series lines; POWER lines
#elif defined(__s390x__)
inline constexpr std::size_t cache_line_size = 256;
#else
inline constexpr std::size_t cache_line_size = 64;  // x86-64 and most others
#endif

static_assert(std::has_single_bit(cache_line_size), "cache_line_size must be a power of two");

// Must be the same in every translation unit of a program (it shapes the store's slots).
// Forces inlining of the few small functions of the hot path that compilers keep out of line.
#if defined(__GNUC__) || defined(__clang__)
#define EVENTBUS_ALWAYS_INLINE [[gnu::always_inline]]
#define EVENTBUS_NOINLINE [[gnu::noinline]]
#else
#define EVENTBUS_ALWAYS_INLINE
#define EVENTBUS_NOINLINE
#endif

#if !defined(EVENTBUS_INLINE_PAYLOAD_SIZE)
#define EVENTBUS_INLINE_PAYLOAD_SIZE 48
#endif

// errors //////////////////////////////////////////////////////////////////////////////////////////

/// Error codes of eventbus, usable as `std::error_code` (`std::error_code ec = errc::closed;`).
/// The hot path reports failures through these; it never throws.
enum class errc {
    buffer_full = 1,    ///< return_error policy: no free slot at the time of the call
    cancelled,          ///< the context's stop_token was triggered
    deadline_exceeded,  ///< the context's deadline passed
    closed,             ///< the ring or store was closed
    handler_failed,     ///< a handler threw (transaction commit, trigger)
    would_deadlock,     ///< the call would wait for the calling handler itself
    exceeds_capacity,   ///< more elements at once than the ring can ever hold (transactions)
    finished,           ///< the transaction was committed or rolled back already
    dropped,            ///< drop_oldest overwrote the event before it was handled (transactions)
    not_supported,      ///< not available with the store's options
};

namespace detail {

class error_category_impl final : public std::error_category {
  public:
    [[nodiscard]] const char* name() const noexcept override { return "eventbus"; }

    [[nodiscard]] std::string message(int value) const override {
        switch (static_cast<errc>(value)) {
            case errc::buffer_full:
                return "buffer full";
            case errc::cancelled:
                return "operation cancelled";
            case errc::deadline_exceeded:
                return "deadline exceeded";
            case errc::closed:
                return "closed";
            case errc::handler_failed:
                return "handler failed";
            case errc::would_deadlock:
                return "would wait for the calling handler itself";
            case errc::exceeds_capacity:
                return "more events at once than the capacity";
            case errc::finished:
                return "transaction already committed or rolled back";
            case errc::dropped:
                return "event overwritten by drop_oldest before it was handled";
            case errc::not_supported:
                return "not supported with this store's options";
        }
        return "unknown eventbus error " + std::to_string(value);
    }

    // Lets callers compare against portable conditions, e.g. `ec == std::errc::timed_out`.
    [[nodiscard]] std::error_condition default_error_condition(int value) const noexcept override {
        switch (static_cast<errc>(value)) {
            case errc::buffer_full:
                return std::errc::no_buffer_space;
            case errc::cancelled:
                return std::errc::operation_canceled;
            case errc::deadline_exceeded:
                return std::errc::timed_out;
            case errc::exceeds_capacity:
                return std::errc::message_size;
            case errc::not_supported:
                return std::errc::operation_not_supported;
            default:
                return {value, *this};
        }
    }
};

}  // namespace detail

/// The category of every `errc` value. One instance per program (inline function static).
[[nodiscard]] inline const std::error_category& error_category() noexcept {
    static const detail::error_category_impl instance;
    return instance;
}

[[nodiscard]] inline std::error_code make_error_code(errc e) noexcept {
    return {static_cast<int>(e), error_category()};
}

}  // namespace v0
}  // namespace eventbus

template <>
struct std::is_error_code_enum<eventbus::errc> : std::true_type {};

namespace eventbus {
inline namespace v0 {

// context /////////////////////////////////////////////////////////////////////////////////////////

namespace detail {
/// `std::invalid_argument` for a floating-point duration that is NaN (no time point is
/// that far).
template <class Rep, class Period>
void check_not_nan(std::chrono::duration<Rep, Period> d, const char* what) {
    if constexpr (std::is_floating_point_v<Rep>) {
        if (d.count() != d.count())
            throw std::invalid_argument(std::string("eventbus: ") + what + " is NaN");
    }
}
}  // namespace detail

/// What `context.Context` is to GoEventBus: cancellation (a `std::stop_token`) plus an optional
/// deadline. Cheap to copy (a shared stop state and a time point). `context{}` never ends.
/// Thread-safe: a context is immutable; derive new ones with `with_deadline` / `with_timeout`.
class context {
  public:
    using clock = std::chrono::steady_clock;

    context() noexcept = default;
    explicit context(std::stop_token token) noexcept : token_(std::move(token)) {}

    /// A copy that also ends at `deadline` (the earlier of the two deadlines wins).
    [[nodiscard]] context with_deadline(clock::time_point deadline) const {
        context derived = *this;
        if (deadline < derived.deadline_)
            derived.deadline_ = deadline;
        return derived;
    }

    /// A copy that also ends `timeout` from now. A timeout too large to represent means none.
    template <class Rep, class Period>
    [[nodiscard]] context with_timeout(std::chrono::duration<Rep, Period> timeout) const {
        detail::check_not_nan(timeout, "a timeout");
        const auto now = clock::now();
        if (timeout <= timeout.zero())
            return with_deadline(now);
        const std::chrono::duration<double> wanted = timeout;
        const std::chrono::duration<double> room = clock::time_point::max() - now;
        if (wanted >= room)
            return *this;
        return with_deadline(now + std::chrono::ceil<clock::duration>(timeout));
    }

    /// `errc::cancelled` once stop was requested, `errc::deadline_exceeded` once the deadline has
    /// passed, otherwise no error. Cancellation is reported first when both hold.
    [[nodiscard]] std::error_code err() const noexcept {
        if (token_.stop_requested())
            return errc::cancelled;
        if (has_deadline() && clock::now() >= deadline_)
            return errc::deadline_exceeded;
        return {};
    }

    [[nodiscard]] bool done() const noexcept { return static_cast<bool>(err()); }
    [[nodiscard]] const std::stop_token& token() const noexcept { return token_; }
    [[nodiscard]] bool has_deadline() const noexcept {
        return deadline_ != clock::time_point::max();
    }
    /// `clock::time_point::max()` when there is no deadline.
    [[nodiscard]] clock::time_point deadline() const noexcept { return deadline_; }

  private:
    std::stop_token token_;
    clock::time_point deadline_ = clock::time_point::max();
};

// wait primitives /////////////////////////////////////////////////////////////////////////////////

namespace detail {

/// The largest capacity of a ring (2^32 slots, 256 GiB of 64-byte slots): larger ones are
/// refused as arguments rather than attempted as allocations.
inline constexpr std::size_t max_capacity = std::size_t{1} << 32;

[[noreturn]] inline void throw_invalid_capacity(std::size_t capacity) {
    if (capacity > max_capacity)
        throw std::invalid_argument("eventbus: capacity " + std::to_string(capacity) +
                                    " exceeds the maximum, 2^32 (4294967296)");
    throw std::invalid_argument(
        "eventbus: capacity must be a power of two greater than zero, got " +
        std::to_string(capacity));
}

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(_MSC_VER) && (defined(_M_X64) || defined(_M_IX86))
    _mm_pause();
#elif defined(__aarch64__) || defined(__arm__)
    asm volatile("yield" ::: "memory");
#endif
}

template <class Ring>
class worker_pool;

/// The steady clock in nanoseconds, for latency histograms.
inline std::uint64_t clock_ns() noexcept {
    return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                          std::chrono::steady_clock::now().time_since_epoch())
                                          .count());
}

/// Adds to a counter that only the calling thread writes (others only read it): a relaxed load
/// and store, no read-modify-write.
inline void add_owned(std::atomic<std::uint64_t>& counter, std::uint64_t n) noexcept {
    counter.store(counter.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

/// Raises (lowers) `extreme` to `value` if that is a new maximum (minimum): a load, and a CAS
/// only then, so a read-mostly line stays shared.
inline void raise_to(std::atomic<std::uint64_t>& extreme, std::uint64_t value) noexcept {
    std::uint64_t seen = extreme.load(std::memory_order_relaxed);
    while (value > seen && !extreme.compare_exchange_weak(seen, value, std::memory_order_relaxed))
        ;
}
inline void lower_to(std::atomic<std::uint64_t>& extreme, std::uint64_t value) noexcept {
    std::uint64_t seen = extreme.load(std::memory_order_relaxed);
    while (value < seen && !extreme.compare_exchange_weak(seen, value, std::memory_order_relaxed))
        ;
}

/// Exponential backoff for waits that end when another thread finishes a step it has begun
/// (a slot claimed but not yet written). Spins first, then yields, because with more threads
/// than cores the thread we wait for may need our core to finish.
class backoff {
  public:
    void spin() noexcept {
        for (unsigned i = 0; i < (1U << (step_ < spin_limit ? step_ : spin_limit)); ++i)
            cpu_relax();
        if (step_ <= spin_limit)
            ++step_;
    }
    void snooze() noexcept {
        if (step_ <= spin_limit) {
            for (unsigned i = 0; i < (1U << step_); ++i)
                cpu_relax();
        } else {
            std::this_thread::yield();
        }
        if (step_ <= yield_limit)
            ++step_;
    }
    /// True once spinning has gone on long enough that sleeping is the better choice.
    [[nodiscard]] bool is_completed() const noexcept { return step_ > yield_limit; }

  private:
    static constexpr unsigned spin_limit = 6;
    static constexpr unsigned yield_limit = 10;
    unsigned step_ = 0;
};

#if defined(__SANITIZE_THREAD__)
#define EVENTBUS_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define EVENTBUS_TSAN 1
#endif
#endif

/// A full fence. ThreadSanitizer does not support atomic_thread_fence; there a seq_cst
/// read-modify-write (a full barrier on the hardware it runs on) takes its place.
inline void full_fence() noexcept {
#if defined(EVENTBUS_TSAN)
    static std::atomic<int> word{0};
    (void)word.fetch_add(0, std::memory_order_seq_cst);
#else
    std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
}

/// A broken promise that eventbus can only detect, not survive (two threads in a
/// single-producer ring at once): says so on stderr and aborts.
[[noreturn]] inline void report_misuse(const char* what) noexcept {
    std::fputs("eventbus: misuse: ", stderr);
    std::fputs(what, stderr);
    std::fputs("\n", stderr);
    std::abort();
}

// Asymmetric fences: a pair of them orders like two seq_cst fences, but the side that runs
// often (a single producer's push) pays only a compiler barrier, and the side that runs rarely
// (a consumer about to sleep) pays a membarrier(2) system call, which makes every running thread
// of the process execute a full barrier. Where membarrier is unavailable both sides are
// seq_cst fences.
#if defined(__linux__) && defined(SYS_membarrier)
inline constexpr int membarrier_private_expedited = 1 << 3;
inline constexpr int membarrier_register_private_expedited = 1 << 4;
inline std::atomic<bool> membarrier_active{false};

/// Registers the process for expedited membarrier once; true if it can be used.
inline bool membarrier_ready() noexcept {
    static const bool ready = [] {
        const bool ok = ::syscall(SYS_membarrier, membarrier_register_private_expedited, 0) == 0;
        membarrier_active.store(ok, std::memory_order_seq_cst);
        return ok;
    }();
    return ready;
}
EVENTBUS_ALWAYS_INLINE inline void asymmetric_fence_light() noexcept {
    if (membarrier_active.load(std::memory_order_relaxed))
        std::atomic_signal_fence(std::memory_order_seq_cst);
    else
        full_fence();
}
inline void asymmetric_fence_heavy() noexcept {
    if (!membarrier_ready()) {
        full_fence();
        return;
    }
    // Light fences rely on it now: a failure (ENOMEM, say) cannot fall back to a plain fence.
    for (int attempt = 0; ::syscall(SYS_membarrier, membarrier_private_expedited, 0) != 0;
         ++attempt) {
        if (attempt == 1000)
            report_misuse("membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) keeps failing");
        std::this_thread::yield();
    }
}
#else
inline bool membarrier_ready() noexcept {
    return false;
}
inline void asymmetric_fence_light() noexcept {
    full_fence();
}
inline void asymmetric_fence_heavy() noexcept {
    full_fence();
}
#endif

/// A per-thread address: tells threads apart for the price of a thread-local lookup.
inline const void* this_thread_tag() noexcept {
    static thread_local const char tag = 0;
    return &tag;
}

/// An eventcount: lets a thread sleep until a condition that other threads make true lock-free
/// (a slot freed, an element published), with a deadline and a stop_token, and with no lost
/// wake-ups. The notifying side costs one load while nobody sleeps; the mutex is touched only
/// when somebody does.
///
/// Waiter:    key = prepare_wait(); if (condition) { finish_wait(); ... } else wait(key, ctx) and
///            finish_wait().
/// Notifier:  make the condition true with a seq_cst read-modify-write, then notify_if_waiting().
/// Why no wake-up is lost: the waiter's seq_cst increment, its seq_cst re-check load, and the
/// notifier's seq_cst RMW and seq_cst load of `waiters_` are all in the single total order S.
/// If the re-check misses the RMW, the re-check precedes the RMW in S, so the increment does
/// too, and the notifier's later load sees the waiter and bumps the epoch, which the waiter reads
/// under the mutex before it sleeps. (Loads, not fences: ThreadSanitizer does not model fences.)
class event_count {
  public:
    [[nodiscard]] std::uint32_t prepare_wait() noexcept {
        waiters_.fetch_add(1, std::memory_order_seq_cst);
        return epoch_.load(std::memory_order_seq_cst);
    }

    void finish_wait() noexcept { waiters_.fetch_sub(1, std::memory_order_relaxed); }

    /// Sleeps until notified after `key` was taken, or until `ctx` ends (then returns its error).
    /// May return early with no error (then the caller re-checks its condition).
    std::error_code wait(std::uint32_t key, const context& ctx) {
        // The callback takes the mutex, so it must not be constructed (it may run at once) or
        // destroyed (it may be running) while this thread holds the mutex: declared first.
        std::stop_callback on_stop(ctx.token(), [this] { notify_all(); });
        std::unique_lock lock(mutex_);
        while (epoch_.load(std::memory_order_acquire) == key) {
            if (ctx.token().stop_requested())
                return errc::cancelled;
            if (ctx.has_deadline()) {
                if (context::clock::now() >= ctx.deadline())
                    return errc::deadline_exceeded;
                cv_.wait_until(lock, ctx.deadline());
            } else {
                cv_.wait(lock);
            }
        }
        return {};
    }

    void notify_if_waiting() noexcept {
        if (waiters_.load(std::memory_order_seq_cst) != 0)
            notify_all();
    }

    void notify_all() noexcept {
        epoch_.fetch_add(1, std::memory_order_seq_cst);
        // Taking the mutex orders the epoch bump before any waiter's check-then-sleep.
        { std::lock_guard lock(mutex_); }
        cv_.notify_all();
    }

    /// Like notify_if_waiting, but wakes one sleeper rather than all (waiters that have not
    /// gone to sleep yet see the new epoch and return too, so nobody misses it).
    void notify_one_if_waiting() noexcept {
        if (waiters_.load(std::memory_order_seq_cst) != 0) {
            epoch_.fetch_add(1, std::memory_order_seq_cst);
            { std::lock_guard lock(mutex_); }
            cv_.notify_one();
        }
    }

  private:
    std::atomic<std::uint32_t> waiters_{0};
    std::atomic<std::uint32_t> epoch_{0};
    std::mutex mutex_;
    std::condition_variable cv_;
};

/// `std::error_code{}` without a call: its default constructor calls the out-of-line
/// `std::system_category()` every time, which the hot path would pay per event.
[[nodiscard]] EVENTBUS_ALWAYS_INLINE inline std::error_code no_error() noexcept {
    static const std::error_code none;
    return none;
}

/// Outcome of one non-waiting attempt on the ring.
enum class attempt { ok, busy, closed };

/// Retries `try_once` (-> attempt) until it succeeds, the ring closes or `ctx` ends: spins briefly,
/// then sleeps on `ec` until the other side changes something.
/// `heavy_fence`: the notifier makes the condition true without a seq_cst read-modify-write and
/// pairs with us through an asymmetric fence instead (a single producer's push).
template <class TryOnce>
std::error_code retry_or_wait(event_count& ec, const context& ctx, TryOnce&& try_once,
                              bool heavy_fence = false) {
    backoff wait;
    bool first = true;
    for (;;) {
        attempt result = try_once();
        if (result == attempt::busy && std::exchange(first, false)) {
            if (auto error = ctx.err())
                return error;  // ended before the call: do not spin first
        }
        if (result == attempt::busy && wait.is_completed()) {
            if (auto error = ctx.err())
                return error;
            const std::uint32_t key = ec.prepare_wait();
            if (heavy_fence)
                asymmetric_fence_heavy();
            result = try_once();
            if (result == attempt::busy) {
                const std::error_code error = ec.wait(key, ctx);
                ec.finish_wait();
                if (error)
                    return error;
                continue;
            }
            ec.finish_wait();
        }
        switch (result) {
            case attempt::ok:
                return no_error();
            case attempt::closed:
                return errc::closed;
            case attempt::busy:
                wait.snooze();
                break;
        }
    }
}

/// Start position for a ring; tests use it to start near the 64-bit wrap-around.
struct initial_position {
    std::uint64_t value = 0;
};

}  // namespace detail

/// Checks, in builds without NDEBUG, that a single-producer ring or store is never entered by
/// two producing threads at once (one shared read-modify-write per push, debug builds only).
#if !defined(EVENTBUS_CHECK_SINGLE_PRODUCER)
#if defined(NDEBUG)
#define EVENTBUS_CHECK_SINGLE_PRODUCER 0
#else
#define EVENTBUS_CHECK_SINGLE_PRODUCER 1
#endif
#endif

// ring buffer /////////////////////////////////////////////////////////////////////////////////////

/// What a push does when the ring is full. Chosen by template parameter.
/// Discard exactly the oldest element, count it in `dropped()`, and accept the new one.
struct drop_oldest {};
/// Wait for room: spin briefly, then sleep until a pop frees a slot or the context ends.
struct block {};
/// Fail at once with `errc::buffer_full`.
struct return_error {};

template <class P>
concept overflow_policy =
    std::same_as<P, drop_oldest> || std::same_as<P, block> || std::same_as<P, return_error>;

/// What a ring can hold: a nothrow-movable object type, because an element is moved into and out
/// of a slot after the slot has been claimed, when failing is no longer possible.
template <class T>
concept ring_element = std::is_object_v<T> && !std::is_const_v<T> && !std::is_volatile_v<T> &&
                       std::is_nothrow_move_constructible_v<T> && std::is_nothrow_destructible_v<T>;

/// What `ring_buffer::pop(ctx)` returns: the element, or why there is none.
template <class T>
struct pop_result {
    std::optional<T> value;
    std::error_code error;

    explicit operator bool() const noexcept { return value.has_value(); }
};

/// Construction options of a ring_buffer.
struct ring_options {
    /// The caller promises that one thread at a time pushes and closes (a single producer).
    /// Every ring lets its first producing thread push with a plain store instead of a
    /// compare-and-swap until a second one appears; with this promise pushes also skip that
    /// ownership check, and a second producer is never accepted: builds without NDEBUG abort
    /// with a message when two threads push at once (see EVENTBUS_CHECK_SINGLE_PRODUCER). Any
    /// number of consumers.
    bool single_producer = false;
};

/// A bounded, multi-producer multi-consumer, lock-free ring of `T` with a fixed power-of-two
/// capacity and a policy for pushes into a full ring.
///
/// Design (Vyukov's bounded queue with crossbeam's refinements): each slot carries a sequence
/// number saying whose turn it is; producers claim a position by CAS on `tail`, consumers by CAS
/// on `head`, so an operation never holds a slot while it waits and can always be abandoned.
/// Positions are 64-bit and advance by 2: bit 0 of `tail` is the closed mark, so `close()` and
/// every push agree on one word and no push can succeed after `close()` returns. A slot's sequence
/// number is even when the slot is free for that position and odd when it holds its element.
template <ring_element T, overflow_policy Policy = drop_oldest>
class ring_buffer {
  public:
    using value_type = T;
    using policy_type = Policy;

    /// Throws `std::invalid_argument` (naming the value) when `capacity` is 0, not a power of
    /// two, or too large to allocate. Allocates all slots once; nothing allocates afterwards.
    explicit ring_buffer(std::size_t capacity, ring_options options = {})
        : ring_buffer(capacity, detail::initial_position{}, options) {}

    /// As above, starting at a given (even) position. For tests of the 64-bit wrap-around.
    ring_buffer(std::size_t capacity, detail::initial_position start, ring_options options = {})
        : capacity_(checked_capacity(capacity))
        , lap_(std::uint64_t{2} * capacity_)
        , remap_shift_(remap_shift_for(capacity_))
        , single_producer_(options.single_producer) {
        // Register once per process, so that the tail's owner pays only a compiler barrier.
        (void)detail::membarrier_ready();
        if (start.value & closed_mark)
            throw std::invalid_argument("eventbus: odd start position");
        slots_ = static_cast<slot*>(::operator new(capacity_ * sizeof(slot), slot_alignment));
        for (std::size_t i = 0; i < capacity_; ++i)
            ::new (static_cast<void*>(slots_ + i)) slot{};
        for (std::uint64_t pos = start.value; pos != start.value + lap_; pos += step)
            slot_at(pos).seq.store(pos, std::memory_order_relaxed);
        start_ = start.value;
        indices_.head.store(start.value, std::memory_order_relaxed);
        indices_.tail.store(start.value, std::memory_order_relaxed);
    }

    ring_buffer(const ring_buffer&) = delete;
    ring_buffer& operator=(const ring_buffer&) = delete;

    /// Destroys the elements still inside. Not thread-safe, like every destructor.
    ~ring_buffer() {
        const std::uint64_t tail = indices_.tail.load(std::memory_order_acquire) & ~closed_mark;
        for (std::uint64_t pos = indices_.head.load(std::memory_order_acquire); pos != tail;
             pos += step) {
            slot& s = slot_at(pos);
            if (s.seq.load(std::memory_order_acquire) == pos + 1)
                s.element()->~T();
        }
        for (std::size_t i = 0; i < capacity_; ++i)
            slots_[i].~slot();
        ::operator delete(static_cast<void*>(slots_), slot_alignment);
    }

    // producers -------------------------------------------------------------------------------

    /// Constructs an element in place unless the ring is full (policy block or return_error:
    /// `errc::buffer_full`; drop_oldest: discards the oldest element instead) or closed
    /// (`errc::closed`). Never waits for room. Lock-free, no allocation, thread-safe.
    /// `args` are used only on success, so a failed call leaves the caller's value intact.
    template <class... Args>
    requires std::is_nothrow_constructible_v<T, Args&&...>
    [[nodiscard]] std::error_code try_emplace(Args&&... args) noexcept {
        switch (try_push_once(std::forward<Args>(args)...)) {
            case detail::attempt::ok:
                return detail::no_error();
            case detail::attempt::closed:
                return errc::closed;
            case detail::attempt::busy:
                break;
        }
        return errc::buffer_full;
    }

    /// `try_emplace(std::move(value))`: `value` is moved from only on success.
    [[nodiscard]] std::error_code try_push(T&& value) noexcept {
        return try_emplace(std::move(value));
    }

    /// Copies `value` first (outside the ring, so a throwing copy changes nothing).
    [[nodiscard]] std::error_code try_push(const T& value) requires std::copy_constructible<T> {
        T copy(value);
        return try_emplace(std::move(copy));
    }

    /// Like `try_emplace`, but under `block` waits for room: spins briefly, then sleeps until a
    /// pop frees a slot (no busy loop while asleep), returning `errc::cancelled` /
    /// `errc::deadline_exceeded` when `ctx` ends first and `errc::closed` on `close()`. A waiting
    /// producer holds no slot. Under drop_oldest and return_error it never waits and `ctx` is
    /// not consulted. Thread-safe; no allocation; takes a mutex only to sleep.
    template <class... Args>
    requires std::is_nothrow_constructible_v<T, Args&&...>
    [[nodiscard]] std::error_code emplace(const context& ctx, Args&&... args) {
        if constexpr (std::same_as<Policy, block>) {
            return detail::retry_or_wait(not_full_, ctx, [&]() noexcept {
                return try_push_once(std::forward<Args>(args)...);
            });
        } else {
            return try_emplace(std::forward<Args>(args)...);
        }
    }

    [[nodiscard]] std::error_code push(const context& ctx, T&& value) {
        return emplace(ctx, std::move(value));
    }

    [[nodiscard]] std::error_code push(const context& ctx,
                                       const T& value) requires std::copy_constructible<T> {
        T copy(value);
        return emplace(ctx, std::move(copy));
    }

    /// Moves every element of `values` into the ring as one run of consecutive positions (no
    /// other push lands between them, and consumers take them in order) or moves none. Fails
    /// with `errc::exceeds_capacity` when there are more than `capacity()` (whatever the
    /// policy), `errc::closed`, or, under block and return_error, `errc::buffer_full` when the
    /// whole run does not fit now. Under drop_oldest it always fits: the oldest elements make
    /// room, counted in `dropped()`. An empty span succeeds. Lock-free, no allocation.
    [[nodiscard]] std::error_code try_push_n(std::span<T> values) noexcept {
        if (values.size() > capacity_)
            return errc::exceeds_capacity;
        if (values.empty())
            return is_closed() ? std::error_code(errc::closed) : std::error_code();
        switch (try_push_n_once(values)) {
            case detail::attempt::ok:
                return detail::no_error();
            case detail::attempt::closed:
                return errc::closed;
            case detail::attempt::busy:
                break;
        }
        return errc::buffer_full;
    }

    /// `try_push_n`, but under block waits (as `push` does) until the whole run fits, `ctx`
    /// ends or the ring closes. The values stay with the caller unless it succeeds.
    [[nodiscard]] std::error_code push_n(const context& ctx, std::span<T> values) {
        if constexpr (std::same_as<Policy, block>) {
            if (values.size() > capacity_)
                return errc::exceeds_capacity;
            if (values.empty())
                return try_push_n(values);
            return detail::retry_or_wait(not_full_, ctx,
                                         [&]() noexcept { return try_push_n_once(values); });
        } else {
            return try_push_n(values);
        }
    }

    // consumers -------------------------------------------------------------------------------

    /// Takes the oldest element, or nothing when the ring is empty (or closed and empty; tell the
    /// two apart with `is_closed()`). Never reports empty while an element is published and
    /// unclaimed. Lock-free, no allocation, thread-safe.
    [[nodiscard]] std::optional<T> try_pop() noexcept {
        std::optional<T> out;
        (void)try_pop_once(out);
        return out;
    }

    /// Takes the oldest element, waiting for one: spins briefly, then sleeps until a push.
    /// Returns the error instead when `ctx` ends first, or `errc::closed` once the ring is closed
    /// and drained. Thread-safe; no allocation; takes a mutex only to sleep.
    [[nodiscard]] pop_result<T> pop(const context& ctx) {
        pop_result<T> result;
        // A producer that owns the tail publishes it with a plain store: sleepers then pair
        // with it through the heavy fence.
        result.error = detail::retry_or_wait(
            not_empty_, ctx, [&]() noexcept { return try_pop_once(result.value); },
            single_producer_ || !indices_.revoked.load(std::memory_order_acquire));
        return result;
    }

    // lifetime and queries ----------------------------------------------------------------------

    /// Refuses every later push with `errc::closed` and wakes all waiters. Pops go on until the
    /// ring is empty. Idempotent. Thread-safe, lock-free.
    /// With `single_producer`, close() counts as a push: it must not run while another thread
    /// pushes.
    void close() noexcept {
        [[maybe_unused]] const producer_check check(*this);
        if (!single_producer_)
            revoke();  // an owner's plain store of the tail must not erase the closed mark
        // seq_cst RMW on the word every push CASes: a push either completed before this or fails.
        indices_.tail.fetch_or(closed_mark, std::memory_order_seq_cst);
        not_full_.notify_all();
        not_empty_.notify_all();
    }

    [[nodiscard]] bool is_closed() const noexcept {
        return (indices_.tail.load(std::memory_order_acquire) & closed_mark) != 0;
    }

    [[nodiscard]] std::size_t capacity() const noexcept { return capacity_; }

    /// Number of elements at some recent moment; may be stale as soon as it returns.
    [[nodiscard]] std::size_t approx_size() const noexcept {
        const std::uint64_t head = indices_.head.load(std::memory_order_acquire);
        const std::uint64_t tail = indices_.tail.load(std::memory_order_acquire) & ~closed_mark;
        const auto distance = static_cast<std::int64_t>(tail - head);
        if (distance <= 0)
            return 0;
        const auto count = static_cast<std::uint64_t>(distance) / step;
        return count < capacity_ ? static_cast<std::size_t>(count) : capacity_;
    }

    [[nodiscard]] bool approx_empty() const noexcept { return approx_size() == 0; }

    /// Elements accepted by pushes since construction (popped, dropped or still inside).
    [[nodiscard]] std::uint64_t accepted() const noexcept { return (mark() - start_) / step; }

    /// A position just after every element accepted so far; see `try_pop_before`.
    [[nodiscard]] std::uint64_t mark() const noexcept {
        return indices_.tail.load(std::memory_order_seq_cst) & ~closed_mark;
    }

    /// `try_pop`, but only an element accepted before `mark` was taken: lets a consumer take
    /// "everything enqueued before now" and leave later elements for later. Lock-free.
    [[nodiscard]] std::optional<T> try_pop_before(std::uint64_t mark) noexcept {
        std::optional<T> out;
        (void)try_pop_once(out, mark);
        return out;
    }

    /// `try_pop` and `try_pop_before`, moving the element into `out` (by move assignment)
    /// instead of returning an optional, so that a consumer loop can reuse one object. True if
    /// an element was taken.
    [[nodiscard]] bool try_pop(T& out) noexcept requires std::is_nothrow_move_assignable_v<T> {
        return try_pop_once(out) == detail::attempt::ok;
    }
    [[nodiscard]] bool try_pop_before(
        std::uint64_t mark, T& out) noexcept requires std::is_nothrow_move_assignable_v<T> {
        return try_pop_once(out, mark) == detail::attempt::ok;
    }

    /// A position just after every element popped or dropped so far. Once it has passed a
    /// `mark()`, every element accepted before that mark has been taken out.
    [[nodiscard]] std::uint64_t consumed_mark() const noexcept {
        return indices_.head.load(std::memory_order_seq_cst);
    }

    /// Elements discarded by drop_oldest so far (always 0 under the other policies).
    [[nodiscard]] std::uint64_t dropped() const noexcept {
        return dropped_.value.load(std::memory_order_relaxed);
    }

    [[nodiscard]] bool single_producer() const noexcept { return single_producer_; }

    /// Elements between two marks (`mark()`, `consumed_mark()`): 0 unless `to` is after `from`.
    [[nodiscard]] static std::uint64_t distance(std::uint64_t from, std::uint64_t to) noexcept {
        const auto d = static_cast<std::int64_t>(to - from);
        return d > 0 ? static_cast<std::uint64_t>(d) / step : 0;
    }

    /// Takes up to `max` elements, oldest first, of positions before `limit` (a `mark()`), with
    /// one claim for all of them (one compare-and-swap on head), and hands each to
    /// `sink(T&&)` in order; the slots are free again once `sink` has returned for all of them.
    /// Returns how many were taken: 0 when nothing before `limit` is ready. `sink` must not
    /// throw. Lock-free, no allocation, thread-safe.
    template <class Sink>
    std::size_t try_pop_batch(std::uint64_t limit, std::size_t max, Sink&& sink) noexcept {
        detail::backoff wait;
        std::uint64_t head = indices_.head.load(std::memory_order_relaxed);
        for (;;) {
            const auto room = static_cast<std::int64_t>(limit - head);
            if (room <= 0)
                return 0;
            const std::uint64_t most =
                std::min<std::uint64_t>(static_cast<std::uint64_t>(room) / step, max);
            // Acquire: each element counted here is fully constructed (the producer released
            // its sequence). A slot seen published stays so until its position is claimed,
            // which would move head and fail our CAS.
            std::uint64_t ready = 0;
            while (ready < most &&
                   slot_at(head + ready * step).seq.load(std::memory_order_acquire) ==
                       head + ready * step + 1)
                ++ready;
            if (ready == 0) {
                const std::uint64_t seq = slot_at(head).seq.load(std::memory_order_acquire);
                if (seq == head) {
                    // Seq_cst, as in try_pop_once: a push that has claimed `head` is seen.
                    const std::uint64_t tail = indices_.tail.load(std::memory_order_seq_cst);
                    if ((tail & ~closed_mark) == head)
                        return 0;
                }
                wait.snooze();  // a push is publishing, or another consumer took `head`
                head = indices_.head.load(std::memory_order_relaxed);
                continue;
            }
            if (indices_.head.compare_exchange_weak(head, head + ready * step,
                                                    std::memory_order_seq_cst,
                                                    std::memory_order_relaxed)) {
                for (std::uint64_t i = 0; i < ready; ++i) {
                    const std::uint64_t position = head + i * step;
                    slot& s = slot_at(position);
                    T* element = s.element();
                    if constexpr (std::is_invocable_v<Sink&, T&&, std::uint64_t>)
                        sink(std::move(*element), stamp_of(s));
                    else
                        sink(std::move(*element));
                    element->~T();
                    // Release: our move and destruction happen before the next producer's
                    // construction in this slot.
                    s.seq.store(position + lap_, std::memory_order_release);
                }
                if constexpr (std::same_as<Policy, block>)
                    not_full_.notify_if_waiting();
                return static_cast<std::size_t>(ready);
            }
            wait.spin();
        }
    }

  private:
    static constexpr std::uint64_t step = 2;
    static constexpr std::uint64_t closed_mark = 1;

    struct slot {
        // Even: free for position `seq`. Odd: holds the element of position `seq - 1`.
        std::atomic<std::uint64_t> seq{0};
        alignas(T) std::byte storage[sizeof(T)];

        T* element() noexcept { return std::launder(reinterpret_cast<T*>(storage)); }
    };

    // Head and tail are written by different threads on every operation: a cache line each.
    struct indices {
        alignas(cache_line_size) std::atomic<std::uint64_t> head{0};
        alignas(cache_line_size) std::atomic<std::uint64_t> tail{0};
        // Multi-producer rings: the first thread that pushes owns the tail and pushes as a
        // single producer would, until another producer (or close()) appears and revokes the
        // ownership for good; from then on every push claims by CAS. On the tail's line, which
        // the owner writes anyway.
        std::atomic<const void*> owner{nullptr};  // the owning thread's tag
        std::atomic<bool> owner_busy{false};      // the owner is inside a push
        std::atomic<bool> shared{false};          // revocation has begun
        std::atomic<bool> revoked{false};         // revocation is complete: CAS only
    };
    static_assert(std::is_standard_layout_v<indices>);
    static_assert(offsetof(indices, tail) - offsetof(indices, head) >= cache_line_size,
                  "head and tail must not share a cache line");
    static_assert(sizeof(indices) >= 2 * cache_line_size, "tail must not share a line with others");

    struct alignas(cache_line_size) padded_counter {
        std::atomic<std::uint64_t> value{0};
    };

    static constexpr std::align_val_t slot_alignment{
        alignof(slot) > cache_line_size ? alignof(slot) : cache_line_size};
    // Neighbouring positions map to slots on different cache lines (see slot_at).
    static constexpr std::size_t slots_per_line =
        sizeof(slot) < cache_line_size ? std::bit_floor(cache_line_size / sizeof(slot)) : 1;
    static constexpr unsigned slots_per_line_log2 = std::bit_width(slots_per_line) - 1;
    static_assert(std::has_single_bit(slots_per_line));

    static std::size_t checked_capacity(std::size_t capacity) {
        if (capacity == 0 || !std::has_single_bit(capacity) || capacity > detail::max_capacity ||
            capacity > std::numeric_limits<std::size_t>::max() / sizeof(slot))
            detail::throw_invalid_capacity(capacity);
        return capacity;
    }

    static unsigned remap_shift_for(std::size_t capacity) noexcept {
        if (slots_per_line == 1 || capacity <= slots_per_line)
            return 0;
        return static_cast<unsigned>(std::bit_width(capacity / slots_per_line) - 1);
    }

    // Position -> slot. When several slots share a cache line, consecutive indices are spread
    // `capacity / slots_per_line` slots apart (a transpose of the index matrix), so a producer
    // and a consumer a few positions apart do not write the same line.
    slot& slot_at(std::uint64_t position) noexcept {
        auto index = static_cast<std::size_t>(position / step) & (capacity_ - 1);
        if constexpr (slots_per_line > 1) {  // a slot of a line or more is never remapped
            if (remap_shift_ != 0) {
                index = ((index & (slots_per_line - 1)) << remap_shift_) |
                        (index >> slots_per_line_log2);
            }
        }
        return slots_[index];
    }

    // Debug builds: a single-producer ring entered by two threads at once is reported.
    struct producer_check {
#if EVENTBUS_CHECK_SINGLE_PRODUCER
        explicit producer_check(ring_buffer& r) noexcept : ring(r) {
            if (ring.single_producer_ &&
                ring.producers_inside_.fetch_add(1, std::memory_order_acq_rel) != 0)
                detail::report_misuse(
                    "two threads pushed into (or closed) a single_producer ring or store at once");
        }
        ~producer_check() {
            if (ring.single_producer_)
                ring.producers_inside_.fetch_sub(1, std::memory_order_acq_rel);
        }
        producer_check(const producer_check&) = delete;
        producer_check& operator=(const producer_check&) = delete;
        ring_buffer& ring;
#else
        explicit producer_check(ring_buffer&) noexcept {}
#endif
    };

    // An event_store with latency histograms: each push writes its time (clock_ns) next to
    // its slot, after constructing the element and before publishing it, and the consumer that
    // claimed the slot reads it before freeing the slot, so the slot's own sequence number
    // orders both (no atomics of their own). One predictable branch per push and pop when off.
    template <overflow_policy>
    friend class event_store;
    template <class>
    friend class detail::worker_pool;
    void record_push_times() {
        stamps_ = std::make_unique<std::uint64_t[]>(capacity_);
        constexpr std::size_t per_line = cache_line_size / sizeof(std::uint64_t);
        stamp_shift_ = capacity_ >= per_line * per_line
                           ? static_cast<unsigned>(std::bit_width(capacity_ / per_line) - 1)
                           : 0;
    }
    // Neighbouring slots' times on different cache lines (the slots' own transpose), so that a
    // producer's stamp does not share a line with the stamps consumers are reading.
    [[nodiscard]] std::size_t stamp_index(const slot& s) const noexcept {
        constexpr std::size_t per_line = cache_line_size / sizeof(std::uint64_t);
        const auto i = static_cast<std::size_t>(&s - slots_);
        if (stamp_shift_ == 0)
            return i;
        return ((i % per_line) << stamp_shift_) | (i / per_line);
    }
    void stamp(const slot& s) noexcept {
        if (stamps_) [[unlikely]]
            stamps_[stamp_index(s)] = detail::clock_ns();
    }
    [[nodiscard]] std::uint64_t stamp_of(const slot& s) const noexcept {
        return stamps_ ? stamps_[stamp_index(s)] : 0;
    }
    /// try_pop_before, also reading the element's push time (0 without record_push_times).
    [[nodiscard]] std::optional<T> try_pop_before_stamped(std::uint64_t mark,
                                                          std::uint64_t& pushed_at) noexcept {
        std::optional<T> out;
        (void)try_pop_once(out, mark, &pushed_at);
        return out;
    }

    // Single producer: publishes a new tail (no other thread writes it, close() excepted, which
    // the producer promised not to run concurrently), then wakes a consumer sleeping in pop().
    void publish_tail(std::uint64_t next) noexcept {
        // Release: the elements before `next` are published before consumers see the tail.
        indices_.tail.store(next, std::memory_order_release);
        // Pairs with the heavy fence of a consumer going to sleep (retry_or_wait).
        detail::asymmetric_fence_light();
        not_empty_.notify_if_waiting();
    }

    // Asks for the slot a few pushes ahead, for writing: a ring larger than the L1 cache would
    // otherwise make every push wait for its slot's line.
    void prefetch_ahead(std::uint64_t position) noexcept {
#if defined(__GNUC__) || defined(__clang__)
        __builtin_prefetch(&slot_at(position + prefetch_distance * step), 1, 3);
#else
        (void)position;
#endif
    }
    static constexpr std::uint64_t prefetch_distance = 8;

    template <class... Args>
    EVENTBUS_ALWAYS_INLINE detail::attempt try_push_single(Args&&... args) noexcept {
        [[maybe_unused]] const producer_check check(*this);
        return push_owned(std::forward<Args>(args)...);
    }

    // A push by the only thread that writes the tail (single producer, or the owner).
    template <class... Args>
    EVENTBUS_ALWAYS_INLINE detail::attempt push_owned(Args&&... args) noexcept {
        const std::uint64_t tail = indices_.tail.load(std::memory_order_relaxed);
        if (tail & closed_mark)
            return detail::attempt::closed;
        prefetch_ahead(tail);
        slot& s = slot_at(tail);
        // Acquire: as in try_push_once, the consumer is done with the storage.
        if (s.seq.load(std::memory_order_acquire) == tail) {
            ::new (static_cast<void*>(s.storage)) T(std::forward<Args>(args)...);
            stamp(s);
            s.seq.store(tail + 1, std::memory_order_release);
            publish_tail(tail + step);
            return detail::attempt::ok;
        }
        return push_owned_full(s, tail, std::forward<Args>(args)...);
    }

    // push_owned when the slot is not free at first sight: full, or a pop is freeing it.
    template <class... Args>
    EVENTBUS_NOINLINE detail::attempt push_owned_full(slot& s, std::uint64_t tail,
                                                      Args&&... args) noexcept {
        detail::backoff wait;
        for (;;) {
            // Acquire: as in try_push_once, the consumer is done with the storage.
            const std::uint64_t seq = s.seq.load(std::memory_order_acquire);
            if (seq == tail) {
                ::new (static_cast<void*>(s.storage)) T(std::forward<Args>(args)...);
                stamp(s);
                s.seq.store(tail + 1, std::memory_order_release);
                publish_tail(tail + step);
                return detail::attempt::ok;
            }
            if constexpr (std::same_as<Policy, drop_oldest>) {
                replace_oldest(s, tail, std::forward<Args>(args)...);
                publish_tail(tail + step);
                return detail::attempt::ok;
            } else {
                // Seq_cst: a pop that has begun is seen ("full" is never reported falsely).
                if (indices_.head.load(std::memory_order_seq_cst) + lap_ == tail)
                    return detail::attempt::busy;
                wait.snooze();  // a pop is freeing the slot
            }
        }
    }

    detail::attempt try_push_n_single(std::span<T> values) noexcept {
        [[maybe_unused]] const producer_check check(*this);
        return push_n_owned(values);
    }

    detail::attempt push_n_owned(std::span<T> values) noexcept {
        const std::uint64_t run = std::uint64_t{values.size()} * step;
        const std::uint64_t tail = indices_.tail.load(std::memory_order_relaxed);
        if (tail & closed_mark)
            return detail::attempt::closed;
        if constexpr (!std::same_as<Policy, drop_oldest>) {
            detail::backoff wait;
            for (std::uint64_t offset = 0; offset != run;) {
                if (slot_at(tail + offset).seq.load(std::memory_order_acquire) == tail + offset) {
                    offset += step;
                    continue;
                }
                const std::uint64_t head = indices_.head.load(std::memory_order_seq_cst);
                if (static_cast<std::int64_t>(tail + run - head) > static_cast<std::int64_t>(lap_))
                    return detail::attempt::busy;  // not room enough for the whole run
                wait.snooze();                     // a pop is freeing the slot
            }
        }
        // Consumers see none of the run until the tail moves past all of it.
        for (std::size_t i = 0; i < values.size(); ++i) {
            const std::uint64_t position = tail + i * step;
            replace_oldest(slot_at(position), position, std::move(values[i]));
        }
        publish_tail(tail + run);
        return detail::attempt::ok;
    }

    // Multi-producer rings: runs `push` (a push_owned call) if this thread owns the tail and
    // ownership has not been revoked; otherwise makes sure it is revoked and returns nullopt
    // (then the caller claims by CAS). The owner announces itself busy, then checks `shared`;
    // a revoker sets `shared`, then waits until the owner is not busy. The light and heavy
    // fences order the two like seq_cst fences (Dekker), so either the owner sees `shared` and
    // backs off, or the revoker sees it busy and waits for its push to end.
    template <class Push>
    EVENTBUS_ALWAYS_INLINE std::optional<detail::attempt> push_if_owner(Push&& push) noexcept {
        if (indices_.revoked.load(std::memory_order_acquire))
            return std::nullopt;
        const void* me = detail::this_thread_tag();
        const void* owner = indices_.owner.load(std::memory_order_relaxed);
        if (owner == nullptr) {
            // Claimed once, by the first push; later pushes of other threads revoke it.
            if (indices_.owner.compare_exchange_strong(owner, me, std::memory_order_acq_rel,
                                                       std::memory_order_relaxed))
                owner = me;
        }
        if (owner == me) {
            indices_.owner_busy.store(true, std::memory_order_relaxed);
            detail::asymmetric_fence_light();  // pairs with revoke()'s heavy fence
            if (!indices_.shared.load(std::memory_order_relaxed)) {
                const detail::attempt result = push();
                // Release: a revoker that sees the owner idle also sees its last tail.
                indices_.owner_busy.store(false, std::memory_order_release);
                return result;
            }
            indices_.owner_busy.store(false, std::memory_order_release);
        }
        revoke();
        return std::nullopt;
    }

    // Ends the owner's plain-store pushes for good. Idempotent; every thread that finds the
    // revocation incomplete completes it itself (a few microseconds, once).
    void revoke() noexcept {
        if (indices_.revoked.load(std::memory_order_acquire))
            return;
        indices_.shared.store(true, std::memory_order_seq_cst);
        detail::asymmetric_fence_heavy();
        detail::backoff wait;
        // Acquire: the owner's last push (its tail store) happens before our CAS.
        while (indices_.owner_busy.load(std::memory_order_acquire))
            wait.snooze();
        indices_.revoked.store(true, std::memory_order_release);
    }

    // One push attempt. `busy`: full (never reported while a pop is freeing a slot).
    template <class... Args>
    EVENTBUS_ALWAYS_INLINE detail::attempt try_push_once(Args&&... args) noexcept {
        if (single_producer_)
            return try_push_single(std::forward<Args>(args)...);
        if (const std::optional<detail::attempt> owned =
                push_if_owner([&]() noexcept { return push_owned(std::forward<Args>(args)...); }))
            return *owned;
        return try_push_claimed(std::forward<Args>(args)...);
    }

    // A push that claims its position by CAS on tail (the tail is shared).
    template <class... Args>
    EVENTBUS_NOINLINE detail::attempt try_push_claimed(Args&&... args) noexcept {
        detail::backoff wait;
        std::uint64_t tail = indices_.tail.load(std::memory_order_relaxed);
        prefetch_ahead(tail);
        for (;;) {
            if (tail & closed_mark)
                return detail::attempt::closed;
            slot& s = slot_at(tail);
            // Acquire: the consumer that freed this slot (read and destroyed its element, then
            // released the sequence) is done with the storage before we construct into it.
            const std::uint64_t seq = s.seq.load(std::memory_order_acquire);
            if (seq == tail) {
                if (indices_.tail.compare_exchange_weak(
                        tail, tail + step, std::memory_order_seq_cst, std::memory_order_relaxed)) {
                    ::new (static_cast<void*>(s.storage)) T(std::forward<Args>(args)...);
                    stamp(s);
                    // Release: publishes the element to the consumer that acquires `seq`.
                    s.seq.store(tail + 1, std::memory_order_release);
                    not_empty_.notify_if_waiting();
                    return detail::attempt::ok;
                }
                wait.spin();
            } else if (seq + lap_ == tail + 1) {
                // The slot still holds the element from one lap ago: full, or a pop is under way.
                if constexpr (std::same_as<Policy, drop_oldest>) {
                    if (indices_.tail.compare_exchange_weak(tail, tail + step,
                                                            std::memory_order_seq_cst,
                                                            std::memory_order_relaxed)) {
                        replace_oldest(s, tail, std::forward<Args>(args)...);
                        return detail::attempt::ok;
                    }
                    wait.spin();  // the failed CAS reloaded tail (the loop checks the mark)
                    continue;
                } else {
                    // Seq_cst: ordered with the consumers' seq_cst head CAS, so a pop that has
                    // begun is seen ("full" is never reported falsely) and a producer about to
                    // sleep is seen by the pop that frees its slot (see event_count).
                    const std::uint64_t head = indices_.head.load(std::memory_order_seq_cst);
                    if (head + lap_ == tail)
                        return detail::attempt::busy;
                    tail = indices_.tail.load(std::memory_order_relaxed);
                }
                wait.snooze();  // waiting for another thread to finish its step
            } else {
                // Another producer took `tail` already, or a pop of the previous lap is under way.
                wait.snooze();
                tail = indices_.tail.load(std::memory_order_relaxed);
            }
        }
    }

    // One attempt at claiming `values.size()` (1..capacity) consecutive positions at once.
    detail::attempt try_push_n_once(std::span<T> values) noexcept {
        if (single_producer_)
            return try_push_n_single(values);
        if (const std::optional<detail::attempt> owned =
                push_if_owner([&]() noexcept { return push_n_owned(values); }))
            return *owned;
        const std::uint64_t run = std::uint64_t{values.size()} * step;
        detail::backoff wait;
        std::uint64_t tail = indices_.tail.load(std::memory_order_relaxed);
        for (;;) {
            if (tail & closed_mark)
                return detail::attempt::closed;
            if constexpr (std::same_as<Policy, drop_oldest>) {
                // Claim first, then make room slot by slot, oldest first, as a single push does.
                if (indices_.tail.compare_exchange_weak(tail, tail + run, std::memory_order_seq_cst,
                                                        std::memory_order_relaxed)) {
                    for (std::size_t i = 0; i < values.size(); ++i) {
                        const std::uint64_t position = tail + i * step;
                        replace_oldest(slot_at(position), position, std::move(values[i]));
                    }
                    return detail::attempt::ok;
                }
                wait.spin();
            } else {
                // Every slot of the run must be free for its position. A slot found free stays
                // free until its position is claimed, which needs tail to move past `tail`, which
                // would fail our CAS: so checking before claiming is enough.
                bool all_free = true;
                for (std::uint64_t offset = 0; offset != run; offset += step) {
                    // Acquire: as in try_push_once, the consumer is done with the storage.
                    if (slot_at(tail + offset).seq.load(std::memory_order_acquire) !=
                        tail + offset) {
                        all_free = false;
                        break;
                    }
                }
                if (all_free) {
                    if (indices_.tail.compare_exchange_weak(tail, tail + run,
                                                            std::memory_order_seq_cst,
                                                            std::memory_order_relaxed)) {
                        for (std::size_t i = 0; i < values.size(); ++i) {
                            slot& s = slot_at(tail + i * step);
                            ::new (static_cast<void*>(s.storage)) T(std::move(values[i]));
                            stamp(s);
                            s.seq.store(tail + i * step + 1, std::memory_order_release);
                        }
                        not_empty_.notify_if_waiting();
                        return detail::attempt::ok;
                    }
                    wait.spin();
                    continue;
                }
                // Seq_cst, as in try_push_once: a pop that has begun is seen.
                const std::uint64_t head = indices_.head.load(std::memory_order_seq_cst);
                if (static_cast<std::int64_t>(tail + run - head) > static_cast<std::int64_t>(lap_))
                    return detail::attempt::busy;  // not room enough for the whole run
                wait.snooze();  // a pop is freeing a slot, or a producer took `tail`
                tail = indices_.tail.load(std::memory_order_relaxed);
            }
        }
    }

    // drop_oldest, after claiming `position` on a full ring: make room by taking the oldest
    // element (one lap back, in this very slot) away from the consumers with a CAS on head, then
    // write. Claiming tail first keeps head moving forward only, and means a push either took
    // its position before close() (and completes) or fails without touching anything.
    template <class... Args>
    void replace_oldest(slot& s, std::uint64_t position, Args&&... args) noexcept {
        detail::backoff wait;
        const std::uint64_t oldest = position - lap_;
        for (;;) {
            const std::uint64_t seq = s.seq.load(std::memory_order_acquire);
            if (seq == position)
                break;  // a consumer took the oldest element and freed the slot: nothing to drop
            if (seq == oldest + 1) {
                std::uint64_t expected = oldest;
                if (indices_.head.compare_exchange_strong(expected, oldest + step,
                                                          std::memory_order_seq_cst,
                                                          std::memory_order_relaxed)) {
                    discard(s);
                    break;
                }
            }
            // A consumer is taking the oldest element, or the pushes before ours are still
            // making room for themselves (head has not reached `oldest` yet).
            wait.snooze();
        }
        ::new (static_cast<void*>(s.storage)) T(std::forward<Args>(args)...);
        stamp(s);
        s.seq.store(position + 1, std::memory_order_release);
        if (!single_producer_)
            not_empty_.notify_if_waiting();  // a single producer notifies once it moved tail
    }

    void discard(slot& s) noexcept {
        s.element()->~T();
        dropped_.value.fetch_add(1, std::memory_order_relaxed);
    }

    // One pop attempt into `out`. `busy`: empty (never reported while a push is publishing).
    // With `limit`, takes only elements of positions before it (`busy` otherwise).
    // `out` is a std::optional<T> (emplaced) or a T (move-assigned).
    template <class Out>
    detail::attempt try_pop_once(Out& out, std::optional<std::uint64_t> limit = std::nullopt,
                                 std::uint64_t* pushed_at = nullptr) noexcept {
        detail::backoff wait;
        std::uint64_t head = indices_.head.load(std::memory_order_relaxed);
        for (;;) {
            if (limit && static_cast<std::int64_t>(*limit - head) <= 0)
                return detail::attempt::busy;
            slot& s = slot_at(head);
            // Acquire: pairs with the producer's release; the element is fully constructed.
            const std::uint64_t seq = s.seq.load(std::memory_order_acquire);
            if (seq == head + 1) {
                if (indices_.head.compare_exchange_weak(
                        head, head + step, std::memory_order_seq_cst, std::memory_order_relaxed)) {
                    T* element = s.element();
                    if (pushed_at != nullptr)
                        *pushed_at = stamp_of(s);
                    if constexpr (std::is_same_v<Out, T>)
                        out = std::move(*element);
                    else
                        out.emplace(std::move(*element));
                    element->~T();
                    // Release: our move and destruction happen before the next producer's
                    // construction in this slot.
                    s.seq.store(head + lap_, std::memory_order_release);
                    if constexpr (std::same_as<Policy, block>)
                        not_full_.notify_if_waiting();
                    return detail::attempt::ok;
                }
                wait.spin();
            } else if (seq == head) {
                // Free for `head`: empty, unless a producer has claimed it and is writing.
                // Seq_cst: ordered with the producers' seq_cst tail CAS, as for head above.
                const std::uint64_t tail = indices_.tail.load(std::memory_order_seq_cst);
                if ((tail & ~closed_mark) == head)
                    return (tail & closed_mark) ? detail::attempt::closed : detail::attempt::busy;
                wait.snooze();  // waiting for the producer to publish
                head = indices_.head.load(std::memory_order_relaxed);
            } else {
                // Another consumer took `head`, or a drop_oldest push is replacing it.
                wait.snooze();
                head = indices_.head.load(std::memory_order_relaxed);
            }
        }
    }

    indices indices_;
    // Read by every operation, written only at construction.
    alignas(cache_line_size) slot* slots_ = nullptr;
    // An event_store's push times, one per slot (see record_push_times); usually none.
    std::unique_ptr<std::uint64_t[]> stamps_;
    unsigned stamp_shift_ = 0;
    std::size_t capacity_;
    std::uint64_t lap_;  // position distance between two visits of a slot
    std::uint64_t start_ = 0;
    unsigned remap_shift_;
    bool single_producer_;
#if EVENTBUS_CHECK_SINGLE_PRODUCER
    std::atomic<std::uint32_t> producers_inside_{0};
#endif
    padded_counter dropped_;
    detail::event_count not_full_;   // producers sleep here under `block`
    detail::event_count not_empty_;  // consumers sleep here in pop(ctx)
};

// keys and events //////////////////////////////////////////////////////////////////////////////

namespace detail {

/// A C++ type as a key: the address of a per-type variable (unique in a program, no RTTI, and
/// hashing it never touches a string) plus a readable name for messages.
struct type_key {
    const void* id;
    std::string_view name;

    friend bool operator==(const type_key& a, const type_key& b) noexcept { return a.id == b.id; }
};

template <class T>
inline constexpr char type_tag = 0;

// The compiler's spelling of T, cut out of the function signature it writes: GCC writes
// "... [with T = S; ...]", clang "... [T = S]", MSVC "...type_name<S>(void) noexcept".
template <class T>
constexpr std::string_view type_name() noexcept {
#if defined(__clang__) || defined(__GNUC__)
    std::string_view full = __PRETTY_FUNCTION__;
    const auto start = full.find("T = ");
    if (start == std::string_view::npos)
        return full;
    full.remove_prefix(start + 4);
    return full.substr(0, full.find_first_of(";]"));
#elif defined(_MSC_VER)
    std::string_view full = __FUNCSIG__;
    const auto start = full.find("type_name<");
    const auto end = full.rfind(">(");
    if (start == std::string_view::npos || end == std::string_view::npos || end <= start + 10)
        return full;
    return full.substr(start + 10, end - start - 10);
#else
    return "type";
#endif
}

}  // namespace detail

/// A projection key: a string name (`key{"user_created"}`, implicit from string literals and
/// `std::string`) or a C++ type (`key::of<house_was_sold>()`). A type key never equals a
/// string key, whatever the type's name. Hashable (`std::hash<key>`), equality by value.
class key {
  public:
    key(const char* name) : value_(std::string(name)) {}         // NOLINT: implicit by design
    key(std::string name) noexcept : value_(std::move(name)) {}  // NOLINT
    key(std::string_view name) : value_(std::string(name)) {}    // NOLINT

    template <class T>
    [[nodiscard]] static key of() noexcept {
        return key(detail::type_key{&detail::type_tag<std::remove_cvref_t<T>>,
                                    detail::type_name<std::remove_cvref_t<T>>()});
    }

    [[nodiscard]] bool is_type() const noexcept { return value_.index() == 1; }
    /// The type's identity for a type key (equal for equal types), nullptr for a string key.
    [[nodiscard]] const void* type_id() const noexcept {
        const auto* type = std::get_if<detail::type_key>(&value_);
        return type != nullptr ? type->id : nullptr;
    }
    /// The string, or a compiler-made description of the type.
    [[nodiscard]] std::string_view name() const noexcept {
        if (const auto* text = std::get_if<std::string>(&value_))
            return *text;
        return std::get<detail::type_key>(value_).name;
    }
    [[nodiscard]] std::size_t hash() const noexcept {
        if (const auto* text = std::get_if<std::string>(&value_))
            return std::hash<std::string>{}(*text);
        return std::hash<const void*>{}(std::get<detail::type_key>(value_).id) ^ 0x9e3779b9U;
    }

    friend bool operator==(const key& a, const key& b) noexcept { return a.value_ == b.value_; }

  private:
    explicit key(detail::type_key type) noexcept : value_(type) {}
    std::variant<std::string, detail::type_key> value_;
};

/// GoEventBus's `map[string]any`.
using args = std::unordered_map<std::string, std::any>;

/// What a handler may return (GoEventBus's Result).
struct result {
    std::string message;
};

/// A dynamic event: `event{.id = "evt1", .projection = "user_created", .args = {{"id", 1}}}`.
struct event {
    std::string id;
    key projection = key("");
    ::eventbus::args args;
};

/// Thrown by a batch handler when only some events of its run failed: bit k of `failed()` is
/// the k-th event of the span (a run is at most 64 events). Those events fail as if the
/// handler had thrown `cause()` (this exception itself when `cause()` is empty): counted in
/// `errors`, seen by error hooks, dead letters; the others succeeded. Bits beyond the run are
/// ignored; no bit set means the call succeeded.
class batch_error : public std::runtime_error {
  public:
    explicit batch_error(std::uint64_t failed, std::exception_ptr cause = nullptr)
        : std::runtime_error(describe(failed, cause)), failed_(failed), cause_(std::move(cause)) {}

    [[nodiscard]] std::uint64_t failed() const noexcept { return failed_; }
    [[nodiscard]] const std::exception_ptr& cause() const noexcept { return cause_; }

  private:
    static std::string describe(std::uint64_t failed, const std::exception_ptr& cause) {
        std::string text =
            "eventbus: " + std::to_string(std::popcount(failed)) + " events of a batch failed";
        if (cause) {
            try {
                std::rethrow_exception(cause);
            } catch (const std::exception& e) {
                text += ": ";
                text += e.what();
            } catch (...) {
            }
        }
        return text;
    }

    std::uint64_t failed_;
    std::exception_ptr cause_;
};

/// What `arg<T>()` throws: the argument is missing, or holds another type than the one asked
/// for. The message names the argument and both types.
class arg_error : public std::invalid_argument {
  public:
    using std::invalid_argument::invalid_argument;
};

namespace detail {

/// A readable name of a type, for error messages.
inline std::string type_name(const std::type_info& type) {
    if (type == typeid(std::string))
        return "std::string";
    if (type == typeid(std::string_view))
        return "std::string_view";
    if (type == typeid(void))
        return "nothing (an empty std::any)";
#if __has_include(<cxxabi.h>)
    int status = 0;
    const std::unique_ptr<char, void (*)(void*)> readable(
        abi::__cxa_demangle(type.name(), nullptr, nullptr, &status), std::free);
    if (status == 0 && readable)
        return readable.get();
#endif
    return type.name();
}

[[noreturn]] inline void throw_missing_arg(const args& a, const std::string& name,
                                           const std::type_info& wanted) {
    std::vector<std::string_view> present;
    for (const auto& entry : a)
        present.push_back(entry.first);
    std::ranges::sort(present);
    std::string message = "eventbus: no argument \"" + name + "\" (asked for " + type_name(wanted) +
                          "); the event has ";
    if (present.empty())
        message += "no arguments";
    for (std::size_t i = 0; i < present.size(); ++i)
        message += (i == 0 ? "\"" : ", \"") + std::string(present[i]) + "\"";
    throw arg_error(message);
}

}  // namespace detail

/// The argument `name` of a dynamic event's args, as a T: `arg<int>(a, "order_id")`. Throws
/// `arg_error` when it is missing (the message lists the arguments present) or holds another
/// type (the message names both types); a handler that lets it escape fails like any other.
/// No allocation on success (beyond `name` itself when built from a long literal).
template <class T>
[[nodiscard]] const T& arg(const args& a, const std::string& name) {
    const auto found = a.find(name);
    if (found == a.end())
        detail::throw_missing_arg(a, name, typeid(T));
    if (const T* value = std::any_cast<T>(&found->second))
        return *value;
    throw arg_error("eventbus: argument \"" + name + "\" holds " +
                    detail::type_name(found->second.type()) + ", not the " +
                    detail::type_name(typeid(T)) + " asked for");
}

/// The argument `name` as a T, or nullptr when it is missing or holds another type.
template <class T>
[[nodiscard]] const T* find_arg(const args& a, const std::string& name) noexcept {
    const auto found = a.find(name);
    return found == a.end() ? nullptr : std::any_cast<T>(&found->second);
}

/// Bytes of a typed event stored inline in a ring slot, with no allocation per event
/// (EVENTBUS_INLINE_PAYLOAD_SIZE, default 48: with the slot's sequence number and the payload's
/// handling code, a slot is one 64-byte cache line). Larger types, types aligned to more than a
/// pointer, and those whose move constructor may throw cost one heap allocation per event
/// instead, as do dynamic `event`s.
inline constexpr std::size_t inline_payload_size = EVENTBUS_INLINE_PAYLOAD_SIZE;
static_assert(inline_payload_size >= sizeof(void*) && inline_payload_size % sizeof(void*) == 0,
              "EVENTBUS_INLINE_PAYLOAD_SIZE must be a multiple of the pointer size");

/// What can be published as a typed event: a movable object type; not a pointer, and not one of
/// eventbus's own types (`event` or a type derived from it, `args`, `key`, `context`). Its type
/// (cv and references removed) is its key.
template <class T>
concept typed_event =
    std::is_object_v<std::remove_cvref_t<T>> && !std::is_array_v<std::remove_cvref_t<T>> &&
    !std::is_pointer_v<std::remove_cvref_t<T>> &&
    !std::derived_from<std::remove_cvref_t<T>, event> &&
    !std::same_as<std::remove_cvref_t<T>, args> && !std::same_as<std::remove_cvref_t<T>, key> &&
    !std::same_as<std::remove_cvref_t<T>, context> &&
    std::constructible_from<std::remove_cvref_t<T>, T&&> &&
    std::is_nothrow_destructible_v<std::remove_cvref_t<T>>;

}  // namespace v0
}  // namespace eventbus

template <>
struct std::hash<eventbus::key> {
    std::size_t operator()(const eventbus::key& k) const noexcept { return k.hash(); }
};

namespace eventbus {
inline namespace v0 {

// envelopes ///////////////////////////////////////////////////////////////////////////////////

namespace detail {

/// The completion of one committed transaction: its events count down as they are handled (or
/// lost), and the committer sleeps until the count reaches zero. Shared by the committer and the
/// transaction's envelopes, so whoever finishes last may notify without outliving it.
struct tx_record {
    void finish(bool failed_call, bool lost) noexcept {
        if (failed_call)
            failed.store(true, std::memory_order_relaxed);
        if (lost)
            dropped.store(true, std::memory_order_relaxed);
        // Seq_cst RMW, then notify (the eventcount protocol); the flags are published by it,
        // and the RMWs form one release sequence, so the last one sees every other's flags.
        const bool last = remaining.fetch_sub(1, std::memory_order_seq_cst) == 1;
        if (last && on_done) {
            // commit_async: whoever finishes the last event tells the committer, once. What
            // the callback throws is discarded (it runs on a worker, or in a destructor).
            try {
                std::exchange(on_done, nullptr)(outcome());
            } catch (...) {
            }
        }
        done.notify_if_waiting();
    }

    /// After the last event: what commit and commit_async report.
    [[nodiscard]] std::error_code outcome() const noexcept {
        if (dropped.load(std::memory_order_relaxed))
            return errc::dropped;
        if (failed.load(std::memory_order_relaxed))
            return errc::handler_failed;
        return {};
    }

    std::atomic<std::size_t> remaining{0};
    std::atomic<bool> failed{false};
    std::atomic<bool> dropped{false};
    event_count done;
    // Set before the events are enqueued (published by the ring's release); then touched only
    // by the last finisher, which takes it.
    std::function<void(std::error_code)> on_done;  // commit_async's callback
    std::uint32_t delivery = 1;                    // transaction_options
    std::uint32_t max_deliveries = 0;
};

/// A typed event's key: one per type, made once.
template <class T>
const key& typed_key() noexcept {
    static const key k = key::of<T>();
    return k;
}

class envelope;
struct kept_event;

/// How an envelope moves, destroys and names the payload it holds: one table per payload type.
struct payload_ops {
    const void* type;  // &type_tag<T>; nullptr: a dynamic event (or a transaction's box)
    bool in_place;     // the payload is the envelope's bytes themselves
    bool trivial;      // inline and trivially copyable: moved by memcpy, never destroyed
    bool transaction;  // a box holding a transaction's event (see envelope::content)
    void (*relocate)(void* from, void* to) noexcept;  // move-construct at `to`, destroy `from`
    void (*destroy)(void* at) noexcept;
    const void* (*payload)(const void* at) noexcept;  // the T (or event) object
    const key& (*projection)(const void* at) noexcept;
    // A box of another envelope (a transaction's event, a kept event): that envelope.
    const envelope& (*inner)(const void* at) noexcept = nullptr;
};

/// Whether a T lives inside the envelope (else on the heap, the envelope holding a pointer).
template <class T>
inline constexpr bool stored_inline =
    !std::is_same_v<T, event> &&  // dynamic events are always boxed
    sizeof(T) <= inline_payload_size && alignof(T) <= alignof(void*) &&
    std::is_nothrow_move_constructible_v<T>;

template <class T>
const void* payload_of(const void* at) noexcept {
    if constexpr (stored_inline<T>)
        return std::launder(static_cast<const T*>(at));
    else
        return *std::launder(static_cast<T* const*>(at));
}

template <class T>
inline constexpr payload_ops ops_for{
    std::is_same_v<T, event> ? nullptr : &type_tag<T>,
    stored_inline<T>,
    stored_inline<T>&& std::is_trivially_copyable_v<T>,
    false,
    [](void* from, void* to) noexcept {
        if constexpr (stored_inline<T>) {
            T* source = std::launder(static_cast<T*>(from));
            ::new (to) T(std::move(*source));
            source->~T();
        } else {
            ::new (to) T*(*std::launder(static_cast<T**>(from)));
        }
    },
    [](void* at) noexcept {
        if constexpr (stored_inline<T>)
            std::launder(static_cast<T*>(at))->~T();
        else
            delete *std::launder(static_cast<T**>(at));
    },
    &payload_of<T>,
    [](const void* at) noexcept -> const key& {
        if constexpr (std::is_same_v<T, event>)
            return static_cast<const event*>(payload_of<T>(at))->projection;
        else
            return typed_key<T>();
    },
};

struct tx_box;

/// What a ring slot of an event_store holds: one event, as a pointer to its handling code
/// (`payload_ops`) and `inline_payload_size` bytes. A typed payload that fits is stored in those
/// bytes (no allocation); a dynamic `event`, a larger payload, and an event of a transaction
/// are boxed on the heap (the bytes hold the pointer). 56 bytes, so that with the ring's
/// sequence number a slot is one 64-byte cache line. Move-only and nothrow-movable.
class envelope {
  public:
    envelope() noexcept = default;

    /// A dynamic event: boxed (one allocation; its args are moved, never copied).
    explicit envelope(event&& ev) : ops_(&ops_for<event>) {
        ::new (static_cast<void*>(storage_)) event*(new event(std::move(ev)));
    }

    /// A typed payload made from `args`: no allocation when it is stored inline.
    template <class T, class... Args>
    envelope(std::in_place_type_t<T>, Args&&... args) noexcept(
        stored_inline<T>&& std::is_nothrow_constructible_v<T, Args&&...>)
        : ops_(&ops_for<T>) {
        if constexpr (stored_inline<T>) {
            ::new (static_cast<void*>(storage_)) T(std::forward<Args>(args)...);
        } else {
            T* heap = new T(std::forward<Args>(args)...);
            ::new (static_cast<void*>(storage_)) T*(heap);
        }
    }

    /// `inner` as an event of the transaction `record` (boxed: one allocation).
    envelope(std::shared_ptr<tx_record> record, envelope&& inner);

    envelope(envelope&& other) noexcept { take(other); }
    envelope& operator=(envelope&& other) noexcept {
        if (this != &other) {
            reset();
            take(other);
        }
        return *this;
    }
    ~envelope() { reset(); }

    [[nodiscard]] bool empty() const noexcept { return ops_ == nullptr; }
    /// The event itself: the boxed one for a transaction's event, else this.
    [[nodiscard]] const envelope& content() const noexcept;
    [[nodiscard]] const key& projection() const noexcept { return ops_->projection(storage_); }
    /// The payload's type tag, or nullptr for a dynamic event.
    [[nodiscard]] const void* type() const noexcept { return ops_->type; }
    /// The dynamic event (when `type()` is nullptr) or the typed payload.
    [[nodiscard]] const void* payload() const noexcept {
        return ops_->in_place ? static_cast<const void*>(storage_) : ops_->payload(storage_);
    }
    [[nodiscard]] bool in_transaction() const noexcept {
        return ops_ != nullptr && ops_->transaction;
    }
    /// A dynamic event of its own (not a transaction's or a kept one).
    [[nodiscard]] bool is_dynamic() const noexcept { return ops_ == &ops_for<event>; }
    /// The payload, to be moved out and back by a batch handler's gather and scatter.
    [[nodiscard]] void* mutable_payload() noexcept { return const_cast<void*>(payload()); }
    /// After the event's handlers ran: tells its transaction, if any.
    void complete(bool failed_call) noexcept;
    /// The record of the transaction this event belongs to, or nullptr.
    [[nodiscard]] const tx_record* transaction_record() const noexcept;

    /// The event, kept beyond its batch for retries and dead letters: the content is moved out
    /// (a transaction's box stays, empty), or shared when it is kept already. Allocates once
    /// (std::bad_alloc, with nothing moved).
    [[nodiscard]] std::shared_ptr<const kept_event> keep();
    /// An envelope that shares a kept event (a replayed dead letter). Allocates nothing.
    explicit envelope(std::shared_ptr<const kept_event> kept) noexcept;

  private:
    void take(envelope& other) noexcept {
        ops_ = std::exchange(other.ops_, nullptr);
        if (ops_ == nullptr)
            return;
        if (ops_->trivial)
            std::memcpy(storage_, other.storage_, inline_payload_size);
        else
            ops_->relocate(other.storage_, storage_);
    }
    void reset() noexcept {
        if (ops_ != nullptr && !ops_->trivial)
            ops_->destroy(storage_);
        ops_ = nullptr;
    }
    tx_box* box() const noexcept {
        return *std::launder(reinterpret_cast<tx_box* const*>(storage_));
    }

    const payload_ops* ops_ = nullptr;
    alignas(void*) std::byte storage_[inline_payload_size];
};

static_assert(sizeof(envelope) == sizeof(void*) + inline_payload_size,
              "an envelope is its handling code's pointer and its inline bytes");
static_assert(std::is_nothrow_move_constructible_v<envelope>);

/// A transaction's event: the event, and the record its completion counts down. An event
/// destroyed before it was handled (drop_oldest overwrote it) tells the record it was lost.
struct tx_box {
    std::shared_ptr<tx_record> record;
    envelope inner;

    void finish(bool failed_call, bool lost) noexcept {
        if (record)
            std::exchange(record, nullptr)->finish(failed_call, lost);
    }
    ~tx_box() { finish(false, true); }
};

inline constexpr payload_ops tx_ops{
    nullptr,
    false,
    false,
    true,
    [](void* from, void* to) noexcept {
        ::new (to) tx_box*(*std::launder(static_cast<tx_box**>(from)));
    },
    [](void* at) noexcept { delete *std::launder(static_cast<tx_box**>(at)); },
    [](const void* at) noexcept -> const void* {
        return (*std::launder(static_cast<tx_box* const*>(at)))->inner.payload();
    },
    [](const void* at) noexcept -> const key& {
        return (*std::launder(static_cast<tx_box* const*>(at)))->inner.projection();
    },
    [](const void* at) noexcept -> const envelope& {
        return (*std::launder(static_cast<tx_box* const*>(at)))->inner;
    },
};

/// An event kept beyond its batch: shared by the retries and dead letters of its handlers, and
/// by the envelopes that replay it. Never changes.
struct kept_event {
    envelope ev;
};

using kept_ptr = std::shared_ptr<const kept_event>;

inline const kept_ptr& kept_at(const void* at) noexcept {
    return *std::launder(static_cast<const kept_ptr*>(at));
}

inline constexpr payload_ops kept_ops{
    nullptr,
    false,
    false,
    false,
    [](void* from, void* to) noexcept {
        kept_ptr* source = std::launder(static_cast<kept_ptr*>(from));
        ::new (to) kept_ptr(std::move(*source));
        source->~kept_ptr();
    },
    [](void* at) noexcept { std::launder(static_cast<kept_ptr*>(at))->~kept_ptr(); },
    [](const void* at) noexcept -> const void* { return kept_at(at)->ev.payload(); },
    [](const void* at) noexcept -> const key& { return kept_at(at)->ev.projection(); },
    [](const void* at) noexcept -> const envelope& { return kept_at(at)->ev; },
};

inline envelope::envelope(kept_ptr kept) noexcept : ops_(&kept_ops) {
    ::new (static_cast<void*>(storage_)) kept_ptr(std::move(kept));
}

inline kept_ptr envelope::keep() {
    if (ops_ == &kept_ops)
        return kept_at(storage_);
    envelope& source = ops_->transaction ? box()->inner : *this;
    auto kept = std::make_shared<kept_event>();
    kept->ev = std::move(source);
    return kept;
}

inline envelope::envelope(std::shared_ptr<tx_record> record, envelope&& inner) : ops_(&tx_ops) {
    auto* boxed = new tx_box{nullptr, std::move(inner)};
    boxed->record = std::move(record);
    ::new (static_cast<void*>(storage_)) tx_box*(boxed);
}

inline const envelope& envelope::content() const noexcept {
    return ops_->inner != nullptr ? ops_->inner(storage_) : *this;
}

inline void envelope::complete(bool failed_call) noexcept {
    if (ops_ != nullptr && ops_->transaction)
        box()->finish(failed_call, false);
}

inline const tx_record* envelope::transaction_record() const noexcept {
    return ops_ != nullptr && ops_->transaction ? box()->record.get() : nullptr;
}

}  // namespace detail

// dispatcher //////////////////////////////////////////////////////////////////////////////////

/// How long a handler's retries wait: the n-th retry (n = 1, 2, ...) waits
/// `initial * factor^(n-1)`, at most `cap`, shortened by a random share of at most `jitter`
/// (0: none; 0.5: a delay between half and all of it). `factor` 1 is a constant delay.
struct backoff_policy {
    std::chrono::nanoseconds initial{0};
    double factor = 1.0;
    std::chrono::nanoseconds cap = std::chrono::nanoseconds::max();
    double jitter = 0.0;

    /// Every retry waits `delay`.
    [[nodiscard]] static constexpr backoff_policy constant(
        std::chrono::nanoseconds delay) noexcept {
        return {delay, 1.0, delay, 0.0};
    }
    /// `initial`, then `factor` times longer each retry, at most `cap`.
    [[nodiscard]] static constexpr backoff_policy exponential(
        std::chrono::nanoseconds initial, double factor = 2.0,
        std::chrono::nanoseconds cap = std::chrono::seconds(30), double jitter = 0.0) noexcept {
        return {initial, factor, cap, jitter};
    }

    /// The wait before retry `n` (1 for the first), with `random` in [0, 1) drawn for the
    /// jitter. Never negative, never more than `cap`; no overflow for any `n`.
    [[nodiscard]] std::chrono::nanoseconds delay(std::uint32_t n,
                                                 double random = 0.0) const noexcept {
        const double limit = static_cast<double>(cap.count());
        double wait = static_cast<double>(initial.count());
        for (std::uint32_t i = 1; i < n && wait < limit; ++i)
            wait *= factor;
        wait = std::min(wait, limit) * (1.0 - jitter * random);
        // 2^63 as a double is past the largest count: clamp before converting.
        if (!(wait < 9.2e18))
            return cap;
        return std::chrono::nanoseconds(static_cast<std::chrono::nanoseconds::rep>(wait));
    }
};

/// When a handler call fails: try it again, up to `max_attempts` calls in all (1: no retry),
/// waiting `backoff` before each retry on the store's timer thread (never in a publishing
/// thread or a worker). Only the handler that failed is called again.
struct retry_policy {
    std::uint32_t max_attempts = 1;
    backoff_policy backoff{};
};

namespace detail {
/// `std::invalid_argument` for a retry policy that cannot be followed.
inline void check_retry(const retry_policy& r) {
    const backoff_policy& b = r.backoff;
    const char* problem = nullptr;
    if (r.max_attempts == 0)
        problem = "max_attempts is 0 (1 means no retry)";
    else if (b.initial.count() < 0 || b.cap.count() < 0)
        problem = "a negative delay";
    else if (!(b.factor >= 1.0) || b.factor > 1e9)
        problem = "factor is not in [1, 1e9]";
    else if (!(b.jitter >= 0.0 && b.jitter <= 1.0))
        problem = "jitter is not in [0, 1]";
    if (problem != nullptr)
        throw std::invalid_argument(std::string("eventbus: retry policy: ") + problem);
}
}  // namespace detail

namespace detail {

/// A value readable without locks, replaced by copy-on-write. Each copy is owned by
/// shared_ptrs, so a reader keeps exactly the copy it uses for as long as it likes; a reader
/// counter only guards the instant in which a reader copies the current shared_ptr out of its
/// holder. Writers (serialized by a mutex, never waiting for readers) swap in a new holder and
/// free the old ones once no reader is inside that instant. Used for the handler table and the
/// hooks, which change rarely and are read once per publish() batch.
template <class T>
class snapshot {
  public:
    using handle = std::shared_ptr<const T>;

    /// Holds a default T; allocates nothing until the first update.
    snapshot() noexcept = default;
    snapshot(const snapshot&) = delete;
    snapshot& operator=(const snapshot&) = delete;
    ~snapshot() {
        delete current_.load(std::memory_order_relaxed);
        for (holder* old : retired_)
            delete old;
    }

    /// Lock-free (unless it is the reader that finds old copies to free); no allocation.
    [[nodiscard]] handle read() const noexcept {
        // Seq_cst enter, then seq_cst load: a writer that saw no reader after swapping knows
        // every later reader loads the new holder (see take_garbage_locked).
        readers_.fetch_add(1, std::memory_order_seq_cst);
        const holder* now = current_.load(std::memory_order_seq_cst);
        handle value = now != nullptr ? now->value : empty();
        if (readers_.fetch_sub(1, std::memory_order_seq_cst) == 1 &&
            has_retired_.load(std::memory_order_seq_cst))
            collect(std::unique_lock(mutex_, std::try_to_lock));
        return value;
    }

    /// Changes with every update: lets a long-lived reader keep its copy until it is stale.
    [[nodiscard]] std::uint64_t version() const noexcept {
        return version_.load(std::memory_order_acquire);
    }

    /// Applies `change` to a copy and publishes it. Thread-safe; allocates; never waits for
    /// readers, so it may be called from inside a reader (a handler registering a handler).
    /// If `change` or an allocation throws, nothing changes.
    template <class Change>
    void update(Change&& change) {
        std::unique_lock lock(mutex_);
        const holder* now = current_.load(std::memory_order_relaxed);
        auto next = now != nullptr ? std::make_shared<T>(*now->value) : std::make_shared<T>();
        change(*next);
        auto fresh = std::make_unique<holder>(holder{std::move(next)});
        retired_.push_back(nullptr);  // the only allocation left; nothing has changed yet
        retired_.back() = current_.exchange(fresh.release(), std::memory_order_seq_cst);
        if (retired_.back() == nullptr)
            retired_.pop_back();
        // Release: a reader that sees the new version and reads again gets the new copy.
        version_.fetch_add(1, std::memory_order_release);
        collect(std::move(lock));
    }

  private:
    struct holder {
        handle value;
    };

    // The value before the first update: one per T in a program.
    static const handle& empty() noexcept {
        static const handle value = std::make_shared<const T>();
        return value;
    }

    // Frees the retired holders if no reader is copying out of one. Deleting a holder may free
    // a copy, and with it handlers and their captures, whose destructors may call back into
    // this snapshot: so the deletes run after the mutex is released.
    void collect(std::unique_lock<std::mutex> lock) const noexcept {
        if (!lock)
            return;
        std::vector<holder*> garbage;
        // Seq_cst store, then the seq_cst load of readers_; a reader leaves with a seq_cst RMW,
        // then loads this flag: either we see no reader, or the last reader sees the flag and
        // collects (Dekker).
        if (!retired_.empty())
            has_retired_.store(true, std::memory_order_seq_cst);
        // Every retired holder was swapped out before this seq_cst load; a reader not counted
        // here enters after it and therefore loads a newer holder.
        if (readers_.load(std::memory_order_seq_cst) == 0)
            garbage.swap(retired_);
        has_retired_.store(!retired_.empty(), std::memory_order_seq_cst);
        lock.unlock();
        for (holder* old : garbage)
            delete old;
    }

    mutable std::atomic<holder*> current_{nullptr};
    std::atomic<std::uint64_t> version_{0};
    mutable std::atomic<std::size_t> readers_{0};
    mutable std::atomic<bool> has_retired_{false};
    mutable std::mutex mutex_;
    mutable std::vector<holder*> retired_;
};

/// A handler as the dispatcher stores it: the user's callable behind one indirect call.
struct handler_fn {
    // `payload` is the dynamic `event` (`type` nullptr) or the typed payload (`type` its tag).
    // `out` receives the result, or is nullptr when nobody wants it (no after hook).
    using invoke_type = void (*)(void* fn, const context& ctx, const void* type,
                                 const void* payload, result* out);
    invoke_type invoke = nullptr;
    std::shared_ptr<void> fn;

    void operator()(const context& ctx, const void* type, const void* payload, result* out) const {
        invoke(fn.get(), ctx, type, payload, out);
    }
};

/// Something a `registration` can remove: a handler of a dispatcher, or a hook or middleware of
/// a store.
struct registered {
    // Set (seq_cst) by remove() before it waits for the calls in flight; a batch that reads it
    // after announcing itself skips the call (see pin_registry).
    std::atomic<bool> removed{false};
    // Live `registration` handles. It starts at 1 (the handle `on` returns) and, once 0, stays
    // 0: then nobody can ever remove it, and a store may keep a table that holds it between
    // publishes.
    std::atomic<std::uint32_t> handles{1};

    registered() noexcept = default;
    registered(const registered&) = delete;
    registered& operator=(const registered&) = delete;
    virtual ~registered() = default;

    /// Unregisters, then waits for the calls in flight on other threads. Idempotent; never
    /// throws (if the table cannot be copied for want of memory, the entry stays in it, marked
    /// removed, and is never called again).
    virtual void remove() noexcept = 0;

    [[nodiscard]] bool removable() const noexcept {
        // Acquire: pairs with the release decrement of the last handle, so a remove() that
        // completed through a handle is seen (`removed`) once no handle is left.
        return handles.load(std::memory_order_acquire) != 0;
    }
};

struct dispatcher_state;

/// What a batch handler adds to a handler: how to call it with a run of events laid out one
/// after the other, and how to move their payloads there and back. (Its `handler_fn` calls it
/// with a run of one, in place, where no run is formed.)
struct batch_fn {
    // `first` points at `n` payloads (T, or event for a dynamic batch handler).
    using invoke_type = void (*)(void* fn, const context& ctx, const void* first, std::size_t n);
    invoke_type invoke = nullptr;  // nullptr: not a batch handler
    void (*gather)(std::span<envelope> events, std::byte* to) noexcept = nullptr;
    void (*scatter)(std::byte* from, std::span<envelope> events) noexcept = nullptr;
    std::size_t size = 0;       // of one payload
    std::size_t max_batch = 0;  // events per call, at most
};

/// A run of events for batch handlers is laid out in a buffer of this many bytes on the
/// dispatching thread's stack; at most 64 events (a claimed batch).
inline constexpr std::size_t run_buffer_size = 8192;
template <class U>
inline constexpr std::size_t run_capacity =
    std::min<std::size_t>(64, std::max<std::size_t>(1, run_buffer_size / sizeof(U)));

/// One registered handler.
struct handler_entry final : registered {
    handler_fn call;
    batch_fn batch;
    key projection = key("");
    std::string name;  // handler_options::name, for error hooks
    int priority = 0;  // handler_options::priority
    retry_policy retry;
    std::weak_ptr<dispatcher_state> owner;

    void remove() noexcept override;
};

class pin_registry;

/// Where a thread running a batch of handler calls of a dispatcher announces the handler it is
/// calling, so that removal can wait for the calls in flight without any shared
/// read-modify-write per call: taking and letting go of a record costs one each per batch, on a
/// line its thread keeps using; a call costs a store and three loads, on lines it owns or only
/// reads, and a compiler barrier.
struct alignas(cache_line_size) pin_record {
    // Odd while a batch holds the record (+1 when taken and when let go).
    std::atomic<std::uint64_t> word{0};
    // The handler the batch is calling now (written by its own thread only; release, so that a
    // remover that sees it change also sees the end of the call before).
    std::atomic<const void*> current{nullptr};
    // While the batch's thread is itself inside remove(): the handler it removes.
    std::atomic<const void*> parked_on{nullptr};
    pin_registry* owner = nullptr;
};
static_assert(sizeof(pin_record) % cache_line_size == 0 && alignof(pin_record) == cache_line_size,
              "each pin record has its own cache lines");

/// The pin records a thread holds, innermost first (nested batches: a handler that publishes).
struct pin_frame {
    pin_record* record;
    const pin_frame* outer;
};
inline thread_local const pin_frame* pin_frames = nullptr;
inline std::atomic<std::size_t> next_pin_hint{0};

/// A dispatcher's pin records: a first chunk inside the dispatcher, more chunks when more
/// threads run batches at once than there are records (never freed before the dispatcher).
///
/// Why removal sees every call (Dekker's pattern with asymmetric fences): before each call a
/// batch stores `current`, runs the light fence, then loads `removed`; remove() stores
/// `removed`, runs the heavy fence, then loads every record's `current`. The pair orders like
/// two seq_cst fences: either the batch sees `removed` (it skips the handler) or the remover
/// sees `current` (it waits until that call is over). With membarrier(2) the batch's fence is
/// only a compiler barrier.
class pin_registry {
  public:
    pin_registry() noexcept {
        for (pin_record& r : first_.records)
            r.owner = this;
        (void)membarrier_ready();  // register once, so that calls pay only a compiler barrier
    }
    pin_registry(const pin_registry&) = delete;
    pin_registry& operator=(const pin_registry&) = delete;
    ~pin_registry() {
        for (chunk* c = first_.next.load(std::memory_order_acquire); c != nullptr;) {
            chunk* next = c->next.load(std::memory_order_acquire);
            delete c;
            c = next;
        }
    }

    /// A free record, now held by the calling thread's batch. Lock-free unless every record is
    /// held (then it adds a chunk under a mutex). No allocation in the common case.
    [[nodiscard]] pin_record& acquire() noexcept {
        static thread_local const std::size_t hint =
            next_pin_hint.fetch_add(1, std::memory_order_relaxed);
        for (;;) {
            chunk* last = &first_;
            for (chunk* c = &first_; c != nullptr; c = c->next.load(std::memory_order_acquire)) {
                last = c;
                for (std::size_t i = 0; i < chunk_size; ++i) {
                    pin_record& r = c->records[(hint + i) % chunk_size];
                    std::uint64_t word = r.word.load(std::memory_order_relaxed);
                    if ((word & 1) == 0 &&
                        r.word.compare_exchange_strong(word, word + 1, std::memory_order_seq_cst,
                                                       std::memory_order_relaxed))
                        return r;
                }
            }
            grow(last);
        }
    }

    /// Ends the batch that held `r`.
    void release(pin_record& r) noexcept {
        r.parked_on.store(nullptr, std::memory_order_relaxed);
        // Seq_cst: ordered with a remover's fence even where that is a plain seq_cst fence.
        r.current.store(nullptr, std::memory_order_seq_cst);
        // Seq_cst RMW, then notify: removers re-check after a seq_cst RMW of their own.
        r.word.fetch_add(1, std::memory_order_seq_cst);
        quiesce_.notify_if_waiting();
    }

    /// A batch announced a new call (after its light fence): wakes removers that may be waiting
    /// for the previous one. Costs a load while nobody waits.
    void announce() noexcept { quiesce_.notify_if_waiting(); }

    /// remove(), after marking `target` removed: waits until no other thread is inside a call
    /// of it. A call on this thread is not waited for (a handler may remove itself). Nor, when
    /// this thread is itself inside a batch, is a call on a thread that is itself waiting in a
    /// removal: the two could be waiting for each other (two "once" handlers removing
    /// themselves, or each other, at the same time).
    void wait_for_calls(const void* target) {
        const parking parked(target);
        // Pairs with the light fence of every batch (see the class comment).
        asymmetric_fence_heavy();
        for_each_other_record([&](pin_record& r) {
            return [&r, target]() noexcept {
                // Acquire: once `current` has moved on, the call of `target` is over.
                if (r.current.load(std::memory_order_acquire) != target)
                    return attempt::ok;
                return parked_elsewhere(r) ? attempt::ok : attempt::busy;
            };
        });
    }

    /// A hook's removal, after marking it removed (seq_cst): waits until every batch that other
    /// threads had begun has ended (with the exemption of wait_for_calls). A batch checks a
    /// hook's `removed` (seq_cst) after taking its record (a seq_cst read-modify-write) and
    /// before each call: either it sees the mark, or its record was taken before our loads
    /// below and we wait for it.
    void wait_for_batches(const void* target) noexcept {
        const parking parked(target);
        for_each_other_record([&](pin_record& r) {
            const std::uint64_t word = r.word.load(std::memory_order_seq_cst);
            return [&r, word]() noexcept {
                if ((word & 1) == 0 || r.word.load(std::memory_order_seq_cst) != word)
                    return attempt::ok;
                return parked_elsewhere(r) ? attempt::ok : attempt::busy;
            };
        });
    }

  private:
    static constexpr std::size_t chunk_size = 16;
    struct chunk {
        std::array<pin_record, chunk_size> records{};
        std::atomic<chunk*> next{nullptr};
    };

    // While this thread waits in a removal, its batches' records say so (see wait_for_calls);
    // undone on every way out.
    class parking {
      public:
        explicit parking(const void* target) noexcept {
            for (const pin_frame* f = pin_frames; f != nullptr; f = f->outer) {
                f->record->parked_on.store(target, std::memory_order_seq_cst);
                f->record->owner->quiesce_.notify_if_waiting();
            }
        }
        parking(const parking&) = delete;
        parking& operator=(const parking&) = delete;
        ~parking() {
            for (const pin_frame* f = pin_frames; f != nullptr; f = f->outer)
                f->record->parked_on.store(nullptr, std::memory_order_seq_cst);
        }
    };

    // Whether a record's thread is waiting in a removal while this thread is inside a batch:
    // then neither waits for the other.
    static bool parked_elsewhere(const pin_record& r) noexcept {
        return pin_frames != nullptr && r.parked_on.load(std::memory_order_seq_cst) != nullptr;
    }

    // Waits, for each record not held by this thread, until `make_check(record)` says ok.
    template <class MakeCheck>
    void for_each_other_record(MakeCheck&& make_check) {
        const context never;
        for (chunk* c = &first_; c != nullptr; c = c->next.load(std::memory_order_acquire))
            for (pin_record& r : c->records)
                if (!held_here(r))
                    (void)retry_or_wait(quiesce_, never, make_check(r), true);
    }

    static bool held_here(const pin_record& r) noexcept {
        for (const pin_frame* f = pin_frames; f != nullptr; f = f->outer)
            if (f->record == &r)
                return true;
        return false;
    }

    // Every record was held: add a chunk after `last`, unless another thread did already.
    void grow(chunk* last) noexcept {
        std::lock_guard lock(grow_mutex_);
        if (last->next.load(std::memory_order_acquire) != nullptr)
            return;
        auto* fresh = new (std::nothrow) chunk;
        if (fresh == nullptr) {
            std::this_thread::yield();  // out of memory: wait for a batch to end instead
            return;
        }
        for (pin_record& r : fresh->records)
            r.owner = this;
        last->next.store(fresh, std::memory_order_release);
    }

    chunk first_;
    event_count quiesce_;  // removers sleep here until a batch ends or parks
    std::mutex grow_mutex_;
};

/// A batch of handler calls, pinned for its whole duration (RAII).
class pin_guard {
  public:
    explicit pin_guard(pin_registry& registry) noexcept
        : registry_(registry), frame_{&registry.acquire(), pin_frames} {
        pin_frames = &frame_;
    }
    pin_guard(const pin_guard&) = delete;
    pin_guard& operator=(const pin_guard&) = delete;
    ~pin_guard() {
        pin_frames = frame_.outer;
        registry_.release(*frame_.record);
    }
    /// Before each call: announces it, then tells whether the handler was removed meanwhile.
    [[nodiscard]] bool enter(const handler_entry& e) const noexcept {
        frame_.record->current.store(&e, std::memory_order_release);
        asymmetric_fence_light();  // pairs with remove()'s heavy fence
        registry_.announce();
        return !e.removed.load(std::memory_order_relaxed);
    }

  private:
    pin_registry& registry_;
    pin_frame frame_;
};

}  // namespace detail

namespace detail {

/// The parameter list of a non-generic callable (lambda, function object, function pointer).
template <class... A>
struct parameters {};
template <class M>
struct signature_of_member {};
template <class C, class R, class... A>
struct signature_of_member<R (C::*)(A...)> {
    using type = parameters<A...>;
};
template <class C, class R, class... A>
struct signature_of_member<R (C::*)(A...) const> {
    using type = parameters<A...>;
};
template <class C, class R, class... A>
struct signature_of_member<R (C::*)(A...) noexcept> {
    using type = parameters<A...>;
};
template <class C, class R, class... A>
struct signature_of_member<R (C::*)(A...) const noexcept> {
    using type = parameters<A...>;
};
template <class R, class... A>
struct signature_of_member<R (*)(A...)> {
    using type = parameters<A...>;
};
template <class R, class... A>
struct signature_of_member<R (*)(A...) noexcept> {
    using type = parameters<A...>;
};
// No `type` for generic lambdas, overloaded call operators or other types (SFINAE-friendly).
template <class F>
struct signature_of : signature_of_member<F> {};
template <class F>
requires requires {
    &F::operator();
}
struct signature_of<F> : signature_of_member<decltype(&F::operator())> {};

/// The event type T of a handler taking `(const context&, const T&)` or `(const T&)`.
template <class P>
struct payload_of_parameters {};
template <class T>
struct payload_of_parameters<parameters<T>> {
    using type = std::remove_cvref_t<T>;
};
template <class C, class T>
struct payload_of_parameters<parameters<C, T>> {
    using type = std::remove_cvref_t<T>;
};
template <class F>
using deduced_payload_t = typename payload_of_parameters<typename signature_of<F>::type>::type;

template <class F>
concept args_handler = std::invocable<F&, const context&, const args&>;
template <class F, class T>
concept typed_handler_for = typed_event<T> && std::same_as<T, std::remove_cvref_t<T>> &&
    (std::invocable<F&, const context&, const T&> || std::invocable<F&, const T&>);
template <class F>
concept deducible_typed_handler = !args_handler<F> && requires {
    typename deduced_payload_t<F>;
}
&&typed_handler_for<F, deduced_payload_t<F>>;
/// What `handler` accepts.
template <class F>
concept handler_callable = args_handler<F> || deducible_typed_handler<F>;

// The compile-time errors of handler registration, one line each.
#define EVENTBUS_HANDLER_FORMS                                                             \
    "eventbus: a handler must be callable as one of: "                                     \
    "result|void(const eventbus::context&, const eventbus::args&) for dynamic events; "    \
    "result|void(const eventbus::context&, const T&) or result|void(const T&) for typed "  \
    "events of type T (T is deduced from a non-generic callable; for a generic one write " \
    "on<T>(fn) or handler::of<T>(fn))"
#define EVENTBUS_TYPED_HANDLER_FORMS                                                           \
    "eventbus: a handler of typed events of type T must be callable as "                       \
    "result|void(const eventbus::context&, const T&) or result|void(const T&), and T must be " \
    "a typed event (a movable object type, not an eventbus type such as event or args)"

template <class R>
result as_result(R&& r) {
    if constexpr (std::is_void_v<std::remove_cvref_t<R>>) {
        return {};
    } else {
        static_assert(std::is_convertible_v<R, result>,
                      "eventbus: a handler returns eventbus::result or void");
        return std::forward<R>(r);
    }
}

template <class F>
struct is_std_function : std::false_type {};
template <class S>
struct is_std_function<std::function<S>> : std::true_type {};

/// `std::invalid_argument` for a callable that cannot be called: a null function pointer or an
/// empty std::function.
template <class F>
void check_callable(const F& fn) {
    if constexpr (std::is_pointer_v<F> || std::is_member_pointer_v<F> ||
                  is_std_function<F>::value) {
        if (!fn)
            throw std::invalid_argument(
                "eventbus: a handler, hook or middleware must not be empty (a null function "
                "pointer or an empty std::function)");
    }
}

[[noreturn]] inline void throw_payload_mismatch(const char* expected) {
    throw std::invalid_argument(std::string("eventbus: a handler taking ") + expected +
                                " was given an event of another kind under its key");
}

}  // namespace detail

/// A handler, made from any invocable of the forms `result|void(const context&, const args&)`
/// (dynamic events) or `result|void(const context&, const T&)` / `result|void(const T&)` (typed
/// events of type T; T is deduced from a non-generic callable). Any other callable is a
/// compile-time error that lists these forms. A handler fails by throwing. Copies share the
/// callable.
class handler {
  public:
    template <class F>
    requires(!std::same_as<std::remove_cvref_t<F>, handler>)
        handler(F fn)  // NOLINT: implicit, so lambdas fit a braced dispatcher list
        : type_(nullptr) {
        static_assert(detail::handler_callable<F>, EVENTBUS_HANDLER_FORMS);
        detail::check_callable(fn);
        if constexpr (detail::args_handler<F>) {
            call_ = {&invoke_args<F>, std::make_shared<F>(std::move(fn))};
        } else if constexpr (detail::deducible_typed_handler<F>) {
            using T = detail::deduced_payload_t<F>;
            type_ = &detail::type_tag<T>;
            call_ = {&invoke_typed<T, F>, std::make_shared<F>(std::move(fn))};
        }
    }

    /// A handler of typed events of type T (for generic callables, where T cannot be deduced).
    template <class T, class F>
    [[nodiscard]] static handler of(F fn) {
        using U = std::remove_cvref_t<T>;
        static_assert(detail::typed_handler_for<F, U>, EVENTBUS_TYPED_HANDLER_FORMS);
        detail::check_callable(fn);
        if constexpr (detail::typed_handler_for<F, U>)
            return handler(&detail::type_tag<U>,
                           {&invoke_typed<U, F>, std::make_shared<F>(std::move(fn))});
        else
            return handler(nullptr, {});
    }

    /// The type tag of T for a typed handler; nullptr for a handler of args.
    [[nodiscard]] const void* payload_type() const noexcept { return type_; }

  private:
    friend class dispatcher;

    handler(const void* type, detail::handler_fn call) noexcept
        : call_(std::move(call)), type_(type) {}

    template <class R>
    static void deliver(R&& r, result* out) {
        if (out != nullptr)
            *out = detail::as_result(std::forward<R>(r));
    }

    template <class F>
    static void invoke_args(void* fn, const context& ctx, const void* type, const void* payload,
                            result* out) {
        if (type != nullptr)
            detail::throw_payload_mismatch("args");
        F& f = *static_cast<F*>(fn);
        const args& a = std::launder(static_cast<const event*>(payload))->args;
        if constexpr (std::is_void_v<std::invoke_result_t<F&, const context&, const args&>>)
            f(ctx, a);
        else
            deliver(f(ctx, a), out);
    }

    template <class T, class F>
    static void invoke_typed(void* fn, const context& ctx, const void* type, const void* payload,
                             result* out) {
        if (type != &detail::type_tag<T>)
            detail::throw_payload_mismatch("a typed event");
        F& f = *static_cast<F*>(fn);
        const T& value = *std::launder(static_cast<const T*>(payload));
        if constexpr (std::invocable<F&, const context&, const T&>) {
            if constexpr (std::is_void_v<std::invoke_result_t<F&, const context&, const T&>>)
                f(ctx, value);
            else
                deliver(f(ctx, value), out);
        } else {
            if constexpr (std::is_void_v<std::invoke_result_t<F&, const T&>>)
                f(value);
            else
                deliver(f(value), out);
        }
    }

    detail::handler_fn call_;
    const void* type_;
};

/// Options of one handler registration.
struct handler_options {
    /// Shown to error hooks (`handler_failure::handler`) and in dead letters; empty by default.
    std::string name;
    /// Handlers of one key run in descending priority, those of equal priority in the order
    /// they were registered. Decided at registration: it costs nothing per event.
    int priority = 0;
    /// What happens when a call fails (throws): by default it is not retried and the event goes
    /// to the store's dead letters for this handler (see `store_options::dead_letter_capacity`).
    retry_policy retry{};
};

class dispatcher;
namespace detail {
class dispatch_core;
struct hook_state;

/// What a dispatcher is, shared with the stores that use it and reachable from its
/// registrations: destroying the dispatcher before or after them is safe.
struct dispatcher_state {
    using table = std::unordered_map<key, std::vector<std::shared_ptr<handler_entry>>>;

    snapshot<table> handlers;
    pin_registry pins;

    // Unlinks the handler, marks it removed, then waits for the batches that may be calling it
    // (see pin_registry::wait_for_calls for whose are not waited for).
    void remove(handler_entry& target) noexcept {
        if (!target.removed.load(std::memory_order_acquire)) {
            try {
                handlers.update([&](table& t) {
                    auto found = t.find(target.projection);
                    if (found == t.end())
                        return;
                    std::erase_if(found->second, [&](const auto& e) { return e.get() == &target; });
                    if (found->second.empty())
                        t.erase(found);
                });
            } catch (...) {
                // Out of memory for the copy: it stays in the table, marked removed below.
            }
        }
        // Seq_cst: see pin_registry (a batch either skips the handler or is waited for).
        target.removed.store(true, std::memory_order_seq_cst);
        pins.wait_for_calls(&target);
    }
};

inline void handler_entry::remove() noexcept {
    if (const std::shared_ptr<dispatcher_state> state = owner.lock())
        state->remove(*this);
    else
        removed.store(true, std::memory_order_seq_cst);  // nobody can call it any more
}

}  // namespace detail

/// What `dispatcher::on` and a store's hook registrations return: `remove()` unregisters.
/// Dropping the handle does NOT remove the handler (handlers live as long as the dispatcher, as
/// in GoEventBus): keep a `scoped_registration` for that. Copyable; a registration may outlive
/// its dispatcher or store (remove() then does nothing).
class registration {
  public:
    registration() noexcept = default;
    registration(const registration& other) noexcept : entry_(other.entry_) {
        if (entry_)
            entry_->handles.fetch_add(1, std::memory_order_relaxed);
    }
    registration(registration&& other) noexcept : entry_(std::move(other.entry_)) {}
    registration& operator=(registration other) noexcept {
        std::swap(entry_, other.entry_);
        return *this;
    }
    /// Dropping the last handle does not remove the handler; it only means that nobody can
    /// remove it any more (a store may then keep a table that holds it between publishes).
    ~registration() {
        if (entry_)
            entry_->handles.fetch_sub(1, std::memory_order_release);
    }

    /// Unregisters the handler (or hook) and waits for its calls in flight on other threads:
    /// once it returns, the callable is not running and never will again. Not waited for: a
    /// call on this thread (a handler may remove itself) and, when this runs inside a handler,
    /// a call on a thread that is itself waiting in a removal (the two would wait for each
    /// other). Removing a hook waits for every batch running on other threads. Idempotent.
    /// Thread-safe; allocates (a copy of the table), never throws.
    void remove() noexcept {
        if (entry_) {
            // Our own reference: another thread may free this registration as soon as its own
            // remove() has returned.
            const std::shared_ptr<detail::registered> keep = entry_;
            keep->remove();
        }
    }

    /// True while the handler is registered through this handle.
    [[nodiscard]] explicit operator bool() const noexcept {
        return entry_ && !entry_->removed.load(std::memory_order_acquire);
    }

  private:
    friend class dispatcher;
    friend struct detail::hook_state;
    explicit registration(std::shared_ptr<detail::registered> entry) noexcept
        : entry_(std::move(entry)) {}

    std::shared_ptr<detail::registered> entry_;
};

/// A registration that removes its handler (or hook) when destroyed, like EnTT's and
/// Boost.Signals2's scoped_connection: keep one beside whatever the handler captures, declared
/// after it, so that the handler is gone before the object it uses. Destruction waits for the
/// calls in flight on other threads (not for a call on this thread: it may be destroyed from
/// inside its own handler). Move-only.
class scoped_registration {
  public:
    scoped_registration() noexcept = default;
    scoped_registration(registration r) noexcept  // NOLINT: implicit, `= d.on(...)` reads well
        : registration_(std::move(r)) {}
    scoped_registration(scoped_registration&& other) noexcept = default;
    scoped_registration& operator=(scoped_registration&& other) noexcept {
        if (this != &other) {
            registration_.remove();
            registration_ = std::move(other.registration_);
        }
        return *this;
    }
    scoped_registration(const scoped_registration&) = delete;
    scoped_registration& operator=(const scoped_registration&) = delete;
    ~scoped_registration() { registration_.remove(); }

    /// Removes now (see registration::remove).
    void remove() noexcept { registration_.remove(); }
    /// Gives up the ownership: the handler stays registered; the returned handle can remove it.
    [[nodiscard]] registration release() noexcept { return std::move(registration_); }
    /// True while the handler is registered through this handle.
    [[nodiscard]] explicit operator bool() const noexcept {
        return static_cast<bool>(registration_);
    }

  private:
    registration registration_;
};

/// Maps keys to handlers. Built like GoEventBus's map literal and changeable at run time from
/// any thread, including from inside a handler; a change is seen by the next publish(). The
/// stores built on a dispatcher share its table: either may be destroyed first.
class dispatcher {
  public:
    struct entry {
        key projection;
        handler fn;
    };
    using table = detail::dispatcher_state::table;

    /// Allocates the shared state (std::bad_alloc).
    dispatcher() : state_(std::make_shared<detail::dispatcher_state>()) {}
    dispatcher(std::initializer_list<entry> entries) : dispatcher() {
        for (const entry& e : entries)
            (void)on(e.projection, e.fn);
    }
    dispatcher(const dispatcher&) = delete;
    dispatcher& operator=(const dispatcher&) = delete;

    /// Adds a handler for `projection`, run after those registered before it with the same or a
    /// higher `options.priority`, before those with a lower one. Thread-safe; allocates (copies
    /// the table). `std::invalid_argument` for a typed handler under a key that is not its type.
    registration on(key projection, handler fn, handler_options options = {}) {
        if (fn.type_ != nullptr && !(projection.is_type() && projection.type_id() == fn.type_))
            throw std::invalid_argument("eventbus: a typed handler registered under key '" +
                                        std::string(projection.name()) +
                                        "', which is not its event type (use on<T>(fn))");
        return add(std::move(projection), std::move(fn.call_), {}, std::move(options));
    }

    /// Adds a batch handler of typed events of type T: `fn(const context&, std::span<const T>)`
    /// or `fn(std::span<const T>)`, returning void or result. It receives runs of consecutive
    /// events of type T from one batch that a store claimed, in FIFO order, at most
    /// `max_batch` per call (0: as many as fit, min(64, 8192 / sizeof(T))), laid out one after
    /// the other: their payloads are moved
    /// next to each other on the dispatching thread's stack and back, so T must be nothrow
    /// movable, and a run allocates nothing. Where no run is formed (ordered_by_key, trigger,
    /// transactions, replays, a batch of one) it receives one event. Handlers of T registered
    /// with `on<T>` see the same events, in priority order. A call counts once per event in
    /// `processed`, and in `errors` if it throws; a call that throws makes every event of its
    /// run a dead letter of the handler (batch handlers are not retried:
    /// `options.retry.max_attempts` must be 1). Thread-safe; allocates.
    /// `std::invalid_argument` for a `max_batch` above min(64, 8192 / sizeof(T)).
    template <class T, class F>
    registration on_batch(F fn, handler_options options = {}, std::size_t max_batch = 0) {
        using U = std::remove_cvref_t<T>;
        static_assert(
            sizeof(U) <= detail::run_buffer_size && alignof(U) <= alignof(std::max_align_t),
            "eventbus: a batch handler's event type must fit 8 KiB and need no more "
            "than std::max_align_t's alignment");
        static_assert(std::is_nothrow_move_constructible_v<U>,
                      "eventbus: a batch handler's event type must be nothrow movable (its "
                      "events are moved next to each other for the call)");
        static_assert(std::invocable<F&, const context&, std::span<const U>> ||
                          std::invocable<F&, std::span<const U>>,
                      "eventbus: a batch handler of T takes (const eventbus::context&, "
                      "std::span<const T>) or (std::span<const T>)");
        return add_batch<U>(key::of<U>(), std::move(fn), std::move(options), max_batch);
    }

    /// Adds a batch handler of dynamic events under a string key:
    /// `fn(const context&, std::span<const event>)`. As the typed form otherwise (a run is of
    /// consecutive events of this key).
    template <class F>
    registration on_batch(std::string_view name, F fn, handler_options options = {},
                          std::size_t max_batch = 0) {
        static_assert(std::invocable<F&, const context&, std::span<const event>>,
                      "eventbus: a batch handler of dynamic events takes (const "
                      "eventbus::context&, std::span<const eventbus::event>)");
        return add_batch<event>(key(std::string(name)), std::move(fn), std::move(options),
                                max_batch);
    }

  private:
    template <class U, class F>
    static void call_batch(F& f, const context& ctx, const U* first, std::size_t n) {
        const std::span<const U> events(first, n);
        if constexpr (std::invocable<F&, const context&, std::span<const U>>)
            (void)f(ctx, events);
        else
            (void)f(events);
    }

    template <class U, class F>
    registration add_batch(key projection, F fn, handler_options options, std::size_t max_batch) {
        detail::check_callable(fn);
        static_assert(std::is_nothrow_move_constructible_v<U>);  // event too: gather is noexcept
        if (max_batch == 0)
            max_batch = detail::run_capacity<U>;
        if (max_batch > detail::run_capacity<U>)
            throw std::invalid_argument("eventbus: max_batch " + std::to_string(max_batch) +
                                        " is not in 0 to " +
                                        std::to_string(detail::run_capacity<U>));
        if (options.retry.max_attempts != 1)
            throw std::invalid_argument(
                "eventbus: a batch handler is not retried (retry.max_attempts must be 1)");
        detail::batch_fn batch;
        batch.invoke = [](void* f, const context& ctx, const void* first, std::size_t n) {
            call_batch<U>(*static_cast<F*>(f), ctx, std::launder(static_cast<const U*>(first)), n);
        };
        batch.gather = [](std::span<detail::envelope> events, std::byte* to) noexcept {
            for (detail::envelope& e : events) {
                U* from = std::launder(static_cast<U*>(e.mutable_payload()));
                ::new (static_cast<void*>(to)) U(std::move(*from));
                from->~U();
                to += sizeof(U);
            }
        };
        batch.scatter = [](std::byte* from, std::span<detail::envelope> events) noexcept {
            for (detail::envelope& e : events) {
                U* source = std::launder(reinterpret_cast<U*>(from));
                ::new (e.mutable_payload()) U(std::move(*source));
                source->~U();
                from += sizeof(U);
            }
        };
        batch.size = sizeof(U);
        batch.max_batch = max_batch;
        // Where no run is formed: a run of one, in place (a dynamic handler's payload is the
        // event itself).
        // A batch_error of a run of one: the call failed if it names the event (with its
        // cause, if any), else it succeeded.
        detail::handler_fn single{
            [](void* f, const context& ctx, const void* type, const void* payload, result*) {
                try {
                    if constexpr (std::is_same_v<U, event>) {
                        if (type != nullptr)
                            detail::throw_payload_mismatch("args");
                        call_batch<U>(*static_cast<F*>(f), ctx, static_cast<const event*>(payload),
                                      1);
                    } else {
                        if (type != &detail::type_tag<U>)
                            detail::throw_payload_mismatch("a typed event");
                        call_batch<U>(*static_cast<F*>(f), ctx,
                                      std::launder(static_cast<const U*>(payload)), 1);
                    }
                } catch (const batch_error& partial) {
                    if ((partial.failed() & 1) == 0)
                        return;
                    if (partial.cause())
                        std::rethrow_exception(partial.cause());
                    throw;
                }
            },
            std::make_shared<F>(std::move(fn))};
        return add(std::move(projection), std::move(single), batch, std::move(options));
    }

    registration add(key projection, detail::handler_fn call, detail::batch_fn batch,
                     handler_options options) {
        detail::check_retry(options.retry);
        auto added = std::make_shared<detail::handler_entry>();
        added->call = std::move(call);
        added->batch = batch;
        added->projection = projection;
        added->name = std::move(options.name);
        added->priority = options.priority;
        added->retry = options.retry;
        added->owner = state_;
        state_->handlers.update([&](table& t) {
            auto& list = t[projection];
            // After every handler of the same or a higher priority.
            const auto before = std::ranges::find_if(
                list, [&](const auto& e) { return e->priority < added->priority; });
            list.insert(before, added);
        });
        return registration(std::move(added));
    }

  public:
    /// `on("name", fn)`: a handler of dynamic events under a string key. A handler of typed
    /// events here is a compile-time error (their key is their type: use on<T>(fn)).
    template <class S, class F>
    requires std::convertible_to<const S&, std::string_view> &&
        (!std::same_as<std::remove_cvref_t<F>, handler>)registration
        on(const S& name, F fn, handler_options options = {}) {
        static_assert(!detail::deducible_typed_handler<F>,
                      "eventbus: a typed handler (taking const T&) cannot be registered under a "
                      "string key, whose events are dynamic (args): use on<T>(fn), whose key is "
                      "key::of<T>()");
        return on(key(std::string(std::string_view(name))), handler(std::move(fn)),
                  std::move(options));
    }

    /// Adds a handler of typed events of type T: `on<house_was_sold>(fn)` with `fn` taking
    /// `(const context&, const T&)` or `(const T&)`, returning result or void. Its key is
    /// `key::of<T>()`. Thread-safe; allocates.
    template <class T, class F>
    registration on(F fn, handler_options options = {}) {
        static_assert(detail::typed_handler_for<F, std::remove_cvref_t<T>>,
                      EVENTBUS_TYPED_HANDLER_FORMS);
        if constexpr (detail::typed_handler_for<F, std::remove_cvref_t<T>>)
            return on(key::of<std::remove_cvref_t<T>>(), handler::of<T>(std::move(fn)),
                      std::move(options));
        else
            return {};
    }

    /// The current handler table, lock-free; kept alive as long as the returned pointer.
    [[nodiscard]] std::shared_ptr<const table> handlers() const noexcept {
        return state_->handlers.read();
    }
    /// Changes whenever the table does.
    [[nodiscard]] std::uint64_t version() const noexcept { return state_->handlers.version(); }

  private:
    friend class detail::dispatch_core;

    // A store's own handle on the state it shares with the user's dispatcher.
    explicit dispatcher(std::shared_ptr<detail::dispatcher_state> state) noexcept
        : state_(std::move(state)) {}

    std::shared_ptr<detail::dispatcher_state> state_;
};

// metrics /////////////////////////////////////////////////////////////////////////////////////

namespace detail {
class latency_recorder;
}

/// A histogram of durations with bounded relative error (HdrHistogram's log-linear layout):
/// one bucket per nanosecond below 64 ns, then 32 buckets per power of two up to 2^36 ns
/// (68.7 s). A bucket is at most 1/32 of its lower bound wide, so a value read back (the middle
/// of its bucket) is within 1/64 (1.6%) of the durations recorded in it. Longer durations are
/// counted in `overflow()` (and `count()`, `sum()`, `max()`), never in a bucket.
/// A plain value (8 KiB of counts, no allocation); not thread-safe to write, like any value.
/// event_store records its own with atomics, per thread, and merges them into one of these when
/// `metrics()` is read.
class latency_histogram {
  public:
    static constexpr unsigned sub_bucket_bits = 5;
    static constexpr std::size_t sub_buckets = std::size_t{1} << sub_bucket_bits;  // 32
    static constexpr std::size_t bucket_count = 1024;
    /// The longest duration a bucket holds, in nanoseconds: 2^36 - 1 (68.7 s).
    static constexpr std::uint64_t max_tracked_ns = (std::uint64_t{1} << 36) - 1;

    /// The bucket of a duration of `ns` nanoseconds (at most `max_tracked_ns`).
    [[nodiscard]] static constexpr std::size_t bucket_of(std::uint64_t ns) noexcept {
        if (ns < 2 * sub_buckets)
            return static_cast<std::size_t>(ns);
        const auto shift = static_cast<unsigned>(std::bit_width(ns)) - (sub_bucket_bits + 1);
        return std::size_t{shift} * sub_buckets + static_cast<std::size_t>(ns >> shift);
    }
    /// The shortest duration (ns) bucket `i` holds.
    [[nodiscard]] static constexpr std::uint64_t lower_bound(std::size_t i) noexcept {
        if (i < 2 * sub_buckets)
            return i;
        const std::size_t shift = i / sub_buckets - 1;
        return std::uint64_t{i - shift * sub_buckets} << shift;
    }
    /// The longest duration (ns) bucket `i` holds.
    [[nodiscard]] static constexpr std::uint64_t upper_bound(std::size_t i) noexcept {
        return lower_bound(i) + width(i) - 1;
    }
    /// What a duration in bucket `i` reads back as: the middle of the bucket.
    [[nodiscard]] static constexpr std::uint64_t midpoint(std::size_t i) noexcept {
        return lower_bound(i) + width(i) / 2;
    }

    /// Adds one duration (negative ones count as 0).
    void record(std::chrono::nanoseconds duration) noexcept {
        record_ns(duration.count() < 0 ? 0 : static_cast<std::uint64_t>(duration.count()));
    }
    void record_ns(std::uint64_t ns, std::uint64_t times = 1) noexcept {
        if (times == 0)
            return;
        if (ns > max_tracked_ns)
            overflow_ += times;
        else
            counts_[bucket_of(ns)] += times;
        count_ += times;
        sum_ += ns * times;
        min_ = std::min(min_, ns);
        max_ = std::max(max_, ns);
    }
    /// Adds everything `other` recorded.
    void merge(const latency_histogram& other) noexcept {
        for (std::size_t i = 0; i < bucket_count; ++i)
            counts_[i] += other.counts_[i];
        overflow_ += other.overflow_;
        count_ += other.count_;
        sum_ += other.sum_;
        min_ = std::min(min_, other.min_);
        max_ = std::max(max_, other.max_);
    }

    /// Durations recorded, `overflow()` included.
    [[nodiscard]] std::uint64_t count() const noexcept { return count_; }
    [[nodiscard]] bool empty() const noexcept { return count_ == 0; }
    /// Durations longer than `max_tracked_ns`.
    [[nodiscard]] std::uint64_t overflow() const noexcept { return overflow_; }
    /// Their exact sum.
    [[nodiscard]] std::chrono::nanoseconds sum() const noexcept { return as_duration(sum_); }
    /// The exact shortest and longest (0 when empty).
    [[nodiscard]] std::chrono::nanoseconds min() const noexcept {
        return as_duration(count_ == 0 ? 0 : min_);
    }
    [[nodiscard]] std::chrono::nanoseconds max() const noexcept { return as_duration(max_); }
    /// The mean (0 when empty).
    [[nodiscard]] std::chrono::nanoseconds mean() const noexcept {
        return as_duration(count_ == 0 ? 0 : sum_ / count_);
    }
    /// The duration at quantile `q` (0.5: the median, 0.99: p99; clamped to [0, 1]): the middle
    /// of the bucket holding the `ceil(q * count())`-th shortest duration, kept within
    /// [min(), max()]; max() when that one overflowed. 0 when empty.
    [[nodiscard]] std::chrono::nanoseconds quantile(double q) const noexcept {
        if (count_ == 0)
            return std::chrono::nanoseconds(0);
        q = q < 0.0 || q != q ? 0.0 : std::min(q, 1.0);
        auto rank = static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(count_)));
        rank = std::clamp<std::uint64_t>(rank, 1, count_);
        std::uint64_t seen = 0;
        for (std::size_t i = 0; i < bucket_count; ++i) {
            seen += counts_[i];
            if (seen >= rank)
                return as_duration(min_ <= max_ ? std::clamp(midpoint(i), min_, max_)
                                                : midpoint(i));
        }
        return as_duration(max_);
    }
    /// Durations recorded in buckets that end at or before `limit` (so all of them are at most
    /// `limit`; exact when `limit` + 1 ns starts a bucket, within a bucket's width otherwise).
    [[nodiscard]] std::uint64_t count_at_or_below(std::chrono::nanoseconds limit) const noexcept {
        if (limit.count() < 0)
            return 0;
        const auto ns = static_cast<std::uint64_t>(limit.count());
        if (ns >= max_tracked_ns)
            return count_ - overflow_ + (ns >= max_ ? overflow_ : 0);
        std::size_t end = bucket_of(ns);
        if (upper_bound(end) <= ns)
            ++end;
        std::uint64_t n = 0;
        for (std::size_t i = 0; i < end; ++i)
            n += counts_[i];
        return n;
    }
    /// The counts per bucket (see `lower_bound`, `upper_bound`).
    [[nodiscard]] std::span<const std::uint64_t, bucket_count> buckets() const noexcept {
        return counts_;
    }

  private:
    friend class detail::latency_recorder;

    /// Replaces what the buckets' midpoints made of the exact figures (a recorder's snapshot).
    void set_exact(std::uint64_t overflow, std::uint64_t sum, std::uint64_t min,
                   std::uint64_t max) noexcept {
        const std::uint64_t tracked = count_ - overflow_;
        overflow_ = overflow;
        count_ = tracked + overflow;
        sum_ = sum;
        min_ = min;
        max_ = max;
    }

    [[nodiscard]] static constexpr std::uint64_t width(std::size_t i) noexcept {
        return i < 2 * sub_buckets ? 1 : std::uint64_t{1} << (i / sub_buckets - 1);
    }
    static std::chrono::nanoseconds as_duration(std::uint64_t ns) noexcept {
        constexpr auto most = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
        return std::chrono::nanoseconds(static_cast<std::int64_t>(std::min(ns, most)));
    }

    std::array<std::uint64_t, bucket_count> counts_{};
    std::uint64_t overflow_ = 0;
    std::uint64_t count_ = 0;
    std::uint64_t sum_ = 0;
    std::uint64_t min_ = ~std::uint64_t{0};
    std::uint64_t max_ = 0;
};

static_assert(latency_histogram::bucket_of(latency_histogram::max_tracked_ns) + 1 ==
                  latency_histogram::bucket_count,
              "the last bucket ends at max_tracked_ns");
static_assert(latency_histogram::upper_bound(latency_histogram::bucket_count - 1) ==
              latency_histogram::max_tracked_ns);

namespace detail {

/// Where a thread records durations: a latency_histogram's counts as atomics, read (merged into
/// a latency_histogram) by metrics() on another thread. `exclusive`: only one thread at a time
/// records here (a worker, the sync lease holder), with a relaxed load and store per count and
/// no read-modify-write; otherwise each count is a relaxed fetch_add.
class latency_recorder {
  public:
    explicit latency_recorder(bool exclusive) noexcept : exclusive_(exclusive) {}

    void record(std::uint64_t ns) noexcept {
        add(ns > latency_histogram::max_tracked_ns ? overflow_
                                                   : counts_[latency_histogram::bucket_of(ns)],
            1);
        add(count_, 1);
        add(sum_, ns);
        // Rarely written: a load, and a CAS only for a new extreme.
        raise_to(max_, ns);
        lower_to(min_, ns);
    }
    /// From `start` (a clock_ns() reading) to now; returns now.
    std::uint64_t record_since(std::uint64_t start) noexcept {
        const std::uint64_t now = clock_ns();
        record(now >= start ? now - start : 0);
        return now;
    }

    void read_into(latency_histogram& out) const noexcept {
        const std::uint64_t n = count_.load(std::memory_order_relaxed);
        if (n == 0)
            return;
        latency_histogram mine;
        for (std::size_t i = 0; i < latency_histogram::bucket_count; ++i)
            if (const std::uint64_t c = counts_[i].load(std::memory_order_relaxed))
                mine.record_ns(latency_histogram::midpoint(i), c);
        // The exact figures replace the midpoints' (a record in flight may make them differ
        // by one).
        const std::uint64_t least = min_.load(std::memory_order_relaxed);
        const std::uint64_t most = max_.load(std::memory_order_relaxed);
        // A first record still in flight may have raised neither: then the buckets' figures
        // stay.
        if (least <= most)
            mine.set_exact(overflow_.load(std::memory_order_relaxed),
                           sum_.load(std::memory_order_relaxed), least, most);
        out.merge(mine);
    }

  private:
    void add(std::atomic<std::uint64_t>& counter, std::uint64_t n) noexcept {
        if (exclusive_)
            add_owned(counter, n);
        else
            counter.fetch_add(n, std::memory_order_relaxed);
    }

    const bool exclusive_;
    std::atomic<std::uint64_t> count_{0};
    std::atomic<std::uint64_t> sum_{0};
    std::atomic<std::uint64_t> min_{~std::uint64_t{0}};
    std::atomic<std::uint64_t> max_{0};
    std::atomic<std::uint64_t> overflow_{0};
    std::array<std::atomic<std::uint64_t>, latency_histogram::bucket_count> counts_{};
};

/// A recording thread's two histograms (see store_metrics).
struct latency_recorders {
    explicit latency_recorders(bool exclusive = true) noexcept : wait(exclusive), run(exclusive) {}
    latency_recorder wait;  // subscribe to the first handler call
    latency_recorder run;   // each handler call
};

}  // namespace detail

// hooks and options ///////////////////////////////////////////////////////////////////////////

/// A transaction whose events come from a message broker that delivers them again when a
/// handler fails (`event_store::begin_transaction(transaction_options)`). With
/// `max_deliveries` 0 (the default) the handlers' own retry policies apply, as for any event.
/// Otherwise they do not: a failed call of delivery `delivery` < `max_deliveries` counts in
/// `store_metrics::retried` (the broker's next delivery is the retry), and on the last
/// delivery it is a dead letter whose `attempts()` is `delivery`.
struct transaction_options {
    std::uint32_t delivery = 1;  // this delivery's number: 1 for the first
    std::uint32_t max_deliveries = 0;
};

/// Options of an event_store.
struct store_options {
    /// Run handlers on a pool of worker threads fed straight from the ring (publish() then only
    /// makes events eligible and returns). Otherwise publish() runs them on the caller.
    bool async = false;
    /// Worker threads in async mode; 0 means std::thread::hardware_concurrency() (at least 1).
    std::size_t workers = 0;
    /// Async mode: events with the same key are handled one at a time, in FIFO order, while
    /// different keys run in parallel. Costs a short mutex around each pop.
    bool ordered_by_key = false;
    /// ordered_by_key: how many popped events may wait behind keys that other workers are
    /// handling, in places allocated by the constructor (0: min(capacity, 4096); at most 2^32).
    /// While all are taken, workers take no new event, so a handler must not wait for another
    /// event of its own store to be handled.
    std::size_t max_parked = 0;
    /// The caller promises that one thread at a time produces: subscribe, transaction commit,
    /// schedule, close and the destructor (a handler that subscribes counts as producing).
    /// subscribe then skips the check of who owns the ring's tail (see ring_options). Builds
    /// without NDEBUG abort with a message when two threads subscribe at once.
    bool single_producer = false;
    /// How many dead letters the store keeps for `dead_letters()` (the oldest are dropped
    /// beyond it, counted in `metrics().dead_letters_dropped`). 0: none are kept; they are
    /// still counted and shown to `on_dead_letter` hooks.
    std::size_t dead_letter_capacity = 0;
    /// Record how long events wait (`store_metrics::queue_wait`: from subscribe to the start of
    /// their first handler call) and how long handler calls take
    /// (`store_metrics::handler_duration`). Costs a clock read (steady_clock) when an event is
    /// accepted, one before its handlers and one after each handler call, and 8 bytes per
    /// ring slot plus 16 KiB per worker and 32 KiB per store, allocated by the constructor.
    /// Off: no clock is read.
    bool latency_histograms = false;
};

/// A snapshot of a store's counters.
struct store_metrics {
    std::uint64_t published = 0;  ///< accepted by subscribe
    std::uint64_t processed = 0;  ///< handler calls finished, failed ones included
    /// Events (published or triggered) that reached at least one handler call.
    std::uint64_t handled = 0;
    std::uint64_t errors = 0;     ///< handler calls that threw
    std::uint64_t dropped = 0;    ///< overwritten by drop_oldest
    std::uint64_t unhandled = 0;  ///< events with no handler
    std::uint64_t triggered = 0;  ///< events run at once by trigger() (not in `published`)
    std::uint64_t scheduled = 0;  ///< accepted by schedule() for later
    /// Scheduled events that never reached the ring: cancelled through their handle or their
    /// context, still pending at close(), or refused when due (ring full or closed).
    std::uint64_t cancelled = 0;
    /// Handler calls that were retries (also in `processed`, and in `errors` if they threw);
    /// for a redelivered transaction (transaction_options), failed calls before the last
    /// delivery, counted when they fail (the retry is the broker's next delivery).
    std::uint64_t retried = 0;
    /// Dead letters: a handler's last attempt at an event failed, or its retry could not run
    /// (the store closed, the handler was removed, or there was no memory to keep the event).
    std::uint64_t dead_lettered = 0;
    /// Dead letters not kept: beyond `dead_letter_capacity` (the oldest go), or no memory.
    std::uint64_t dead_letters_dropped = 0;
    /// Failed handler calls of trigger(): its caller is told (`handler_failed`); they are never
    /// retried or dead-lettered.
    std::uint64_t trigger_errors = 0;
    /// Refused attempts to enqueue, counted per event: a subscribe or replay refused
    /// (`buffer_full` under return_error, `would_deadlock`, `closed`, a context that ended while
    /// waiting under block), and each event of a refused commit (also `exceeds_capacity`); a
    /// commit tried again counts again.
    std::uint64_t rejected = 0;
    /// Events in the ring now: accepted, not yet taken by a dispatcher or a worker.
    std::uint64_t depth = 0;
    /// The most events seen waiting in the ring at once, seen when a dispatcher or a worker
    /// takes a batch (at most the capacity).
    std::uint64_t high_water = 0;
    /// With `store_options::latency_histograms`: from the moment an event entered the ring
    /// (its subscribe, commit or replay; a scheduled event's due time) to the start of its
    /// handling, once per event taken from the ring, unhandled ones included (not trigger(),
    /// nor retries). At quiescence its count() is `published - dropped`.
    latency_histogram queue_wait;
    /// With `store_options::latency_histograms`: each handler call with its before hooks and
    /// middleware, retries and trigger() included; a batch handler's call counts once. Without
    /// batch handlers its count() is `processed`.
    latency_histogram handler_duration;
};

class dead_letter;

/// What hooks see of an event, typed or dynamic, without copying it. Valid during the hook call.
class event_view {
  public:
    /// A dynamic event.
    explicit event_view(const event& ev) noexcept
        : projection_(&ev.projection), type_(nullptr), payload_(&ev) {}

    /// The event's key (a typed event's is `key::of<T>()`).
    [[nodiscard]] const key& projection() const noexcept { return *projection_; }
    /// A dynamic event's id; empty for a typed event.
    [[nodiscard]] std::string_view id() const noexcept {
        return type_ == nullptr ? std::string_view(static_cast<const event*>(payload_)->id)
                                : std::string_view();
    }
    /// The dynamic event, or nullptr for a typed one.
    [[nodiscard]] const event* dynamic() const noexcept {
        return type_ == nullptr ? static_cast<const event*>(payload_) : nullptr;
    }
    /// The typed payload if the event is a T, else nullptr.
    template <class T>
    [[nodiscard]] const T* get_if() const noexcept {
        if (type_ != &detail::type_tag<std::remove_cvref_t<T>>)
            return nullptr;
        return std::launder(static_cast<const T*>(payload_));
    }
    [[nodiscard]] bool is_typed() const noexcept { return type_ != nullptr; }

  private:
    friend class detail::dispatch_core;
    template <overflow_policy>
    friend class event_store;
    friend class next_handler;
    friend class dead_letter;
    event_view(const key& projection, const void* type, const void* payload) noexcept
        : projection_(&projection), type_(type), payload_(payload) {}

    const key* projection_;
    const void* type_;     // the payload's type tag; nullptr for a dynamic event
    const void* payload_;  // the typed payload, or the `event`
};

/// What an error hook of the second form learns about a failed handler call.
struct handler_failure {
    event_view event;                ///< the event being handled
    std::string_view handler;        ///< the handler's `handler_options::name` (empty if none)
    std::exception_ptr error;        ///< what it threw (or a before hook or middleware threw)
    std::uint32_t attempt = 1;       ///< 1 for the first call, 2 for the first retry, ...
    std::uint32_t max_attempts = 1;  ///< the handler's `retry_policy::max_attempts`
};

/// An event that a handler gave up on: its last attempt failed, or its retry could not run.
/// Holds the event (shared, never copied) for as long as any copy of the letter lives.
/// Copyable; thread-safe to read.
class dead_letter {
  public:
    /// The event, typed (`get_if<T>()`) or dynamic (`dynamic()`).
    [[nodiscard]] event_view event() const noexcept {
        const detail::envelope& ev = event_->ev;
        return {ev.projection(), ev.type(), ev.payload()};
    }
    [[nodiscard]] const key& projection() const noexcept { return event_->ev.projection(); }
    /// The handler's `handler_options::name`.
    [[nodiscard]] const std::string& handler() const noexcept { return handler_; }
    /// Calls made, the last one included.
    [[nodiscard]] std::uint32_t attempts() const noexcept { return attempts_; }
    /// What the last call threw.
    [[nodiscard]] const std::exception_ptr& error() const noexcept { return error_; }
    /// Why the handler gave up: `errc::handler_failed` (its attempts ran out), `errc::closed`
    /// (the store closed before its retry ran) or `errc::cancelled` (the handler was removed
    /// before it).
    [[nodiscard]] std::error_code reason() const noexcept { return reason_; }
    [[nodiscard]] std::chrono::system_clock::time_point failed_at() const noexcept {
        return failed_at_;
    }
    /// 1, 2, ... in the order the store's handlers gave up.
    [[nodiscard]] std::uint64_t sequence() const noexcept { return sequence_; }

  private:
    friend class detail::dispatch_core;
    template <overflow_policy>
    friend class event_store;
    dead_letter(detail::kept_ptr ev, std::string handler, std::uint32_t attempts,
                std::exception_ptr error, std::error_code reason, std::uint64_t sequence,
                std::uint64_t origin) noexcept
        : origin_(origin)
        , event_(std::move(ev))
        , handler_(std::move(handler))
        , attempts_(attempts)
        , error_(std::move(error))
        , reason_(reason)
        , failed_at_(std::chrono::system_clock::now())
        , sequence_(sequence) {}

    std::uint64_t origin_;  // which store's dispatch core made it
    detail::kept_ptr event_;
    std::string handler_;
    std::uint32_t attempts_;
    std::exception_ptr error_;
    std::error_code reason_;
    std::chrono::system_clock::time_point failed_at_;
    std::uint64_t sequence_;
};

namespace detail {

/// A store's hook or middleware, removable through a registration.
struct hook_state;
template <class F>
struct hook_entry final : registered {
    F fn;
    std::weak_ptr<hook_state> owner;

    explicit hook_entry(F f) : fn(std::move(f)) {}
    void remove() noexcept override;
    [[nodiscard]] bool live() const noexcept {
        // Seq_cst, after the batch's seq_cst pin: see pin_registry::wait_for_batches.
        return !removed.load(std::memory_order_seq_cst);
    }
};
template <class F>
using hook_list = std::vector<std::shared_ptr<hook_entry<F>>>;

}  // namespace detail

/// Calls the rest of the middleware chain, then the handler.
class next_handler {
  public:
    result operator()(const context& ctx, const event& ev) const;

  private:
    friend class detail::dispatch_core;
    using middleware_fn = std::function<result(const context&, const event&, const next_handler&)>;
    using chain_type = detail::hook_list<middleware_fn>;
    next_handler(const chain_type& chain, std::size_t index, const detail::handler_entry& target,
                 const event_view& ev) noexcept
        : chain_(&chain), index_(index), target_(&target), event_(&ev) {}

    const chain_type* chain_;
    std::size_t index_;
    const detail::handler_entry* target_;
    const event_view* event_;
};

/// Wraps every handler call: `result(const context&, const event&, const next_handler& next)`;
/// call `next(ctx, ev)` to go on. The first registered is the outermost. For a typed event,
/// middleware and hooks of these forms see an `event` with only `projection` set
/// (`key::of<T>()`), and the handler always receives the original payload.
using middleware = std::function<result(const context&, const event&, const next_handler&)>;
using before_hook = std::function<void(const context&, const event&)>;
/// Sees the result, or the error (`result` is then empty).
using after_hook =
    std::function<void(const context&, const event&, const result&, std::exception_ptr)>;
using error_hook = std::function<void(const context&, const event&, std::exception_ptr)>;
/// An error hook that sees the payload of typed events and the failing handler's name.
using failure_hook = std::function<void(const context&, const handler_failure&)>;
/// Once per event that found no handler (a typo in a string key, a type nobody handles).
using unhandled_hook = std::function<void(const context&, const event_view&)>;
/// Once per dead letter, on the thread where the handler gave up (kept or not).
using dead_letter_hook = std::function<void(const dead_letter&)>;

inline result next_handler::operator()(const context& ctx, const event& ev) const {
    for (std::size_t i = index_; i < chain_->size(); ++i)
        if (const auto& m = (*chain_)[i]; m->live())
            return m->fn(ctx, ev, next_handler(*chain_, i + 1, *target_, *event_));
    result out;
    if (event_->is_typed())
        target_->call(ctx, event_->type_, event_->payload_, &out);
    else
        target_->call(ctx, nullptr, &ev, &out);  // what the middleware passed on
    return out;
}

namespace detail {

struct hook_set {
    hook_list<middleware> chain;
    hook_list<before_hook> before;
    hook_list<after_hook> after;
    hook_list<error_hook> error;
    hook_list<failure_hook> failure;
    hook_list<unhandled_hook> unhandled;
    hook_list<dead_letter_hook> dead;  // not in empty(): they do not change how events run

    [[nodiscard]] bool empty() const noexcept {
        return chain.empty() && before.empty() && after.empty() && error.empty() &&
               failure.empty() && unhandled.empty();
    }
};

/// A store's hooks, shared with their registrations (which may outlive the store).
struct hook_state {
    explicit hook_state(std::shared_ptr<dispatcher_state> d) noexcept : dispatcher(std::move(d)) {}

    snapshot<hook_set> set;
    std::shared_ptr<dispatcher_state> dispatcher;  // whose pins cover the hook calls

    template <class F>
    registration add(hook_list<F> hook_set::*list, F fn, const std::shared_ptr<hook_state>& self) {
        check_callable(fn);
        auto entry = std::make_shared<hook_entry<F>>(std::move(fn));
        entry->owner = self;
        set.update([&](hook_set& s) { (s.*list).push_back(entry); });
        return registration_of(std::move(entry));
    }

    template <class F>
    void remove(hook_entry<F>& target) noexcept {
        if (!target.removed.load(std::memory_order_acquire)) {
            try {
                set.update([&](hook_set& s) {
                    const auto drop = [&](auto& list) {
                        std::erase_if(list, [&](const auto& e) {
                            return static_cast<const registered*>(e.get()) == &target;
                        });
                    };
                    drop(s.chain);
                    drop(s.before);
                    drop(s.after);
                    drop(s.error);
                    drop(s.failure);
                    drop(s.unhandled);
                    drop(s.dead);
                });
            } catch (...) {
                // Out of memory for the copy: it stays, marked removed below.
            }
        }
        target.removed.store(true, std::memory_order_seq_cst);
        dispatcher->pins.wait_for_batches(&target);
    }

    static registration registration_of(std::shared_ptr<registered> entry) noexcept {
        return registration(std::move(entry));
    }
};

template <class F>
void hook_entry<F>::remove() noexcept {
    if (const std::shared_ptr<hook_state> state = owner.lock())
        state->remove(*this);
    else
        removed.store(true, std::memory_order_seq_cst);
}

}  // namespace detail

// dispatch core ///////////////////////////////////////////////////////////////////////////////

namespace detail {

/// The dispatches running on this thread, innermost first: lets a store see that it is called
/// from inside one of its own handlers.
struct dispatch_frame {
    const void* store;
    const dispatch_frame* outer;
};
inline thread_local const dispatch_frame* dispatch_frames = nullptr;

inline bool inside_dispatch_of(const void* store) noexcept {
    for (auto* frame = dispatch_frames; frame != nullptr; frame = frame->outer)
        if (frame->store == store)
            return true;
    return false;
}

/// Marks this thread as dispatching for `store` while it lives.
class dispatch_mark {
  public:
    explicit dispatch_mark(const void* store) noexcept : frame_{store, dispatch_frames} {
        dispatch_frames = &frame_;
    }
    dispatch_mark(const dispatch_mark&) = delete;
    dispatch_mark& operator=(const dispatch_mark&) = delete;
    ~dispatch_mark() { dispatch_frames = frame_.outer; }

  private:
    dispatch_frame frame_;
};

struct batch_counts {
    std::uint64_t processed = 0;
    std::uint64_t handled = 0;
    std::uint64_t errors = 0;
    std::uint64_t unhandled = 0;
    std::uint64_t trigger_errors = 0;
    // Where the dispatching thread records latencies: nullptr unless the store has histograms.
    latency_recorders* latency = nullptr;
    // With `latency`: the thread's last clock reading in this batch (0: none yet). A handler
    // call ends where the next event's handling begins, so one reading serves both.
    std::uint64_t clock = 0;
};

/// A failed handler call, remembered until the event's other handlers have run; then it is
/// retried or dead-lettered.
struct failed_call {
    std::shared_ptr<handler_entry> target;
    std::exception_ptr error;
    std::uint32_t attempts = 0;       // calls made, the failed one included
    const envelope* event = nullptr;  // which event of the batch (run() settles them after it)
};

/// Handlers to call again with one kept event, waiting on the store's timer.
/// A handler waiting for its retry: held weakly, so that removing it frees its callable now,
/// as it does without a retry.
struct waiting_call {
    std::weak_ptr<handler_entry> target;
    std::string name;  // the handler's, for its dead letter
    std::exception_ptr error;
    std::uint32_t attempts = 0;
};

struct retry_job {
    kept_ptr event;
    std::vector<waiting_call> targets;
    // ordered_by_key: the stripe of the event's key, held (its later events parked) until the
    // retries are over, and the position its owner announced (no later than the parked events).
    void* lane = nullptr;
    std::uint64_t position = 0;
    std::shared_ptr<retry_job> next;  // a worker pool's queue of due retries
};

/// Which events of a batch (of at most 64) belong to a transaction, and which of those had a
/// failed handler call.
struct completions {
    bool any = false;
    std::uint64_t failed = 0;
};

/// Events claimed from the ring in one go (one compare-and-swap), moved out of their slots so
/// that the slots are free again before any handler runs: a handler may then subscribe into a
/// full ring without waiting for its own batch. Lives on the dispatching thread's stack.
class claimed_batch {
  public:
    static constexpr std::size_t capacity = 64;  // bits of `completions::failed`

    claimed_batch() noexcept = default;
    claimed_batch(const claimed_batch&) = delete;
    claimed_batch& operator=(const claimed_batch&) = delete;
    ~claimed_batch() { clear(); }

    /// Takes up to `most` (at most `capacity`) events of positions before `limit` from `ring`;
    /// `stamped`: with their push times (see `stamps`).
    template <class Ring>
    std::size_t take(Ring& ring, std::uint64_t limit, std::size_t most, bool stamped) noexcept {
        clear();
        if (stamped) [[unlikely]]
            return size_ = ring.try_pop_batch(
                       limit, most, [this](envelope&& e, std::uint64_t pushed_at) noexcept {
                           stamps_[size_] = pushed_at;
                           ::new (static_cast<void*>(storage_ + size_++ * sizeof(envelope)))
                               envelope(std::move(e));
                       });
        return size_ = ring.try_pop_batch(limit, most, [this](envelope&& e) noexcept {
            ::new (static_cast<void*>(storage_ + size_++ * sizeof(envelope)))
                envelope(std::move(e));
        });
    }
    /// One event (ordered_by_key takes them one at a time).
    void put(envelope&& e, std::uint64_t pushed_at) noexcept {
        clear();
        ::new (static_cast<void*>(storage_)) envelope(std::move(e));
        stamps_[0] = pushed_at;
        size_ = 1;
    }
    /// When each event was taken `stamped` (or put) was accepted: clock_ns, 0 if unknown.
    [[nodiscard]] const std::uint64_t* stamps() const noexcept { return stamps_; }
    [[nodiscard]] std::span<envelope> events() noexcept {
        return {std::launder(reinterpret_cast<envelope*>(storage_)), size_};
    }
    /// Destroys the events (their payloads die here, before the batch is reported done).
    void clear() noexcept {
        for (envelope& e : events())
            e.~envelope();
        size_ = 0;
    }

  private:
    alignas(envelope) std::byte storage_[capacity * sizeof(envelope)];
    std::uint64_t stamps_[capacity];  // set only by a stamped take, and put
    std::size_t size_ = 0;
};

/// A dispatching thread's copies of the handler table and the hooks, kept across batches while
/// they are current (reading them costs shared read-modify-writes).
struct handler_view {
    using table = std::unordered_map<key, std::vector<std::shared_ptr<handler_entry>>>;
    using handler_list = table::mapped_type;

    std::shared_ptr<const table> handlers;
    std::shared_ptr<const hook_set> hooks;
    std::uint64_t table_version = 0;
    std::uint64_t hooks_version = 0;
    // The handlers of the last typed event's type (nullptr: none): a run of events of one type
    // skips the hash lookup.
    const void* last_type = nullptr;
    const handler_list* last_handlers = nullptr;
    // Whether every handler in `handlers` is permanent (no registration handle left, so it can
    // never be removed): only then may the copy be kept while idle, since keeping it can then
    // never prolong the life of a removed handler.
    bool permanent = false;
    // The failed calls of the event being dispatched (empty but for a moment after a failure).
    std::vector<failed_call> failures;
    // ordered_by_key: the stripe of the event being dispatched, and whether a retry now holds
    // it (its owner must then not let it go).
    void* lane = nullptr;
    std::uint64_t lane_position = 0;
    bool lane_kept = false;
    // Whether the table has a batch handler; then runs of events are formed for it.
    bool batching = false;
    // The event being dispatched, for the failed calls (set off the hot path: there, call_plain
    // passes its event).
    const envelope* current_event = nullptr;

    [[nodiscard]] const handler_list* handlers_of(const envelope& env) noexcept {
        const void* type = env.type();
        if (type != nullptr && type == last_type)
            return last_handlers;  // before projection(), an indirect call
        return handlers_of(type, env.projection());
    }
    [[nodiscard]] const handler_list* handlers_of(const void* type,
                                                  const key& projection) noexcept {
        if (type != nullptr && type == last_type)
            return last_handlers;
        const auto found = handlers->find(projection);
        const handler_list* list =
            found == handlers->end() || found->second.empty() ? nullptr : &found->second;
        if (type != nullptr) {
            last_type = type;
            last_handlers = list;
        }
        return list;
    }

    void release() noexcept {
        release_table();
        hooks.reset();
    }
    /// Lets go of the table only (a removed hook is never called again, whoever holds a copy;
    /// keeping the copy only delays freeing its callable until the hooks change again).
    void release_table() noexcept {
        handlers.reset();
        last_type = nullptr;
    }
};

/// Runs the handlers of claimed events, with hooks and middleware, counting what happened.
/// Knows nothing of rings or threads.
class dispatch_core {
  public:
    explicit dispatch_core(const eventbus::dispatcher& handlers)
        : dispatcher_(handlers.state_)
        , hooks_(std::make_shared<hook_state>(handlers.state_))
        , handler_ctx_(stop_.get_token()) {}

    [[nodiscard]] eventbus::dispatcher& dispatcher() const noexcept { return dispatcher_; }
    [[nodiscard]] const context& handler_context() const noexcept { return handler_ctx_; }
    /// Tells handlers still to run that the closer gave up waiting (their context's token).
    void request_stop() noexcept { stop_.request_stop(); }

    /// Adds a hook or middleware; its registration removes it.
    template <class F>
    registration add_hook(hook_list<F> hook_set::*list, F fn) {
        return hooks_->add(list, std::move(fn), hooks_);
    }

    /// Re-reads the table and the hooks if they changed. The events about to be handled were
    /// made eligible after every registration that happened before their publish(), and the
    /// versions are read after they were claimed (seq_cst), so those registrations are seen.
    /// Version first, then the copy: the copy is at least as new as the version.
    void refresh(handler_view& view) const {
        const dispatcher_state& state = *dispatcher_.state_;
        if (const auto v = state.handlers.version(); !view.handlers || v != view.table_version) {
            view.table_version = v;
            view.handlers = state.handlers.read();
            view.last_type = nullptr;
            // A handler removed just before its last handle went is not permanent either: the
            // copy may have been taken before the removal.
            view.permanent = std::ranges::all_of(*view.handlers, [](const auto& by_key) {
                return std::ranges::none_of(by_key.second, [](const auto& e) {
                    return e->removable() || e->removed.load(std::memory_order_acquire);
                });
            });
            view.batching = std::ranges::any_of(*view.handlers, [](const auto& by_key) {
                return std::ranges::any_of(
                    by_key.second, [](const auto& e) { return e->batch.invoke != nullptr; });
            });
        }
        if (const auto v = hooks_->set.version(); !view.hooks || v != view.hooks_version) {
            view.hooks_version = v;
            view.hooks = hooks_->set.read();
        }
    }

    /// Handles `batch` in order. The dispatcher's pin covers the whole batch (see
    /// pin_registry): two read-modify-writes per batch, none per handler call. Returns the
    /// transactions' completions, to be told (`complete`) once the counts are published, so that
    /// a committer that returns sees its events counted.
    /// `stamps`: when each event was accepted (clock_ns, 0: unknown), for the queue-wait
    /// histogram; read only when `counts.latency` is set.
    [[nodiscard]] completions run(std::span<envelope> batch, handler_view& view,
                                  batch_counts& counts, const std::uint64_t* stamps = nullptr) {
        // Latency histograms read the clock in a loop of their own; batch handlers form runs,
        // and without them the loop does not look for any.
        if (counts.latency != nullptr) [[unlikely]]
            return view.batching ? run_batch<true, true>(batch, view, counts, stamps)
                                 : run_batch<false, true>(batch, view, counts, stamps);
        return view.batching ? run_batch<true, false>(batch, view, counts, nullptr)
                             : run_batch<false, false>(batch, view, counts, nullptr);
    }

  private:
    template <bool Batching, bool Timed>
    [[nodiscard]] completions run_batch(std::span<envelope> batch, handler_view& view,
                                        batch_counts& counts, const std::uint64_t* stamps) {
        completions done;
        const pin_guard pin(pins());
        const bool plain = view.hooks->empty();
        if constexpr (Timed)
            counts.clock = clock_ns();
        for (std::size_t i = 0; i < batch.size(); ++i) {
            envelope& env = batch[i];
            if constexpr (Batching) {
                if (const std::size_t n = run_of(batch.subspan(i), view); n > 1) {
                    if constexpr (Timed)
                        record_waits(counts, stamps, i, n);
                    dispatch_run(batch.subspan(i, n), view, counts, pin);
                    i += n - 1;
                    continue;
                }
            }
            if (plain && env.type() != nullptr) {
                // The hot path, inline: a typed event (never a transaction's box, whose type is
                // nullptr), no hooks, straight to the handlers; nobody wants their results.
                // Handlers removed since the table was read are skipped: if that leaves none,
                // the event is unhandled.
                const handler_view::handler_list* handlers = view.handlers_of(env);
                if (handlers != nullptr &&
                    call_plain<Timed>(*handlers, env, counts, pin, &view,
                                      Timed && stamps != nullptr ? stamps[i] : 0)) {
                    ++counts.handled;
                } else {
                    if constexpr (Timed)
                        if (handlers == nullptr)
                            record_waits(counts, stamps, i, 1);
                    ++counts.unhandled;
                }
                continue;
            }
            if constexpr (Timed)
                record_waits(counts, stamps, i, 1);
            const std::uint64_t errors_before = counts.errors;
            const envelope& content = env.content();
            view.current_event = &env;
            dispatch(event_view(content.projection(), content.type(), content.payload()), view,
                     counts, pin, handler_ctx_, 1);
            if (env.in_transaction()) {
                done.any = true;
                if (counts.errors != errors_before)
                    done.failed |= std::uint64_t{1} << i;
            }
        }
        if (!view.failures.empty()) [[unlikely]]
            settle_each(batch, view);
        return done;
    }

    // Queue waits of events [first, first + n) of a batch, which start being handled now (the
    // thread's last clock reading).
    static void record_waits(batch_counts& counts, const std::uint64_t* stamps, std::size_t first,
                             std::size_t n) noexcept {
        if (stamps == nullptr)
            return;
        const std::uint64_t now = counts.clock != 0 ? counts.clock : clock_ns();
        for (std::size_t k = first; k < first + n; ++k)
            if (stamps[k] != 0)
                counts.latency->wait.record(now >= stamps[k] ? now - stamps[k] : 0);
    }

  public:
    /// Runs the handlers of one event now, on the caller, with `ctx` as their context.
    /// Failed calls are counted in `trigger_errors` (the caller is told), never retried.
    void run_now(const event_view& ev, handler_view& view, batch_counts& counts,
                 const context& ctx) {
        const pin_guard pin(pins());
        const std::uint64_t errors_before = counts.errors;
        dispatch(ev, view, counts, pin, ctx, 0);
        counts.trigger_errors += counts.errors - errors_before;
    }

    /// Calls again the handlers of a due retry, with hooks, on the calling thread (its own
    /// context); a handler removed meanwhile is dead-lettered instead. What fails again is
    /// retried later or dead-lettered.
    void run_retry(retry_job& job, handler_view& view, batch_counts& counts) {
        const pin_guard pin(pins());
        const envelope& kept = job.event->ev;
        const event_view ev(kept.projection(), kept.type(), kept.payload());
        const hook_set& hooks = *view.hooks;
        std::optional<event> stand_in;  // what hooks see of a typed event: its key
        if (ev.is_typed())
            stand_in.emplace(event{.id = {}, .projection = ev.projection(), .args = {}});
        const event& as_event = ev.is_typed() ? *stand_in : *ev.dynamic();
        view.lane = job.lane;
        view.lane_position = job.position;
        for (waiting_call& call : job.targets) {
            const std::shared_ptr<handler_entry> target = call.target.lock();
            if (!target || !pin.enter(*target)) {
                bury(job.event, call.name, call.attempts, std::move(call.error), errc::cancelled,
                     hooks);
                continue;
            }
            retried_.fetch_add(1, std::memory_order_relaxed);
            run_one(target, ev, as_event, hooks, counts, handler_ctx_, view, call.attempts + 1);
        }
        if (!view.failures.empty())
            settle(nullptr, &job.event, view);
    }

    /// The store's timer, for retries: `schedule(store, job, delay)` takes the job, counted as
    /// pending (retry_started), and returns `{}`; or leaves it to the caller with the reason
    /// (`errc::closed`, `errc::not_supported`, or no memory: `errc::handler_failed`).
    using retry_scheduler = std::error_code (*)(void* store, std::shared_ptr<retry_job>& job,
                                                std::chrono::nanoseconds delay) noexcept;
    void set_retries(retry_scheduler schedule, void* store, std::size_t letter_capacity) noexcept {
        schedule_retry_ = schedule;
        retry_store_ = store;
        letter_capacity_ = letter_capacity;
    }

    /// Retries waiting or running: drain() waits until there are none.
    [[nodiscard]] std::uint64_t retries_pending() const noexcept {
        return retries_pending_.load(std::memory_order_seq_cst);
    }
    [[nodiscard]] event_count& retries_done() noexcept { return retries_done_; }
    /// The timer took a job (under its mutex, before close() can stop it): pending until
    /// retry_finished().
    void retry_started() noexcept { retries_pending_.fetch_add(1, std::memory_order_seq_cst); }
    /// A job taken by schedule_retry is over (after its counts were added).
    void retry_finished() noexcept {
        // Seq_cst RMW, then notify: drain re-checks with a seq_cst load (eventcount).
        retries_pending_.fetch_sub(1, std::memory_order_seq_cst);
        retries_done_.notify_if_waiting();
    }
    /// A job that will never run (the store closed): every handler of it gives up. With
    /// `keep_pending` (ordered_by_key: its stripe must still be let go by a worker) the job
    /// stays pending, without targets.
    void abandon(retry_job& job, bool keep_pending = false) noexcept {
        const auto hooks = hooks_->set.read();
        for (waiting_call& call : job.targets)
            bury(job.event, call.name, call.attempts, std::move(call.error), errc::closed, *hooks);
        job.targets.clear();
        if (!keep_pending)
            retry_finished();
    }

    [[nodiscard]] std::uint64_t retried() const noexcept {
        return retried_.load(std::memory_order_relaxed);
    }
    /// A dispatcher or worker about to take a batch saw `depth` events waiting: a load, and a
    /// CAS only for a new high-water mark (its line is read-mostly).
    void note_depth(std::uint64_t depth) noexcept { raise_to(high_water_, depth); }
    [[nodiscard]] std::uint64_t high_water() const noexcept {
        return high_water_.load(std::memory_order_relaxed);
    }
    [[nodiscard]] std::uint64_t dead_lettered() const noexcept {
        return dead_lettered_.load(std::memory_order_relaxed);
    }
    [[nodiscard]] std::uint64_t dead_letters_dropped() const noexcept {
        return letters_dropped_.load(std::memory_order_relaxed);
    }
    /// The kept dead letters, oldest first; `take` empties the queue.
    std::vector<dead_letter> letters(bool take) const {
        std::lock_guard lock(letters_mutex_);
        oldest_first_locked();
        std::vector<dead_letter> out(letters_.begin(), letters_.end());
        if (take)
            letters_.clear();
        return out;
    }
    /// Takes the kept letter `sequence` out of the queue: true if it was there.
    bool forget_letter(const dead_letter& letter) noexcept {
        if (letter.origin_ != id_)
            return false;
        const std::uint64_t sequence = letter.sequence();
        std::lock_guard lock(letters_mutex_);
        oldest_first_locked();
        const auto found = std::ranges::find_if(
            letters_, [&](const dead_letter& l) { return l.sequence() == sequence; });
        if (found == letters_.end())
            return false;
        letters_.erase(found);
        return true;
    }

    /// Tells the transactions of `batch` that their events were handled.
    static void complete(std::span<envelope> batch, const completions& done) noexcept {
        if (!done.any)
            return;
        for (std::size_t i = 0; i < batch.size(); ++i)
            batch[i].complete(((done.failed >> i) & 1) != 0);
    }

  private:
    [[nodiscard]] pin_registry& pins() const noexcept { return dispatcher_.state_->pins; }

    // `attempt` 0: trigger(), whose failed calls are its caller's, not retried.
    void dispatch(const event_view& ev, handler_view& view, batch_counts& counts,
                  const pin_guard& pin, const context& ctx, std::uint32_t attempt) {
        const hook_set& hooks = *view.hooks;
        const handler_view::handler_list* handlers = view.handlers_of(ev.type_, ev.projection());
        // Handlers removed since the table was read are skipped: if that leaves none, the
        // event is unhandled (counted once, either way).
        bool reached = false;
        if (handlers != nullptr) {
            if (!ev.is_typed()) {
                const event* dynamic = ev.dynamic();
                for (const auto& target : *handlers)
                    if (pin.enter(*target)) {
                        reached = true;
                        run_one(target, ev, *dynamic, hooks, counts, ctx, view, attempt);
                    }
            } else if (hooks.empty()) {
                // A transaction's or trigger's typed event.
                handler_view* failures = attempt != 0 ? &view : nullptr;
                reached = counts.latency != nullptr
                              ? call_plain<true>(*handlers, ev.type_, ev.payload_, counts, pin, ctx,
                                                 failures)
                              : call_plain<false>(*handlers, ev.type_, ev.payload_, counts, pin,
                                                  ctx, failures);
            } else {
                // Hooks and middleware of the `event` forms see a stand-in for a typed event,
                // with its key only (it allocates nothing).
                const event stand_in{.id = {}, .projection = ev.projection(), .args = {}};
                for (const auto& target : *handlers)
                    if (pin.enter(*target)) {
                        reached = true;
                        run_one(target, ev, stand_in, hooks, counts, ctx, view, attempt);
                    }
            }
        }
        if (reached) {
            ++counts.handled;
            return;
        }
        ++counts.unhandled;
        for (const auto& hook : hooks.unhandled)
            if (hook->live())
                call_hook([&] { hook->fn(ctx, ev); });
    }

    // A typed event without hooks: straight to each handler; nobody wants the results.
    // Whether any handler was still there to call.
    // `failures` (nullptr for trigger) receives the failed calls, as first attempts.
    // Timed: records each call's duration in counts.latency, and the event's queue wait if
    // `pushed_at` (clock_ns when it was accepted) is not 0: one clock read per call, the start
    // being the thread's last reading (counts.clock).
    template <bool Timed>
    EVENTBUS_ALWAYS_INLINE bool call_plain(const handler_view::handler_list& handlers,
                                           const envelope& ev, batch_counts& counts,
                                           const pin_guard& pin, handler_view* failures,
                                           std::uint64_t pushed_at) {
        return call_plain<Timed>(handlers, ev.type(), ev.payload(), counts, pin, handler_ctx_,
                                 failures, &ev, pushed_at);
    }
    template <bool Timed>
    EVENTBUS_ALWAYS_INLINE bool call_plain(const handler_view::handler_list& handlers,
                                           const void* type, const void* payload,
                                           batch_counts& counts, const pin_guard& pin,
                                           const context& ctx, handler_view* failures,
                                           const envelope* where = nullptr,
                                           [[maybe_unused]] std::uint64_t pushed_at = 0) {
        const std::uint64_t before = counts.processed;
        [[maybe_unused]] std::uint64_t clock = 0;
        if constexpr (Timed) {
            clock = counts.clock != 0 ? counts.clock : clock_ns();
            if (pushed_at != 0)
                counts.latency->wait.record(clock >= pushed_at ? clock - pushed_at : 0);
        }
        for (const auto& target : handlers) {
            const handler_entry& entry = *target;
            if (!pin.enter(entry))
                continue;
            try {
                entry.call(ctx, type, payload, nullptr);
            } catch (...) {
                ++counts.errors;
                if (failures != nullptr)
                    note_failure_of(*failures, handlers, entry,
                                    where != nullptr ? where : failures->current_event);
            }
            ++counts.processed;
            // A call ends where the next begins: one clock read per call.
            if constexpr (Timed)
                clock = counts.latency->run.record_since(clock);
        }
        if constexpr (Timed)
            counts.clock = clock;
        return counts.processed != before;
    }

    // note_failure for the handler `entry` of `handlers` (found again here, off the hot path,
    // so that the loop above keeps only the entry itself across the call).
    EVENTBUS_NOINLINE void note_failure_of(handler_view& view,
                                           const handler_view::handler_list& handlers,
                                           const handler_entry& entry,
                                           const envelope* event) noexcept {
        for (const auto& target : handlers)
            if (target.get() == &entry)
                return note_failure(view, target, std::current_exception(), 1, event);
    }

    // Batch handlers: how many events from the start of `events` form a run for them (one or
    // none: no run). A run is of consecutive events of the same type, or dynamic events of the
    // same key, each in its own envelope, whose handlers include a batch handler; it is at most
    // the smallest max_batch of them.
    [[nodiscard]] static std::size_t run_of(std::span<envelope> events, handler_view& view) {
        const envelope& first = events[0];
        const void* type = first.type();
        // Not a transaction's or a kept event; nor a dynamic event filed under a type's key,
        // which is no T (its handlers refuse it, one at a time).
        if (type == nullptr && (!first.is_dynamic() || first.projection().is_type()))
            return 0;
        const handler_view::handler_list* handlers =
            type != nullptr ? view.handlers_of(first)
                            : view.handlers_of(nullptr, first.projection());
        if (handlers == nullptr)
            return 0;
        std::size_t most = 0;
        for (const auto& e : *handlers)
            if (e->batch.invoke != nullptr)
                most = most == 0 ? e->batch.max_batch : std::min(most, e->batch.max_batch);
        std::size_t n = 1;
        while (n < std::min(most, events.size()) &&
               (type != nullptr
                    ? events[n].type() == type
                    : events[n].is_dynamic() && events[n].projection() == first.projection()))
            ++n;
        return n;
    }

    // Which events of a run a batch call's exception fails: those a batch_error names (its
    // cause then stands for it), else all of them. Runs only after a call threw.
    static std::uint64_t failed_of_run(std::exception_ptr& error, std::uint64_t all) noexcept {
        try {
            std::rethrow_exception(error);
        } catch (const batch_error& partial) {
            if (partial.cause())
                error = partial.cause();
            return partial.failed() & all;
        } catch (...) {
        }
        return all;
    }

    // Handles a run (see run_of): its payloads are moved next to each other on this stack, each
    // handler in priority order gets them (a batch handler in one call, the others one by one),
    // and they go back to their envelopes, where failed calls find them to be retried or
    // dead-lettered.
    EVENTBUS_NOINLINE void dispatch_run(std::span<envelope> run, handler_view& view,
                                        batch_counts& counts, const pin_guard& pin) {
        const envelope& first = run[0];
        const void* type = first.type();
        const handler_view::handler_list& handlers =
            type != nullptr ? *view.handlers_of(first)
                            : *view.handlers_of(nullptr, first.projection());
        const batch_fn* layout = nullptr;
        for (const auto& e : handlers)
            if (e->batch.invoke != nullptr && (layout == nullptr))
                layout = &e->batch;
        alignas(std::max_align_t) std::byte buffer[run_buffer_size];
        layout->gather(run, buffer);
        // The payloads go back to their envelopes however this scope ends.
        class restore {
          public:
            restore(const batch_fn& layout, std::byte* buffer, std::span<envelope> run) noexcept
                : layout_(layout), buffer_(buffer), run_(run) {}
            restore(const restore&) = delete;
            restore& operator=(const restore&) = delete;
            ~restore() { now(); }
            void now() noexcept {
                if (!std::exchange(done_, true))
                    layout_.scatter(buffer_, run_);
            }

          private:
            const batch_fn& layout_;
            std::byte* buffer_;
            std::span<envelope> run_;
            bool done_ = false;
        } back(*layout, buffer, run);
        const std::size_t n = run.size();
        const auto payload = [&](std::size_t k) -> const void* {
            return buffer + k * layout->size;
        };
        // A dynamic run's events live in the buffer.
        const auto dynamic_at = [&](std::size_t k) -> const event& {
            return *std::launder(reinterpret_cast<const event*>(buffer + k * layout->size));
        };
        const hook_set& hooks = *view.hooks;
        std::optional<event> stand_in;  // what the hooks' event forms see of a typed event
        if (type != nullptr && !hooks.empty())
            stand_in.emplace(event{.id = {}, .projection = first.projection(), .args = {}});
        const key& projection = type != nullptr ? first.projection() : dynamic_at(0).projection;
        // Which events reached a handler call (a run is at most 64 events).
        std::uint64_t reached = 0;
        const std::uint64_t all = n == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << n) - 1;
        for (const auto& target : handlers) {
            if (!pin.enter(*target))
                continue;
            if (target->batch.invoke != nullptr) {
                reached = all;
                std::exception_ptr error;
                const std::uint64_t start = counts.latency != nullptr ? clock_ns() : 0;
                try {
                    target->batch.invoke(target->call.fn.get(), handler_ctx_, buffer, n);
                } catch (...) {
                    error = std::current_exception();
                }
                if (counts.latency != nullptr)
                    counts.clock = counts.latency->run.record_since(start);
                counts.processed += n;
                if (!error)
                    continue;
                const std::uint64_t failed = failed_of_run(error, all);
                counts.errors += static_cast<std::uint64_t>(std::popcount(failed));
                for (std::size_t k = 0; k < n; ++k) {
                    if (((failed >> k) & 1) == 0)
                        continue;
                    const event_view ev(projection, type, payload(k));
                    report_failure(
                        *target, ev,
                        type != nullptr ? *stand_in_or(stand_in, projection) : dynamic_at(k), hooks,
                        error, handler_ctx_, 1);
                    note_failure(view, target, error, 1, &run[k]);
                }
                continue;
            }
            for (std::size_t k = 0; k < n; ++k) {
                // Removed meanwhile (by itself, say): never called again, as without runs.
                if (k != 0 && !pin.enter(*target))
                    break;
                reached |= std::uint64_t{1} << k;
                view.current_event = &run[k];
                const event_view ev(projection, type, payload(k));
                if (hooks.empty()) {
                    const std::uint64_t start = counts.latency != nullptr ? clock_ns() : 0;
                    try {
                        target->call(handler_ctx_, type, payload(k), nullptr);
                    } catch (...) {
                        ++counts.errors;
                        note_failure(view, target, std::current_exception(), 1, &run[k]);
                    }
                    if (counts.latency != nullptr)
                        counts.clock = counts.latency->run.record_since(start);
                    ++counts.processed;
                } else {
                    run_one(target, ev, type != nullptr ? *stand_in : dynamic_at(k), hooks, counts,
                            handler_ctx_, view, 1);
                }
            }
        }
        back.now();
        for (std::size_t k = 0; k < n; ++k) {
            if ((reached >> k) & 1) {
                ++counts.handled;
                continue;
            }
            ++counts.unhandled;
            const event_view ev(run[k].projection(), run[k].type(), run[k].payload());
            for (const auto& hook : hooks.unhandled)
                if (hook->live())
                    call_hook([&] { hook->fn(handler_ctx_, ev); });
        }
        // run() settles the failed calls, now that the events are back in their envelopes.
    }

    // After a batch: each event with failed calls settles them, in the batch's order.
    EVENTBUS_NOINLINE void settle_each(std::span<envelope> batch, handler_view& view) noexcept {
        const hook_set& hooks = *view.hooks;
        std::vector<failed_call> failed;
        failed.swap(view.failures);
        for (envelope& env : batch) {
            for (failed_call& call : failed) {
                if (call.event != &env || !call.target)
                    continue;
                try {
                    view.failures.push_back(std::move(call));
                } catch (...) {
                    bury(nullptr, call.target->name, call.attempts, std::move(call.error),
                         errc::handler_failed, hooks);
                }
            }
            if (!view.failures.empty())
                settle(&env, nullptr, view);
        }
    }

    static const event* stand_in_or(std::optional<event>& stand_in, const key& projection) {
        if (!stand_in)
            stand_in.emplace(event{.id = {}, .projection = projection, .args = {}});
        return &*stand_in;
    }

    // Remembers a failed call until the event's other handlers have run. With no memory to
    // remember it, the handler gives up on the event at once (a dead letter not kept).
    EVENTBUS_NOINLINE void note_failure(handler_view& view,
                                        const std::shared_ptr<handler_entry>& target,
                                        std::exception_ptr error, std::uint32_t attempts,
                                        const envelope* event) noexcept {
        try {
            view.failures.push_back(failed_call{target, std::move(error), attempts, event});
        } catch (...) {
            const auto hooks = view.hooks;
            bury(nullptr, target->name, attempts, std::move(error), errc::handler_failed,
                 hooks ? *hooks : hook_set{});
        }
    }

    // After an event's handlers ran and some failed (view.failures): keeps the event (moved
    // out of `env`, or `kept` already) and gives each failed call to a retry, if its handler
    // has attempts left and the timer takes it, or to the dead letters. Never throws: what
    // cannot be kept for want of memory is dead-lettered (counted) without its event.
    EVENTBUS_NOINLINE void settle(envelope* env, const kept_ptr* kept,
                                  handler_view& view) noexcept {
        std::vector<failed_call> failed;
        failed.swap(view.failures);
        const hook_set& hooks = *view.hooks;
        if (const tx_record* record = env != nullptr ? env->transaction_record() : nullptr;
            record != nullptr && record->max_deliveries != 0) {
            settle_redelivered(*env, *record, failed, hooks);
            return;
        }
        // The event is kept only when something will use it: a retry, a kept dead letter or a
        // dead letter hook.
        const bool wanted = letter_capacity_ != 0 || !hooks.dead.empty() ||
                            std::ranges::any_of(failed, [](const failed_call& call) {
                                return call.attempts < call.target->retry.max_attempts;
                            });
        kept_ptr event;
        try {
            if (kept != nullptr)
                event = *kept;
            else if (wanted)
                event = env->keep();
        } catch (...) {
        }
        std::shared_ptr<retry_job> job;
        std::chrono::nanoseconds delay{0};
        for (failed_call& call : failed) {
            const retry_policy& policy = call.target->retry;
            if (event && call.attempts < policy.max_attempts) {
                try {
                    if (!job)
                        job = std::make_shared<retry_job>(
                            retry_job{event, {}, view.lane, view.lane_position, nullptr});
                    job->targets.push_back(
                        waiting_call{call.target, call.target->name, call.error, call.attempts});
                    delay = std::max(delay, policy.backoff.delay(call.attempts, jitter_draw()));
                    continue;
                } catch (...) {
                }
            }
            bury(event, call.target->name, call.attempts, std::move(call.error),
                 errc::handler_failed, hooks);
        }
        failed.clear();  // the handlers themselves are held weakly by the retry from here
        if (!job || job->targets.empty())
            return;
        const std::error_code refused = schedule_retry_ != nullptr
                                            ? schedule_retry_(retry_store_, job, delay)
                                            : std::error_code(errc::not_supported);
        if (!refused) {
            if (view.lane != nullptr)
                view.lane_kept = true;
            return;
        }
        for (waiting_call& call : job->targets)
            bury(event, call.name, call.attempts, std::move(call.error), refused, hooks);
    }

    // A transaction's event that its committer delivers again when a handler fails
    // (transaction_options::max_deliveries): before the last delivery a failed call counts
    // as a retry (the next delivery is it), never retried here; on the last it is a dead
    // letter, its attempts the delivery's number.
    void settle_redelivered(envelope& env, const tx_record& record,
                            std::vector<failed_call>& failed, const hook_set& hooks) noexcept {
        if (record.delivery < record.max_deliveries) {
            retried_.fetch_add(failed.size(), std::memory_order_relaxed);
            failed.clear();
            return;
        }
        kept_ptr event;
        if (letter_capacity_ != 0 || !hooks.dead.empty()) {
            try {
                event = env.keep();
            } catch (...) {
            }
        }
        for (failed_call& call : failed)
            bury(event, call.target->name, record.delivery, std::move(call.error),
                 errc::handler_failed, hooks);
        failed.clear();
    }

    // A handler gives up on an event: counted, shown to the dead letter hooks, and kept if
    // there is room (the oldest kept letter goes when there is not).
    void bury(const kept_ptr& event, const std::string& handler, std::uint32_t attempts,
              std::exception_ptr error, std::error_code reason, const hook_set& hooks) noexcept {
        const std::uint64_t sequence = dead_lettered_.fetch_add(1, std::memory_order_relaxed) + 1;
        if (!event) {
            letters_dropped_.fetch_add(1, std::memory_order_relaxed);
            return;
        }
        std::optional<dead_letter> letter;
        try {
            letter.emplace(
                dead_letter(event, handler, attempts, std::move(error), reason, sequence, id_));
        } catch (...) {
            letters_dropped_.fetch_add(1, std::memory_order_relaxed);
            return;
        }
        for (const auto& hook : hooks.dead)
            if (hook->live())
                call_hook([&] { hook->fn(*letter); });
        bool kept = false;
        if (letter_capacity_ != 0) {
            std::lock_guard lock(letters_mutex_);
            if (letters_.size() == letter_capacity_) {
                // Full: the oldest goes, its place takes the newest.
                letters_[letters_oldest_] = std::move(*letter);
                letters_oldest_ = (letters_oldest_ + 1) % letter_capacity_;
                letters_dropped_.fetch_add(1, std::memory_order_relaxed);
                kept = true;
            } else {
                try {
                    letters_.push_back(std::move(*letter));
                    kept = true;
                } catch (...) {
                }
            }
        }
        if (!kept)
            letters_dropped_.fetch_add(1, std::memory_order_relaxed);
    }

    // A uniform draw in [0, 1) for backoff jitter: a per-thread xorshift, seeded from the
    // thread's address.
    static double jitter_draw() noexcept {
        thread_local std::uint64_t state =
            reinterpret_cast<std::uintptr_t>(&state) * 0x9E3779B97F4A7C15ull | 1;
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        return static_cast<double>(state >> 11) * 0x1.0p-53;
    }

    // After, error and unhandled hooks: what they throw is caught and discarded.
    template <class Call>
    static void call_hook(Call&& call) noexcept {
        try {
            call();
        } catch (...) {
        }
    }

    // One handler call with its hooks; exceptions are counted and reported, never thrown, and
    // the failed call is remembered in `failures` (unless `attempt` is 0: trigger).
    void run_one(const std::shared_ptr<handler_entry>& entry, const event_view& view,
                 const event& ev, const hook_set& hooks, batch_counts& counts, const context& ctx,
                 handler_view& failures, std::uint32_t attempt) {
        const handler_entry& target = *entry;
        result outcome;
        std::exception_ptr error;
        // The call's duration includes its before hooks and middleware.
        const std::uint64_t start = counts.latency != nullptr ? clock_ns() : 0;
        try {
            if (hooks.empty()) {
                target.call(ctx, view.type_, view.payload_, nullptr);
            } else {
                for (const auto& hook : hooks.before)
                    if (hook->live())
                        hook->fn(ctx, ev);
                outcome = next_handler(hooks.chain, 0, target, view)(ctx, ev);
            }
        } catch (...) {
            error = std::current_exception();
        }
        if (counts.latency != nullptr)
            counts.clock = counts.latency->run.record_since(start);
        ++counts.processed;
        if (error)
            ++counts.errors;
        for (const auto& hook : hooks.after)
            if (hook->live())
                call_hook([&] { hook->fn(ctx, ev, outcome, error); });
        if (!error)
            return;
        report_failure(target, view, ev, hooks, error, ctx, attempt);
        if (attempt != 0)
            note_failure(failures, entry, std::move(error), attempt, failures.current_event);
    }

    // The error hooks, for a failed call.
    static void report_failure(const handler_entry& target, const event_view& view, const event& ev,
                               const hook_set& hooks, const std::exception_ptr& error,
                               const context& ctx, std::uint32_t attempt) {
        for (const auto& hook : hooks.error)
            if (hook->live())
                call_hook([&] { hook->fn(ctx, ev, error); });
        if (!hooks.failure.empty()) {
            const handler_failure failure{view, target.name, error,
                                          std::max<std::uint32_t>(attempt, 1),
                                          target.retry.max_attempts};
            for (const auto& hook : hooks.failure)
                if (hook->live())
                    call_hook([&] { hook->fn(ctx, failure); });
        }
    }

    // The store's handle on the state it shares with the user's dispatcher (mutable: a const
    // store still lets its users register handlers, as the dispatcher itself does).
    mutable eventbus::dispatcher dispatcher_;
    std::shared_ptr<hook_state> hooks_;
    std::stop_source stop_;  // handlers' context: stopped by a close() whose context ended
    context handler_ctx_;
    // Retries and dead letters (the failure path only).
    retry_scheduler schedule_retry_ = nullptr;
    void* retry_store_ = nullptr;
    std::atomic<std::uint64_t> retries_pending_{0};
    event_count retries_done_;
    std::atomic<std::uint64_t> retried_{0};
    std::atomic<std::uint64_t> dead_lettered_{0};
    std::atomic<std::uint64_t> letters_dropped_{0};
    std::size_t letter_capacity_ = 0;
    // The kept letters, a circular buffer of at most letter_capacity_ once full (allocated by
    // the first letter), the oldest at letters_oldest_; guarded by letters_mutex_.
    const std::uint64_t id_ = next_id();  // names this core in its dead letters
    mutable std::mutex letters_mutex_;
    mutable std::vector<dead_letter> letters_;
    mutable std::size_t letters_oldest_ = 0;
    alignas(cache_line_size) std::atomic<std::uint64_t> high_water_{0};

    static std::uint64_t next_id() noexcept {
        static std::atomic<std::uint64_t> last{0};
        return last.fetch_add(1, std::memory_order_relaxed) + 1;
    }

    void oldest_first_locked() const noexcept {
        std::rotate(letters_.begin(),
                    letters_.begin() + static_cast<std::ptrdiff_t>(letters_oldest_),
                    letters_.end());
        letters_oldest_ = 0;
    }
};

}  // namespace detail

// worker pool /////////////////////////////////////////////////////////////////////////////////

namespace detail {

/// Async mode's threads: each worker claims a batch of eligible events from the ring with one
/// compare-and-swap, moves them out, handles them and counts them in its own counters. Exists
/// only in async mode.
///
/// Per batch a worker announces a lower bound of the position it takes (a seq_cst store) before
/// its claim moves head, and withdraws it (a seq_cst exchange) once the batch is handled: drain()
/// waits until head has passed its target and no announcement below the target is left.
/// Idle workers spin briefly, then sleep on an eventcount; publish() wakes one sleeper, and a
/// worker that claimed a full batch wakes another.
template <class Ring>
class worker_pool {
  public:
    // `max_parked` > 0: ordered_by_key, with that many parking places.
    // `latency`: each worker records latency histograms of its own.
    worker_pool(Ring& ring, dispatch_core& core, const void* store, std::size_t count,
                std::size_t max_parked, bool latency)
        : ring_(ring)
        , core_(core)
        , store_(store)
        , count_(count)
        , state_(std::make_unique<worker_state[]>(count))
        , eligible_(ring.mark()) {
        if (latency) {
            latency_ = std::make_unique<latency_recorders[]>(count);
            for (std::size_t i = 0; i < count; ++i)
                state_[i].latency = &latency_[i];
        }
        if (max_parked != 0) {
            stripes_ = std::make_unique<stripe[]>(stripe_count);
            // Also for one worker: a key waiting for a retry keeps its stripe.
            lot_ = parking_lot(max_parked);
        }
        threads_.reserve(count);
        try {
            for (std::size_t i = 0; i < count; ++i)
                threads_.emplace_back([this, i] { work(state_[i]); });
        } catch (...) {
            ring_.close();
            let_finish();
            join();
            throw;
        }
    }
    worker_pool(const worker_pool&) = delete;
    worker_pool& operator=(const worker_pool&) = delete;
    ~worker_pool() { join(); }

    /// publish(): events before `mark` become eligible; one sleeping worker is woken.
    void make_eligible(std::uint64_t mark) noexcept {
        std::uint64_t current = eligible_.load(std::memory_order_relaxed);
        while (static_cast<std::int64_t>(mark - current) > 0) {
            // Seq_cst RMW, then the waiters' load: the eventcount's notifier step. It is also
            // the release that lets workers see what the publisher did before (registrations).
            if (eligible_.compare_exchange_weak(current, mark, std::memory_order_seq_cst,
                                                std::memory_order_relaxed)) {
                work_.notify_one_if_waiting();
                return;
            }
        }
    }

    /// A retry that is due (from the timer thread): a worker runs it, before new events.
    /// Allocates nothing.
    void add_retry(std::shared_ptr<retry_job> job) noexcept {
        {
            std::lock_guard lock(retry_mutex_);
            retry_job* raw = job.get();
            if (retry_tail_ == nullptr)
                retry_head_ = std::move(job);
            else
                retry_tail_->next = std::move(job);
            retry_tail_ = raw;
        }
        // Seq_cst RMW, then the waiters' load: the eventcount's notifier step.
        retries_ready_.fetch_add(1, std::memory_order_seq_cst);
        work_.notify_one_if_waiting();
    }

    /// Waits until every event eligible now has been handled.
    std::error_code drain(const context& ctx) {
        const std::uint64_t target = eligible_.load(std::memory_order_seq_cst);
        return retry_or_wait(idle_, ctx, [&]() noexcept {
            // Head first, then the workers (see the class comment).
            if (static_cast<std::int64_t>(ring_.consumed_mark() - target) < 0)
                return attempt::busy;
            for (std::size_t i = 0; i < count_; ++i) {
                const std::uint64_t taking = state_[i].position.load(std::memory_order_seq_cst);
                if (taking != no_position && static_cast<std::int64_t>(taking - target) < 0)
                    return attempt::busy;
            }
            return attempt::ok;
        });
    }

    /// After the ring was closed: its final tail becomes eligible, and workers exit once they
    /// find nothing more before it.
    void let_finish() noexcept {
        make_eligible(ring_.mark());
        closing_.store(true, std::memory_order_seq_cst);
        work_.notify_all();
    }

    /// Waits until every worker has exited (after let_finish).
    std::error_code wait_exited(const context& ctx) {
        return retry_or_wait(idle_, ctx, [&]() noexcept {
            return exited_.load(std::memory_order_seq_cst) == threads_.size() ? attempt::ok
                                                                              : attempt::busy;
        });
    }

    void join() noexcept {
        for (auto& thread : threads_)
            if (thread.joinable() && thread.get_id() != std::this_thread::get_id())
                thread.join();
    }

    [[nodiscard]] std::size_t size() const noexcept { return count_; }

    /// The workers' latency histograms, merged into `wait` and `run`.
    void read_latency(latency_histogram& wait, latency_histogram& run) const noexcept {
        if (!latency_)
            return;
        for (std::size_t i = 0; i < count_; ++i) {
            latency_[i].wait.read_into(wait);
            latency_[i].run.read_into(run);
        }
    }

    /// The workers' counters, summed.
    [[nodiscard]] batch_counts counts() const noexcept {
        batch_counts sum;
        for (std::size_t i = 0; i < count_; ++i) {
            sum.processed += state_[i].processed.load(std::memory_order_relaxed);
            sum.handled += state_[i].handled.load(std::memory_order_relaxed);
            sum.errors += state_[i].errors.load(std::memory_order_relaxed);
            sum.unhandled += state_[i].unhandled.load(std::memory_order_relaxed);
        }
        return sum;
    }

  private:
    static constexpr std::uint64_t no_position = ~std::uint64_t{0};

    // One worker's announcement and counters, on lines of their own (written every batch).
    struct alignas(cache_line_size) worker_state {
        std::atomic<std::uint64_t> position{no_position};
        std::atomic<std::uint64_t> processed{0};
        std::atomic<std::uint64_t> handled{0};
        std::atomic<std::uint64_t> errors{0};
        std::atomic<std::uint64_t> unhandled{0};
        latency_recorders* latency = nullptr;  // this worker's, with latency histograms

        // Only this worker writes them: a load and a store, no shared RMW.
        void add(const batch_counts& c) noexcept {
            bump(processed, c.processed);
            bump(handled, c.handled);
            bump(errors, c.errors);
            bump(unhandled, c.unhandled);
        }
        static void bump(std::atomic<std::uint64_t>& counter, std::uint64_t n) noexcept {
            if (n != 0)
                add_owned(counter, n);
        }
    };
    static_assert(alignof(worker_state) == cache_line_size &&
                      sizeof(worker_state) % cache_line_size == 0,
                  "each worker's state has its own cache lines");

    // A stripe of keys for ordered_by_key, guarded by pop_mutex_. While a worker owns it, other
    // workers park its events here, in pop order, and go back to the ring; the owner handles
    // them before letting go. So a key never runs twice at once and keeps FIFO, and no worker
    // waits for another key's handler while a parking place is free.
    struct stripe {
        bool owned = false;
        std::size_t first = parking_lot::none;  // parked events, oldest first
        std::size_t last = parking_lot::none;
    };
    static constexpr std::size_t stripe_count = 64;

    // Ordered mode: room for parked events, allocated by the constructor, so that parking never
    // allocates (and never fails) on a worker, and parked events stay bounded. A worker pops
    // only while a place is free (under pop_mutex_, which makes the check and the pop one step,
    // so pop order is kept); when every place is taken it waits for an owner to free one.
    class parking_lot {
      public:
        static constexpr std::size_t none = ~std::size_t{0};

        parking_lot() = default;
        explicit parking_lot(std::size_t size)
            : places_(std::make_unique<place[]>(size)), free_(size == 0 ? none : 0) {
            for (std::size_t i = 0; i < size; ++i)
                places_[i].next = i + 1 < size ? i + 1 : none;
        }
        /// Also when it has no place: then nothing may be parked.
        [[nodiscard]] bool full() const noexcept { return free_ == none; }

        void park(stripe& lane, envelope&& ev, std::uint64_t pushed_at) noexcept {
            const std::size_t at = free_;
            place& p = places_[at];
            free_ = p.next;
            p.event.emplace(std::move(ev));
            p.pushed_at = pushed_at;
            p.next = none;
            if (lane.last == none)
                lane.first = at;
            else
                places_[lane.last].next = at;
            lane.last = at;
        }
        /// The oldest event parked on `lane` (which has one); its place is free again.
        [[nodiscard]] envelope take(stripe& lane, std::uint64_t& pushed_at) noexcept {
            const std::size_t at = lane.first;
            place& p = places_[at];
            pushed_at = p.pushed_at;
            lane.first = p.next;
            if (lane.first == none)
                lane.last = none;
            envelope ev(std::move(*p.event));
            p.event.reset();
            p.next = free_;
            free_ = at;
            return ev;
        }

      private:
        struct place {
            std::optional<envelope> event;
            std::size_t next = none;
            std::uint64_t pushed_at = 0;  // for the queue-wait histogram
        };
        std::unique_ptr<place[]> places_;
        std::size_t free_ = none;
    };

    // What take() found.
    enum class took {
        events,   // events in the batch
        retry,    // a due retry
        nothing,  // no eligible event
        blocked,  // ordered mode: every parking place is taken; wait for an owner to free one
    };

    // The oldest due retry, or none.
    std::shared_ptr<retry_job> pop_retry() noexcept {
        std::lock_guard lock(retry_mutex_);
        std::shared_ptr<retry_job> job = std::move(retry_head_);
        if (job) {
            retry_head_ = std::move(job->next);
            if (!retry_head_)
                retry_tail_ = nullptr;
            retries_ready_.fetch_sub(1, std::memory_order_relaxed);
        }
        return job;
    }

    // Workers exit once closing, with nothing left in the ring and no retry waiting or running
    // (a retry still to come holds a key of ordered_by_key, or may fail and be given up).
    [[nodiscard]] bool may_exit() const noexcept {
        return closing_.load(std::memory_order_seq_cst) && core_.retries_pending() == 0;
    }

    // Runs a due retry. Ordered mode: the worker now owns the retried key's stripe, and, unless
    // the retry is to be tried again later, goes on with the events parked there (returned in
    // `batch`, `lane` their stripe).
    void run_retry(worker_state& me, retry_job& job, handler_view& view, claimed_batch& batch,
                   stripe*& lane) {
        core_.refresh(view);
        batch_counts counts;
        counts.latency = me.latency;
        core_.run_retry(job, view, counts);
        me.add(counts);
        lane = static_cast<stripe*>(job.lane);
        const bool kept = std::exchange(view.lane_kept, false);
        view.lane = nullptr;
        if (lane != nullptr && !kept) {
            std::uint64_t pushed_at = 0;
            if (std::optional<envelope> next = next_parked(*lane, pushed_at))
                batch.put(std::move(*next), pushed_at);
        }
        core_.retry_finished();
        if (closing_.load(std::memory_order_seq_cst))
            work_.notify_all();  // the last retry lets sleeping workers exit
    }

    void work(worker_state& me) {
        const dispatch_mark inside(store_);
        const context never;
        backoff idle;
        handler_view view;
        claimed_batch batch;
        std::shared_ptr<retry_job> job;
        for (;;) {
            stripe* lane = nullptr;
            took got = take(me, batch, lane, job);
            if (got == took::nothing && may_exit()) {
                // eligible_ already holds the closed ring's final tail: one more look.
                got = take(me, batch, lane, job);
                if (got == took::nothing)
                    break;
            }
            if (got == took::nothing || got == took::blocked) {
                // Blocked: only an owner freeing a place ends it, and it wakes a sleeper.
                if (got == took::nothing && !idle.is_completed()) {
                    idle.snooze();
                    continue;
                }
                view.release();  // keep no table copy while asleep
                const std::uint32_t key = work_.prepare_wait();
                got = take(me, batch, lane, job);
                // Blocked: an owner frees a place and wakes the sleepers, closing or not; a
                // due retry, and the end of the last one while closing, wake them too.
                if (got == took::blocked || (got == took::nothing && !may_exit()))
                    (void)work_.wait(key, never);
                work_.finish_wait();
                if (got == took::nothing || got == took::blocked)
                    continue;
            }
            idle = backoff{};
            if (got == took::retry) {
                run_retry(me, *job, view, batch, lane);
                job.reset();
            }
            while (!batch.events().empty()) {
                core_.refresh(view);
                view.lane = lane;
                view.lane_position = me.position.load(std::memory_order_relaxed);
                batch_counts counts;
                counts.latency = me.latency;
                const completions done = core_.run(batch.events(), view, counts, batch.stamps());
                me.add(counts);
                dispatch_core::complete(batch.events(), done);
                batch.clear();  // the events die before drain() can see them finished
                view.lane = nullptr;
                // Ordered mode: a retry now holds the stripe; its later events stay parked.
                if (lane != nullptr && !std::exchange(view.lane_kept, false)) {
                    std::uint64_t pushed_at = 0;
                    if (std::optional<envelope> next = next_parked(*lane, pushed_at))
                        batch.put(std::move(*next), pushed_at);
                }
            }
            release_taking(me);
        }
        view.release();
        exited_.fetch_add(1, std::memory_order_seq_cst);
        idle_.notify_if_waiting();
    }

    // After a claim (a seq_cst RMW, the eventcount's notifier step): if eligible events are
    // left, wake one sleeping worker to take them, so that no eligible event waits behind a
    // busy worker while another sleeps. A load while nobody sleeps.
    void wake_helper(std::uint64_t limit) noexcept {
        if (Ring::distance(ring_.consumed_mark(), limit) != 0)
            work_.notify_one_if_waiting();
    }

    // A worker is done with what it took (the events are destroyed already).
    void release_taking(worker_state& me) noexcept {
        // Seq_cst RMW, then notify: drain re-checks the announcement with a seq_cst load.
        me.position.exchange(no_position, std::memory_order_seq_cst);
        idle_.notify_if_waiting();
    }

    // Claims the next eligible events into `batch`, announcing first a lower bound of their
    // positions. Ordered mode: one event, `lane` its stripe, now owned by this worker; an event
    // whose stripe another worker owns is parked there (the owner's announcement covers it).
    // A due retry goes first: it announces the position its event's owner announced, so that
    // drain() waits for the events parked behind it (ordered mode).
    took take(worker_state& me, claimed_batch& batch, stripe*& lane,
              std::shared_ptr<retry_job>& job) {
        for (;;) {
            me.position.store(ring_.consumed_mark(), std::memory_order_seq_cst);
            if (retries_ready_.load(std::memory_order_seq_cst) != 0) {
                if ((job = pop_retry())) {
                    if (job->lane != nullptr)
                        me.position.store(job->position, std::memory_order_seq_cst);
                    return took::retry;
                }
            }
            if (!stripes_) {
                // A fair share of what is eligible, so that a slow handler holds up as few
                // events as possible while other workers idle; a full batch under load.
                const std::uint64_t limit = eligible_.load(std::memory_order_seq_cst);
                const std::uint64_t waiting = Ring::distance(ring_.consumed_mark(), limit);
                core_.note_depth(waiting);
                const std::uint64_t share = (waiting + count_ - 1) / count_;
                const std::size_t n = batch.take(
                    ring_, limit, static_cast<std::size_t>(std::clamp<std::uint64_t>(share, 1, 64)),
                    latency_ != nullptr);
                if (n == 0) {
                    release_taking(me);
                    return took::nothing;
                }
                wake_helper(limit);
                return took::events;
            }
            std::optional<envelope> ev;
            std::uint64_t pushed_at = 0;
            bool parked = false;
            bool blocked = false;
            {
                std::lock_guard lock(pop_mutex_);
                if (lot_.full()) {
                    blocked = true;  // the event popped might have to be parked: pop nothing
                } else {
                    const std::uint64_t limit = eligible_.load(std::memory_order_seq_cst);
                    core_.note_depth(Ring::distance(ring_.consumed_mark(), limit));
                    ev = ring_.try_pop_before_stamped(limit, pushed_at);
                }
                if (ev) {
                    stripe& owner =
                        stripes_[std::hash<key>{}(ev->content().projection()) % stripe_count];
                    if (owner.owned) {
                        lot_.park(owner, std::move(*ev), pushed_at);
                        ev.reset();
                        parked = true;
                    } else {
                        owner.owned = true;
                        lane = &owner;
                    }
                }
            }
            if (ev) {
                batch.put(std::move(*ev), pushed_at);
                wake_helper(eligible_.load(std::memory_order_seq_cst));
                return took::events;
            }
            release_taking(me);
            if (blocked)
                return took::blocked;
            if (!parked)
                return took::nothing;
        }
    }

    // Ordered mode: the next event parked on the stripe this worker owns, or none (and the
    // stripe is let go). Freeing a place of a full lot wakes the workers waiting for one.
    std::optional<envelope> next_parked(stripe& lane, std::uint64_t& pushed_at) {
        std::optional<envelope> ev;
        bool was_full = false;
        {
            std::lock_guard lock(pop_mutex_);
            if (lane.first == parking_lot::none) {
                lane.owned = false;
                return ev;
            }
            was_full = lot_.full();
            ev.emplace(lot_.take(lane, pushed_at));
        }
        // A waiter registered (seq_cst RMW) before its check under the lock, which came before
        // this free: the load in notify_one_if_waiting sees it. One is enough: any sleeper
        // re-runs take(), and one that pops an event for a free stripe wakes a helper.
        if (was_full)
            work_.notify_one_if_waiting();
        return ev;
    }

    Ring& ring_;
    dispatch_core& core_;
    const void* store_;
    std::size_t count_;  // workers (threads_ is still filling while the first ones run)
    std::unique_ptr<worker_state[]> state_;
    std::unique_ptr<latency_recorders[]> latency_;  // one per worker, with latency histograms
    alignas(cache_line_size) std::atomic<std::uint64_t> eligible_;  // publish()'s mark
    std::atomic<bool> closing_{false};
    std::atomic<std::size_t> exited_{0};
    event_count work_;                   // idle workers sleep here
    event_count idle_;                   // drain() and close() sleep here
    std::mutex pop_mutex_;               // ordered_by_key only
    std::unique_ptr<stripe[]> stripes_;  // ordered_by_key only
    parking_lot lot_;                    // ordered_by_key only, guarded by pop_mutex_
    // Due retries, oldest first, linked through retry_job::next (pushing never allocates).
    std::mutex retry_mutex_;
    std::shared_ptr<retry_job> retry_head_;  // guarded by retry_mutex_
    retry_job* retry_tail_ = nullptr;        // guarded by retry_mutex_
    std::atomic<std::size_t> retries_ready_{0};
    std::vector<std::thread> threads_;
};

}  // namespace detail

// timers //////////////////////////////////////////////////////////////////////////////////////

namespace detail {

/// One scheduled event, shared by its store's timer queue and its handle.
struct timer_entry {
    // firing: due and out of the queue (too late to cancel), not yet in the ring.
    enum class state : std::uint8_t { pending, cancelled, firing, fired };

    timer_entry(const context& c, context::clock::time_point when, envelope&& e) noexcept
        : ctx(c), due(when), ev(std::move(e)) {}
    timer_entry(context::clock::time_point when, std::shared_ptr<retry_job> job) noexcept
        : due(when), retry(std::move(job)) {}

    context ctx;
    context::clock::time_point due;
    envelope ev;                       // taken by the timer thread when due
    std::shared_ptr<retry_job> retry;  // instead of `ev`: handlers to call again
    // Changed under the queue's mutex, but for firing -> fired (by the timer thread, once the
    // event is in the ring or was refused).
    std::atomic<state> status{state::pending};
};

/// A store's pending scheduled events, earliest first. Shared with the handles, so that a
/// handle may be cancelled (and finds nothing to do) after its store is gone.
struct timer_queue {
    using entries = std::multimap<context::clock::time_point, std::shared_ptr<timer_entry>>;

    /// Takes `entry` out of the queue if it is still pending: true if this call did.
    bool cancel(const std::shared_ptr<timer_entry>& entry) {
        std::lock_guard lock(mutex);
        if (entry->status.load(std::memory_order_relaxed) != timer_entry::state::pending)
            return false;
        entry->status.store(timer_entry::state::cancelled, std::memory_order_release);
        const auto [first, last] = pending.equal_range(entry->due);
        for (auto it = first; it != last; ++it) {
            if (it->second == entry) {
                pending.erase(it);  // the caller still holds `entry`: nothing is freed here
                break;
            }
        }
        cancelled.fetch_add(1, std::memory_order_relaxed);
        return true;
    }

    std::mutex mutex;
    std::condition_variable wake;  // the timer thread sleeps here until the earliest due time
    entries pending;
    bool stopping = false;
    std::atomic<std::uint64_t> scheduled{0};
    std::atomic<std::uint64_t> cancelled{0};
};

}  // namespace detail

namespace detail {
template <class Store>
class timer_service;
}  // namespace detail

/// What `event_store::schedule` returns: `cancel()` stops the event if it has not run yet.
/// May outlive the store. Thread-safe.
class timer_handle {
  public:
    timer_handle() noexcept = default;

    /// Stops the event: true if this call did (it will never run); false if it is due already
    /// (it ran, or was refused when due: see `store_metrics::cancelled`), was cancelled already
    /// (by another cancel(), its context or the store's close()), or the handle is empty. Takes
    /// the store's timer mutex briefly.
    bool cancel() {
        if (!entry_)
            return false;
        if (entry_->ctx.done()) {
            (void)queue_->cancel(entry_);  // the context stopped it; just let it go early
            return false;
        }
        return queue_->cancel(entry_);
    }

    /// True while the event has not reached the ring: neither cancelled, nor stopped by its
    /// context, nor enqueued (or refused) when due. Once it is false, an event that was enqueued
    /// is in the ring, so a close() that follows handles it.
    [[nodiscard]] explicit operator bool() const noexcept {
        if (!entry_)
            return false;
        const auto status = entry_->status.load(std::memory_order_acquire);
        return status == detail::timer_entry::state::firing ||
               (status == detail::timer_entry::state::pending && !entry_->ctx.done());
    }

    /// Why the handle is empty when `schedule` returned it so: `{}` when the event was due
    /// already and was published at once, else the error (`errc::closed`, the context's error,
    /// or what subscribe returned).
    [[nodiscard]] std::error_code error() const noexcept { return error_; }

  private:
    template <overflow_policy>
    friend class event_store;
    template <class>
    friend class detail::timer_service;
    timer_handle(std::shared_ptr<detail::timer_queue> queue,
                 std::shared_ptr<detail::timer_entry> entry) noexcept
        : queue_(std::move(queue)), entry_(std::move(entry)) {}
    explicit timer_handle(std::error_code error) noexcept : error_(error) {}

    std::shared_ptr<detail::timer_queue> queue_;
    std::shared_ptr<detail::timer_entry> entry_;
    std::error_code error_;
};

// timer thread ////////////////////////////////////////////////////////////////////////////////

namespace detail {

/// Scheduled events of one store: a queue shared with the handles and the thread that sleeps
/// until the earliest due time, then enqueues and publishes what is due. Created by a store's
/// first schedule() of a future time.
template <class Store>
class timer_service {
  public:
    explicit timer_service(Store& store) : store_(store) {}
    timer_service(const timer_service&) = delete;
    timer_service& operator=(const timer_service&) = delete;
    ~timer_service() { join(); }

    [[nodiscard]] const std::shared_ptr<timer_queue>& queue() const noexcept { return queue_; }

    /// Adds `entry`, starting the thread if needed. Empty handle with `errc::closed` once stop()
    /// ran. std::system_error if the thread cannot be started.
    timer_handle add(std::shared_ptr<timer_entry> entry) {
        timer_queue& q = *queue_;
        std::lock_guard lock(q.mutex);
        if (q.stopping)
            return timer_handle(errc::closed);
        start_locked();
        const bool earliest = q.pending.empty() || entry->due < q.pending.begin()->first;
        q.pending.emplace(entry->due, entry);
        q.scheduled.fetch_add(1, std::memory_order_relaxed);
        if (earliest)
            q.wake.notify_one();
        return timer_handle(queue_, std::move(entry));
    }

    /// A retry, due at `entry->due` (no handle, not counted as scheduled).
    void add_retry(std::shared_ptr<timer_entry> entry) {
        timer_queue& q = *queue_;
        std::lock_guard lock(q.mutex);
        if (q.stopping)
            throw std::system_error(make_error_code(errc::closed));
        start_locked();
        const bool earliest = q.pending.empty() || entry->due < q.pending.begin()->first;
        q.pending.emplace(entry->due, std::move(entry));
        if (earliest)
            q.wake.notify_one();
    }

    /// close(): cancels what is still pending; the thread then exits. Returns the retries that
    /// were waiting (to be given up by the caller, outside the store's locks).
    timer_queue::entries stop() {
        timer_queue::entries cancelled;
        {
            std::lock_guard lock(queue_->mutex);
            queue_->stopping = true;
            cancelled.swap(queue_->pending);
            std::size_t events = 0;
            for (auto& [when, entry] : cancelled) {
                entry->status.store(timer_entry::state::cancelled, std::memory_order_release);
                if (!entry->retry)
                    ++events;
            }
            queue_->cancelled.fetch_add(events, std::memory_order_relaxed);
        }
        queue_->wake.notify_all();
        return cancelled;
    }

    /// After stop(): waits until the thread has finished its last batch (counters final).
    std::error_code wait_stopped(const context& ctx) {
        return retry_or_wait(stopped_, ctx, [&]() noexcept {
            return running_.load(std::memory_order_seq_cst) ? attempt::busy : attempt::ok;
        });
    }

    void join() noexcept {
        if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id())
            thread_.join();
    }

  private:
    // Under the queue's mutex: starts the thread if it is not running (std::system_error).
    void start_locked() {
        if (!thread_.joinable()) {
            // The thread cannot finish before we let go of q.mutex: marking it running after it
            // started leaves nothing to wait for if starting it throws.
            thread_ = std::thread([this] { run(); });
            running_.store(true, std::memory_order_seq_cst);
        }
    }

    // Sleeps until the earliest due time (or a new earlier one, or stop), then takes every due
    // entry out and enqueues it outside the mutex (a retry is run, or given to the workers).
    void run() {
        timer_queue& q = *queue_;
        std::vector<std::shared_ptr<timer_entry>> due;
        std::unique_lock lock(q.mutex);
        while (!q.stopping) {
            if (q.pending.empty()) {
                q.wake.wait(lock);
                continue;
            }
            const auto now = context::clock::now();
            if (const auto next = q.pending.begin()->first; next > now) {
                // A copy: a cancel() may erase the entry, and its key, during the wait.
                q.wake.wait_until(lock, next);
                continue;
            }
            // An entry leaves the queue only once it has a place in `due`: if that place cannot
            // be allocated, the entries already taken are handled now and the rest stay queued
            // for the next round (with no place at all, one entry is handled on its own).
            std::shared_ptr<timer_entry> alone;
            while (!q.pending.empty() && q.pending.begin()->first <= now) {
                std::shared_ptr<timer_entry>& next = q.pending.begin()->second;
                try {
                    due.push_back(next);
                } catch (const std::bad_alloc&) {
                    if (due.empty())
                        alone = std::move(next);
                    else
                        break;
                }
                (alone ? alone : due.back())
                    ->status.store(timer_entry::state::firing, std::memory_order_release);
                q.pending.erase(q.pending.begin());
                if (alone)
                    break;
            }
            lock.unlock();
            if (alone)
                due_alone(*alone, q);
            bool enqueued = false;
            for (const auto& entry : due) {
                if (entry->retry)
                    store_.run_due_retry(std::move(entry->retry));
                else if (store_.enqueue_due(entry->ctx, std::move(entry->ev)))
                    q.cancelled.fetch_add(1, std::memory_order_relaxed);
                else
                    enqueued = true;
                // Release: a thread that sees the handle empty and then closes the store finds
                // the event in the ring (close() handles it) or counted as cancelled.
                entry->status.store(timer_entry::state::fired, std::memory_order_release);
            }
            if (enqueued)
                store_.publish();
            due.clear();  // events, and whatever they own, are freed outside the mutex
            alone.reset();
            lock.lock();
        }
        lock.unlock();
        // Seq_cst store, then notify: wait_stopped() uses the eventcount protocol.
        running_.store(false, std::memory_order_seq_cst);
        stopped_.notify_if_waiting();
    }

    // A due entry that found no place in the batch (out of memory): enqueued on its own.
    void due_alone(timer_entry& entry, timer_queue& q) {
        if (entry.retry) {
            store_.run_due_retry(std::move(entry.retry));
        } else if (store_.enqueue_due(entry.ctx, std::move(entry.ev))) {
            q.cancelled.fetch_add(1, std::memory_order_relaxed);
        } else {
            entry.status.store(timer_entry::state::fired, std::memory_order_release);
            store_.publish();
            return;
        }
        entry.status.store(timer_entry::state::fired, std::memory_order_release);
    }

    Store& store_;
    std::shared_ptr<timer_queue> queue_ = std::make_shared<timer_queue>();
    std::thread thread_;
    std::atomic<bool> running_{false};
    event_count stopped_;
};

}  // namespace detail

// event store /////////////////////////////////////////////////////////////////////////////////

/// The bus: a ring of events, a dispatch core that runs handlers, and, only when needed, a
/// worker pool (async mode) and a timer thread (first schedule of a future time).
///
/// Sync mode (default): `publish()` claims the events enqueued before it, batch by batch, and
/// runs their handlers on the calling thread. Async mode (`store_options{.async = true}`):
/// worker threads, started by the constructor, claim batches straight from the ring once a
/// `publish()` has made them eligible.
template <overflow_policy Policy = drop_oldest>
class event_store {
    using ring_type = ring_buffer<detail::envelope, Policy>;

  public:
    /// Throws `std::invalid_argument` for a capacity of 0, not a power of two, or too large. In
    /// async mode starts the workers (std::system_error if a thread cannot be started).
    /// Allocates the ring's slots and the hooks' state (sync mode: nothing else, no thread).
    /// The store shares `handlers`' table: either may be destroyed first.
    event_store(eventbus::dispatcher& handlers, std::size_t capacity, store_options options = {})
        : ring_(capacity, ring_options{.single_producer = options.single_producer})
        , core_(handlers)
        , options_(options) {
        core_.set_retries(&schedule_retry, this, options_.dead_letter_capacity);
        if (options_.latency_histograms) {
            ring_.record_push_times();
            leased_latency_ = std::make_unique<detail::latency_recorders>(true);
            shared_latency_ = std::make_unique<detail::latency_recorders>(false);
        }
        if (!options_.async)
            return;
        if (options_.workers == 0)
            options_.workers = std::max<std::size_t>(1, std::thread::hardware_concurrency());
        if (options_.max_parked > detail::max_capacity)
            throw std::invalid_argument("eventbus: max_parked " +
                                        std::to_string(options_.max_parked) +
                                        " exceeds the maximum, 2^32 (4294967296)");
        if (options_.ordered_by_key && options_.max_parked == 0)
            options_.max_parked = std::min<std::size_t>(capacity, 4096);
        pool_ = std::make_unique<detail::worker_pool<ring_type>>(
            ring_, core_, this, options_.workers, options_.ordered_by_key ? options_.max_parked : 0,
            options_.latency_histograms);
    }

    event_store(const event_store&) = delete;
    event_store& operator=(const event_store&) = delete;

    /// Closes, waiting until everything accepted has been handled, and joins the workers.
    /// Must not run on one of the store's own handler threads.
    ~event_store() { shut_down(); }

    /// Enqueues `ev` under the store's policy: `{}`, `errc::buffer_full` (return_error),
    /// `errc::cancelled` / `errc::deadline_exceeded` (block, when `ctx` ends while waiting), or
    /// `errc::closed`. Thread-safe (unless single_producer), also from inside a handler;
    /// lock-free unless it has to sleep (block). From inside one of this store's handlers a
    /// full block store returns `errc::would_deadlock` at once instead of waiting: the
    /// handler's thread may be the one that has to make room. Allocates one box for the event
    /// (its args are moved into it, never copied); std::bad_alloc if that fails, with nothing
    /// enqueued.
    [[nodiscard]] std::error_code subscribe(const context& ctx, event ev) {
        return enqueue(ctx, detail::envelope(std::move(ev)));
    }

    /// Enqueues a typed event: `subscribe(ctx, house_was_sold{"123 Main St", 500000})`. Its key
    /// is `key::of<T>()`; handlers registered with `dispatcher::on<T>` receive it as `const T&`.
    /// No allocation when T is stored inline (see `inline_payload_size`); otherwise one. Errors,
    /// thread-safety and waiting as for events; on failure an rvalue argument is left intact
    /// when T is stored inline and nothrow-constructible from it.
    template <typed_event T>
    [[nodiscard]] std::error_code subscribe(const context& ctx, T&& value) {
        using U = std::remove_cvref_t<T>;
        if constexpr (detail::stored_inline<U> && std::is_nothrow_constructible_v<U, T&&>)
            return enqueue(ctx, std::in_place_type<U>, std::forward<T>(value));
        else
            return enqueue(ctx, detail::envelope(std::in_place_type<U>, std::forward<T>(value)));
    }

    /// Sync: dispatches, in FIFO order on the calling thread, every event enqueued before the
    /// call; events enqueued meanwhile (also by handlers) wait for the next publish(). With
    /// several threads publishing, each event is handled by exactly one of them.
    /// Async: makes every event enqueued before the call eligible for the workers, wakes one
    /// sleeping worker, and returns without waiting. Thread-safe, also from inside a handler;
    /// lock-free.
    void publish() {
        const std::uint64_t mark = ring_.mark();
        if (pool_)
            pool_->make_eligible(mark);
        else if (ring_.consumed_mark() != mark)  // else nothing to dispatch: skip the set-up
            dispatch_until(mark);
    }

    /// Has every event accepted before the call handled, published or not, and waits for it:
    /// first publishes what was subscribed but not yet published (sync: dispatching it on the
    /// caller), then waits until everything made eligible before has been handled (sync: until
    /// no other thread is dispatching). Unlike GoEventBus's Drain, which waits only for handlers
    /// already running, nothing subscribed is left behind. Returns `ctx`'s error if it ends
    /// first, `errc::would_deadlock` when called from inside one of this store's handlers (it
    /// would wait for itself). The store stays usable. Thread-safe; sleeps (no polling).
    [[nodiscard]] std::error_code drain(const context& ctx) {
        if (detail::inside_dispatch_of(this))
            return errc::would_deadlock;
        publish();
        // Retries of what was handled are waited for too (handled again or given up); an event
        // handled meanwhile may fail and start one, so the two waits repeat until none is left.
        for (;;) {
            if (const std::error_code error = pool_ ? pool_->drain(ctx) : wait_idle(ctx))
                return error;
            if (core_.retries_pending() == 0)
                return {};
            if (const std::error_code error =
                    detail::retry_or_wait(core_.retries_done(), ctx, [&]() noexcept {
                        return core_.retries_pending() == 0 ? detail::attempt::ok
                                                            : detail::attempt::busy;
                    }))
                return error;
        }
    }

    /// Runs the handlers of `ev` now, on the calling thread, without the ring ("immediate
    /// dispatch", like EnTT's trigger or a Boost.Signals2 signal call): with the same hooks and
    /// middleware as publish(), `ctx` as the handlers' context, and the same isolation (a
    /// handler that throws is counted in `errors`, reported to the error hooks, and the others
    /// still run). Returns `{}`, `errc::handler_failed` if a handler threw, `errc::closed` after
    /// close() (except from inside one of this store's handlers, which close() is still
    /// finishing), or `ctx`'s error if it has already ended (then nothing runs). Counted in
    /// `metrics().triggered`, not `published`; an event with no handler counts as `unhandled`.
    /// Thread-safe, also from inside a handler, in sync and async mode; ignores
    /// `ordered_by_key`. Allocates nothing (for a typed event: not even a copy of it); three
    /// read-modify-writes to enter and leave (as a sync publish()), two for the batch's pin.
    [[nodiscard]] std::error_code trigger(const context& ctx, const event& ev) {
        return trigger_view(ctx, event_view(ev));
    }
    /// The same for a typed event, passed to its handlers as it is (no copy).
    template <typed_event T>
    [[nodiscard]] std::error_code trigger(const context& ctx, const T& value) {
        static const key projection = key::of<T>();
        return trigger_view(ctx, event_view(projection, &detail::type_tag<T>, &value));
    }

  private:
    template <class... Args>
    EVENTBUS_ALWAYS_INLINE std::error_code enqueue(const context& ctx, Args&&... values) {
        return push_or_refuse(
            [&]() noexcept { return ring_.try_emplace(std::forward<Args>(values)...); },
            [&] { return ring_.emplace(ctx, std::forward<Args>(values)...); });
    }

    // Subscribe's and commit's push. From inside one of this store's handlers a full block
    // store does not wait (the handler's thread may be the one that has to make room): it
    // tries once and answers errc::would_deadlock for a full ring. A refusal counts `events`
    // in `rejected`.
    template <class TryPush, class WaitingPush>
    EVENTBUS_ALWAYS_INLINE std::error_code push_or_refuse(TryPush&& try_push,
                                                          WaitingPush&& waiting_push,
                                                          std::uint64_t events = 1) {
        std::error_code error;
        if constexpr (std::same_as<Policy, block>) {
            if (detail::inside_dispatch_of(this)) {
                error = try_push();
                if (error == errc::buffer_full)
                    error = errc::would_deadlock;
            } else {
                error = waiting_push();
            }
        } else {
            error = waiting_push();
        }
        if (error) [[unlikely]]
            rejected_.fetch_add(events, std::memory_order_relaxed);
        return error;
    }

    // Sync: waits until no thread is dispatching.
    std::error_code wait_idle(const context& ctx) {
        return detail::retry_or_wait(idle_, ctx, [&]() noexcept {
            return (dispatching_.load(std::memory_order_seq_cst) & active_mask) == 0
                       ? detail::attempt::ok
                       : detail::attempt::busy;
        });
    }

    std::error_code trigger_view(const context& ctx, const event_view& ev) {
        if (const std::error_code ended = ctx.err())
            return ended;
        // From inside a handler of this store, the event that runs it was accepted before a
        // close(), which has it handled: its follow-ups still run.
        if (ring_.is_closed() && !detail::inside_dispatch_of(this))
            return errc::closed;
        const dispatch_scope scope(*this);
        detail::handler_view own;
        detail::handler_view& view = scope.leased() ? view_ : own;
        core_.refresh(view);
        detail::batch_counts counts;
        counts.latency = recorders(scope.leased());
        core_.run_now(ev, view, counts, ctx);
        const bool failed = counts.errors != 0;
        add(counts, scope.leased(), 1);
        add_failures(counts);
        if (scope.leased() && !view.permanent)
            view.release_table();
        return failed ? std::error_code(errc::handler_failed) : std::error_code();
    }

  public:
    /// Stops accepting (subscribe then returns `errc::closed`, blocked subscribers wake with
    /// it), has everything accepted handled (sync: on the caller; async: by the workers, which
    /// then exit) and waits for it. If `ctx` ends first, returns its error, triggers the stop
    /// token of the handlers' context (so long handlers can stop early), and leaves the rest to
    /// finish in the background; the destructor waits for it. From inside one of this store's
    /// handlers it does not wait. Idempotent; the destructor calls it.
    [[nodiscard]] std::error_code close(const context& ctx) {
        stop_timers();
        ring_.close();
        if (ctx.done())
            core_.request_stop();  // tell handlers still to run that the closer has given up
        if (!pool_) {
            dispatch_until(std::nullopt);
            if (detail::inside_dispatch_of(this))
                return {};
            if (const std::error_code error = wait_idle(ctx))
                return error;
            return wait_for_timers(ctx);
        }
        pool_->let_finish();
        if (detail::inside_dispatch_of(this))
            return {};
        if (const std::error_code ended = ctx.err())
            return ended;  // ended before the call: the workers finish in the background
        std::error_code error = pool_->wait_exited(ctx);
        if (!error)
            error = wait_for_timers(ctx);
        if (error)
            core_.request_stop();
        return error;
    }

    // scheduling ------------------------------------------------------------------------------

    /// Publishes `ev` at `when`. A time not in the future subscribes and publishes at once on the
    /// caller (GoEventBus's behaviour) and returns an empty handle (whose `error()` is what
    /// subscribe returned). Otherwise the event waits on the store's timer thread (started by the
    /// first call; it sleeps until the earliest due time, no polling), which then subscribes it
    /// and publishes (sync: the handlers run on the timer thread; async: on the workers). When
    /// due and the ring is full: drop_oldest overwrites as usual, return_error refuses it
    /// (counted in `metrics().cancelled`), block publishes what is pending and waits for room.
    /// `ctx` ending before the due time cancels it (noticed, and counted, at the due time or at
    /// close; the entry is kept until then); `close()` cancels everything pending. An ended
    /// `ctx`, or a closed store, gives an empty handle with that error; a single_producer
    /// store gives `errc::not_supported` for a future time (the timer thread would be a second
    /// producer). Thread-safe, also from a handler; allocates (the entry; std::system_error if
    /// the thread cannot be started).
    [[nodiscard]] timer_handle schedule(const context& ctx, context::clock::time_point when,
                                        event ev) {
        return schedule_envelope(ctx, when, detail::envelope(std::move(ev)));
    }

    /// `schedule` at a system_clock time (converted once, now, to the steady clock).
    [[nodiscard]] timer_handle schedule(const context& ctx,
                                        std::chrono::system_clock::time_point when, event ev) {
        return schedule_after(ctx, delay_until(when), std::move(ev));
    }

    /// `schedule(ctx, now + delay, ev)`; a delay of zero or less publishes at once.
    template <class Rep, class Period>
    [[nodiscard]] timer_handle schedule_after(const context& ctx,
                                              std::chrono::duration<Rep, Period> delay, event ev) {
        return schedule(ctx, due_after(delay), std::move(ev));
    }

    /// The same three for typed events.
    template <typed_event T>
    [[nodiscard]] timer_handle schedule(const context& ctx, context::clock::time_point when,
                                        T&& value) {
        return schedule_envelope(
            ctx, when,
            detail::envelope(std::in_place_type<std::remove_cvref_t<T>>, std::forward<T>(value)));
    }
    template <typed_event T>
    [[nodiscard]] timer_handle schedule(const context& ctx,
                                        std::chrono::system_clock::time_point when, T&& value) {
        return schedule_after(ctx, delay_until(when), std::forward<T>(value));
    }
    template <class Rep, class Period, typed_event T>
    [[nodiscard]] timer_handle schedule_after(const context& ctx,
                                              std::chrono::duration<Rep, Period> delay, T&& value) {
        return schedule(ctx, due_after(delay), std::forward<T>(value));
    }

    class transaction;

    /// A transaction on this store: buffers events and enqueues them all at once on commit.
    /// Allocates nothing until the first `publish`. The store must outlive it.
    [[nodiscard]] transaction begin_transaction() noexcept { return transaction(*this); }
    /// A transaction whose events the caller delivers again when a handler fails (a message
    /// broker's redelivery): see transaction_options. `std::invalid_argument` for a delivery
    /// of 0 with max_deliveries set.
    [[nodiscard]] transaction begin_transaction(transaction_options options) {
        if (options.max_deliveries != 0 && options.delivery == 0)
            throw std::invalid_argument(
                "eventbus: transaction_options::delivery is 0 (the first delivery is 1)");
        transaction tx(*this);
        tx.options_ = options;
        return tx;
    }

    [[nodiscard]] bool is_closed() const noexcept { return ring_.is_closed(); }

    /// Thread-safe, lock-free: sums the per-thread counters. Counters may lag a batch still
    /// being handled; at quiescence (after drain or close) they are exact.
    [[nodiscard]] store_metrics metrics() const noexcept {
        store_metrics m;
        m.published = ring_.accepted();
        m.dropped = ring_.dropped();
        m.processed = processed_.load(std::memory_order_relaxed) +
                      leased_processed_.load(std::memory_order_relaxed);
        m.handled = handled_.load(std::memory_order_relaxed) +
                    leased_handled_.load(std::memory_order_relaxed);
        m.errors = errors_.load(std::memory_order_relaxed) +
                   leased_errors_.load(std::memory_order_relaxed);
        m.unhandled = unhandled_.load(std::memory_order_relaxed) +
                      leased_unhandled_.load(std::memory_order_relaxed);
        m.triggered = triggered_.load(std::memory_order_relaxed) +
                      leased_triggered_.load(std::memory_order_relaxed);
        m.trigger_errors = trigger_errors_.load(std::memory_order_relaxed);
        m.retried = core_.retried();
        m.dead_lettered = core_.dead_lettered();
        m.dead_letters_dropped = core_.dead_letters_dropped();
        m.rejected = rejected_.load(std::memory_order_relaxed);
        m.depth = ring_.approx_size();
        // A drop_oldest push moves tail before it drops the oldest: a batch taken meanwhile may
        // see more than the capacity waiting.
        m.high_water = std::min<std::uint64_t>(std::max<std::uint64_t>(core_.high_water(), m.depth),
                                               ring_.capacity());
        if (leased_latency_) {
            leased_latency_->wait.read_into(m.queue_wait);
            leased_latency_->run.read_into(m.handler_duration);
            shared_latency_->wait.read_into(m.queue_wait);
            shared_latency_->run.read_into(m.handler_duration);
        }
        if (pool_) {
            pool_->read_latency(m.queue_wait, m.handler_duration);
            const detail::batch_counts workers = pool_->counts();
            m.processed += workers.processed;
            m.handled += workers.handled;
            m.errors += workers.errors;
            m.unhandled += workers.unhandled;
        }
        // Acquire: pairs with the release that published the timer service.
        if (const auto* timers = timers_ready_.load(std::memory_order_acquire)) {
            m.scheduled = timers->queue()->scheduled.load(std::memory_order_relaxed);
            m.cancelled = timers->queue()->cancelled.load(std::memory_order_relaxed);
        }
        return m;
    }

    /// Hooks and middleware: thread-safe, allocate; seen by the next publish() (and trigger()).
    /// They run once per handler call, in GoEventBus's order: before hooks, middleware (first
    /// registered outermost), handler, after hooks, then error hooks if the call threw; an
    /// event with two handlers runs them twice. An exception from a before hook or middleware
    /// fails the call like one from the handler; exceptions from after and error hooks are
    /// caught and discarded. Each returns a registration: `remove()` (or a
    /// scoped_registration) unregisters it and waits until no batch that may still call it is
    /// running on another thread. The registration may outlive the store.
    registration use(middleware m) {
        return core_.add_hook(&detail::hook_set::chain, std::move(m));
    }
    registration on_before(before_hook h) {
        return core_.add_hook(&detail::hook_set::before, std::move(h));
    }
    registration on_after(after_hook h) {
        return core_.add_hook(&detail::hook_set::after, std::move(h));
    }
    registration on_error(error_hook h) {
        return core_.add_hook(&detail::hook_set::error, std::move(h));
    }
    /// An error hook that sees the failed call's event as an `event_view` (a typed payload
    /// through `get_if<T>()`) and the handler's name; runs after the `error_hook`s.
    registration on_error(failure_hook h) {
        return core_.add_hook(&detail::hook_set::failure, std::move(h));
    }
    /// Once per event that has no handler (counted in `unhandled` either way); exceptions from
    /// it are caught and discarded.
    registration on_unhandled(unhandled_hook h) {
        return core_.add_hook(&detail::hook_set::unhandled, std::move(h));
    }
    /// Once per dead letter (kept or not), on the thread where its handler gave up: a worker,
    /// the timer thread, the publisher, or close(). Exceptions from it are caught and
    /// discarded. It must not wait for the store (drain, close).
    registration on_dead_letter(dead_letter_hook h) {
        return core_.add_hook(&detail::hook_set::dead, std::move(h));
    }

    // dead letters ----------------------------------------------------------------------------

    /// The dead letters kept (at most `store_options::dead_letter_capacity`), oldest first.
    /// Thread-safe; takes a mutex briefly; allocates the vector (std::bad_alloc).
    [[nodiscard]] std::vector<dead_letter> dead_letters() const { return core_.letters(false); }
    /// The same, taking them out of the store.
    [[nodiscard]] std::vector<dead_letter> take_dead_letters() { return core_.letters(true); }

    /// Subscribes a dead letter's event again, to all the handlers of its key, under the
    /// store's policy (errors as `subscribe`; it counts in `published`); a letter kept by this
    /// store is then no longer kept. The event is shared with the letter, never copied, and
    /// may be replayed any number of times, also into another store of the same dispatcher.
    /// Thread-safe, also from a handler; allocates nothing for the event.
    [[nodiscard]] std::error_code replay(const context& ctx, const dead_letter& letter) {
        const std::error_code error = enqueue(ctx, detail::envelope(letter.event_));
        if (!error)
            (void)core_.forget_letter(letter);
        return error;
    }

    [[nodiscard]] std::size_t capacity() const noexcept { return ring_.capacity(); }
    [[nodiscard]] const store_options& options() const noexcept { return options_; }
    /// The store's own handle on its dispatcher's table (valid as long as the store, even after
    /// the dispatcher it was built with is gone): handlers registered through it are the
    /// dispatcher's.
    [[nodiscard]] eventbus::dispatcher& dispatcher() const noexcept { return core_.dispatcher(); }

  private:
    friend class detail::timer_service<event_store>;

    // Sync mode: marks this thread as dispatching this store, counted in dispatching_ for
    // drain(). One seq_cst CAS counts the thread in and, if nobody holds it, takes the lease on
    // the store's cached handler view and counters (see dispatch_until).
    class dispatch_scope {
      public:
        explicit dispatch_scope(event_store& s) noexcept : store_(s), inside_(&s) {
            std::uint64_t now = store_.dispatching_.load(std::memory_order_relaxed);
            std::uint64_t next;
            do {
                leased_ = (now & lease_bit) == 0;
                next = now + 1 + (leased_ ? lease_bit : 0);
            } while (!store_.dispatching_.compare_exchange_weak(
                now, next, std::memory_order_seq_cst, std::memory_order_relaxed));
        }
        /// Whether this thread holds the lease on the store's cached view and lease counters.
        [[nodiscard]] bool leased() const noexcept { return leased_; }
        dispatch_scope(const dispatch_scope&) = delete;
        dispatch_scope& operator=(const dispatch_scope&) = delete;
        ~dispatch_scope() {
            // One seq_cst RMW leaves the active count and enters the notifying count, then
            // notify: the eventcount protocol (drain re-checks seq_cst). The notifying count
            // covers the notify: a close() that sees no one active may let the destructor run,
            // which waits for the notifiers before freeing the store. Releasing the lease in
            // the same RMW publishes the view and lease counters.
            store_.dispatching_.fetch_add(notifying_one - 1 - (leased_ ? lease_bit : 0),
                                          std::memory_order_seq_cst);
            store_.idle_.notify_if_waiting();
            store_.dispatching_.fetch_sub(notifying_one, std::memory_order_release);
        }

      private:
        event_store& store_;
        detail::dispatch_mark inside_;
        bool leased_ = false;
    };

    // Sync mode: handles every event before `mark` (all, when none is given: close()), batch by
    // batch, each claimed with one compare-and-swap.
    void dispatch_until(std::optional<std::uint64_t> mark) {
        const dispatch_scope scope(*this);
        // One publishing thread at a time (the lease holder) uses the store's cached copies of
        // the table and the hooks, re-read only when their version changed, and its own
        // counters; the others, and nested publishes, read their own copies.
        detail::handler_view own;
        detail::handler_view& view = scope.leased() ? view_ : own;
        core_.refresh(view);
        detail::batch_counts counts;
        counts.latency = recorders(scope.leased());
        detail::claimed_batch batch;
        const std::uint64_t limit = mark ? *mark : ring_.mark();
        core_.note_depth(ring_type::distance(ring_.consumed_mark(), limit));
        while (batch.take(ring_, limit, detail::claimed_batch::capacity,
                          leased_latency_ != nullptr) != 0) {
            const detail::completions done =
                core_.run(batch.events(), view, counts, batch.stamps());
            if (done.any) {
                add(counts, scope.leased());  // a committer that returns sees them counted
                counts = detail::batch_counts{.latency = counts.latency};
                detail::dispatch_core::complete(batch.events(), done);
            }
            batch.clear();  // the events die here, before the next batch is taken
        }
        add(counts, scope.leased());
        if (scope.leased() && !view.permanent)
            view.release_table();  // it may hold removable handlers: not kept while idle
    }

    // Where this thread records latencies (nullptr without histograms): the lease holder alone
    // writes its own, the others share one.
    [[nodiscard]] detail::latency_recorders* recorders(bool leased) const noexcept {
        return leased ? leased_latency_.get() : shared_latency_.get();
    }

    void add(const detail::batch_counts& counts, bool leased,
             std::uint64_t triggered = 0) noexcept {
        if (leased) {
            // Only the lease holder writes these: a load and a store, no shared RMW.
            const auto bump = [](std::atomic<std::uint64_t>& counter, std::uint64_t n) {
                if (n)
                    detail::add_owned(counter, n);
            };
            bump(leased_processed_, counts.processed);
            bump(leased_handled_, counts.handled);
            bump(leased_errors_, counts.errors);
            bump(leased_unhandled_, counts.unhandled);
            bump(leased_triggered_, triggered);
            return;
        }
        if (counts.processed)
            processed_.fetch_add(counts.processed, std::memory_order_relaxed);
        if (counts.handled)
            handled_.fetch_add(counts.handled, std::memory_order_relaxed);
        if (counts.errors)
            errors_.fetch_add(counts.errors, std::memory_order_relaxed);
        if (counts.unhandled)
            unhandled_.fetch_add(counts.unhandled, std::memory_order_relaxed);
        if (triggered)
            triggered_.fetch_add(triggered, std::memory_order_relaxed);
    }

    // The failure path's own counter, whoever holds the lease.
    void add_failures(const detail::batch_counts& counts) noexcept {
        if (counts.trigger_errors)
            trigger_errors_.fetch_add(counts.trigger_errors, std::memory_order_relaxed);
    }

    void shut_down() noexcept {
        if (!pool_) {
            (void)close(context{});
            join_timers();
            // Threads that finished dispatching may still be notifying: wait for them (a few
            // instructions) before the store's memory goes.
            while ((dispatching_.load(std::memory_order_seq_cst) >> 32) != 0)
                std::this_thread::yield();
            return;
        }
        stop_timers();
        ring_.close();  // also wakes a timer thread waiting for room
        pool_->let_finish();
        pool_->join();
        join_timers();
    }

    // From now to `when`, never negative (no overflow for time_point::min()).
    static std::chrono::system_clock::duration delay_until(
        std::chrono::system_clock::time_point when) noexcept {
        const auto now = std::chrono::system_clock::now();
        return when <= now ? std::chrono::system_clock::duration::zero() : when - now;
    }

    template <class Rep, class Period>
    static context::clock::time_point due_after(std::chrono::duration<Rep, Period> delay) {
        detail::check_not_nan(delay, "a delay");
        const auto now = context::clock::now();
        if (delay <= delay.zero())
            return now;
        const std::chrono::duration<double> room = context::clock::time_point::max() - now;
        if (std::chrono::duration<double>(delay) >= room)
            return context::clock::time_point::max();
        return now + std::chrono::ceil<context::clock::duration>(delay);
    }

    timer_handle schedule_envelope(const context& ctx, context::clock::time_point when,
                                   detail::envelope&& env) {
        if (const std::error_code error = ctx.err())
            return timer_handle(error);
        if (when <= context::clock::now()) {
            const std::error_code error = ring_.emplace(ctx, std::move(env));
            if (!error)
                publish();
            return timer_handle(error);
        }
        if (options_.single_producer)
            return timer_handle(errc::not_supported);
        auto entry = std::make_shared<detail::timer_entry>(ctx, when, std::move(env));
        std::lock_guard lock(timers_mutex_);
        if (timers_stopped_ || ring_.is_closed())
            return timer_handle(errc::closed);
        if (!timers_) {
            timers_ = std::make_unique<detail::timer_service<event_store>>(*this);
            timers_ready_.store(timers_.get(), std::memory_order_release);
        }
        return timers_->add(std::move(entry));
    }

    // The timer thread, for a due event: enqueue it (block: publishing what is pending first if
    // the ring is full, so that a ring full of unpublished events can make room).
    std::error_code enqueue_due(const context& ctx, detail::envelope&& ev) {
        std::error_code error = ctx.err();
        if (!error)
            error = ring_.try_emplace(std::move(ev));
        if (error == errc::buffer_full && std::same_as<Policy, block>) {
            publish();
            error = ring_.emplace(ctx, std::move(ev));
        }
        return error;
    }

    // close(): cancels what is still pending; the timer thread then exits. Retries still
    // waiting are given up (dead letters), outside the store's locks.
    void stop_timers() {
        detail::timer_queue::entries cancelled;
        {
            std::lock_guard lock(timers_mutex_);
            timers_stopped_ = true;
            if (timers_)
                cancelled = timers_->stop();
        }
        for (auto& [when, entry] : cancelled) {
            if (!entry->retry)
                continue;
            // ordered_by_key: a worker still has to let the retried key's stripe go (and
            // handle what is parked there), so the job, without handlers, goes to the workers.
            const bool holds_lane = pool_ && entry->retry->lane != nullptr;
            core_.abandon(*entry->retry, holds_lane);
            if (holds_lane)
                pool_->add_retry(std::move(entry->retry));
        }
    }

    // The dispatch core's retry scheduler: the job waits on the timer thread. False (the job
    // stays the caller's) when the store is closing, or the timer cannot be set for want of
    // memory or of a thread.
    static std::error_code schedule_retry(void* self, std::shared_ptr<detail::retry_job>& job,
                                          std::chrono::nanoseconds delay) noexcept {
        auto& store = *static_cast<event_store*>(self);
        // A sync single_producer store's timer thread would run the retry, and its handler's
        // subscribes, as a second producer.
        if (store.options_.single_producer && !store.pool_)
            return errc::not_supported;
        bool started = false;
        try {
            const auto now = context::clock::now();
            const auto due = delay >= context::clock::time_point::max() - now
                                 ? context::clock::time_point::max()
                                 : now + std::chrono::ceil<context::clock::duration>(delay);
            auto entry = std::make_shared<detail::timer_entry>(due, job);
            std::lock_guard lock(store.timers_mutex_);
            if (store.timers_stopped_)
                return errc::closed;
            if (!store.timers_) {
                store.timers_ = std::make_unique<detail::timer_service<event_store>>(store);
                store.timers_ready_.store(store.timers_.get(), std::memory_order_release);
            }
            // Pending from before close() can stop the timers (it takes this mutex), so that
            // workers never exit with a retry still to come, and every end of one is seen.
            store.core_.retry_started();
            started = true;
            store.timers_->add_retry(std::move(entry));
            job.reset();
            return {};
        } catch (...) {
            if (started)
                store.core_.retry_finished();  // not closing (we held the mutex): none waits
            return errc::handler_failed;
        }
    }

    // The timer thread, for a due retry: the workers run it (async), or this thread (sync).
    void run_due_retry(std::shared_ptr<detail::retry_job> job) noexcept {
        if (pool_) {
            pool_->add_retry(std::move(job));
            return;
        }
        const dispatch_scope scope(*this);
        detail::handler_view own;
        core_.refresh(own);
        detail::batch_counts counts;
        counts.latency = recorders(false);
        try {
            core_.run_retry(*job, own, counts);
        } catch (...) {
            // run_retry reports every failure itself; nothing else throws
        }
        add(counts, false);
        job.reset();  // the event may die here, outside any lock
        core_.retry_finished();
    }

    // close(), after stop_timers() and closing the ring: waits until the timer thread has
    // finished its last batch, so that the counters are final.
    std::error_code wait_for_timers(const context& ctx) {
        auto* timers = timers_ready_.load(std::memory_order_acquire);
        return timers != nullptr ? timers->wait_stopped(ctx) : std::error_code();
    }

    void join_timers() noexcept {
        if (auto* timers = timers_ready_.load(std::memory_order_acquire))
            timers->join();
    }

    ring_type ring_;
    detail::dispatch_core core_;
    store_options options_;
    std::unique_ptr<detail::worker_pool<ring_type>> pool_;  // async mode only
    // Sync: low 31 bits, threads inside a dispatch; bit 31, the lease on view_ and the leased
    // counters; high 32 bits, threads leaving a dispatch that are still notifying.
    alignas(cache_line_size) std::atomic<std::uint64_t> dispatching_{0};
    static constexpr std::uint64_t notifying_one = std::uint64_t{1} << 32;
    static constexpr std::uint64_t lease_bit = std::uint64_t{1} << 31;
    static constexpr std::uint64_t active_mask = lease_bit - 1;
    detail::event_count idle_;  // sync drain() sleeps here
    // Sync: dispatchers without the lease add their counts here (one RMW per batch).
    alignas(cache_line_size) std::atomic<std::uint64_t> processed_{0};
    std::atomic<std::uint64_t> handled_{0};
    std::atomic<std::uint64_t> errors_{0};
    std::atomic<std::uint64_t> unhandled_{0};
    std::atomic<std::uint64_t> triggered_{0};
    std::atomic<std::uint64_t> trigger_errors_{0};
    std::atomic<std::uint64_t> rejected_{0};
    // Latency histograms (store_options::latency_histograms): the sync lease holder's, and the
    // one that other dispatching threads (and trigger, and the timer's retries) share.
    std::unique_ptr<detail::latency_recorders> leased_latency_;
    std::unique_ptr<detail::latency_recorders> shared_latency_;
    // Sync: the lease holder's copies of the table and hooks, kept between publishes, and its
    // counters (added to the shared ones by metrics()).
    alignas(cache_line_size) detail::handler_view view_;
    std::atomic<std::uint64_t> leased_processed_{0};
    std::atomic<std::uint64_t> leased_handled_{0};
    std::atomic<std::uint64_t> leased_errors_{0};
    std::atomic<std::uint64_t> leased_unhandled_{0};
    std::atomic<std::uint64_t> leased_triggered_{0};
    // The timer thread, created by the first schedule() of a future time.
    std::mutex timers_mutex_;
    bool timers_stopped_ = false;  // guarded by timers_mutex_
    std::unique_ptr<detail::timer_service<event_store>> timers_;
    std::atomic<detail::timer_service<event_store>*> timers_ready_{nullptr};
};

// transactions ////////////////////////////////////////////////////////////////////////////////

/// Events published together: `commit` enqueues all of them as one contiguous run of the ring,
/// or none, and then waits until they have been handled. Handlers' side effects cannot be
/// undone: "atomic" means all-or-nothing in the ring, not a rollback of what handlers did. One
/// transaction is for one thread at a time; different transactions are independent. Movable;
/// the destructor rolls back.
template <overflow_policy Policy>
class event_store<Policy>::transaction {
  public:
    transaction(transaction&& other) noexcept
        : store_(other.store_)
        , events_(std::move(other.events_))
        , record_(std::move(other.record_))
        , options_(other.options_)
        , open_(std::exchange(other.open_, false)) {}
    transaction& operator=(transaction&& other) noexcept {
        if (this != &other) {
            store_ = other.store_;
            events_ = std::move(other.events_);
            record_ = std::move(other.record_);
            options_ = other.options_;
            open_ = std::exchange(other.open_, false);
        }
        return *this;
    }
    transaction(const transaction&) = delete;
    transaction& operator=(const transaction&) = delete;
    ~transaction() { (void)rollback(); }

    /// Buffers `ev`; nothing reaches the ring. `errc::finished` after commit or rollback.
    /// Allocates (the buffer grows; each event is boxed with the transaction's record).
    [[nodiscard]] std::error_code publish(event ev) {
        if (!open_)
            return errc::finished;
        buffer(detail::envelope(std::move(ev)));
        return {};
    }

    /// Buffers a typed event (as `event_store::subscribe` takes them).
    template <typed_event T>
    [[nodiscard]] std::error_code publish(T&& value) {
        if (!open_)
            return errc::finished;
        buffer(
            detail::envelope(std::in_place_type<std::remove_cvref_t<T>>, std::forward<T>(value)));
        return {};
    }

    /// Enqueues every buffered event as one contiguous run under the store's policy, or
    /// none: `errc::exceeds_capacity` (more events than the capacity), `errc::buffer_full`
    /// (return_error: too little room now), the context's error (block: it ended while
    /// waiting for room) or `errc::closed`. After such a failure nothing was enqueued and the
    /// transaction stays open (commit may be retried, or rolled back). Under drop_oldest the
    /// oldest events of the ring make room, counted as dropped.
    ///
    /// Once enqueued, the transaction is finished, and commit sees its events handled:
    /// sync mode publishes on the calling thread (older pending events go first, as in
    /// GoEventBus); async mode publishes and waits for the transaction's own events only.
    /// Then it returns `errc::handler_failed` if a handler of one of them threw (the other
    /// events and handlers still run, and the error hooks see the exception),
    /// `errc::dropped` if drop_oldest overwrote one of them before it was handled, or `ctx`'s
    /// error if it ends before they are all handled (they are still handled later).
    /// In async mode, called from inside one of the store's handlers it would wait for its
    /// own thread: it returns `errc::would_deadlock` and enqueues nothing; so does a sync
    /// block store from inside a handler when the run does not fit now (the transaction then
    /// stays open). `errc::finished` if committed or rolled back already.
    [[nodiscard]] std::error_code commit(const context& ctx) {
        if (!open_)
            return errc::finished;
        if (events_.empty()) {
            open_ = false;
            return {};
        }
        if (store_->pool_ && detail::inside_dispatch_of(store_)) {
            store_->rejected_.fetch_add(events_.size(), std::memory_order_relaxed);
            return errc::would_deadlock;
        }
        // Nothing else holds the record yet: the count is published by push_n's release.
        record_->remaining.store(events_.size(), std::memory_order_relaxed);
        if (const std::error_code error = store_->push_or_refuse(
                [&]() noexcept { return store_->ring_.try_push_n(events_); },
                [&] { return store_->ring_.push_n(ctx, events_); }, events_.size()))
            return error;  // nothing enqueued; the transaction stays open
        events_.clear();   // moved-from envelopes
        open_ = false;
        store_->publish();
        const std::shared_ptr<detail::tx_record> record = std::move(record_);
        if (const std::error_code error = detail::retry_or_wait(record->done, ctx, [&]() noexcept {
                return record->remaining.load(std::memory_order_seq_cst) == 0
                           ? detail::attempt::ok
                           : detail::attempt::busy;
            }))
            return error;
        return record->outcome();
    }

    /// As `commit`, without waiting for the handlers: enqueues every buffered event as one
    /// contiguous run, or none, with the same errors as commit's enqueueing (then `done` is
    /// never called and the transaction stays open). Once enqueued it returns `{}`, and
    /// `done` is called exactly once, on the thread that finishes the last event (a worker; in
    /// sync mode often the caller, before commit_async returns; under drop_oldest the
    /// producer that overwrote it), with `{}`, `errc::handler_failed` or `errc::dropped` as
    /// commit would return. What `done` throws is discarded. It must not wait for the store,
    /// nor publish to it: under drop_oldest it runs inside the overwriting producer's push,
    /// whose events are not yet visible (a nested push into the same store would wait for
    /// them forever). Unlike commit, allowed from inside one of the store's handlers (it
    /// enqueues as `subscribe` does, `errc::would_deadlock` included). An empty transaction
    /// calls `done({})` at once.
    [[nodiscard]] std::error_code commit_async(const context& ctx,
                                               std::function<void(std::error_code)> done) {
        if (!open_)
            return errc::finished;
        if (!done)
            throw std::invalid_argument("eventbus: commit_async needs a callback");
        if (events_.empty()) {
            open_ = false;
            try {
                done(std::error_code{});
            } catch (...) {
            }
            return {};
        }
        // Nothing else holds the record yet: what it holds is published by push_n's release.
        record_->remaining.store(events_.size(), std::memory_order_relaxed);
        record_->on_done = std::move(done);
        if (const std::error_code error = store_->push_or_refuse(
                [&]() noexcept { return store_->ring_.try_push_n(events_); },
                [&] { return store_->ring_.push_n(ctx, events_); }, events_.size())) {
            record_->on_done = nullptr;  // a rollback's lost events must not call it
            return error;                // nothing enqueued; the transaction stays open
        }
        events_.clear();  // moved-from envelopes
        open_ = false;
        record_.reset();
        store_->publish();
        return {};
    }

    /// Discards the buffered events; touches nothing else. `errc::finished` if committed or
    /// rolled back already.
    [[nodiscard]] std::error_code rollback() noexcept {
        if (!open_)
            return errc::finished;
        open_ = false;
        events_.clear();
        record_.reset();
        return {};
    }

    /// Events buffered and not yet committed.
    [[nodiscard]] std::size_t size() const noexcept { return events_.size(); }
    /// True until committed or rolled back.
    [[nodiscard]] bool is_open() const noexcept { return open_; }

  private:
    friend class event_store;
    explicit transaction(event_store& store) noexcept : store_(&store) {}

    void buffer(detail::envelope&& ev) {
        if (!record_) {
            record_ = std::make_shared<detail::tx_record>();
            record_->delivery = options_.delivery;
            record_->max_deliveries = options_.max_deliveries;
        }
        events_.emplace_back(record_, std::move(ev));
    }

    event_store* store_;
    std::vector<detail::envelope> events_;
    std::shared_ptr<detail::tx_record> record_;
    transaction_options options_{};
    bool open_ = true;
};

}  // namespace v0
}  // namespace eventbus

#endif  // EVENTBUS_EVENTBUS_HPP
