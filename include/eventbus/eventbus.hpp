//  eventbus — a lock-free, in-process event bus for C++20.
//  Version 0.1.0 — https://github.com/eventbus/eventbus
//  SPDX-License-Identifier: MIT
//
//  One header, read top-down in the order data flows:
//    configuration -> errors -> context -> wait primitives -> ring buffer -> keys and events
//    -> dispatcher -> event store
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
#include <concepts>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
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
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#if defined(_MSC_VER) && (defined(_M_X64) || defined(_M_IX86))
#include <intrin.h>
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
#if !defined(EVENTBUS_INLINE_PAYLOAD_SIZE)
#define EVENTBUS_INLINE_PAYLOAD_SIZE 64
#endif

// errors //////////////////////////////////////////////////////////////////////////////////////////

/// Error codes of eventbus, usable as `std::error_code` (`std::error_code ec = errc::closed;`).
/// The hot path reports failures through these; it never throws.
enum class errc {
    buffer_full = 1,    ///< return_error policy: no free slot at the time of the call
    cancelled,          ///< the context's stop_token was triggered
    deadline_exceeded,  ///< the context's deadline passed
    closed,             ///< the ring or store was closed
    handler_failed,     ///< a handler threw (transactions)
    would_deadlock,     ///< the call would wait for the calling handler itself
    exceeds_capacity,   ///< more elements at once than the ring can ever hold (transactions)
    finished,           ///< the transaction was committed or rolled back already
    dropped,            ///< drop_oldest overwrote the event before it was handled (transactions)
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

[[noreturn]] inline void throw_invalid_capacity(std::size_t capacity) {
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

  private:
    std::atomic<std::uint32_t> waiters_{0};
    std::atomic<std::uint32_t> epoch_{0};
    std::mutex mutex_;
    std::condition_variable cv_;
};

/// Outcome of one non-waiting attempt on the ring.
enum class attempt { ok, busy, closed };

/// Retries `try_once` (-> attempt) until it succeeds, the ring closes or `ctx` ends: spins briefly,
/// then sleeps on `ec` until the other side changes something.
template <class TryOnce>
std::error_code retry_or_wait(event_count& ec, const context& ctx, TryOnce&& try_once) {
    backoff wait;
    for (;;) {
        attempt result = try_once();
        if (result == attempt::busy && wait.is_completed()) {
            if (auto error = ctx.err())
                return error;
            const std::uint32_t key = ec.prepare_wait();
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
                return {};
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
    explicit ring_buffer(std::size_t capacity)
        : ring_buffer(capacity, detail::initial_position{}) {}

    /// As above, starting at a given (even) position. For tests of the 64-bit wrap-around.
    ring_buffer(std::size_t capacity, detail::initial_position start)
        : capacity_(checked_capacity(capacity))
        , lap_(std::uint64_t{2} * capacity_)
        , remap_shift_(remap_shift_for(capacity_)) {
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
                return {};
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
                return {};
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
        result.error = detail::retry_or_wait(not_empty_, ctx,
                                             [&]() noexcept { return try_pop_once(result.value); });
        return result;
    }

    // lifetime and queries ----------------------------------------------------------------------

    /// Refuses every later push with `errc::closed` and wakes all waiters. Pops go on until the
    /// ring is empty. Idempotent. Thread-safe, lock-free.
    void close() noexcept {
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
        if (capacity == 0 || !std::has_single_bit(capacity) ||
            capacity > std::numeric_limits<std::size_t>::max() / sizeof(slot) ||
            capacity > (std::uint64_t{1} << 62))
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
        if (remap_shift_ != 0) {
            index =
                ((index & (slots_per_line - 1)) << remap_shift_) | (index >> slots_per_line_log2);
        }
        return slots_[index];
    }

    // One push attempt. `busy`: full (never reported while a pop is freeing a slot).
    template <class... Args>
    detail::attempt try_push_once(Args&&... args) noexcept {
        detail::backoff wait;
        std::uint64_t tail = indices_.tail.load(std::memory_order_relaxed);
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
        s.seq.store(position + 1, std::memory_order_release);
        not_empty_.notify_if_waiting();
    }

    void discard(slot& s) noexcept {
        s.element()->~T();
        dropped_.value.fetch_add(1, std::memory_order_relaxed);
    }

    // One pop attempt into `out`. `busy`: empty (never reported while a push is publishing).
    // With `limit`, takes only elements of positions before it (`busy` otherwise).
    // `out` is a std::optional<T> (emplaced) or a T (move-assigned).
    template <class Out>
    detail::attempt try_pop_once(Out& out,
                                 std::optional<std::uint64_t> limit = std::nullopt) noexcept {
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
    std::size_t capacity_;
    std::uint64_t lap_;  // position distance between two visits of a slot
    std::uint64_t start_ = 0;
    unsigned remap_shift_;
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

/// Bytes of a typed event stored inline in a ring slot, with no allocation per event: the larger
/// of EVENTBUS_INLINE_PAYLOAD_SIZE (default 64) and `sizeof(event)` (128 with libstdc++), since
/// both share the slot. Larger or over-aligned types, and those whose move constructor may
/// throw, cost one heap allocation per event instead.
inline constexpr std::size_t inline_payload_size = sizeof(event) > EVENTBUS_INLINE_PAYLOAD_SIZE
                                                       ? sizeof(event)
                                                       : EVENTBUS_INLINE_PAYLOAD_SIZE;

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
    explicit tx_record(std::size_t events) noexcept : remaining(events) {}

    void finish(bool failed_call, bool lost) noexcept {
        if (failed_call)
            failed.store(true, std::memory_order_relaxed);
        if (lost)
            dropped.store(true, std::memory_order_relaxed);
        // Seq_cst RMW, then notify (the eventcount protocol); the flags are published by it.
        remaining.fetch_sub(1, std::memory_order_seq_cst);
        done.notify_if_waiting();
    }

    std::atomic<std::size_t> remaining;
    std::atomic<bool> failed{false};
    std::atomic<bool> dropped{false};
    event_count done;
};

/// A typed event's key: one per type, made once.
template <class T>
const key& typed_key() noexcept {
    static const key k = key::of<T>();
    return k;
}

/// How an envelope moves, destroys and names the payload it holds.
struct payload_ops {
    const void* type;                                 // &type_tag<T>; nullptr: dynamic event
    void (*relocate)(void* from, void* to) noexcept;  // move-construct at `to`, destroy `from`
    void (*destroy)(void* at) noexcept;
    const void* (*payload)(const void* at) noexcept;  // the T (or event) object
    const key& (*projection)(const void* at) noexcept;
};

/// Whether a T lives inside the envelope (else on the heap, the envelope holding a pointer).
template <class T>
inline constexpr bool stored_inline =
    sizeof(T) <= inline_payload_size &&
    alignof(T) <= alignof(std::max_align_t) && std::is_nothrow_move_constructible_v<T>;

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

/// What a ring slot of an event_store holds: one event (a dynamic `event` or a typed payload,
/// inline when it fits `inline_payload_size`), plus the transaction it belongs to, if any.
/// Move-only and nothrow-movable. An envelope destroyed while it still belongs to a transaction
/// was never handled (drop_oldest overwrote it): it tells the transaction so.
class envelope {
  public:
    envelope() noexcept = default;

    static_assert(stored_inline<event>,
                  "eventbus needs a nothrow-movable event (std::string, "
                  "std::unordered_map) to store it inline");

    explicit envelope(event&& ev) noexcept : ops_(&ops_for<event>) {
        ::new (static_cast<void*>(storage_)) event(std::move(ev));
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

    envelope(envelope&& other) noexcept { take(other); }
    envelope& operator=(envelope&& other) noexcept {
        if (this != &other) {
            reset();
            take(other);
        }
        return *this;
    }
    ~envelope() { reset(); }

    [[nodiscard]] const key& projection() const noexcept { return ops_->projection(storage_); }
    /// The payload's type tag, or nullptr for a dynamic event.
    [[nodiscard]] const void* type() const noexcept { return ops_->type; }
    /// The dynamic event (when `type()` is nullptr) or the typed payload.
    [[nodiscard]] const void* payload() const noexcept { return ops_->payload(storage_); }

    void attach(std::shared_ptr<tx_record> record) noexcept { tx_ = std::move(record); }
    void detach() noexcept { tx_.reset(); }
    /// After the event's handlers ran: tells its transaction, if any.
    void complete(bool failed_call) noexcept {
        if (tx_) {
            const std::shared_ptr<tx_record> record = std::move(tx_);
            record->finish(failed_call, false);
        }
    }

  private:
    void take(envelope& other) noexcept {
        ops_ = std::exchange(other.ops_, nullptr);
        tx_ = std::move(other.tx_);
        if (ops_ != nullptr)
            ops_->relocate(other.storage_, storage_);
    }
    void reset() noexcept {
        if (tx_) {
            const std::shared_ptr<tx_record> record = std::move(tx_);
            record->finish(false, true);
        }
        if (ops_ != nullptr)
            std::exchange(ops_, nullptr)->destroy(storage_);
    }

    const payload_ops* ops_ = nullptr;
    std::shared_ptr<tx_record> tx_;
    alignas(std::max_align_t) std::byte storage_[inline_payload_size];
};

}  // namespace detail

// timers //////////////////////////////////////////////////////////////////////////////////////

namespace detail {

/// One scheduled event, shared by its store's timer queue and its handle.
struct timer_entry {
    enum class state : std::uint8_t { pending, cancelled, fired };

    timer_entry(const context& c, context::clock::time_point when, envelope&& e) noexcept
        : ctx(c), due(when), ev(std::move(e)) {}

    context ctx;
    context::clock::time_point due;
    envelope ev;                                // taken by the timer thread when due
    std::atomic<state> status{state::pending};  // changed under the queue's mutex
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

    /// True while the event is pending: neither run, nor cancelled, nor stopped by its context.
    [[nodiscard]] explicit operator bool() const noexcept {
        return entry_ &&
               entry_->status.load(std::memory_order_acquire) ==
                   detail::timer_entry::state::pending &&
               !entry_->ctx.done();
    }

    /// Why the handle is empty when `schedule` returned it so: `{}` when the event was due
    /// already and was published at once, else the error (`errc::closed`, the context's error,
    /// or what subscribe returned).
    [[nodiscard]] std::error_code error() const noexcept { return error_; }

  private:
    template <overflow_policy>
    friend class event_store;
    timer_handle(std::shared_ptr<detail::timer_queue> queue,
                 std::shared_ptr<detail::timer_entry> entry) noexcept
        : queue_(std::move(queue)), entry_(std::move(entry)) {}
    explicit timer_handle(std::error_code error) noexcept : error_(error) {}

    std::shared_ptr<detail::timer_queue> queue_;
    std::shared_ptr<detail::timer_entry> entry_;
    std::error_code error_;
};

// dispatcher //////////////////////////////////////////////////////////////////////////////////

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

    snapshot() : current_(new holder{std::make_shared<const T>()}) {}
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
        handle value = current_.load(std::memory_order_seq_cst)->value;
        if (readers_.fetch_sub(1, std::memory_order_seq_cst) == 1 &&
            has_retired_.load(std::memory_order_relaxed))
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
        auto next = std::make_shared<T>(*current_.load(std::memory_order_relaxed)->value);
        change(*next);
        auto fresh = std::make_unique<holder>(holder{std::move(next)});
        retired_.push_back(nullptr);  // the only allocation left; nothing has changed yet
        retired_.back() = current_.exchange(fresh.release(), std::memory_order_seq_cst);
        // Release: a reader that sees the new version and reads again gets the new copy.
        version_.fetch_add(1, std::memory_order_release);
        collect(std::move(lock));
    }

  private:
    struct holder {
        handle value;
    };

    // Frees the retired holders if no reader is copying out of one. Deleting a holder may free
    // a copy, and with it handlers and their captures, whose destructors may call back into
    // this snapshot: so the deletes run after the mutex is released.
    void collect(std::unique_lock<std::mutex> lock) const noexcept {
        if (!lock)
            return;
        std::vector<holder*> garbage;
        // Every retired holder was swapped out before this seq_cst load; a reader not counted
        // here enters after it and therefore loads a newer holder.
        if (readers_.load(std::memory_order_seq_cst) == 0)
            garbage.swap(retired_);
        has_retired_.store(!retired_.empty(), std::memory_order_relaxed);
        lock.unlock();
        for (holder* old : garbage)
            delete old;
    }

    mutable std::atomic<holder*> current_;
    std::atomic<std::uint64_t> version_{0};
    mutable std::atomic<std::size_t> readers_{0};
    mutable std::atomic<bool> has_retired_{false};
    mutable std::mutex mutex_;
    mutable std::vector<holder*> retired_;
};

/// One registered handler. Calls are counted so that removal can wait for those in flight.
struct handler_entry {
    // `payload` is the event's args (`type` nullptr) or its typed payload (`type` its tag).
    std::function<result(const context&, const void* type, const void* payload)> call;
    // Low 32 bits: calls in flight. High 32 bits: those of them whose thread is itself inside
    // remove() of this entry, which removal must not wait for. One word, so that every change
    // wakes a waiting remover.
    std::atomic<std::uint64_t> calls{0};
    std::atomic<bool> removed{false};
    // Live `registration` handles of this entry. It starts at 1 (the handle `on` returns) and,
    // once 0, stays 0: then nobody can ever remove the handler, and calls skip the accounting
    // above (two shared read-modify-writes per call).
    std::atomic<std::uint32_t> handles{1};

    [[nodiscard]] bool removable() const noexcept {
        // Acquire: pairs with the release decrement of the last handle, so a remove() that
        // completed through a handle is seen (`removed`) once no handle is left.
        return handles.load(std::memory_order_acquire) != 0;
    }

    static constexpr std::uint64_t removing_one = std::uint64_t{1} << 32;
    static constexpr bool settled(std::uint64_t value) noexcept {
        return (value & (removing_one - 1)) <= (value >> 32);
    }
};

/// The handler calls running on this thread, innermost first (to let a handler remove itself).
struct active_call {
    const handler_entry* entry;
    const active_call* outer;
};
inline thread_local const active_call* active_calls = nullptr;

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

template <class R>
result as_result(R&& r) {
    if constexpr (std::is_void_v<std::remove_cvref_t<R>>) {
        return {};
    } else {
        static_assert(std::is_convertible_v<R, result>,
                      "a handler returns eventbus::result or void");
        return std::forward<R>(r);
    }
}

[[noreturn]] inline void throw_payload_mismatch(const char* expected) {
    throw std::invalid_argument(std::string("eventbus: a handler taking ") + expected +
                                " was given an event of another kind under its key");
}

}  // namespace detail

/// A handler, made from any invocable of the forms `result|void(const context&, const args&)`
/// (dynamic events) or `result|void(const context&, const T&)` / `result|void(const T&)` (typed
/// events of type T; T is deduced from a non-generic callable). A handler fails by throwing.
class handler {
  public:
    template <class F>
    requires detail::args_handler<F> || detail::deducible_typed_handler<F> handler(
        F fn)  // NOLINT: implicit, so lambdas fit a braced dispatcher list
        : type_(nullptr) {
        if constexpr (detail::args_handler<F>) {
            call_ = wrap_args(std::move(fn));
        } else {
            using T = detail::deduced_payload_t<F>;
            type_ = &detail::type_tag<T>;
            call_ = wrap_typed<T>(std::move(fn));
        }
    }

    /// A handler of typed events of type T (for generic callables, where T cannot be deduced).
    template <class T, class F>
    requires detail::typed_handler_for<F, std::remove_cvref_t<T>>
    [[nodiscard]] static handler of(F fn) {
        using U = std::remove_cvref_t<T>;
        return handler(&detail::type_tag<U>, wrap_typed<U>(std::move(fn)));
    }

    /// The type tag of T for a typed handler; nullptr for a handler of args.
    [[nodiscard]] const void* payload_type() const noexcept { return type_; }

  private:
    friend class dispatcher;
    using call_type = std::function<result(const context&, const void*, const void*)>;

    handler(const void* type, call_type call) noexcept : call_(std::move(call)), type_(type) {}

    template <class F>
    static call_type wrap_args(F fn) {
        return [fn = std::move(fn)](const context& ctx, const void* type,
                                    const void* payload) mutable -> result {
            if (type != nullptr)
                detail::throw_payload_mismatch("args");
            if constexpr (std::is_void_v<std::invoke_result_t<F&, const context&, const args&>>) {
                fn(ctx, *static_cast<const args*>(payload));
                return {};
            } else {
                return detail::as_result(fn(ctx, *static_cast<const args*>(payload)));
            }
        };
    }

    template <class T, class F>
    static call_type wrap_typed(F fn) {
        return [fn = std::move(fn)](const context& ctx, const void* type,
                                    const void* payload) mutable -> result {
            if (type != &detail::type_tag<T>)
                detail::throw_payload_mismatch("a typed event");
            const T& value = *static_cast<const T*>(payload);
            if constexpr (std::invocable<F&, const context&, const T&>) {
                if constexpr (std::is_void_v<std::invoke_result_t<F&, const context&, const T&>>) {
                    fn(ctx, value);
                    return {};
                } else {
                    return detail::as_result(fn(ctx, value));
                }
            } else {
                if constexpr (std::is_void_v<std::invoke_result_t<F&, const T&>>) {
                    fn(value);
                    return {};
                } else {
                    return detail::as_result(fn(value));
                }
            }
        };
    }

    call_type call_;
    const void* type_;
};

class dispatcher;

/// What `dispatcher::on` returns: `remove()` unregisters the handler. Dropping the handle does
/// NOT remove it (handlers live as long as the dispatcher, as in GoEventBus). Must not outlive
/// the dispatcher when `remove()` is to be called.
class registration {
  public:
    registration() noexcept = default;
    registration(const registration& other) noexcept
        : owner_(other.owner_), key_(other.key_), entry_(other.entry_) {
        if (entry_)
            entry_->handles.fetch_add(1, std::memory_order_relaxed);
    }
    registration(registration&& other) noexcept
        : owner_(std::exchange(other.owner_, nullptr))
        , key_(std::move(other.key_))
        , entry_(std::move(other.entry_)) {}
    registration& operator=(registration other) noexcept {
        std::swap(owner_, other.owner_);
        std::swap(key_, other.key_);
        std::swap(entry_, other.entry_);
        return *this;
    }
    /// Dropping the last handle does not remove the handler; it only means that nobody can
    /// remove it any more (its calls then skip the accounting removal needs).
    ~registration() {
        if (entry_)
            entry_->handles.fetch_sub(1, std::memory_order_release);
    }

    /// Unregisters the handler and waits for its calls in flight on other threads (not for a
    /// call on this thread: a handler may remove itself). Idempotent. Thread-safe; allocates.
    void remove();

    /// True while the handler is registered through this handle.
    [[nodiscard]] explicit operator bool() const noexcept {
        return entry_ && !entry_->removed.load(std::memory_order_acquire);
    }

  private:
    friend class dispatcher;
    registration(dispatcher& owner, key k, std::shared_ptr<detail::handler_entry> entry)
        : owner_(&owner), key_(std::move(k)), entry_(std::move(entry)) {}

    dispatcher* owner_ = nullptr;
    key key_ = key("");
    std::shared_ptr<detail::handler_entry> entry_;
};

/// Maps keys to handlers. Built like GoEventBus's map literal and changeable at run time from
/// any thread, including from inside a handler; a change is seen by the next publish().
class dispatcher {
  public:
    struct entry {
        key projection;
        handler fn;
    };
    using table = std::unordered_map<key, std::vector<std::shared_ptr<detail::handler_entry>>>;

    dispatcher() = default;
    dispatcher(std::initializer_list<entry> entries) {
        for (const entry& e : entries)
            (void)on(e.projection, e.fn);
    }
    dispatcher(const dispatcher&) = delete;
    dispatcher& operator=(const dispatcher&) = delete;

    /// Adds a handler for `projection`, run after those registered before it. Thread-safe;
    /// allocates (copies the table).
    registration on(key projection, handler fn) {
        if (fn.type_ != nullptr && !(projection.is_type() && projection.type_id() == fn.type_))
            throw std::invalid_argument("eventbus: a typed handler registered under key '" +
                                        std::string(projection.name()) +
                                        "', which is not its event type");
        auto added = std::make_shared<detail::handler_entry>();
        added->call = std::move(fn.call_);
        table_.update([&](table& t) { t[projection].push_back(added); });
        return registration(*this, std::move(projection), std::move(added));
    }

    /// Adds a handler of typed events of type T: `on<house_was_sold>(fn)` with `fn` taking
    /// `(const context&, const T&)` or `(const T&)`, returning result or void. Its key is
    /// `key::of<T>()`. Thread-safe; allocates.
    template <class T, class F>
    requires detail::typed_handler_for<F, std::remove_cvref_t<T>> registration on(F fn) {
        return on(key::of<T>(), handler::of<T>(std::move(fn)));
    }

    /// The current handler table, lock-free; kept alive as long as the returned pointer.
    [[nodiscard]] std::shared_ptr<const table> handlers() const noexcept { return table_.read(); }
    /// Changes whenever the table does.
    [[nodiscard]] std::uint64_t version() const noexcept { return table_.version(); }

  private:
    friend class registration;

    void remove(const key& projection, const std::shared_ptr<detail::handler_entry>& handle) {
        using entry_type = detail::handler_entry;
        // Our own reference: `handle` lives in a registration that another thread may free as
        // soon as its own remove() has returned.
        const std::shared_ptr<detail::handler_entry> target = handle;
        if (!target->removed.load(std::memory_order_acquire)) {
            table_.update([&](table& t) {
                auto found = t.find(projection);
                if (found == t.end())
                    return;
                std::erase(found->second, target);
                if (found->second.empty())
                    t.erase(found);
            });
        }
        // Seq_cst: a caller that counts itself in after the loads below sees `removed` and
        // skips the call (call_one checks it after incrementing).
        target->removed.store(true, std::memory_order_seq_cst);
        // Calls of this handler running on this very thread are not waited for, and neither are
        // those of other threads that are inside remove() of it too (a "once" handler run by two
        // publishers removing itself twice at the same moment).
        std::uint64_t own = 0;
        for (auto* call = detail::active_calls; call != nullptr; call = call->outer)
            if (call->entry == target.get())
                own += entry_type::removing_one;
        if (own != 0) {
            target->calls.fetch_add(own, std::memory_order_seq_cst);
            target->calls.notify_all();
        }
        // A remover inside a call of this handler waits for the calls of others, except those
        // whose thread is inside remove() of it too (two such removers would wait for each other
        // forever). Any other remover waits for every call in flight.
        const auto done = [own](std::uint64_t now) noexcept {
            return own != 0 ? entry_type::settled(now)
                            : (now & (entry_type::removing_one - 1)) == 0;
        };
        for (std::uint64_t now; !done(now = target->calls.load(std::memory_order_seq_cst));)
            target->calls.wait(now, std::memory_order_seq_cst);
        if (own != 0)
            target->calls.fetch_sub(own, std::memory_order_seq_cst);
    }

    detail::snapshot<table> table_;
};

inline void registration::remove() {
    if (entry_)
        owner_->remove(key_, entry_);
}

// event store /////////////////////////////////////////////////////////////////////////////////

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
};

/// A snapshot of a store's counters.
struct store_metrics {
    std::uint64_t published = 0;  ///< accepted by subscribe
    std::uint64_t processed = 0;  ///< handler calls finished, failed ones included
    std::uint64_t errors = 0;     ///< handler calls that threw
    std::uint64_t dropped = 0;    ///< overwritten by drop_oldest
    std::uint64_t unhandled = 0;  ///< events with no handler
    std::uint64_t scheduled = 0;  ///< accepted by schedule() for later
    /// Scheduled events that never reached the ring: cancelled through their handle or their
    /// context, still pending at close(), or refused when due (ring full or closed).
    std::uint64_t cancelled = 0;
};

/// Calls the rest of the middleware chain, then the handler.
class next_handler {
  public:
    result operator()(const context& ctx, const event& ev) const;

