// ring_buffer<T, Policy> against a std::deque that implements the same policy. The input chooses
// the policy, the element size, single_producer, the capacity (bad ones must be refused), a start
// position near the 64-bit wrap-around (or near 2^63), then a sequence of operations: every push,
// pop, bulk and close call, some of them from a second thread (while the first waits), with
// contexts that have or have not ended. Calls that could wait are made only when the model says
// they return at once. After every operation the results, error codes, popped values, counters,
// marks and the number of live elements must be exactly what the model says.
#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cstdint>
#include <deque>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "fuzz_support.hpp"

namespace {

using eventbus::errc;
using eventbus_fuzz::contexts;
using eventbus_fuzz::ctx_kind;
using eventbus_fuzz::expect_error;
using eventbus_fuzz::fail;
using eventbus_fuzz::input;

// Elements alive now, counted by every constructor and destructor of `item`.
std::atomic<long> live_items{0};

template <std::size_t Words>
struct padding {
    std::uint32_t words[Words];
};
template <>
struct padding<0> {};

constexpr std::uint32_t moved_from = 0xFFFFFFFFU;
constexpr std::uint32_t alive_key = 0xA5A5A5A5U;

/// A ring element that carries a sequence number, checks that it is alive whenever it is
/// touched (so a use after destruction or a double destruction stops the run), fills its
/// padding with a pattern of its number (so a torn move is seen), and counts its instances.
/// 8, 16 or 56 bytes: four, two or one slot per 64-byte line.
template <std::size_t Words>
class item : padding<Words> {
  public:
    explicit item(std::uint32_t seq) noexcept {
        set(seq);
        live_items.fetch_add(1, std::memory_order_relaxed);
    }
    item(const item& other) noexcept {
        other.require_alive("copied");
        set(other.seq_);
        live_items.fetch_add(1, std::memory_order_relaxed);
    }
    item(item&& other) noexcept {
        other.require_alive("moved");
        set(other.seq_);
        other.set(moved_from);
        live_items.fetch_add(1, std::memory_order_relaxed);
    }
    item& operator=(const item& other) noexcept {
        require_alive("assigned to");
        other.require_alive("copy-assigned");
        set(other.seq_);
        return *this;
    }
    item& operator=(item&& other) noexcept {
        require_alive("assigned to");
        other.require_alive("move-assigned");
        if (this != &other) {
            set(other.seq_);
            other.set(moved_from);
        }
        return *this;
    }
    ~item() {
        require_alive("destroyed");
        check_ = ~check_;
        live_items.fetch_sub(1, std::memory_order_relaxed);
    }

    [[nodiscard]] std::uint32_t seq() const noexcept {
        require_alive("read");
        return seq_;
    }

  private:
    void set(std::uint32_t seq) noexcept {
        seq_ = seq;
        check_ = seq ^ alive_key;
        if constexpr (Words > 0) {
            for (std::size_t i = 0; i < Words; ++i)
                this->words[i] = seq * 2654435761U + static_cast<std::uint32_t>(i);
        }
    }
    void require_alive(const char* what) const noexcept {
        if (check_ != (seq_ ^ alive_key))
            fail("an element that is not alive was %s (seq %u, check %08x)", what, seq_, check_);
        if constexpr (Words > 0) {
            for (std::size_t i = 0; i < Words; ++i)
                if (this->words[i] != seq_ * 2654435761U + static_cast<std::uint32_t>(i))
                    fail("element %u was %s with word %zu torn", seq_, what, i);
        }
    }

    std::uint32_t seq_ = 0;
    std::uint32_t check_ = 0;
};

static_assert(sizeof(item<0>) == 8 && sizeof(item<2>) == 16 && sizeof(item<12>) == 56);

/// An element the model expects, or none (a plain pair: GCC 12 at -O3 misreads an optional's
/// engaged value as uninitialized).
struct expected {
    bool present = false;
    std::uint32_t seq = 0;
};

/// The same ring as a deque: what each call must return and leave behind.
template <class Policy>
struct ring_model {
    static constexpr bool drops = std::is_same_v<Policy, eventbus::drop_oldest>;
    static constexpr bool blocks = std::is_same_v<Policy, eventbus::block>;

