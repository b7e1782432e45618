// The NATS JetStream bridge (eventbus/nats.hpp): its wire format, then outbound and inbound
// against a real nats-server started on 127.0.0.1 (tests/nats_server.hpp): round trips,
// de-duplication, poison and malformed messages, a server killed and restarted mid-stream,
// and the examples/nats consumer killed and restarted mid-stream.
#include <eventbus/eventbus.hpp>
#include <eventbus/nats.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "nats_server.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using eventbus::context;
using eventbus::dispatcher;
using eventbus::event;
using eventbus::event_store;
namespace nats = eventbus::nats;

namespace {

struct order {
    std::int64_t id = 0;
    std::int64_t cents = 0;
};

nats::codec<order> order_codec() {
    return {.encode =
                [](const order& o) { return std::to_string(o.id) + ":" + std::to_string(o.cents); },
            .decode =
                [](std::string_view bytes) {
                    const std::size_t colon = bytes.find(':');
                    if (colon == std::string_view::npos)
                        throw std::invalid_argument("no colon");
                    return order{std::stoll(std::string(bytes.substr(0, colon))),
                                 std::stoll(std::string(bytes.substr(colon + 1)))};
                },
            .id = [](const order& o) { return "order-" + std::to_string(o.id); }};
}

/// Waits (at most `timeout`) until `done()`; returns it.
template <class Done>
bool eventually(Done done, std::chrono::milliseconds timeout = 20s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!done()) {
        if (std::chrono::steady_clock::now() > deadline)
            return done();
        std::this_thread::sleep_for(5ms);
    }
    return true;
}

/// Messages the stream holds now.
std::uint64_t stream_messages(nats::connection& c, const char* stream) {
    jsStreamInfo* info = nullptr;
    jsErrCode code{};
    if (js_GetStreamInfo(&info, c.jetstream(), stream, nullptr, &code) != NATS_OK)
        return ~std::uint64_t{0};
    const std::uint64_t n = info->State.Msgs;
    jsStreamInfo_Destroy(info);
    return n;
}

#ifdef EVENTBUS_NATS_SERVER
constexpr const char* server_binary = EVENTBUS_NATS_SERVER;
#else
constexpr const char* server_binary = nullptr;
#endif

#define EVENTBUS_NEEDS_NATS_SERVER()                                                           \
    do {                                                                                       \
        if (server_binary == nullptr) {                                                        \
            WARN("skipped: nats-server was not found when configuring (Debian: nats-server)"); \
            return;                                                                            \
        }                                                                                      \
    } while (false)

}  // namespace

// The wire format ////////////////////////////////////////////////////////////////////////////

TEST_CASE("JSON wire format: every supported value comes back as the type it was sent as",
          "[nats][wire]") {
    const std::vector<std::byte> blob{std::byte{0}, std::byte{1}, std::byte{0xfe}, std::byte{0xff},
                                      std::byte{'x'}};
    const event sent{.id = "evt-1",
                     .projection = "user_created",
                     .args = {{"name", std::string("ada \"lovelace\"\n")},
                              {"literal", "c-string"},
                              {"age", 36},
                              {"big", std::int64_t{-9'000'000'000'000}},
                              {"huge", std::uint64_t{18'000'000'000'000'000'000u}},
                              {"small", std::uint8_t{200}},
                              {"short", std::int16_t{-300}},
                              {"score", 0.25},
                              {"ratio", 1.5f},
                              {"admin", false},
                              {"manager", nullptr},
                              {"avatar", blob},
                              {"empty", std::vector<std::byte>{}}}};
    const std::string wire = nats::to_json(sent);
    const event got = nats::from_json(wire);
    CHECK(got.id == "evt-1");
    CHECK(got.projection == eventbus::key("user_created"));
    CHECK(eventbus::arg<std::string>(got.args, "name") == "ada \"lovelace\"\n");
    CHECK(eventbus::arg<std::string>(got.args, "literal") == "c-string");
    CHECK(eventbus::arg<int>(got.args, "age") == 36);
    CHECK(eventbus::arg<std::int64_t>(got.args, "big") == -9'000'000'000'000);
    CHECK(eventbus::arg<std::uint64_t>(got.args, "huge") == 18'000'000'000'000'000'000u);
    CHECK(eventbus::arg<std::uint8_t>(got.args, "small") == 200);
    CHECK(eventbus::arg<std::int16_t>(got.args, "short") == -300);
    CHECK(eventbus::arg<double>(got.args, "score") == 0.25);
    CHECK(eventbus::arg<float>(got.args, "ratio") == 1.5f);
    CHECK(eventbus::arg<bool>(got.args, "admin") == false);
    CHECK(eventbus::find_arg<std::nullptr_t>(got.args, "manager") != nullptr);
    CHECK(eventbus::arg<std::vector<std::byte>>(got.args, "avatar") == blob);
    CHECK(eventbus::arg<std::vector<std::byte>>(got.args, "empty").empty());
    CHECK(got.args.size() == sent.args.size());
    // Readable by anyone: plain JSON values, the C++ types on the side.
    CHECK(wire.find("\"age\":36") != std::string::npos);
    CHECK(wire.find("\"avatar\":\"AAH+/3g=\"") != std::string::npos);
}