  private:
    template <overflow_policy>
    friend class event_store;
    using middleware_fn = std::function<result(const context&, const event&, const next_handler&)>;
    next_handler(const std::vector<middleware_fn>& chain, std::size_t index,
                 const detail::handler_entry& target, const detail::envelope& env) noexcept
        : chain_(&chain), index_(index), target_(&target), env_(&env) {}

    const std::vector<middleware_fn>* chain_;
    std::size_t index_;
    const detail::handler_entry* target_;
    const detail::envelope* env_;
};

/// Wraps every handler call: `result(const context&, const event&, const next_handler& next)`;
/// call `next(ctx, ev)` to go on. The first registered is the outermost. For a typed event,
/// middleware and hooks see an `event` with only `projection` set (`key::of<T>()`), and the
/// handler always receives the original payload.
using middleware = std::function<result(const context&, const event&, const next_handler&)>;
using before_hook = std::function<void(const context&, const event&)>;
/// Sees the result, or the error (`result` is then empty).
using after_hook =
    std::function<void(const context&, const event&, const result&, std::exception_ptr)>;
using error_hook = std::function<void(const context&, const event&, std::exception_ptr)>;

inline result next_handler::operator()(const context& ctx, const event& ev) const {
    if (index_ < chain_->size())
        return (*chain_)[index_](ctx, ev, next_handler(*chain_, index_ + 1, *target_, *env_));
    if (env_->type() != nullptr)
        return target_->call(ctx, env_->type(), env_->payload());
    return target_->call(ctx, nullptr, &ev.args);  // what the middleware passed on
}

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

}  // namespace detail