    std::size_t capacity = 1;
    std::uint64_t start = 0;
    std::deque<std::uint32_t> elements;
    bool closed = false;
    std::uint64_t accepted = 0;
    std::uint64_t dropped = 0;
    std::uint64_t taken = 0;

    [[nodiscard]] std::uint64_t head() const { return start + 2 * (taken + dropped); }
    [[nodiscard]] std::uint64_t tail() const { return start + 2 * accepted; }
    [[nodiscard]] bool full() const { return elements.size() == capacity; }

    /// One push that does not wait: {}, buffer_full or closed.
    std::error_code push(std::uint32_t seq) {
        if (closed)
            return errc::closed;
        if (full()) {
            if constexpr (!drops)
                return errc::buffer_full;
            elements.pop_front();
            ++dropped;
        }
        elements.push_back(seq);
        ++accepted;
        return {};
    }

    /// Whether a push of `n` (1 for a single push) under block would have to wait now.
    [[nodiscard]] bool would_wait(std::size_t n) const {
        return blocks && !closed && n > 0 && n <= capacity && elements.size() + n > capacity;
    }

    std::error_code push_n(std::uint32_t first, std::size_t n) {
        if (n > capacity)
            return errc::exceeds_capacity;
        if (closed)
            return errc::closed;
        if (n == 0)
            return {};
        if (!drops && elements.size() + n > capacity)
            return errc::buffer_full;
        for (std::size_t i = 0; i < n; ++i)
            (void)push(first + static_cast<std::uint32_t>(i));
        return {};
    }

    expected pop() {
        if (elements.empty())
            return {};
        const std::uint32_t seq = elements.front();
        elements.pop_front();
        ++taken;
        return {true, seq};
    }

    /// Whether position `limit` lies after the oldest element's.
    [[nodiscard]] bool before(std::uint64_t limit) const {
        return static_cast<std::int64_t>(limit - head()) > 0;
    }
};

const char* const op_names[] = {
    "try_push(T&&)",
    "try_push(const T&)",
    "try_emplace",
    "push(ctx, T&&)",
    "push(ctx, const T&)",
    "emplace(ctx)",
    "try_push_n",
    "push_n(ctx)",
    "try_pop()",
    "try_pop(T&)",
    "pop(ctx)",
    "try_pop_before(mark)",
    "try_pop_before(mark, T&)",
    "try_pop_batch",
    "close",
    "save mark",
    "from another thread",
};
constexpr std::size_t op_count = sizeof(op_names) / sizeof(op_names[0]);

template <class Policy, class T>
class ring_run {
  public:
    using ring_type = eventbus::ring_buffer<T, Policy>;

    ring_run(input& in, std::size_t capacity, std::uint64_t start, bool single_producer)
        : in_(in)
        , ring_(capacity, eventbus::detail::initial_position{start},
                eventbus::ring_options{.single_producer = single_producer})
        , single_producer_(single_producer) {
        model_.capacity = capacity;
        model_.start = start;
        check_state("construction");
    }

    void run() {
        while (!in_.empty()) {
            const std::size_t op = in_.below(op_count);
            step(op, false);
            check_state(op_names[op]);
            ++ops_;
        }
    }

  private:
    // The value the caller still holds after a refused push must be untouched.
    static void require_intact(const T& value, std::uint32_t seq, const char* what) {
        if (value.seq() != seq)
            fail("%s failed but changed the caller's value (%u, was %u)", what, value.seq(), seq);
    }

    void require_popped(const char* what, expected want, const std::optional<T>& got) {
        if (want.present != got.has_value())
            fail("%s %s an element; the model %s (size %zu)", what,
                 got ? "returned" : "did not return", want.present ? "has one" : "is empty",
                 model_.elements.size());
        if (want.present && got->seq() != want.seq)
            fail("%s returned element %u, the model's oldest is %u", what, got->seq(), want.seq);
    }