TEST_CASE("JSON wire format: an unsupported value is a clear error naming it", "[nats][wire]") {
    struct money {
        long cents;
    };
    const event ev{.id = "e7", .projection = "paid", .args = {{"amount", money{5}}}};
    try {
        (void)nats::to_json(ev);
        FAIL("no error");
    } catch (const std::system_error& e) {
        CHECK(e.code() == nats::errc::unsupported_value);
        const std::string what = e.what();
        CHECK(what.find("\"amount\"") != std::string::npos);
        CHECK(what.find("money") != std::string::npos);
        CHECK(what.find("e7") != std::string::npos);
    }
    const event nan{.id = "", .projection = "x", .args = {{"v", std::nan("")}}};
    CHECK_THROWS_AS(nats::to_json(nan), std::system_error);
    const event empty_any{.id = "", .projection = "x", .args = {{"v", std::any{}}}};
    CHECK_THROWS_AS(nats::to_json(empty_any), std::system_error);
    const event not_utf8{.id = "u", .projection = "x", .args = {{"v", std::string("\xff\xfe")}}};
    try {
        (void)nats::to_json(not_utf8);
        FAIL("no error");
    } catch (const std::system_error& e) {
        CHECK(e.code() == nats::errc::unsupported_value);
        CHECK(std::string(e.what()).find("UTF-8") != std::string::npos);
    }
}

TEST_CASE("JSON wire format: malformed payloads say what is wrong", "[nats][wire]") {
    const auto reason = [](std::string_view payload) -> std::string {
        try {
            (void)nats::from_json(payload, "fallback");
        } catch (const std::system_error& e) {
            if (e.code() != nats::errc::malformed_payload)
                return "wrong code " + e.code().message();
            return e.what();
        }
        return "accepted";
    };
    CHECK(reason("not json").find("not JSON") != std::string::npos);
    CHECK(reason("[1,2]").find("not a JSON object") != std::string::npos);
    CHECK(reason("{}").find("\"args\"") != std::string::npos);
    CHECK(reason(R"({"args": {"a": [1]}})").find("array or an object") != std::string::npos);
    CHECK(reason(R"({"args": {"a": 300}, "types": {"a": "uint8"}})").find("declared type") !=
          std::string::npos);
    CHECK(reason(R"({"args": {"a": "!!"}, "types": {"a": "bytes"}})").find("base64") !=
          std::string::npos);
    CHECK(reason(R"({"args": {"a": 1}, "types": {"a": "complex"}})").find("unknown type") !=
          std::string::npos);
    CHECK(reason(R"({"id": 5, "args": {}})").find("\"id\"") != std::string::npos);
    CHECK(reason(R"({"args": {"a": "QR=="}, "types": {"a": "bytes"}})").find("canonical") !=
          std::string::npos);
    CHECK(reason(R"({"args": {"a": 1e300}, "types": {"a": "float"}})").find("range") !=
          std::string::npos);
    // Senders in other languages may name the natural types too.
    const event natural = nats::from_json(
        R"({"args": {"s": "x", "i": 5, "d": 2.5}, "types": {"s": "string", "i": "int64", "d": "double"}})",
        "p");
    CHECK(eventbus::arg<std::string>(natural.args, "s") == "x");
    CHECK(eventbus::arg<std::int64_t>(natural.args, "i") == 5);
    CHECK(eventbus::arg<double>(natural.args, "d") == 2.5);
    // The subject's projection stands in for a missing one; the header's id for a missing id.
    const event ev = nats::from_json(R"({"args": {}})", "fallback", "header-id");
    CHECK(ev.projection == eventbus::key("fallback"));
    CHECK(ev.id == "header-id");
}