/// The bus: a ring of events, a dispatcher, hooks and counters.
///
/// Sync mode (default): `publish()` runs handlers on the calling thread. Async mode
/// (`store_options{.async = true}`): worker threads, started by the constructor, take events
/// straight from the ring once a `publish()` has made them eligible.
template <overflow_policy Policy = drop_oldest>
class event_store {
  public:
    /// Throws `std::invalid_argument` for a capacity of 0 or not a power of two. In async mode
    /// starts the workers (std::system_error if a thread cannot be started).
    event_store(eventbus::dispatcher& handlers, std::size_t capacity, store_options options = {})
        : dispatcher_(&handlers)
        , ring_(capacity)
        , options_(options)
        , handler_ctx_(stop_.get_token())
        , eligible_(ring_.mark()) {
        if (!options_.async)
            return;
        std::size_t count = options_.workers;
        if (count == 0)
            count = std::max<std::size_t>(1, std::thread::hardware_concurrency());
        options_.workers = count;
        workers_.reserve(count);
        taking_ = std::make_unique<taking_slot[]>(count);
        try {
            for (std::size_t i = 0; i < count; ++i)
                workers_.emplace_back([this, i] { work(i); });
        } catch (...) {
            stop_workers();
            throw;
        }
    }

    event_store(const event_store&) = delete;
    event_store& operator=(const event_store&) = delete;