    // A context for a call that may wait: ended, unless the model says it returns at once.
    ctx_kind waiting_context(bool would_wait) {
        ctx_kind kind = contexts::pick(in_);
        if (would_wait && !contexts::ended(kind))
            kind = ctx_kind::cancelled;
        return kind;
    }

    std::uint64_t pick_limit() {
        switch (in_.below(4)) {
            case 0:
                return ring_.mark();
            case 1:
                return saved_[in_.below(saved_.size())];
            case 2:
                return model_.head() + 2 * in_.below(model_.capacity + 2);
            default:
                return model_.head() - 2 * in_.below(model_.capacity + 2);
        }
    }

    void step(std::size_t op, bool on_helper) {
        const std::uint32_t seq = next_seq_++;
        switch (op) {
            case 0: {  // try_push(T&&)
                T value(seq);
                const std::error_code want = model_.push(seq);
                const std::error_code got = ring_.try_push(std::move(value));
                expect_error("try_push(T&&)", got, want);
                if (got)
                    require_intact(value, seq, "try_push(T&&)");
                break;
            }
            case 1: {  // try_push(const T&)
                const T value(seq);
                const std::error_code want = model_.push(seq);
                expect_error("try_push(const T&)", ring_.try_push(value), want);
                require_intact(value, seq, "try_push(const T&)");
                break;
            }
            case 2:  // try_emplace
                expect_error("try_emplace", ring_.try_emplace(seq), model_.push(seq));
                break;
            case 3:
            case 4:
            case 5: {  // push(ctx, T&&), push(ctx, const T&), emplace(ctx, ...)
                const ctx_kind kind = waiting_context(model_.would_wait(1));
                const eventbus::context& ctx = contexts_.get(kind);
                std::error_code want = model_.push(seq);
                if (ring_model<Policy>::blocks && want == errc::buffer_full)
                    want = contexts::error_of(kind);
                if (op == 3) {
                    T value(seq);
                    const std::error_code got = ring_.push(ctx, std::move(value));
                    expect_error("push(ctx, T&&)", got, want);
                    if (got)
                        require_intact(value, seq, "push(ctx, T&&)");
                } else if (op == 4) {
                    const T value(seq);
                    expect_error("push(ctx, const T&)", ring_.push(ctx, value), want);
                    require_intact(value, seq, "push(ctx, const T&)");
                } else {
                    expect_error("emplace(ctx)", ring_.emplace(ctx, seq), want);
                }
                break;
            }
            case 6:
            case 7: {  // try_push_n, push_n(ctx)
                const std::size_t n = in_.below(model_.capacity + 2);
                std::vector<T> values;
                values.reserve(n);
                for (std::size_t i = 0; i < n; ++i)
                    values.emplace_back(seq + static_cast<std::uint32_t>(i));
                next_seq_ += static_cast<std::uint32_t>(n);
                const bool would_wait = model_.would_wait(n);
                std::error_code want = model_.push_n(seq, n);
                std::error_code got;
                if (op == 6) {
                    got = ring_.try_push_n(std::span<T>(values));
                } else {
                    const ctx_kind kind = waiting_context(would_wait);
                    if (would_wait)
                        want = contexts::error_of(kind);
                    got = ring_.push_n(contexts_.get(kind), std::span<T>(values));
                }
                expect_error(op == 6 ? "try_push_n" : "push_n(ctx)", got, want);
                for (std::size_t i = 0; i < n; ++i) {
                    const std::uint32_t left =
                        got ? seq + static_cast<std::uint32_t>(i) : moved_from;
                    if (values[i].seq() != left)
                        fail("%s of %zu (%s): value %zu is %u, expected %u", op_names[op], n,
                             eventbus_fuzz::describe(got).c_str(), i, values[i].seq(), left);
                }
                break;
            }
            case 8:  // try_pop()
                require_popped("try_pop()", model_.pop(), ring_.try_pop());
                break;
            case 9: {  // try_pop(T&)
                T out(seq);
                const expected want = model_.pop();
                const bool got = ring_.try_pop(out);
                require_popped("try_pop(T&)", want,
                               got ? std::optional<T>(out) : std::optional<T>());
                if (!got)
                    require_intact(out, seq, "an empty try_pop(T&)");
                break;
            }
            case 10: {  // pop(ctx)
                const bool would_wait = model_.elements.empty() && !model_.closed;
                const ctx_kind kind = waiting_context(would_wait);
                const std::error_code want_error =
                    model_.elements.empty()
                        ? (model_.closed ? errc::closed : contexts::error_of(kind))
                        : std::error_code();
                const expected want = model_.pop();
                const eventbus::pop_result<T> got = ring_.pop(contexts_.get(kind));
                require_popped("pop(ctx)", want, got.value);
                expect_error("pop(ctx)", got.error, want_error);
                if (static_cast<bool>(got) != got.value.has_value())
                    fail("pop_result's operator bool disagrees with its value");
                break;
            }
            case 11:
            case 12: {  // try_pop_before(mark), try_pop_before(mark, T&)
                const std::uint64_t limit = pick_limit();
                const expected want = model_.before(limit) ? model_.pop() : expected{};
                if (op == 11) {
                    require_popped("try_pop_before(mark)", want, ring_.try_pop_before(limit));
                } else {
                    T out(seq);
                    const bool got = ring_.try_pop_before(limit, out);
                    require_popped("try_pop_before(mark, T&)", want,
                                   got ? std::optional<T>(out) : std::optional<T>());
                }
                break;
            }
            case 13: {  // try_pop_batch
                const std::uint64_t limit = pick_limit();
                // At least one: a batch of at most 0 elements is not asked for.
                const std::size_t most = 1 + in_.below(model_.capacity + 1);
                const auto room = static_cast<std::int64_t>(limit - model_.head());
                std::size_t want = 0;
                if (room > 0)
                    want = std::min(
                        {static_cast<std::size_t>(room / 2), most, model_.elements.size()});
                std::vector<T> sunk;
                sunk.reserve(most);
                const std::size_t got = ring_.try_pop_batch(
                    limit, most, [&sunk](T&& value) noexcept { sunk.push_back(std::move(value)); });
                if (got != want || sunk.size() != want)
                    fail(
                        "try_pop_batch(limit %+lld from head, max %zu) took %zu (sink saw %zu), "
                        "the model %zu of %zu",
                        static_cast<long long>(room), most, got, sunk.size(), want,
                        model_.elements.size());
                for (const T& value : sunk) {
                    const std::uint32_t next = model_.pop().seq;
                    if (value.seq() != next)
                        fail("try_pop_batch gave element %u, the model's next is %u", value.seq(),
                             next);
                }
                break;
            }
            case 14:  // close
                ring_.close();
                model_.closed = true;
                break;
            case 15: {  // save mark
                const std::uint64_t mark = ring_.mark();
                if (mark != model_.tail())
                    fail("mark() is %llu, the model's tail %llu",
                         static_cast<unsigned long long>(mark),
                         static_cast<unsigned long long>(model_.tail()));
                saved_[in_.below(saved_.size())] = mark;
                break;
            }
            default: {  // one operation on another thread, while this one waits
                if (on_helper)
                    break;
                static constexpr std::size_t choices[] = {0, 2, 3, 6, 7, 8, 10, 13, 14};
                const std::size_t inner = choices[in_.below(std::size(choices))];
                eventbus_fuzz::other_thread::run([this, inner] { step(inner, true); });
                break;
            }
        }
    }