TEST_CASE("bad options and an unreachable server are clear errors", "[nats]") {
    const int port = eventbus_test::free_loopback_port();  // nothing listens there
    const std::string url = "nats://127.0.0.1:" + std::to_string(port);
    try {
        nats::connection c({.servers = {url}, .connect_timeout = 500ms});
        FAIL("connected to nothing");
    } catch (const std::system_error& e) {
        CHECK(e.code().category() == nats::status_category());
        CHECK(std::string(e.what()).find(url) != std::string::npos);
    }
    CHECK_THROWS_AS(nats::connection({.servers = {}}), std::invalid_argument);
}

// Against a real server ////////////////////////////////////////////////////////////////////////

namespace {

/// A server, a stream EVENTS on events.>, and a producer and a consumer side, each with its
/// own connection and store.
struct bridge_fixture {
    explicit bridge_fixture(nats::inbound_options in_options = {},
                            nats::outbound_options out_options = {})
        : server(server_binary)
        , producer_link({.servers = {server.url()}, .name = "test-producer"})
        , consumer_link({.servers = {server.url()}, .name = "test-consumer"}) {
        nats::ensure_stream(producer_link, {.name = "EVENTS", .subjects = {"events.>"}});
        out = std::make_unique<nats::outbound>(producer_link, std::move(out_options));
        producer = std::make_unique<event_store<eventbus::block>>(
            producer_handlers, 1024,
            eventbus::store_options{.async = true, .workers = 2, .dead_letter_capacity = 64});
        in_options.on_error = [this](const nats::inbound_error& e) {
            std::lock_guard lock(mutex);
            errors.push_back(e);
        };
        consumer = std::make_unique<event_store<eventbus::block>>(
            consumer_handlers, 64,
            eventbus::store_options{.async = true, .workers = 2, .dead_letter_capacity = 64});
        in = std::make_unique<nats::inbound<eventbus::block>>(consumer_link, *consumer,
                                                              std::move(in_options));
    }
    ~bridge_fixture() {
        in.reset();
        (void)consumer->close(context{});
        (void)producer->close(context{});
    }

    void record(const std::string& id) {
        std::lock_guard lock(mutex);
        ++seen[id];
    }
    std::size_t distinct() {
        std::lock_guard lock(mutex);
        return seen.size();
    }

    eventbus_test::nats_server server;
    nats::connection producer_link;
    nats::connection consumer_link;
    dispatcher producer_handlers;
    dispatcher consumer_handlers;
    std::unique_ptr<nats::outbound> out;
    std::unique_ptr<event_store<eventbus::block>> producer;
    std::unique_ptr<event_store<eventbus::block>> consumer;
    std::unique_ptr<nats::inbound<eventbus::block>> in;
    std::mutex mutex;
    std::map<std::string, int> seen;
    std::vector<nats::inbound_error> errors;
};

}  // namespace