    /// Closes, waiting until everything accepted has been handled, and joins the workers.
    /// Must not run on one of the store's own handler threads.
    ~event_store() { stop_workers(); }

    /// Enqueues `ev` under the store's policy: `{}`, `errc::buffer_full` (return_error),
    /// `errc::cancelled` / `errc::deadline_exceeded` (block, when `ctx` ends while waiting), or
    /// `errc::closed`. Thread-safe, also from inside a handler; lock-free unless it has to sleep
    /// (block); no allocation beyond what `ev` already owns.
    [[nodiscard]] std::error_code subscribe(const context& ctx, event ev) {
        return ring_.emplace(ctx, std::move(ev));
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
            return ring_.emplace(ctx, std::in_place_type<U>, std::forward<T>(value));
        else
            return ring_.emplace(ctx,
                                 detail::envelope(std::in_place_type<U>, std::forward<T>(value)));
    }

    /// Sync: dispatches, in FIFO order on the calling thread, every event enqueued before the
    /// call; events enqueued meanwhile (also by handlers) wait for the next publish(). With
    /// several threads publishing, each event is handled by exactly one of them.
    /// Async: makes every event enqueued before the call eligible for the workers and returns
    /// without waiting. Thread-safe, also from inside a handler; lock-free.
    void publish() {
        if (options_.async) {
            make_eligible(ring_.mark());
        } else {
            const std::uint64_t mark = ring_.mark();
            if (ring_.consumed_mark() != mark)  // else nothing to dispatch: skip the set-up
                dispatch_until(mark);
        }
    }

    /// Waits until every event made eligible by a publish() that returned before this call has
    /// been handled (sync: until no other thread is dispatching; returns at once when nothing
    /// is in flight). Returns `ctx`'s error if it ends first, `errc::would_deadlock` when called
    /// from inside one of this store's handlers (it would wait for itself). The store stays
    /// usable. Thread-safe; sleeps (no polling).
    std::error_code drain(const context& ctx) {
        if (detail::inside_dispatch_of(this))
            return errc::would_deadlock;
        if (!options_.async) {
            return detail::retry_or_wait(idle_, ctx, [&]() noexcept {
                return (dispatching_.load(std::memory_order_seq_cst) & active_mask) == 0
                           ? detail::attempt::ok
                           : detail::attempt::busy;
            });
        }
        const std::uint64_t target = eligible_.load(std::memory_order_seq_cst);
        return detail::retry_or_wait(idle_, ctx, [&]() noexcept {
            // Head first, then the workers: a worker announces a lower bound of the position it
            // takes before its pop moves head (both seq_cst), so once head has passed `target`,
            // any worker still holding an event before `target` shows a bound below it.
            if (static_cast<std::int64_t>(ring_.consumed_mark() - target) < 0)
                return detail::attempt::busy;
            for (std::size_t i = 0; i < workers_.size(); ++i) {
                const std::uint64_t taking = taking_[i].position.load(std::memory_order_seq_cst);
                if (taking != no_position && static_cast<std::int64_t>(taking - target) < 0)
                    return detail::attempt::busy;
            }
            return detail::attempt::ok;
        });
    }

