// Errors and contexts: errc as std::error_code, context cancellation and deadlines.
#include <eventbus/eventbus.hpp>

#include <chrono>
#include <limits>
#include <stdexcept>
#include <stop_token>
#include <system_error>
#include <type_traits>

#include "catch.hpp"
#include "support.hpp"

using namespace std::chrono_literals;

TEST_CASE("errc converts to std::error_code in the eventbus category", "[errc]") {
    STATIC_REQUIRE(std::is_error_code_enum_v<eventbus::errc>);

    const std::error_code ec = eventbus::errc::closed;
    CHECK(ec);
    CHECK(ec == eventbus::errc::closed);
    CHECK(ec != eventbus::errc::buffer_full);
    CHECK(std::string(ec.category().name()) == "eventbus");
    CHECK(&ec.category() == &eventbus::error_category());
    CHECK(ec.message() == "closed");
    CHECK(static_cast<int>(eventbus::errc::buffer_full) == 1);
}

TEST_CASE("errc maps to portable std::errc conditions", "[errc]") {
    CHECK(std::error_code(eventbus::errc::deadline_exceeded) == std::errc::timed_out);
    CHECK(std::error_code(eventbus::errc::cancelled) == std::errc::operation_canceled);
    CHECK(std::error_code(eventbus::errc::buffer_full) == std::errc::no_buffer_space);
    CHECK(std::error_code(eventbus::errc::closed) != std::errc::timed_out);
}

TEST_CASE("every errc value has its own message", "[errc]") {
    const eventbus::errc all[] = {eventbus::errc::buffer_full,
                                  eventbus::errc::cancelled,
                                  eventbus::errc::deadline_exceeded,
                                  eventbus::errc::closed,
                                  eventbus::errc::handler_failed,
                                  eventbus::errc::would_deadlock,
                                  eventbus::errc::exceeds_capacity,
                                  eventbus::errc::finished,
                                  eventbus::errc::dropped};
    for (auto a : all) {
        for (auto b : all) {
            if (a != b)
                CHECK(make_error_code(a).message() != make_error_code(b).message());
        }
    }
    CHECK(eventbus::error_category().message(999).find("999") != std::string::npos);
}

TEST_CASE("a default context never ends", "[context]") {
    const eventbus::context ctx;
    CHECK_FALSE(ctx.done());
    CHECK_FALSE(ctx.err());
    CHECK_FALSE(ctx.has_deadline());
    CHECK_FALSE(ctx.token().stop_possible());
}

TEST_CASE("a context ends with its stop_token", "[context]") {
    std::stop_source source;
    const eventbus::context ctx(source.get_token());
    CHECK_FALSE(ctx.done());
    source.request_stop();
    CHECK(ctx.done());
    CHECK(ctx.err() == eventbus::errc::cancelled);
}

TEST_CASE("a context ends at its deadline, not before", "[context]") {
    const auto start = eventbus::context::clock::now();
    const auto ctx = eventbus::context{}.with_timeout(30ms);
    CHECK(ctx.has_deadline());
    CHECK(ctx.deadline() >= start + 30ms);
    REQUIRE(eventbus_test::eventually([&] { return ctx.done(); }));
    CHECK(eventbus::context::clock::now() - start >= 30ms);
    CHECK(ctx.err() == eventbus::errc::deadline_exceeded);
}

TEST_CASE("deriving a context keeps the earlier deadline and the stop_token", "[context]") {
    std::stop_source source;
    const auto now = eventbus::context::clock::now();
    const auto early = eventbus::context(source.get_token()).with_deadline(now + 1h);
    const auto later = early.with_deadline(now + 2h);
    CHECK(later.deadline() == now + 1h);
    const auto sooner = early.with_deadline(now + 1min);
    CHECK(sooner.deadline() == now + 1min);

    source.request_stop();
    CHECK(sooner.err() == eventbus::errc::cancelled);  // cancellation wins over a live deadline
}

TEST_CASE("a deadline in the past has already passed; a huge timeout means none", "[context]") {
    const auto past = eventbus::context{}.with_deadline(eventbus::context::clock::now() - 1s);
    CHECK(past.err() == eventbus::errc::deadline_exceeded);

    const auto forever = eventbus::context{}.with_timeout(std::chrono::hours::max());
    CHECK_FALSE(forever.has_deadline());
    CHECK_FALSE(forever.done());

    const auto zero = eventbus::context{}.with_timeout(0ms);
    CHECK(zero.done());
    const auto negative = eventbus::context{}.with_timeout(std::chrono::hours::min());
    CHECK(negative.err() == eventbus::errc::deadline_exceeded);
    const auto tiny_negative = eventbus::context{}.with_timeout(std::chrono::nanoseconds::min());
    CHECK(tiny_negative.done());
}

TEST_CASE("a NaN timeout is a bad argument, not undefined behaviour", "[context]") {
    const std::chrono::duration<double> nan(std::numeric_limits<double>::quiet_NaN());
    CHECK_THROWS_AS(eventbus::context{}.with_timeout(nan), std::invalid_argument);
    const std::chrono::duration<double> inf(std::numeric_limits<double>::infinity());
    CHECK_FALSE(eventbus::context{}.with_timeout(inf).done());  // too far: no deadline
}