TEST_CASE("round trip: typed and dynamic events cross; every message acked once handled",
          "[nats]") {
    EVENTBUS_NEEDS_NATS_SERVER();
    bridge_fixture f({.durable = "round_trip", .max_in_flight = 16});
    std::atomic<std::int64_t> cents{0};
    std::atomic<std::size_t> most_in_flight{0};
    (void)f.consumer_handlers.on<order>([&](const order& o) {
        cents += o.cents;
        f.record("order-" + std::to_string(o.id));
        const std::size_t now = f.in->metrics().in_flight;
        std::size_t seen = most_in_flight.load();
        while (now > seen && !most_in_flight.compare_exchange_weak(seen, now)) {
        }
    });
    std::atomic<int> ages_not_int{0};  // checked below: Catch2 checks on the test thread only
    (void)f.consumer_handlers.on("user_created", [&](const context&, const eventbus::args& a) {
        if (eventbus::find_arg<int>(a, "age") == nullptr)  // typed as sent
            ++ages_not_int;
        f.record(eventbus::arg<std::string>(a, "name"));
    });
    f.out->forward<order>(f.producer_handlers, "orders", order_codec());
    f.out->forward(f.producer_handlers, "user_created");
    f.in->route<order>("orders", order_codec());
    f.in->start();
    CHECK_THROWS_AS(f.in->route<order>("late", order_codec()), std::logic_error);

    constexpr int n = 300;
    for (int i = 0; i < n; ++i) {
        REQUIRE_FALSE(f.producer->subscribe(context{}, order{i, i}));
        REQUIRE_FALSE(f.producer->subscribe(
            context{}, event{.id = "user-" + std::to_string(i),
                             .projection = "user_created",
                             .args = {{"name", "user-" + std::to_string(i)}, {"age", i}}}));
    }
    f.producer->publish();
    REQUIRE_FALSE(f.producer->drain(context{}));
    const nats::outbound_metrics sent = f.out->metrics();
    CHECK(sent.published == 2 * n);
    CHECK(sent.failed == 0);
    CHECK(stream_messages(f.producer_link, "EVENTS") == 2 * n);

    REQUIRE(eventually([&] { return f.distinct() == 2 * n; }));
    f.in->stop();
    REQUIRE_FALSE(f.consumer->drain(context{}));
    const nats::inbound_metrics got = f.in->metrics();
    CHECK(got.received == 2 * n);
    CHECK(got.acked == 2 * n);
    CHECK(got.nacked + got.dead_lettered + got.malformed + got.in_flight == 0);
    CHECK(most_in_flight.load() <= 16);
    CHECK(ages_not_int == 0);
    CHECK(cents == static_cast<std::int64_t>(n) * (n - 1) / 2);
    for (const auto& [id, times] : f.seen)
        CHECK(times == 1);
    CHECK_RECONCILES(f.consumer->metrics());
    CHECK_RECONCILES(f.producer->metrics());
}

TEST_CASE("a duplicate publish (same event id) is stored and delivered once", "[nats]") {
    EVENTBUS_NEEDS_NATS_SERVER();
    bridge_fixture f({.durable = "dedupe"});
    (void)f.consumer_handlers.on("user_created", [&](const context&, const eventbus::args& a) {
        f.record(eventbus::arg<std::string>(a, "name"));
    });
    f.out->forward(f.producer_handlers, "user_created");
    f.in->start();
    for (int copy = 0; copy < 3; ++copy) {  // a producer that retries on its own
        REQUIRE_FALSE(
            f.producer->subscribe(context{}, event{.id = "signup-42",
                                                   .projection = "user_created",
                                                   .args = {{"name", std::string("ada")}}}));
        f.producer->publish();
        REQUIRE_FALSE(f.producer->drain(context{}));
    }
    CHECK(f.out->metrics().published == 3);
    CHECK(f.out->metrics().duplicates == 2);
    CHECK(stream_messages(f.producer_link, "EVENTS") == 1);
    REQUIRE(eventually([&] { return f.in->metrics().acked == 1; }));
    std::this_thread::sleep_for(300ms);  // nothing more comes
    f.in->stop();
    CHECK(f.in->metrics().received == 1);
    CHECK(f.seen == std::map<std::string, int>{{"ada", 1}});
}