    /// Stops accepting (subscribe then returns `errc::closed`, blocked subscribers wake with
    /// it), has everything accepted handled (sync: on the caller; async: by the workers, which
    /// then exit) and waits for it. If `ctx` ends first, returns its error, triggers the stop
    /// token of the handlers' context (so long handlers can stop early), and leaves the rest to
    /// finish in the background; the destructor waits for it. From inside one of this store's
    /// handlers it does not wait. Idempotent; the destructor calls it.
    std::error_code close(const context& ctx) {
        stop_timers();
        ring_.close();
        if (ctx.done())
            stop_.request_stop();  // tell handlers still to run that the closer has given up
        if (!options_.async) {
            dispatch_until(std::nullopt);
            if (detail::inside_dispatch_of(this))
                return {};
            if (const std::error_code error = drain(ctx))
                return error;
            return wait_for_timers(ctx);
        }
        let_workers_finish();
        if (detail::inside_dispatch_of(this))
            return {};
        std::error_code error = detail::retry_or_wait(idle_, ctx, [&]() noexcept {
            return exited_.load(std::memory_order_seq_cst) == workers_.size()
                       ? detail::attempt::ok
                       : detail::attempt::busy;
        });
        if (!error)
            error = wait_for_timers(ctx);
        if (error)
            stop_.request_stop();
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
    /// `ctx`, or a closed store, gives an empty handle with that error. Thread-safe, also from a
    /// handler; allocates (the entry; std::system_error if the thread cannot be started).
    timer_handle schedule(const context& ctx, context::clock::time_point when, event ev) {
        return schedule_envelope(ctx, when, detail::envelope(std::move(ev)));
    }

    /// `schedule` at a system_clock time (converted once, now, to the steady clock).
    timer_handle schedule(const context& ctx, std::chrono::system_clock::time_point when,
                          event ev) {
        const auto delay = when - std::chrono::system_clock::now();
        return schedule_after(ctx, delay, std::move(ev));
    }

    /// `schedule(ctx, now + delay, ev)`; a delay of zero or less publishes at once.
    template <class Rep, class Period>
    timer_handle schedule_after(const context& ctx, std::chrono::duration<Rep, Period> delay,
                                event ev) {
        return schedule(ctx, due_after(delay), std::move(ev));
    }

    /// The same three for typed events.
    template <typed_event T>
    timer_handle schedule(const context& ctx, context::clock::time_point when, T&& value) {
        return schedule_envelope(
            ctx, when,
            detail::envelope(std::in_place_type<std::remove_cvref_t<T>>, std::forward<T>(value)));
    }
    template <typed_event T>
    timer_handle schedule(const context& ctx, std::chrono::system_clock::time_point when,
                          T&& value) {
        const auto delay = when - std::chrono::system_clock::now();
        return schedule_after(ctx, delay, std::forward<T>(value));
    }
    template <class Rep, class Period, typed_event T>
    timer_handle schedule_after(const context& ctx, std::chrono::duration<Rep, Period> delay,
                                T&& value) {
        return schedule(ctx, due_after(delay), std::forward<T>(value));
    }

    class transaction;

    /// A transaction on this store: buffers events and enqueues them all at once on commit.
    /// Allocates nothing until the first `publish`. The store must outlive it.
    [[nodiscard]] transaction begin_transaction() noexcept { return transaction(*this); }

    [[nodiscard]] bool is_closed() const noexcept { return ring_.is_closed(); }

    /// Thread-safe; in sync mode counters may lag a dispatch in progress by its batch.
    [[nodiscard]] store_metrics metrics() const noexcept {
        store_metrics m;
        m.published = ring_.accepted();
        m.processed = processed_.load(std::memory_order_relaxed) +
                      leased_processed_.load(std::memory_order_relaxed);
        m.errors = errors_.load(std::memory_order_relaxed) +
                   leased_errors_.load(std::memory_order_relaxed);
        m.dropped = ring_.dropped();
        m.unhandled = unhandled_.load(std::memory_order_relaxed) +
                      leased_unhandled_.load(std::memory_order_relaxed);
        m.scheduled = timers_->scheduled.load(std::memory_order_relaxed);
        m.cancelled = timers_->cancelled.load(std::memory_order_relaxed);
        return m;
    }

    /// Hooks and middleware: thread-safe, allocate; seen by the next publish(). Per handler
    /// call, in GoEventBus's order: before hooks, middleware (first registered outermost),
    /// handler, after hooks, then error hooks if the call threw. An exception from a before hook
    /// or middleware fails the call like one from the handler; exceptions from after and error
    /// hooks are caught and discarded.
    void use(middleware m) {
        hooks_.update([&](hook_set& h) { h.chain.push_back(std::move(m)); });
    }
    void on_before(before_hook h) {
        hooks_.update([&](hook_set& set) { set.before.push_back(std::move(h)); });
    }
    void on_after(after_hook h) {
        hooks_.update([&](hook_set& set) { set.after.push_back(std::move(h)); });
    }
    void on_error(error_hook h) {
        hooks_.update([&](hook_set& set) { set.error.push_back(std::move(h)); });
    }

    [[nodiscard]] std::size_t capacity() const noexcept { return ring_.capacity(); }
    [[nodiscard]] const store_options& options() const noexcept { return options_; }
    [[nodiscard]] eventbus::dispatcher& dispatcher() const noexcept { return *dispatcher_; }

    // transactions ----------------------------------------------------------------------------

    /// Events published together: `commit` enqueues all of them as one contiguous run of the
    /// ring, or none, and then waits until they have been handled. Handlers' side effects cannot
    /// be undone: "atomic" means all-or-nothing in the ring, not a rollback of what handlers did.
    /// One transaction is for one thread at a time; different transactions are independent.
    /// Movable; the destructor rolls back.
    class transaction {
      public:
        transaction(transaction&& other) noexcept
            : store_(other.store_)
            , events_(std::move(other.events_))
            , open_(std::exchange(other.open_, false)) {}
        transaction& operator=(transaction&& other) noexcept {
            if (this != &other) {
                store_ = other.store_;
                events_ = std::move(other.events_);
                open_ = std::exchange(other.open_, false);
            }
            return *this;
        }
        transaction(const transaction&) = delete;
        transaction& operator=(const transaction&) = delete;
        ~transaction() { (void)rollback(); }

        /// Buffers `ev`; nothing reaches the ring. `errc::finished` after commit or rollback.
        /// Allocates (the buffer grows).
        std::error_code publish(event ev) {
            if (!open_)
                return errc::finished;
            events_.emplace_back(std::move(ev));
            return {};
        }

        /// Buffers a typed event (as `event_store::subscribe` takes them).
        template <typed_event T>
        std::error_code publish(T&& value) {
            if (!open_)
                return errc::finished;
            events_.emplace_back(std::in_place_type<std::remove_cvref_t<T>>,
                                 std::forward<T>(value));
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
        /// own thread: it returns `errc::would_deadlock` and enqueues nothing.
        /// `errc::finished` if committed or rolled back already. Allocates (a completion record).
        std::error_code commit(const context& ctx) {
            if (!open_)
                return errc::finished;
            if (events_.empty()) {
                open_ = false;
                return {};
            }
            if (store_->options_.async && detail::inside_dispatch_of(store_))
                return errc::would_deadlock;
            auto record = std::make_shared<detail::tx_record>(events_.size());
            for (detail::envelope& env : events_)
                env.attach(record);
            if (const std::error_code error = store_->ring_.push_n(ctx, events_)) {
                for (detail::envelope& env : events_)
                    env.detach();
                return error;
            }
            events_.clear();  // moved-from envelopes
            open_ = false;
            store_->publish();
            if (const std::error_code error =
                    detail::retry_or_wait(record->done, ctx, [&]() noexcept {
                        return record->remaining.load(std::memory_order_seq_cst) == 0
                                   ? detail::attempt::ok
                                   : detail::attempt::busy;
                    }))
                return error;
            if (record->dropped.load(std::memory_order_relaxed))
                return errc::dropped;
            if (record->failed.load(std::memory_order_relaxed))
                return errc::handler_failed;
            return {};
        }

        /// Discards the buffered events; touches nothing else. `errc::finished` if committed or
        /// rolled back already.
        std::error_code rollback() noexcept {
            if (!open_)
                return errc::finished;
            open_ = false;
            events_.clear();
            return {};
        }

        /// Events buffered and not yet committed.
        [[nodiscard]] std::size_t size() const noexcept { return events_.size(); }
        /// True until committed or rolled back.
        [[nodiscard]] bool is_open() const noexcept { return open_; }

      private:
        friend class event_store;
        explicit transaction(event_store& store) noexcept : store_(&store) {}

        event_store* store_;
        std::vector<detail::envelope> events_;
        bool open_ = true;
    };

  private:
    struct hook_set {
        std::vector<middleware> chain;
        std::vector<before_hook> before;
        std::vector<after_hook> after;
        std::vector<error_hook> error;

        [[nodiscard]] bool empty() const noexcept {
            return chain.empty() && before.empty() && after.empty() && error.empty();
        }
    };

    struct batch_counts {
        std::uint64_t processed = 0;
        std::uint64_t errors = 0;
        std::uint64_t unhandled = 0;
    };

    // Marks this thread as dispatching this store (sync: counted in dispatching_ for drain).
    class dispatch_scope {
      public:
        explicit dispatch_scope(event_store& s) noexcept
            : store_(s), frame_{&s, detail::dispatch_frames} {
            if (!store_.options_.async) {
                // One seq_cst CAS counts this thread in and, if nobody holds it, takes the lease
                // on the store's cached handler view (see dispatch_until).
                std::uint64_t now = store_.dispatching_.load(std::memory_order_relaxed);
                std::uint64_t next;
                do {
                    leased_ = (now & lease_bit) == 0;
                    next = now + 1 + (leased_ ? lease_bit : 0);
                } while (!store_.dispatching_.compare_exchange_weak(
                    now, next, std::memory_order_seq_cst, std::memory_order_relaxed));
            }
            detail::dispatch_frames = &frame_;
        }
        /// Whether this thread holds the lease on the store's cached view and lease counters.
        [[nodiscard]] bool leased() const noexcept { return leased_; }
        dispatch_scope(const dispatch_scope&) = delete;
        dispatch_scope& operator=(const dispatch_scope&) = delete;
        ~dispatch_scope() {
            detail::dispatch_frames = frame_.outer;
            if (!store_.options_.async) {
                // One seq_cst RMW leaves the active count and enters the notifying count, then
                // notify: the eventcount protocol (drain re-checks seq_cst). The notifying count
                // covers the notify: a close() that sees no one active may let the destructor
                // run, which waits for the notifiers before freeing the store.
                // Releasing the lease in the same RMW publishes the view and lease counters.
                store_.dispatching_.fetch_add(notifying_one - 1 - (leased_ ? lease_bit : 0),
                                              std::memory_order_seq_cst);
                store_.idle_.notify_if_waiting();
                store_.dispatching_.fetch_sub(notifying_one, std::memory_order_release);
            }
        }

      private:
        event_store& store_;
        detail::dispatch_frame frame_;
        bool leased_ = false;
    };

    template <class Rep, class Period>
    static context::clock::time_point due_after(std::chrono::duration<Rep, Period> delay) {
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
        auto entry = std::make_shared<detail::timer_entry>(ctx, when, std::move(env));
        detail::timer_queue& q = *timers_;
        {
            std::lock_guard lock(q.mutex);
            if (q.stopping || ring_.is_closed())
                return timer_handle(errc::closed);
            if (!timer_thread_.joinable()) {
                timer_running_.store(true, std::memory_order_seq_cst);
                timer_thread_ = std::thread([this] { run_timers(); });
            }
            const bool earliest = q.pending.empty() || when < q.pending.begin()->first;
            q.pending.emplace(when, entry);
            q.scheduled.fetch_add(1, std::memory_order_relaxed);
            if (earliest)
                q.wake.notify_one();
        }
        return timer_handle(timers_, std::move(entry));
    }

    // The timer thread: sleeps until the earliest due time (or a new earlier one, or close),
    // then takes every due entry out and publishes it outside the mutex.
    void run_timers() {
        detail::timer_queue& q = *timers_;
        std::vector<std::shared_ptr<detail::timer_entry>> due;
        std::unique_lock lock(q.mutex);
        while (!q.stopping) {
            if (q.pending.empty()) {
                q.wake.wait(lock);
                continue;
            }
            const auto now = context::clock::now();
            if (q.pending.begin()->first > now) {
                q.wake.wait_until(lock, q.pending.begin()->first);
                continue;
            }
            while (!q.pending.empty() && q.pending.begin()->first <= now) {
                auto entry = std::move(q.pending.begin()->second);
                q.pending.erase(q.pending.begin());
                entry->status.store(detail::timer_entry::state::fired, std::memory_order_release);
                due.push_back(std::move(entry));
            }
            lock.unlock();
            bool enqueued = false;
            for (const auto& entry : due) {
                std::error_code error = entry->ctx.err();
                if (!error)
                    error = ring_.try_emplace(std::move(entry->ev));
                if (error == errc::buffer_full && std::same_as<Policy, block>) {
                    // Publish what is pending first (sync: dispatch it here), so that a ring
                    // full of unpublished events, this batch's among them, can make room.
                    publish();
                    error = ring_.emplace(entry->ctx, std::move(entry->ev));
                }
                if (error)
                    q.cancelled.fetch_add(1, std::memory_order_relaxed);
                else
                    enqueued = true;
            }
            if (enqueued)
                publish();
            due.clear();  // events, and whatever they own, are freed outside the mutex
            lock.lock();
        }
        lock.unlock();
        // Seq_cst store, then notify: close() waits for this with the eventcount protocol.
        timer_running_.store(false, std::memory_order_seq_cst);
        idle_.notify_if_waiting();
    }

    // close(), after stop_timers() and closing the ring: waits until the timer thread has
    // finished its last batch, so that the counters are final.
    std::error_code wait_for_timers(const context& ctx) {
        return detail::retry_or_wait(idle_, ctx, [&]() noexcept {
            return timer_running_.load(std::memory_order_seq_cst) ? detail::attempt::busy
                                                                  : detail::attempt::ok;
        });
    }

    // close(): cancels what is still pending; the timer thread then exits.
    void stop_timers() {
        detail::timer_queue::entries cancelled;
        {
            std::lock_guard lock(timers_->mutex);
            timers_->stopping = true;
            cancelled.swap(timers_->pending);
            for (auto& [when, entry] : cancelled)
                entry->status.store(detail::timer_entry::state::cancelled,
                                    std::memory_order_release);
            timers_->cancelled.fetch_add(cancelled.size(), std::memory_order_relaxed);
        }
        timers_->wake.notify_all();
    }

    void join_timers() noexcept {
        if (timer_thread_.joinable() && timer_thread_.get_id() != std::this_thread::get_id())
            timer_thread_.join();
    }

    // A stripe of keys for ordered_by_key, guarded by pop_mutex_. While a worker owns it, other
    // workers park its events here, in pop order, and go back to the ring; the owner handles
    // them before letting go. So a key never runs twice at once and keeps FIFO, and no worker
    // ever waits for another key's handler.
    struct stripe {
        bool owned = false;
        std::deque<detail::envelope> parked;
    };
    static constexpr std::size_t stripe_count = 64;

    void make_eligible(std::uint64_t mark) noexcept {
        // Always a seq_cst RMW, even when `mark` is not newer: it is this publish()'s release to
        // the workers (what the caller did before, e.g. registering a handler, is seen by them)
        // and the eventcount protocol's notifier step.
        std::uint64_t current = eligible_.load(std::memory_order_relaxed);
        while (!eligible_.compare_exchange_weak(
            current, static_cast<std::int64_t>(mark - current) > 0 ? mark : current,
            std::memory_order_seq_cst, std::memory_order_relaxed)) {
        }
        work_.notify_if_waiting();
    }

    // A worker is done with what it took (the event is destroyed already): drain() may go on.
    void release_taking(std::size_t worker) noexcept {
        // Seq_cst RMW, then notify: drain re-checks the slot with a seq_cst load.
        taking_[worker].position.exchange(no_position, std::memory_order_seq_cst);
        idle_.notify_if_waiting();
    }

    // Takes the next eligible event for this worker, announcing first a lower bound of its
    // position (see drain). Ordered mode: `lane` is the event's stripe, now owned by this worker;
    // an event whose stripe is owned by another worker is parked there (the owner's announced
    // bound still covers it) and the next one is taken.
    std::optional<detail::envelope> take(std::size_t worker, stripe*& lane) {
        for (;;) {
            taking_[worker].position.store(ring_.consumed_mark(), std::memory_order_seq_cst);
            std::optional<detail::envelope> ev;
            bool parked = false;
            if (options_.ordered_by_key) {
                std::lock_guard lock(pop_mutex_);
                ev = ring_.try_pop_before(eligible_.load(std::memory_order_seq_cst));
                if (ev) {
                    stripe& owner = stripes_[std::hash<key>{}(ev->projection()) % stripe_count];
                    if (owner.owned) {
                        owner.parked.push_back(std::move(*ev));
                        ev.reset();
                        parked = true;
                    } else {
                        owner.owned = true;
                        lane = &owner;
                    }
                }
            } else {
                ev = ring_.try_pop_before(eligible_.load(std::memory_order_seq_cst));
            }
            if (ev)
                return ev;
            release_taking(worker);
            if (!parked)
                return ev;
        }
    }

    // Ordered mode: the next event parked on the stripe this worker owns, or none (and the
    // stripe is let go).
    std::optional<detail::envelope> next_parked(stripe& lane) {
        std::lock_guard lock(pop_mutex_);
        std::optional<detail::envelope> ev;
        if (lane.parked.empty()) {
            lane.owned = false;
        } else {
            ev.emplace(std::move(lane.parked.front()));
            lane.parked.pop_front();
        }
        return ev;
    }

    // A worker keeps its copies of the handler table and the hooks across events while they
    // are current (taking them per event would cost shared read-modify-writes), and drops them
    // before it sleeps so that old copies can be freed.
    struct handler_view {
        using handler_list = dispatcher::table::mapped_type;

        std::shared_ptr<const dispatcher::table> table;
        std::shared_ptr<const hook_set> hooks;
        std::uint64_t table_version = 0;
        std::uint64_t hooks_version = 0;
        // The handlers of the last typed event's type (nullptr: none): a run of events of one
        // type skips the hash lookup.
        const void* last_type = nullptr;
        const handler_list* last_handlers = nullptr;
        // Whether every handler in `table` is permanent (no registration handle left, so it can
        // never be removed): only then may the copy be kept while idle, since keeping it can
        // then never prolong the life of a removed handler.
        bool permanent = false;

        [[nodiscard]] const handler_list* handlers_of(const detail::envelope& env) noexcept {
            const void* type = env.type();
            if (type != nullptr && type == last_type)
                return last_handlers;
            const auto found = table->find(env.projection());
            const handler_list* list =
                found == table->end() || found->second.empty() ? nullptr : &found->second;
            if (type != nullptr) {
                last_type = type;
                last_handlers = list;
            }
            return list;
        }

        // The event was made eligible by a publish() that every registration before it
        // happened-before (publish's seq_cst CAS, our seq_cst load of eligible_), so reading
        // the versions after taking it sees those registrations. Version first, then the copy:
        // the copy is at least as new as the version.
        void refresh(const eventbus::dispatcher& handlers, const detail::snapshot<hook_set>& h) {
            if (const auto v = handlers.version(); !table || v != table_version) {
                table_version = v;
                table = handlers.handlers();
                last_type = nullptr;
                permanent = std::ranges::all_of(*table, [](const auto& by_key) {
                    return std::ranges::none_of(by_key.second,
                                                [](const auto& e) { return e->removable(); });
                });
            }
            if (const auto v = h.version(); !hooks || v != hooks_version) {
                hooks_version = v;
                hooks = h.read();
            }
        }
        void release() noexcept {
            table.reset();
            hooks.reset();
            last_type = nullptr;
        }
    };

    void work(std::size_t worker) {
        dispatch_scope scope(*this);
        const context never;
        detail::backoff idle;
        handler_view view;
        for (;;) {
            stripe* lane = nullptr;
            std::optional<detail::envelope> ev = take(worker, lane);
            if (!ev) {
                if (closing_.load(std::memory_order_seq_cst)) {
                    // eligible_ already holds the closed ring's final tail: one more look.
                    ev = take(worker, lane);
                    if (!ev)
                        break;
                } else if (!idle.is_completed()) {
                    idle.snooze();
                    continue;
                } else {
                    view.release();
                    const std::uint32_t key = work_.prepare_wait();
                    ev = take(worker, lane);
                    if (!ev && !closing_.load(std::memory_order_seq_cst))
                        (void)work_.wait(key, never);
                    work_.finish_wait();
                    if (!ev)
                        continue;
                }
            }
            idle = detail::backoff{};
            do {
                view.refresh(*dispatcher_, hooks_);
                batch_counts counts;
                dispatch(*ev, view, counts);
                add(counts);
                ev.reset();  // the event's args die before drain() can see it finished
                if (lane != nullptr)
                    ev = next_parked(*lane);
            } while (ev);
            release_taking(worker);
        }
        view.release();
        exited_.fetch_add(1, std::memory_order_seq_cst);
        idle_.notify_if_waiting();
    }

    // Async, after ring_.close(): the closed ring's final tail becomes eligible, and workers
    // exit once they find nothing more before it.
    void let_workers_finish() noexcept {
        make_eligible(ring_.mark());
        closing_.store(true, std::memory_order_seq_cst);
        work_.notify_all();
    }

    void stop_workers() noexcept {
        if (!options_.async) {
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
        let_workers_finish();
        for (auto& worker : workers_)
            if (worker.joinable())
                worker.join();
        join_timers();
    }

    void add(const batch_counts& counts, bool leased = false) noexcept {
        if (leased) {
            // Only the lease holder writes these: a load and a store, no shared RMW.
            const auto bump = [](std::atomic<std::uint64_t>& counter, std::uint64_t n) {
                if (n)
                    counter.store(counter.load(std::memory_order_relaxed) + n,
                                  std::memory_order_relaxed);
            };
            bump(leased_processed_, counts.processed);
            bump(leased_errors_, counts.errors);
            bump(leased_unhandled_, counts.unhandled);
            return;
        }
        if (counts.processed)
            processed_.fetch_add(counts.processed, std::memory_order_relaxed);
        if (counts.errors)
            errors_.fetch_add(counts.errors, std::memory_order_relaxed);
        if (counts.unhandled)
            unhandled_.fetch_add(counts.unhandled, std::memory_order_relaxed);
    }

    void dispatch_until(std::optional<std::uint64_t> mark) {
        dispatch_scope scope(*this);
        // One publishing thread at a time (the lease holder) uses the store's cached copies of
        // the table and the hooks, re-read only when their version changed, and its own
        // counters; the others, and nested publishes, read their own copies, which costs a few
        // shared read-modify-writes.
        handler_view own;
        handler_view& view = scope.leased() ? view_ : own;
        view.refresh(*dispatcher_, hooks_);
        batch_counts counts;
        detail::envelope ev;  // reused: each popped event is moved into it
        while (mark ? ring_.try_pop_before(*mark, ev) : ring_.try_pop(ev)) {
            dispatch(ev, view, counts);
            ev = detail::envelope();  // the event dies here, before the next one is taken
        }
        add(counts, scope.leased());
        if (scope.leased() && !view.permanent)
            view.release();  // it may hold removable handlers: keep nothing while idle
    }

    void dispatch(detail::envelope& env, handler_view& view, batch_counts& counts) {
        const hook_set& hooks = *view.hooks;
        const typename handler_view::handler_list* handlers = view.handlers_of(env);
        if (handlers == nullptr) {
            ++counts.unhandled;
            env.complete(false);
            return;
        }
        const std::uint64_t errors_before = counts.errors;
        if (env.type() == nullptr) {
            const auto* ev = static_cast<const event*>(env.payload());
            for (const auto& target : *handlers)
                call_one(*target, env, ev, hooks, counts);
        } else if (hooks.empty()) {
            for (const auto& target : *handlers)
                call_one(*target, env, nullptr, hooks, counts);
        } else {
            // Hooks and middleware see a stand-in for a typed event, with its key only (it
            // allocates nothing).
            const event stand_in{.id = {}, .projection = env.projection(), .args = {}};
            for (const auto& target : *handlers)
                call_one(*target, env, &stand_in, hooks, counts);
        }
        env.complete(counts.errors != errors_before);
    }

    void call_one(detail::handler_entry& target, const detail::envelope& env, const event* ev,
                  const hook_set& hooks, batch_counts& counts) {
        if (!target.removable()) {
            // No handle left: nobody can remove it now or later, so no accounting is needed.
            if (!target.removed.load(std::memory_order_relaxed))
                run_one(target, env, ev, hooks, counts);
            return;
        }
        // Seq_cst: pairs with dispatcher::remove (set `removed`, then read the count).
        target.calls.fetch_add(1, std::memory_order_seq_cst);
        struct release_call {
            detail::handler_entry& target;
            ~release_call() {
                target.calls.fetch_sub(1, std::memory_order_seq_cst);
                if (target.removed.load(std::memory_order_seq_cst))
                    target.calls.notify_all();
            }
        } release{target};
        if (target.removed.load(std::memory_order_seq_cst))
            return;

        const detail::active_call frame{&target, detail::active_calls};
        detail::active_calls = &frame;
        struct pop_frame {
            const detail::active_call* outer;
            ~pop_frame() { detail::active_calls = outer; }
        } restore{frame.outer};
        run_one(target, env, ev, hooks, counts);
    }

    // One handler call with its hooks; exceptions are counted and reported, never thrown.
    void run_one(const detail::handler_entry& target, const detail::envelope& env, const event* ev,
                 const hook_set& hooks, batch_counts& counts) {
        result outcome;
        std::exception_ptr error;
        try {
            if (hooks.empty()) {
                // The hot path: straight to the handler; no after hook wants the result.
                (void)target.call(handler_ctx_, env.type(),
                                  env.type() != nullptr ? env.payload() : &ev->args);
            } else {
                for (const auto& hook : hooks.before)
                    hook(handler_ctx_, *ev);
                outcome = next_handler(hooks.chain, 0, target, env)(handler_ctx_, *ev);
            }
        } catch (...) {
            error = std::current_exception();
        }
        ++counts.processed;
        if (error)
            ++counts.errors;
        for (const auto& hook : hooks.after) {
            try {
                hook(handler_ctx_, *ev, outcome, error);
            } catch (...) {
            }
        }
        if (error) {
            for (const auto& hook : hooks.error) {
                try {
                    hook(handler_ctx_, *ev, error);
                } catch (...) {
                }
            }
        }
    }

    eventbus::dispatcher* dispatcher_;
    ring_buffer<detail::envelope, Policy> ring_;
    store_options options_;
    std::stop_source stop_;  // handlers' context: stopped by a close() whose context ended
    context handler_ctx_;
    detail::snapshot<hook_set> hooks_;
    alignas(cache_line_size) std::atomic<std::uint64_t> processed_{0};
    std::atomic<std::uint64_t> errors_{0};
    std::atomic<std::uint64_t> unhandled_{0};
    // Sync: low 31 bits, threads inside a dispatch; bit 31, the lease on view_ and the leased
    // counters; high 32 bits, threads leaving a dispatch that are still notifying.
    alignas(cache_line_size) std::atomic<std::uint64_t> dispatching_{0};
    static constexpr std::uint64_t notifying_one = std::uint64_t{1} << 32;
    static constexpr std::uint64_t lease_bit = std::uint64_t{1} << 31;
    static constexpr std::uint64_t active_mask = lease_bit - 1;
    // Async: per worker, a lower bound of the position it is taking or handling.
    struct alignas(cache_line_size) taking_slot {
        std::atomic<std::uint64_t> position{no_position};
    };
    static constexpr std::uint64_t no_position = ~std::uint64_t{0};
    std::unique_ptr<taking_slot[]> taking_;
    alignas(cache_line_size) std::atomic<std::uint64_t> eligible_;  // async: publish()'s mark
    std::atomic<bool> closing_{false};
    std::atomic<std::size_t> exited_{0};
    detail::event_count work_;  // idle workers sleep here
    detail::event_count idle_;  // drain() and close() sleep here
    std::mutex pop_mutex_;      // ordered_by_key only
    std::array<stripe, stripe_count> stripes_{};
    std::vector<std::jthread> workers_;
    std::shared_ptr<detail::timer_queue> timers_ = std::make_shared<detail::timer_queue>();
    std::thread timer_thread_;  // started by the first schedule(), joined by the destructor
    std::atomic<bool> timer_running_{false};
    // Sync: the lease holder's copies of the table and hooks, kept between publishes, and its
    // counters (added to the shared ones by metrics()).
    alignas(cache_line_size) handler_view view_;
    std::atomic<std::uint64_t> leased_processed_{0};
    std::atomic<std::uint64_t> leased_errors_{0};
    std::atomic<std::uint64_t> leased_unhandled_{0};
};

}  // namespace v0
}  // namespace eventbus

#endif  // EVENTBUS_EVENTBUS_HPP