    void check_state(const char* after) {
        const std::size_t size = model_.elements.size();
        const auto count = [&](const char* what, std::uint64_t got, std::uint64_t want) {
            if (got != want)
                fail("after %s (operation %zu): %s is %llu, the model says %llu", after, ops_, what,
                     static_cast<unsigned long long>(got), static_cast<unsigned long long>(want));
        };
        count("is_closed()", ring_.is_closed(), model_.closed);
        count("capacity()", ring_.capacity(), model_.capacity);
        count("single_producer()", ring_.single_producer(), single_producer_);
        count("approx_size()", ring_.approx_size(), size);
        count("approx_empty()", ring_.approx_empty(), size == 0);
        count("accepted()", ring_.accepted(), model_.accepted);
        count("dropped()", ring_.dropped(), model_.dropped);
        count("mark()", ring_.mark(), model_.tail());
        count("consumed_mark()", ring_.consumed_mark(), model_.head());
        count("distance(consumed_mark(), mark())",
              ring_type::distance(ring_.consumed_mark(), ring_.mark()), size);
        count("distance(mark(), consumed_mark())",
              ring_type::distance(ring_.mark(), ring_.consumed_mark()), 0);
        count("live elements", static_cast<std::uint64_t>(live_items.load()), size);
        if (model_.accepted != model_.taken + model_.dropped + size)
            fail("the model lost count: accepted %llu != taken + dropped + inside",
                 static_cast<unsigned long long>(model_.accepted));
    }