TEST_CASE(
    "a poison message is redelivered with backoff, then a local dead letter; the rest "
    "flows",
    "[nats]") {
    EVENTBUS_NEEDS_NATS_SERVER();
    bridge_fixture f({.durable = "poison",
                      .max_deliveries = 3,
                      .redelivery = eventbus::backoff_policy::constant(20ms)});
    std::atomic<int> poison_calls{0};
    (void)f.consumer_handlers.on("user_created",
                                 [&](const context&, const eventbus::args& a) {
                                     const std::string name = eventbus::arg<std::string>(a, "name");
                                     if (name == "poison") {
                                         ++poison_calls;
                                         throw std::runtime_error("cannot handle poison");
                                     }
                                     f.record(name);
                                 },
                                 {.name = "signups"});
    f.out->forward(f.producer_handlers, "user_created");
    f.in->start();
    for (const char* name : {"a", "poison", "b", "c"})
        REQUIRE_FALSE(f.producer->subscribe(
            context{},
            event{
                .id = name, .projection = "user_created", .args = {{"name", std::string(name)}}}));
    f.producer->publish();
    REQUIRE_FALSE(f.producer->drain(context{}));
    REQUIRE(eventually([&] { return f.in->metrics().dead_lettered == 1; }));
    REQUIRE(eventually([&] { return f.distinct() == 3; }));
    std::this_thread::sleep_for(300ms);  // terminated: not delivered a fourth time
    f.in->stop();
    REQUIRE_FALSE(f.consumer->drain(context{}));
    CHECK(poison_calls == 3);
    const nats::inbound_metrics m = f.in->metrics();
    CHECK(m.acked == 3);
    CHECK(m.nacked == 2);
    CHECK(m.received == 6);
    const eventbus::store_metrics s = f.consumer->metrics();
    CHECK(s.retried == 2);  // the first two deliveries' failures
    CHECK(s.dead_lettered == 1);
    CHECK_RECONCILES(s);
    const auto letters = f.consumer->take_dead_letters();
    REQUIRE(letters.size() == 1);
    CHECK(letters[0].attempts() == 3);
    CHECK(letters[0].handler() == "signups");
    CHECK(letters[0].event().id() == "poison");
}

TEST_CASE("a malformed message on the subject is reported and terminated; nothing else is lost",
          "[nats]") {
    EVENTBUS_NEEDS_NATS_SERVER();
    bridge_fixture f({.durable = "malformed"});
    (void)f.consumer_handlers.on<order>(
        [&](const order& o) { f.record("order-" + std::to_string(o.id)); });
    (void)f.consumer_handlers.on("user_created", [&](const context&, const eventbus::args& a) {
        f.record(eventbus::arg<std::string>(a, "name"));
    });
    f.in->route<order>("orders", order_codec());
    f.in->route<order>(
        "weird", nats::codec<order>{.encode = nullptr, .decode = [](std::string_view) -> order {
                                        throw 42;  // not a std::exception
                                    }});
    f.in->start();
    // Raw publishes, as another program might make them.
    const auto raw = [&](const char* subject, std::string_view payload) {
        jsErrCode code{};
        jsPubAck* ack = nullptr;
        REQUIRE(js_Publish(&ack, f.producer_link.jetstream(), subject, payload.data(),
                           static_cast<int>(payload.size()), nullptr, &code) == NATS_OK);
        jsPubAck_Destroy(ack);
    };
    raw("events.user_created", "this is not json");
    raw("events.orders", "no colon here");
    raw("events.user_created", R"({"id": "ok-1", "args": {"name": "fine"}})");
    raw("events.orders", "7:700");
    raw("events.weird", "anything");
    REQUIRE(eventually([&] { return f.distinct() == 2; }));
    REQUIRE(eventually([&] { return f.in->metrics().malformed == 3; }));
    f.in->stop();
    CHECK(f.seen == std::map<std::string, int>{{"fine", 1}, {"order-7", 1}});
    CHECK(stream_messages(f.producer_link, "EVENTS") == 5);  // kept in the stream
    std::lock_guard lock(f.mutex);
    REQUIRE(f.errors.size() == 3);
    CHECK(f.errors[2].message.find("not a std::exception") != std::string::npos);
    f.errors.pop_back();
    for (const nats::inbound_error& e : f.errors) {
        CHECK(e.code == nats::errc::malformed_payload);
        CHECK(e.stream_sequence != 0);
        CHECK(e.message.find("malformed") != std::string::npos);
    }
    CHECK(f.errors[0].subject == "events.user_created");
    CHECK(f.errors[1].message.find("no colon") != std::string::npos);
}

