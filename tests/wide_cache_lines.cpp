// The ring's layout with 128- and 256-byte cache lines (AArch64, POWER, s390x), checked on any
// machine: this file is compiled with EVENTBUS_CACHE_LINE_SIZE set to 128 and 256 (see
// tests/CMakeLists.txt).
#include <eventbus/eventbus.hpp>

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "catch.hpp"

namespace {

struct sixteen_bytes {
    std::uint64_t a;
    std::uint64_t b;
    friend bool operator==(const sixteen_bytes&, const sixteen_bytes&) = default;
};

// Slots of 16, 24 (9..16-byte elements) and 40 bytes (std::string) do not divide a 128- or
// 256-byte line; consecutive positions must still map to distinct slots.
template <class T, class Make>
void round_trip(Make make) {
    eventbus::ring_buffer<T, eventbus::return_error> ring(64);
    for (int lap = 0; lap < 3; ++lap) {
        for (int i = 0; i < 64; ++i)
            REQUIRE_FALSE(ring.try_push(make(i)));
        CHECK(ring.try_push(make(64)) == eventbus::errc::buffer_full);
        for (int i = 0; i < 64; ++i) {
            auto value = ring.try_pop();
            REQUIRE(value);
            CHECK(*value == make(i));
        }
    }
}

}  // namespace

TEST_CASE("rings of common element types build and keep FIFO with wide cache lines", "[ring]") {
    STATIC_REQUIRE(eventbus::cache_line_size == EVENTBUS_CACHE_LINE_SIZE);
    round_trip<std::uint64_t>([](int i) { return static_cast<std::uint64_t>(i); });
    round_trip<std::string_view>([](int i) {
        return std::string_view("abcdefghij").substr(static_cast<std::size_t>(i % 10));
    });
    round_trip<std::pair<std::uint64_t, std::uint64_t>>(
        [](int i) { return std::pair<std::uint64_t, std::uint64_t>(i, i); });
    round_trip<std::string>([](int i) { return std::string(static_cast<std::size_t>(i), 'x'); });
    round_trip<sixteen_bytes>([](int i) {
        return sixteen_bytes{static_cast<std::uint64_t>(i), 0};
    });
}