    input& in_;
    contexts contexts_;
    ring_type ring_;
    ring_model<Policy> model_;
    bool single_producer_;
    std::uint32_t next_seq_ = 0;
    std::size_t ops_ = 0;
    std::array<std::uint64_t, 4> saved_{};
};

template <class Policy, class T>
void run_ring(input& in, std::size_t capacity, std::uint64_t start, bool single_producer) {
    {
        ring_run<Policy, T> run(in, capacity, start, single_producer);
        run.run();
    }  // the destructor destroys what is left inside
    if (const long left = live_items.load(); left != 0)
        fail("%ld elements alive after the ring was destroyed", left);
}

template <class Policy>
void pick_size(input& in, std::size_t size_choice, std::size_t capacity, std::uint64_t start,
               bool single_producer) {
    switch (size_choice) {
        case 0:
            run_ring<Policy, item<0>>(in, capacity, start, single_producer);
            break;
        case 1:
            run_ring<Policy, item<2>>(in, capacity, start, single_producer);
            break;
        default:
            run_ring<Policy, item<12>>(in, capacity, start, single_producer);
            break;
    }
}

// A refused construction must name the refused value.
template <class F>
void expect_refused(F&& construct, const std::string& value) {
    try {
        construct();
    } catch (const std::invalid_argument& error) {
        if (std::string(error.what()).find(value) == std::string::npos)
            fail("the refusal of %s does not name it: %s", value.c_str(), error.what());
        return;
    }
    fail("a ring was constructed with %s", value.c_str());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    input in(data, size);
    const std::uint8_t setup = in.byte();
    const std::uint8_t capacity_byte = in.byte();
    const std::uint8_t offset = in.byte();
    const std::uint8_t high = in.byte();

    const std::size_t policy = setup % 3;
    const std::size_t size_choice = (setup / 3) % 3;
    const bool single_producer = ((setup / 9) & 1) != 0;

    std::size_t capacity = std::size_t{1} << (capacity_byte % 5);  // 1..16
    if ((capacity_byte & 0x80) != 0) {
        capacity = capacity_byte & 0x1FU;  // 0..31: powers of two up to 16 are used, others refused
        if (capacity == 0 || !std::has_single_bit(capacity)) {
            expect_refused([&] { eventbus::ring_buffer<item<0>> ring(capacity); },
                           "got " + std::to_string(capacity));
            return 0;
        }
    }
    if (offset == 0xFF) {
        expect_refused(
            [] { eventbus::ring_buffer<item<0>> ring(4, eventbus::detail::initial_position{3}); },
            "odd start");
        return 0;
    }
    // Near 2^64 (`high` 0) or just before any multiple of 2^56, 2^63 among them.
    const std::uint64_t start = (std::uint64_t{high} << 56) - 2 * std::uint64_t{offset};

    switch (policy) {
        case 0:
            pick_size<eventbus::drop_oldest>(in, size_choice, capacity, start, single_producer);
            break;
        case 1:
            pick_size<eventbus::block>(in, size_choice, capacity, start, single_producer);
            break;
        default:
            pick_size<eventbus::return_error>(in, size_choice, capacity, start, single_producer);
            break;
    }
    return 0;
}