TEST_CASE("an unencodable event is a dead letter of the forwarding handler, alone", "[nats]") {
    EVENTBUS_NEEDS_NATS_SERVER();
    bridge_fixture f({.durable = "unencodable"});
    f.out->forward(f.producer_handlers, "user_created");
    struct opaque {
        int x;
    };
    for (int i = 0; i < 5; ++i) {
        eventbus::args a{{"name", std::string("u") + std::to_string(i)}};
        if (i == 2)
            a.emplace("bad", opaque{1});
        REQUIRE_FALSE(f.producer->subscribe(context{}, event{.id = "u" + std::to_string(i),
                                                             .projection = "user_created",
                                                             .args = std::move(a)}));
    }
    f.producer->publish();
    REQUIRE_FALSE(f.producer->drain(context{}));
    CHECK(f.out->metrics().published == 4);
    CHECK(f.out->metrics().encode_errors == 1);
    const auto letters = f.producer->take_dead_letters();
    REQUIRE(letters.size() == 1);
    CHECK(letters[0].event().id() == "u2");
    CHECK(letters[0].handler() == "nats.outbound");
    try {
        std::rethrow_exception(letters[0].error());
    } catch (const std::system_error& e) {
        CHECK(e.code() == nats::errc::unsupported_value);
    }
    CHECK_RECONCILES(f.producer->metrics());
}

