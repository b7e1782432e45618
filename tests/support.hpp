// Helpers shared by the test files: stress scaling, a lifetime-counting element, thread failure
// collection (Catch2 assertions are not thread-safe, so worker threads count failures and the
// test thread asserts on the counts).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

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

}  // namespace eventbus_test