TEST_CASE(
    "flow control: a full block store stops the fetching; nothing is buffered beyond a "
    "fetch",
    "[nats]") {
    EVENTBUS_NEEDS_NATS_SERVER();
    eventbus_test::nats_server server(server_binary);
    nats::connection link({.servers = {server.url()}});
    nats::ensure_stream(link, {.name = "EVENTS", .subjects = {"events.>"}});
    std::atomic<bool> open{false};
    std::atomic<int> handled{0};
    dispatcher handlers;
    (void)handlers.on("tick", [&](const context&, const eventbus::args&) {
        while (!open)
            std::this_thread::sleep_for(1ms);
        ++handled;
    });
    event_store<eventbus::block> store(handlers, 4, {.async = true, .workers = 1});
    nats::inbound in(link, store, {.durable = "slow", .batch = 8, .max_in_flight = 1000});
    constexpr int n = 100;
    for (int i = 0; i < n; ++i) {
        const std::string payload =
            nats::to_json(event{.id = "t" + std::to_string(i), .projection = "tick", .args = {}});
        jsErrCode code{};
        REQUIRE(js_Publish(nullptr, link.jetstream(), "events.tick", payload.data(),
                           static_cast<int>(payload.size()), nullptr, &code) == NATS_OK);
    }
    in.start();
    REQUIRE(eventually([&] { return store.metrics().depth == 4; }));
    std::this_thread::sleep_for(300ms);  // time to fetch more, if it would
    // The worker holds the batch it claimed (at most the capacity, one event in the held call),
    // four wait in the ring, one commit waits for room: what else was fetched waits on the
    // fetching thread (one fetch, at most 8), and nothing more is fetched.
    const nats::inbound_metrics held = in.metrics();
    CHECK(held.received <= 4 + 4 + 8);
    CHECK(held.in_flight <= 4 + 4 + 1);
    CHECK(store.metrics().depth == 4);
    std::this_thread::sleep_for(300ms);
    CHECK(in.metrics().received == held.received);
    open = true;
    REQUIRE(eventually([&] { return in.metrics().acked == n; }));
    in.stop();
    CHECK(handled == n);
    CHECK(in.metrics().received == n);
    REQUIRE_FALSE(store.close(context{}));
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE(
    "a closed store is not fetched for, so its messages keep their deliveries; bad "
    "options are refused",
    "[nats]") {
    EVENTBUS_NEEDS_NATS_SERVER();
    eventbus_test::nats_server server(server_binary);
    nats::connection link({.servers = {server.url()}});
    nats::ensure_stream(link, {.name = "EVENTS", .subjects = {"events.>"}});
    dispatcher handlers;
    event_store<eventbus::return_error> store(handlers, 8, {.async = true, .workers = 1});
    CHECK_THROWS_AS(nats::inbound(link, store, {.durable = "bad", .fetch_wait = 0ms}),
                    std::invalid_argument);
    CHECK_THROWS_AS(nats::inbound(link, store, {.durable = "bad", .max_deliveries = 0}),
                    std::invalid_argument);
    CHECK_THROWS_AS(nats::inbound(link, store, {.durable = "bad", .prefix = "events.*"}),
                    std::invalid_argument);
    try {
        nats::inbound missing(link, store, {.stream = "NO_SUCH_STREAM", .durable = "x"});
        FAIL("bound to a stream that does not exist");
    } catch (const std::system_error& e) {
        CHECK(std::string(e.what()).find("NO_SUCH_STREAM") != std::string::npos);
    }
    const std::string payload = nats::to_json(event{.id = "c1", .projection = "tick", .args = {}});
    jsErrCode code{};
    REQUIRE(js_Publish(nullptr, link.jetstream(), "events.tick", payload.data(),
                       static_cast<int>(payload.size()), nullptr, &code) == NATS_OK);
    REQUIRE_FALSE(store.close(context{}));
    nats::inbound in(link, store, {.durable = "closed", .fetch_wait = 50ms});
    in.start();
    std::this_thread::sleep_for(400ms);
    in.stop();
    CHECK(in.metrics().received == 0);
    CHECK(in.metrics().nacked == 0);
}

TEST_CASE("a sync store: the fetching thread runs the handlers, then acknowledges", "[nats]") {
    EVENTBUS_NEEDS_NATS_SERVER();
    eventbus_test::nats_server server(server_binary);
    nats::connection link({.servers = {server.url()}});
    nats::ensure_stream(link, {.name = "EVENTS", .subjects = {"events.>"}});
    std::atomic<int> handled{0};
    std::atomic<int> failures_left{1};
    dispatcher handlers;
    (void)handlers.on<order>([&](const order&) {
        if (failures_left.fetch_sub(1) > 0)
            throw std::runtime_error("once");
        ++handled;
    });
    event_store<eventbus::block> store(handlers, 16);  // sync
    nats::inbound in(link, store,
                     {.durable = "sync", .redelivery = eventbus::backoff_policy::constant(10ms)});
    in.route<order>("orders", order_codec());
    nats::outbound out(link);
    dispatcher producer_handlers;
    out.forward<order>(producer_handlers, "orders", order_codec());
    event_store<eventbus::block> producer(producer_handlers, 16);  // sync: publish() forwards
    for (int i = 0; i < 10; ++i)
        REQUIRE_FALSE(producer.subscribe(context{}, order{i, 1}));
    producer.publish();
    CHECK(out.metrics().published == 10);
    in.start();
    REQUIRE(eventually([&] { return in.metrics().acked == 10; }));
    in.stop();
    CHECK(handled == 10);
    CHECK(in.metrics().nacked == 1);  // the failure came again and succeeded
    CHECK(store.metrics().retried == 1);
    CHECK(store.metrics().dead_lettered == 0);
    CHECK_RECONCILES(store.metrics());
}

TEST_CASE("the server killed and restarted mid-stream (file storage): nothing is lost",
          "[nats][restart]") {
    EVENTBUS_NEEDS_NATS_SERVER();
    bridge_fixture f({.durable = "restart", .fetch_wait = 100ms},
                     {.publish_attempts = 60,
                      .ack_timeout = 500ms,
                      .backoff = eventbus::backoff_policy::constant(100ms)});
    (void)f.consumer_handlers.on<order>(
        [&](const order& o) { f.record("order-" + std::to_string(o.id)); });
    f.out->forward<order>(f.producer_handlers, "orders", order_codec());
    f.in->route<order>("orders", order_codec());
    f.in->start();
    constexpr int n = 2000;
    std::jthread producer([&] {
        for (int i = 0; i < n; ++i) {
            (void)f.producer->subscribe(context{}, order{i, 1});
            f.producer->publish();
            if (i % 50 == 0)
                std::this_thread::sleep_for(10ms);
        }
    });
    REQUIRE(eventually([&] { return f.distinct() >= 300; }));
    f.server.kill();  // a crash: nothing flushed beyond what the server wrote already
    std::this_thread::sleep_for(700ms);
    f.server.start();
    producer.join();
    REQUIRE_FALSE(f.producer->drain(context{}));
    CHECK(f.out->metrics().failed == 0);
    CHECK(f.producer->metrics().dead_lettered == 0);
    REQUIRE(eventually([&] { return f.distinct() == n; }, 60s));
    f.in->stop();
    // The outage was seen: publishes were retried (and, typically, acknowledgements the
    // server lost with it make some messages come twice: at least once).
    CHECK(f.out->metrics().republished > 0);
    CHECK(f.in->metrics().received >= static_cast<std::uint64_t>(n));
    WARN("outbound retried " << f.out->metrics().republished << " publishes, inbound "
                             << f.in->metrics().fetch_errors << " fetches failed, "
                             << f.in->metrics().received - n << " redeliveries");
    CHECK(f.in->metrics().dead_lettered == 0);
    CHECK_RECONCILES(f.consumer->metrics());
}

#if defined(EVENTBUS_NATS_PRODUCER) && defined(EVENTBUS_NATS_CONSUMER)

namespace {

std::vector<std::string> lines_of(const std::string& path) {
    std::vector<std::string> lines;
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);)
        lines.push_back(line);
    return lines;
}

}  // namespace

TEST_CASE(
    "examples/nats: the consumer killed mid-stream and restarted handles every event at "
    "least once, and exactly once with --dedupe",
    "[nats][restart]") {
    EVENTBUS_NEEDS_NATS_SERVER();
    eventbus_test::nats_server server(server_binary);
    const std::string dir = server.directory();
    constexpr long count = 1500;  // orders and sign-ups: 3000 events
    {
        eventbus_test::child_process producer(
            {EVENTBUS_NATS_PRODUCER, "--server", server.url(), "--count", std::to_string(count)},
            dir + "/producer.log");
        REQUIRE(producer.wait(60s) == 0);
        // Again: the server drops every duplicate.
        eventbus_test::child_process again(
            {EVENTBUS_NATS_PRODUCER, "--server", server.url(), "--count", std::to_string(count)},
            dir + "/producer.log");
        REQUIRE(again.wait(60s) == 0);
    }
    for (const bool dedupe : {false, true}) {
        INFO((dedupe ? "with --dedupe" : "without --dedupe"));
        const std::string record = dir + (dedupe ? "/exactly_once.txt" : "/at_least_once.txt");
        std::vector<std::string> args{EVENTBUS_NATS_CONSUMER,
                                      "--server",
                                      server.url(),
                                      "--durable",
                                      dedupe ? "exactly" : "at_least",
                                      "--record",
                                      record,
                                      "--handle-us",
                                      "200",
                                      "--ack-wait-ms",
                                      "1000"};
        if (dedupe)
            args.emplace_back("--dedupe");
        {
            eventbus_test::child_process consumer(args, dir + "/consumer.log");
            REQUIRE(eventually([&] { return lines_of(record).size() >= 500; }, 60s));
            consumer.kill();  // mid-stream, with messages handled and not acknowledged
        }
        const std::size_t before_restart = lines_of(record).size();
        CHECK(before_restart < 2 * count);
        args.insert(args.end(), {"--expect", std::to_string(2 * count)});
        eventbus_test::child_process restarted(args, dir + "/consumer.log");
        REQUIRE(restarted.wait(120s) == 0);
        const std::vector<std::string> lines = lines_of(record);
        const std::set<std::string> distinct(lines.begin(), lines.end());
        CHECK(distinct.size() == 2 * count);  // at least once
        CHECK(distinct.count("order-0") == 1);
        CHECK(distinct.count("user-" + std::to_string(count - 1)) == 1);
        if (dedupe)
            CHECK(lines.size() == 2 * count);  // exactly once
        else
            CHECK(lines.size() >= 2 * count);  // the redelivered ones twice
    }
}

#endif
