//  eventbus — optional NATS JetStream bridge: event stores in several processes, or machines,
//  joined through a JetStream stream.
//  SPDX-License-Identifier: MIT
//
//  Needs the NATS C client with JetStream (cnats 3.4 or later; CMake: link eventbus::nats,
//  which links cnats::nats) and nlohmann/json (the wire format of dynamic events). The core
//  header, eventbus.hpp, never depends on them.
//
//      eventbus::nats::connection nats({.servers = {"nats://127.0.0.1:4222"}});
//      eventbus::nats::ensure_stream(nats, {.name = "EVENTS", .subjects = {"events.>"}});
//
//      // producer: events of chosen keys go to subjects events.<projection>
//      eventbus::nats::outbound out(nats);
//      out.forward(store.dispatcher(), "user_created");             // dynamic, as JSON
//      out.forward<order>(store.dispatcher(), "orders", order_codec);  // typed, your bytes
//
//      // consumer: a durable pull consumer feeding a local store
//      eventbus::nats::inbound in(nats, local_store, {.durable = "billing"});
//      in.route<order>("orders", order_codec);
//      in.start();
//
//  Delivery: outbound publishes a run of events asynchronously and waits for JetStream's
//  acknowledgements of the run (one round trip per run); a refused or unacknowledged message
//  is published again with the same Nats-Msg-Id (so the server stores it once), and after
//  `publish_attempts` it fails, only that event, as a dead letter of the forwarding handler.
//  Inbound acknowledges a message only after every handler of its event has finished without
//  throwing; a failure is a NAK with a backoff delay, and the last delivery's failure a local
//  dead letter. See README.md, "Outgrowing one process", for the guarantees.
//
//  Sections: errors, the JSON wire format, codecs, connection and stream, outbound, inbound.

#ifndef EVENTBUS_NATS_HPP
#define EVENTBUS_NATS_HPP

#include <nats/nats.h>
#include <eventbus/eventbus.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <any>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <type_traits>
#include <typeinfo>
#include <unordered_map>
#include <utility>
#include <vector>

namespace eventbus::nats {

// errors //////////////////////////////////////////////////////////////////////////////////////

/// What the bridge itself reports (category "eventbus.nats"); the NATS client's own statuses
/// are in status_category().
enum class errc {
    unsupported_value = 1,  ///< an args value the JSON wire format cannot carry
    malformed_payload,      ///< a message that does not decode into an event
    publish_failed,         ///< JetStream did not acknowledge a message after every attempt
};

namespace detail {

class bridge_category_impl final : public std::error_category {
  public:
    [[nodiscard]] const char* name() const noexcept override { return "eventbus.nats"; }
    [[nodiscard]] std::string message(int value) const override {
        switch (static_cast<errc>(value)) {
            case errc::unsupported_value:
                return "value not supported by the wire format";
            case errc::malformed_payload:
                return "malformed payload";
            case errc::publish_failed:
                return "JetStream did not acknowledge the message";
        }
        return "unknown eventbus.nats error";
    }
};

class status_category_impl final : public std::error_category {
  public:
    [[nodiscard]] const char* name() const noexcept override { return "nats"; }
    [[nodiscard]] std::string message(int value) const override {
        return natsStatus_GetText(static_cast<natsStatus>(value));
    }
};

}  // namespace detail

[[nodiscard]] inline const std::error_category& error_category() noexcept {
    static const detail::bridge_category_impl category;
    return category;
}
[[nodiscard]] inline std::error_code make_error_code(errc e) noexcept {
    return {static_cast<int>(e), error_category()};
}
/// The NATS C client's `natsStatus` values (category "nats"; message: natsStatus_GetText).
[[nodiscard]] inline const std::error_category& status_category() noexcept {
    static const detail::status_category_impl category;
    return category;
}
[[nodiscard]] inline std::error_code status_error(natsStatus s) noexcept {
    return {static_cast<int>(s), status_category()};
}

namespace detail {

/// A std::system_error for a failed client call, with the client's own last error text.
[[noreturn]] inline void throw_status(natsStatus s, const std::string& what) {
    // The client's own last error, when it says more than the status's text (which
    // system_error appends).
    std::string text = "eventbus::nats: " + what;
    if (const char* detail = nats_GetLastError(nullptr);
        detail != nullptr && *detail != '\0' &&
        std::string_view(detail).find(natsStatus_GetText(s)) == std::string_view::npos) {
        text += ": ";
        text += detail;
    }
    throw std::system_error(status_error(s), text);
}

/// JetStream API errors carry a JetStream error code besides the status.
[[noreturn]] inline void throw_jetstream(natsStatus s, jsErrCode code, const std::string& what) {
    throw_status(s, what + (code != 0 ? " (JetStream error " + std::to_string(code) + ")" : ""));
}

}  // namespace detail

}  // namespace eventbus::nats

template <>
struct std::is_error_code_enum<eventbus::nats::errc> : std::true_type {};

namespace eventbus::nats {

// the JSON wire format ////////////////////////////////////////////////////////////////////////
//
// A dynamic event travels as one JSON object:
//
//     {"id": "evt-1", "projection": "user_created",
//      "args": {"name": "ada", "age": 36, "score": 0.5, "admin": false, "manager": null,
//               "avatar": "iVBORw0K"},
//      "types": {"age": "int32", "avatar": "bytes"}}
//
// `args` holds each value as JSON: std::string (also const char* and std::string_view, which
// arrive as std::string), bool, std::nullptr_t, the integer types, float and double (finite
// only), and std::vector<std::byte> (base64). `types` names the C++ type of every value whose
// type is not the natural one of its JSON form (string: std::string, integer: std::int64_t,
// number: double), so that the receiver gets back what was sent: "int8", "int16", "int32",
// "uint8", "uint16", "uint32", "uint64", "float", "bytes". (`long long` arrives as
// std::int64_t, the same 64 bits.) Any other value is an error, errc::unsupported_value,
// naming the argument and its type. Receivers in other languages may ignore `types`.

namespace detail {

inline constexpr std::string_view base64_alphabet =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

inline std::string base64_encode(std::span<const std::byte> bytes) {
    std::string out;
    out.reserve((bytes.size() + 2) / 3 * 4);
    std::size_t i = 0;
    for (; i + 3 <= bytes.size(); i += 3) {
        const auto v = (std::to_integer<std::uint32_t>(bytes[i]) << 16) |
                       (std::to_integer<std::uint32_t>(bytes[i + 1]) << 8) |
                       std::to_integer<std::uint32_t>(bytes[i + 2]);
        for (int shift = 18; shift >= 0; shift -= 6)
            out.push_back(base64_alphabet[(v >> shift) & 63]);
    }
    if (const std::size_t rest = bytes.size() - i; rest != 0) {
        std::uint32_t v = std::to_integer<std::uint32_t>(bytes[i]) << 16;
        if (rest == 2)
            v |= std::to_integer<std::uint32_t>(bytes[i + 1]) << 8;
        out.push_back(base64_alphabet[(v >> 18) & 63]);
        out.push_back(base64_alphabet[(v >> 12) & 63]);
        out.push_back(rest == 2 ? base64_alphabet[(v >> 6) & 63] : '=');
        out.push_back('=');
    }
    return out;
}

/// Throws std::invalid_argument for anything but canonical, padded base64.
inline std::vector<std::byte> base64_decode(std::string_view text) {
    if (text.size() % 4 != 0)
        throw std::invalid_argument("base64 length is not a multiple of 4");
    std::vector<std::byte> out;
    out.reserve(text.size() / 4 * 3);
    for (std::size_t i = 0; i < text.size(); i += 4) {
        std::uint32_t v = 0;
        int padding = 0;
        for (std::size_t k = 0; k < 4; ++k) {
            const char c = text[i + k];
            std::uint32_t digit = 0;
            if (c == '=' && i + 4 == text.size() && k >= 2) {
                ++padding;
            } else {
                if (padding != 0)
                    throw std::invalid_argument("base64 digit after padding");
                const std::size_t at = base64_alphabet.find(c);
                if (at == std::string_view::npos)
                    throw std::invalid_argument("not a base64 digit");
                digit = static_cast<std::uint32_t>(at);
            }
            v = (v << 6) | digit;
        }
        if ((padding == 1 && (v & 0xff) != 0) || (padding == 2 && (v & 0xffff) != 0))
            throw std::invalid_argument("non-canonical base64 (padding bits set)");
        out.push_back(static_cast<std::byte>((v >> 16) & 0xff));
        if (padding < 2)
            out.push_back(static_cast<std::byte>((v >> 8) & 0xff));
        if (padding < 1)
            out.push_back(static_cast<std::byte>(v & 0xff));
    }
    return out;
}

inline std::string type_name(const std::type_info& type) {
    return eventbus::detail::type_name(type);
}

template <class Int>
bool put_integer(const std::any& value, nlohmann::json& out, std::string_view tag,
                 nlohmann::json& types, const std::string& name) {
    const Int* v = std::any_cast<Int>(&value);
    if (v == nullptr)
        return false;
    out = *v;
    if (!tag.empty())
        types[name] = tag;
    return true;
}

/// One args value as JSON (and its `types` entry); false for a type the format cannot carry.
inline bool put_value(const std::string& name, const std::any& value, nlohmann::json& out,
                      nlohmann::json& types) {
    if (const auto* s = std::any_cast<std::string>(&value)) {
        out = *s;
        return true;
    }
    if (const auto* s = std::any_cast<const char*>(&value)) {
        if (*s == nullptr)
            return false;
        out = std::string(*s);
        return true;
    }
    if (const auto* s = std::any_cast<std::string_view>(&value)) {
        out = std::string(*s);
        return true;
    }
    if (const auto* b = std::any_cast<bool>(&value)) {
        out = *b;
        return true;
    }
    if (std::any_cast<std::nullptr_t>(&value) != nullptr) {
        out = nullptr;
        return true;
    }
    if (const auto* d = std::any_cast<double>(&value)) {
        if (!std::isfinite(*d))
            return false;
        out = *d;
        return true;
    }
    if (const auto* f = std::any_cast<float>(&value)) {
        if (!std::isfinite(*f))
            return false;
        out = static_cast<double>(*f);
        types[name] = "float";
        return true;
    }
    if (const auto* bytes = std::any_cast<std::vector<std::byte>>(&value)) {
        out = base64_encode(*bytes);
        types[name] = "bytes";
        return true;
    }
    return put_integer<std::int64_t>(value, out, "", types, name) ||
           put_integer<long long>(value, out, "", types, name) ||
           put_integer<std::int32_t>(value, out, "int32", types, name) ||
           put_integer<std::int16_t>(value, out, "int16", types, name) ||
           put_integer<std::int8_t>(value, out, "int8", types, name) ||
           put_integer<std::uint64_t>(value, out, "uint64", types, name) ||
           put_integer<unsigned long long>(value, out, "uint64", types, name) ||
           put_integer<std::uint32_t>(value, out, "uint32", types, name) ||
           put_integer<std::uint16_t>(value, out, "uint16", types, name) ||
           put_integer<std::uint8_t>(value, out, "uint8", types, name);
}

[[noreturn]] inline void malformed(const std::string& why) {
    throw std::system_error(errc::malformed_payload, "eventbus::nats: " + why);
}

template <class Int>
std::any integer_as(const nlohmann::json& v, const std::string& name) {
    if (v.is_number_unsigned()) {
        const auto u = v.get<std::uint64_t>();
        if (u <= static_cast<std::uint64_t>(std::numeric_limits<Int>::max()))
            return static_cast<Int>(u);
    } else if (v.is_number_integer()) {
        const auto i = v.get<std::int64_t>();
        if constexpr (std::is_signed_v<Int>) {
            if (i >= std::numeric_limits<Int>::min() && i <= std::numeric_limits<Int>::max())
                return static_cast<Int>(i);
        } else if (i >= 0 && static_cast<std::uint64_t>(i) <= std::numeric_limits<Int>::max()) {
            return static_cast<Int>(i);
        }
    }
    malformed("argument \"" + name + "\" is not an integer of its declared type");
}

/// One JSON value back to the args value it was, by its `types` entry (or its JSON form).
inline std::any get_value(const std::string& name, const nlohmann::json& v,
                          const nlohmann::json* types) {
    std::string tag;
    if (types != nullptr) {
        if (const auto t = types->find(name); t != types->end()) {
            if (!t->is_string())
                malformed("the type of argument \"" + name + "\" is not a string");
            tag = t->get<std::string>();
        }
    }
    // The natural types may be named too (by senders in other languages).
    if ((tag == "string" && v.is_string()) || (tag == "int64" && v.is_number_integer()) ||
        (tag == "double" && v.is_number()))
        tag.clear();
    if (tag.empty()) {
        if (v.is_string())
            return v.get<std::string>();
        if (v.is_boolean())
            return v.get<bool>();
        if (v.is_null())
            return nullptr;
        if (v.is_number_integer() || v.is_number_unsigned())
            return integer_as<std::int64_t>(v, name);
        if (v.is_number_float())
            return v.get<double>();
        malformed("argument \"" + name + "\" is an array or an object");
    }
    if (tag == "bytes") {
        if (!v.is_string())
            malformed("argument \"" + name + "\" (bytes) is not a base64 string");
        try {
            return base64_decode(v.get_ref<const std::string&>());
        } catch (const std::invalid_argument& e) {
            malformed("argument \"" + name + "\" (bytes): " + e.what());
        }
    }
    if (tag == "float") {
        if (!v.is_number())
            malformed("argument \"" + name + "\" (float) is not a number");
        const double d = v.get<double>();
        if (!(std::abs(d) <= static_cast<double>(std::numeric_limits<float>::max())))
            malformed("argument \"" + name + "\" (float) is out of a float's range");
        return static_cast<float>(d);
    }
    if (tag == "int32")
        return integer_as<std::int32_t>(v, name);
    if (tag == "int16")
        return integer_as<std::int16_t>(v, name);
    if (tag == "int8")
        return integer_as<std::int8_t>(v, name);
    if (tag == "uint64")
        return integer_as<std::uint64_t>(v, name);
    if (tag == "uint32")
        return integer_as<std::uint32_t>(v, name);
    if (tag == "uint16")
        return integer_as<std::uint16_t>(v, name);
    if (tag == "uint8")
        return integer_as<std::uint8_t>(v, name);
    malformed("argument \"" + name + "\" has an unknown type \"" + tag + "\"");
}

}  // namespace detail

/// A dynamic event as the JSON wire format (above). Throws std::system_error with
/// errc::unsupported_value, naming the argument and its type, for a value the format cannot
/// carry. Allocates.
[[nodiscard]] inline std::string to_json(const event& ev) {
    nlohmann::json args = nlohmann::json::object();
    nlohmann::json types = nlohmann::json::object();
    for (const auto& [name, value] : ev.args) {
        nlohmann::json v;
        if (!detail::put_value(name, value, v, types))
            throw std::system_error(
                errc::unsupported_value,
                "eventbus::nats: argument \"" + name + "\" of event \"" + ev.id + "\" (" +
                    std::string(ev.projection.name()) + ") holds " +
                    (value.has_value() ? detail::type_name(value.type()) : "nothing") +
                    ", which the JSON wire format cannot carry (strings, booleans, null, integers, "
                    "finite float and double, std::vector<std::byte>)");
        args[name] = std::move(v);
    }
    nlohmann::json doc = {{"id", ev.id}, {"projection", ev.projection.name()}, {"args", args}};
    if (!types.empty())
        doc["types"] = std::move(types);
    try {
        return doc.dump();
    } catch (const nlohmann::json::type_error&) {  // a string that is not UTF-8
        throw std::system_error(errc::unsupported_value,
                                "eventbus::nats: event \"" + ev.id +
                                    "\" holds a string that is not valid UTF-8 (JSON strings are "
                                    "UTF-8; send bytes as std::vector<std::byte>)");
    }
}

/// The event a JSON wire-format payload holds. `projection` is used when the payload names
/// none (the subject's); an `id` in the payload wins over `id`. Throws std::system_error with
/// errc::malformed_payload, saying what is wrong. Allocates.
[[nodiscard]] inline event from_json(std::string_view payload, std::string_view projection = {},
                                     std::string_view id = {}) {
    nlohmann::json doc = nlohmann::json::parse(payload, nullptr, false);
    if (doc.is_discarded())
        detail::malformed("payload is not JSON");
    if (!doc.is_object())
        detail::malformed("payload is not a JSON object");
    event ev;
    if (const auto at = doc.find("id"); at != doc.end() && !at->is_null()) {
        if (!at->is_string())
            detail::malformed("\"id\" is not a string");
        ev.id = at->get<std::string>();
    } else {
        ev.id = std::string(id);
    }
    std::string name(projection);
    if (const auto at = doc.find("projection"); at != doc.end()) {
        if (!at->is_string())
            detail::malformed("\"projection\" is not a string");
        name = at->get<std::string>();
    }
    if (name.empty())
        detail::malformed("the event has no projection");
    ev.projection = key(std::move(name));
    const auto args = doc.find("args");
    if (args == doc.end() || !args->is_object())
        detail::malformed("\"args\" is missing or not an object");
    const nlohmann::json* types = nullptr;
    if (const auto at = doc.find("types"); at != doc.end()) {
        if (!at->is_object())
            detail::malformed("\"types\" is not an object");
        types = &*at;
    }
    for (const auto& [arg_name, value] : args->items())
        ev.args.emplace(arg_name, detail::get_value(arg_name, value, types));
    return ev;
}

// codecs //////////////////////////////////////////////////////////////////////////////////////

/// How a typed event travels: `encode` makes the message's bytes, `decode` the event back
/// (throwing anything for bytes it cannot read: the message is then malformed). `id`, if set,
/// gives the event's Nats-Msg-Id (a stable id lets the server drop a duplicate publish, and
/// handlers recognise a redelivery); without it each event gets a generated unique one.
template <class T>
struct codec {
    std::function<std::string(const T&)> encode{};
    std::function<T(std::string_view)> decode{};
    std::function<std::string(const T&)> id = nullptr;
};

// connection and stream ///////////////////////////////////////////////////////////////////////

struct connection_options {
    /// Server URLs (a cluster's seed list; the client learns the others from them).
    std::vector<std::string> servers{"nats://127.0.0.1:4222"};
    std::string name = "eventbus";  ///< the client name the server shows
    std::chrono::milliseconds connect_timeout{2000};
    /// After a lost connection: attempts per server (-1: forever) and the wait between them.
    int max_reconnect = -1;
    std::chrono::milliseconds reconnect_wait{100};
    /// Keep trying when no server answers at first (else the constructor throws).
    bool retry_on_failed_connect = false;
    /// JetStream API calls (streams, consumers, fetch requests) and publish acknowledgements.
    std::chrono::milliseconds request_timeout{5000};
    /// Write every message at once (natsOptions_SetSendAsap). The client otherwise writes
    /// from a flusher thread that waits 1 ms for more data: fewer system calls and more
    /// throughput, at up to 1 ms of latency. The outbound bridge flushes each run itself; this
    /// also writes acknowledgements and other publishes at once, at a system call each (a raw
    /// asynchronous publisher's throughput fell by about a quarter with it).
    bool send_asap = false;
    std::string user{};  ///< with `password`, or a `token`; empty: none
    std::string password{};
    std::string token{};
};

/// One connection to a NATS server or cluster, with its JetStream context. Thread-safe (the C
/// client's connection is); not copyable or movable. Bridges using it must go first.
class connection {
  public:
    /// Connects. Throws std::system_error (status_category(), the client's text) when no
    /// server answers and `retry_on_failed_connect` is false, std::invalid_argument for no
    /// servers.
    explicit connection(connection_options options = {}) : options_(std::move(options)) {
        if (options_.servers.empty())
            throw std::invalid_argument("eventbus::nats: connection_options::servers is empty");
        natsOptions* opts = nullptr;
        check(natsOptions_Create(&opts), "cannot create connection options");
        const std::unique_ptr<natsOptions, void (*)(natsOptions*)> owned(opts, natsOptions_Destroy);
        std::vector<const char*> urls;
        for (const std::string& url : options_.servers)
            urls.push_back(url.c_str());
        check(natsOptions_SetServers(opts, urls.data(), static_cast<int>(urls.size())),
              "bad server list");
        check(natsOptions_SetName(opts, options_.name.c_str()), "bad client name");
        check(natsOptions_SetTimeout(opts, options_.connect_timeout.count()), "bad timeout");
        check(natsOptions_SetMaxReconnect(opts, options_.max_reconnect), "bad max_reconnect");
        check(natsOptions_SetReconnectWait(opts, options_.reconnect_wait.count()),
              "bad reconnect_wait");
        if (!options_.user.empty())
            check(natsOptions_SetUserInfo(opts, options_.user.c_str(), options_.password.c_str()),
                  "bad user");
        if (!options_.token.empty())
            check(natsOptions_SetToken(opts, options_.token.c_str()), "bad token");
        if (options_.send_asap)
            check(natsOptions_SetSendAsap(opts, true), "bad send_asap");
        if (options_.retry_on_failed_connect)
            check(natsOptions_SetRetryOnFailedConnect(opts, true, nullptr, nullptr),
                  "bad retry_on_failed_connect");
        natsConnection* nc = nullptr;
        if (const natsStatus s = natsConnection_Connect(&nc, opts);
            s != NATS_OK && !(s == NATS_NOT_YET_CONNECTED && options_.retry_on_failed_connect))
            detail::throw_status(s, "cannot connect to " + describe_servers());
        connection_.reset(nc);
        jsOptions js_options;
        jsOptions_Init(&js_options);
        js_options.Wait = options_.request_timeout.count();
        jsCtx* js = nullptr;
        check(natsConnection_JetStream(&js, nc, &js_options), "cannot create a JetStream context");
        jetstream_.reset(js);
    }

    connection(const connection&) = delete;
    connection& operator=(const connection&) = delete;
    ~connection() = default;

    [[nodiscard]] natsConnection* native() const noexcept { return connection_.get(); }
    [[nodiscard]] jsCtx* jetstream() const noexcept { return jetstream_.get(); }
    [[nodiscard]] bool connected() const noexcept {
        return natsConnection_Status(connection_.get()) == NATS_CONN_STATUS_CONNECTED;
    }
    [[nodiscard]] const connection_options& options() const noexcept { return options_; }
    /// The JetStream API's subject prefix ("$JS.API").
    [[nodiscard]] std::string jetstream_api_prefix() const { return "$JS.API"; }

  private:
    std::string describe_servers() const {
        std::string text;
        for (const std::string& url : options_.servers)
            text += (text.empty() ? "" : ", ") + url;
        return text;
    }
    static void check(natsStatus s, const char* what) {
        if (s != NATS_OK)
            detail::throw_status(s, what);
    }
    struct close_connection {
        void operator()(natsConnection* nc) const noexcept {
            natsConnection_Close(nc);
            natsConnection_Destroy(nc);
        }
    };
    struct destroy_context {
        void operator()(jsCtx* js) const noexcept { jsCtx_Destroy(js); }
    };

    connection_options options_;
    std::unique_ptr<natsConnection, close_connection> connection_;
    std::unique_ptr<jsCtx, destroy_context> jetstream_;  // destroyed first
};

struct stream_options {
    std::string name = "EVENTS";
    std::vector<std::string> subjects{"events.>"};
    bool memory_storage = false;  ///< default: file storage, which survives a server restart
    int replicas = 1;             ///< copies in a cluster (at most the cluster's size)
    /// How long the server remembers a Nats-Msg-Id to drop a duplicate publish.
    std::chrono::nanoseconds duplicate_window = std::chrono::minutes(2);
    std::int64_t max_messages = -1;  ///< -1: unlimited
    std::int64_t max_bytes = -1;
    std::chrono::nanoseconds max_age{0};  ///< 0: unlimited
};

/// Creates the stream, or updates it to these options when it exists. Throws
/// std::system_error with the server's reason (for instance subjects that overlap another
/// stream's, or more replicas than servers).
inline void ensure_stream(connection& nats, const stream_options& options) {
    if (options.name.empty() || options.subjects.empty())
        throw std::invalid_argument("eventbus::nats: a stream needs a name and subjects");
    jsStreamConfig config;
    jsStreamConfig_Init(&config);
    config.Name = options.name.c_str();
    std::vector<const char*> subjects;
    for (const std::string& s : options.subjects)
        subjects.push_back(s.c_str());
    config.Subjects = subjects.data();
    config.SubjectsLen = static_cast<int>(subjects.size());
    config.Storage = options.memory_storage ? js_MemoryStorage : js_FileStorage;
    config.Replicas = options.replicas;
    config.Duplicates = options.duplicate_window.count();
    config.MaxMsgs = options.max_messages;
    config.MaxBytes = options.max_bytes;
    config.MaxAge = options.max_age.count();
    jsErrCode code = static_cast<jsErrCode>(0);
    jsStreamInfo* info = nullptr;
    natsStatus s = js_AddStream(&info, nats.jetstream(), &config, nullptr, &code);
    if (s != NATS_OK && code == JSStreamNameExistErr)
        s = js_UpdateStream(&info, nats.jetstream(), &config, nullptr, &code);
    if (info != nullptr)
        jsStreamInfo_Destroy(info);
    if (s != NATS_OK)
        detail::throw_jetstream(s, code, "cannot create or update stream " + options.name);
}

namespace detail {

/// A subject's tokens: non-empty, no wildcards, no white space. Throws std::invalid_argument.
inline void check_subject(std::string_view subject, std::string_view what) {
    bool ok = !subject.empty() && subject.front() != '.' && subject.back() != '.' &&
              subject.find("..") == std::string_view::npos;
    for (const char c : subject)
        if (c == '*' || c == '>' || c == ' ' || c == '\t' || c == '\r' || c == '\n')
            ok = false;
    if (!ok)
        throw std::invalid_argument("eventbus::nats: " + std::string(what) + " \"" +
                                    std::string(subject) +
                                    "\" is not a subject (dot-separated non-empty tokens, no "
                                    "wildcards or white space)");
}

/// A draw in [0, 1) for a backoff's jitter, from a generator of the calling thread.
inline double jitter_draw() noexcept {
    thread_local std::minstd_rand random{std::random_device{}()};
    return std::uniform_real_distribution<double>(0.0, 1.0)(random);
}

/// Unique message ids: a random 64-bit prefix per bridge, then a count.
class id_source {
  public:
    id_source() {
        std::random_device random;
        prefix_ = (static_cast<std::uint64_t>(random()) << 32) ^ random();
    }
    [[nodiscard]] std::string next() {
        char text[48];
        const int n = std::snprintf(text, sizeof text, "%016llx-%llu",
                                    static_cast<unsigned long long>(prefix_),
                                    static_cast<unsigned long long>(count_.fetch_add(1) + 1));
        return std::string(text, static_cast<std::size_t>(n));
    }

  private:
    std::uint64_t prefix_ = 0;
    std::atomic<std::uint64_t> count_{0};
};

}  // namespace detail

// outbound ////////////////////////////////////////////////////////////////////////////////////

struct outbound_options {
    std::string prefix = "events";  ///< subjects are `<prefix>.<projection>`
    /// Publishes of one message in all (1: no retry); each waits `ack_timeout` at most for its
    /// acknowledgement, and the n-th retry first waits `backoff.delay(n)`.
    std::uint32_t publish_attempts = 5;
    std::chrono::milliseconds ack_timeout{5000};
    backoff_policy backoff =
        backoff_policy::exponential(std::chrono::milliseconds(100), 2.0, std::chrono::seconds(2));
    /// Asynchronous publishes awaiting acknowledgement, at most (the client stalls beyond).
    std::int64_t max_pending = 4096;
    std::string handler_name = "nats.outbound";  ///< the forwarding handlers' name
};

/// What an outbound bridge did; exact once no forwarding handler is running.
struct outbound_metrics {
    std::uint64_t published = 0;      ///< messages JetStream acknowledged (stored)
    std::uint64_t duplicates = 0;     ///< of those, dropped by the server as duplicates
    std::uint64_t republished = 0;    ///< publishes that were retries
    std::uint64_t failed = 0;         ///< events given up on after every attempt (dead letters)
    std::uint64_t encode_errors = 0;  ///< events that could not be encoded (dead letters)
};

/// Forwards chosen keys of a dispatcher's events to JetStream subjects `<prefix>.<projection>`.
/// Each forward() registers a batch handler (named `handler_name`) on the dispatcher: every
/// store of that dispatcher forwards. Thread-safe. The connection must outlive it; the
/// destructor removes the handlers (waiting for calls in progress) and waits, for at most
/// `ack_timeout`, for acknowledgements still due.
class outbound {
  public:
    explicit outbound(connection& nats, outbound_options options = {})
        : nats_(&nats), options_(std::move(options)) {
        detail::check_subject(options_.prefix, "prefix");
        if (options_.publish_attempts == 0)
            throw std::invalid_argument("eventbus::nats: publish_attempts is 0 (1: no retry)");
        if (options_.ack_timeout <= std::chrono::milliseconds(0))
            throw std::invalid_argument("eventbus::nats: ack_timeout is not positive");
        jsOptions js_options;
        jsOptions_Init(&js_options);
        js_options.Wait = options_.ack_timeout.count();
        js_options.PublishAsync.MaxPending = options_.max_pending;
        js_options.PublishAsync.AckHandler = &outbound::on_ack;
        js_options.PublishAsync.AckHandlerClosure = this;
        jsCtx* js = nullptr;
        if (const natsStatus s = natsConnection_JetStream(&js, nats.native(), &js_options);
            s != NATS_OK)
            detail::throw_status(s, "cannot create a JetStream context");
        js_ = js;
    }

    outbound(const outbound&) = delete;
    outbound& operator=(const outbound&) = delete;

    ~outbound() {
        registrations_.clear();  // no forwarding handler runs after this
        // Acknowledgements of runs that stopped waiting (timed out) may still arrive: wait for
        // them, then take back what never will, so that on_ack never runs after this.
        jsPubOptions wait;
        jsPubOptions_Init(&wait);
        wait.MaxWait = options_.ack_timeout.count();
        if (js_PublishAsyncComplete(js_, &wait) != NATS_OK) {
            natsMsgList pending{nullptr, 0};
            if (js_PublishAsyncGetPendingList(&pending, js_) == NATS_OK)
                natsMsgList_Destroy(&pending);
        }
        jsCtx_Destroy(js_);
    }

    /// Forwards the dynamic events of key `projection` (as JSON, see to_json), from every store
    /// of `d`, to `<prefix>.<projection>`; the event's id, if not empty, is its Nats-Msg-Id.
    /// Returns the handler's registration (removing it stops forwarding). Throws
    /// std::invalid_argument for a projection that is not a subject.
    registration forward(dispatcher& d, std::string_view projection) {
        const std::string subject = subject_of(projection);
        return keep(d.on_batch(projection,
                               [this, subject](const context& ctx, std::span<const event> run) {
                                   send(ctx, subject, run.size(),
                                        [&](std::size_t k, std::string& id) {
                                            if (!run[k].id.empty())
                                                id = run[k].id;
                                            return to_json(run[k]);
                                        });
                               },
                               {.name = options_.handler_name}));
    }

    /// Forwards the typed events T, from every store of `d`, to `<prefix>.<projection>`
    /// through `c`. T must be nothrow movable (it is forwarded in runs, see on_batch).
    template <typed_event T>
    registration forward(dispatcher& d, std::string_view projection, codec<T> c) {
        if (!c.encode)
            throw std::invalid_argument("eventbus::nats: the codec has no encode function");
        const std::string subject = subject_of(projection);
        return keep(d.on_batch<T>(
            [this, subject, c = std::move(c)](const context& ctx, std::span<const T> run) {
                send(ctx, subject, run.size(), [&](std::size_t k, std::string& id) {
                    if (c.id)
                        id = c.id(run[k]);
                    return c.encode(run[k]);
                });
            },
            {.name = options_.handler_name}));
    }

    [[nodiscard]] outbound_metrics metrics() const noexcept {
        return {
            published_.load(std::memory_order_relaxed), duplicates_.load(std::memory_order_relaxed),
            republished_.load(std::memory_order_relaxed), failed_.load(std::memory_order_relaxed),
            encode_errors_.load(std::memory_order_relaxed)};
    }
    [[nodiscard]] const outbound_options& options() const noexcept { return options_; }

  private:
    static constexpr std::size_t max_run = 64;  // a batch handler's run, at most

    /// One message of a run: what to publish (again), and how its last publish went.
    struct slot {
        std::string payload;
        std::string id;
        bool done = false;  // acknowledged, or failed for good (encoding)
        std::exception_ptr error;
    };

    /// A run waiting for its acknowledgements (on the forwarding thread's stack).
    struct run_state {
        std::array<slot, max_run> slots;
        std::size_t awaited = 0;            // guarded by outbound::mutex_
        std::condition_variable_any acked;  // also woken by the store's stop (a close that gave up)
    };

    struct pending_entry {
        run_state* run;
        std::size_t index;
    };

    std::string subject_of(std::string_view projection) const {
        detail::check_subject(projection, "projection");
        return options_.prefix + "." + std::string(projection);
    }

    registration keep(registration r) {
        std::lock_guard lock(mutex_);
        registrations_.emplace_back(r);
        return r;
    }

    /// Publishes a run: encodes each event, publishes all of them, waits for their
    /// acknowledgements, publishes the refused ones again after the backoff, and throws a
    /// batch_error naming those that failed for good (they become dead letters).
    template <class Encode>
    void send(const context& ctx, const std::string& subject, std::size_t n, Encode&& encode) {
        run_state run;
        for (std::size_t k = 0; k < n; ++k) {
            slot& s = run.slots[k];
            try {
                s.payload = encode(k, s.id);
                if (s.id.empty())
                    s.id = ids_.next();
            } catch (...) {
                s.error = std::current_exception();
                s.done = true;
                encode_errors_.fetch_add(1, std::memory_order_relaxed);
            }
        }
        std::uint64_t encode_failed = 0;
        for (std::size_t k = 0; k < n; ++k)
            if (run.slots[k].error)
                encode_failed |= std::uint64_t{1} << k;
        for (std::uint32_t attempt = 1;; ++attempt) {
            publish_all(run, subject, n, attempt > 1);
            // The run is complete: write it now rather than after the client's flusher waited
            // its 1 ms for more (the acknowledgements come that much sooner). Its error, if the
            // server is gone, shows in the acknowledgements.
            (void)natsConnection_FlushTimeout(nats_->native(), options_.ack_timeout.count());
            await(ctx, run);
            const bool all_done = std::all_of(run.slots.begin(), run.slots.begin() + n,
                                              [](const slot& s) { return s.done; });
            if (all_done || attempt == options_.publish_attempts || ctx.done())
                break;
            wait_for(ctx, options_.backoff.delay(attempt, detail::jitter_draw()));
        }
        std::uint64_t failed = encode_failed;
        std::exception_ptr cause;
        for (std::size_t k = 0; k < n; ++k) {
            const slot& s = run.slots[k];
            if (!s.done) {
                failed |= std::uint64_t{1} << k;
                failed_.fetch_add(1, std::memory_order_relaxed);
            }
            if (((failed >> k) & 1) != 0 && !cause)
                cause = s.error;
        }
        if (failed != 0)
            throw batch_error(failed, cause);
    }

    void publish_all(run_state& run, const std::string& subject, std::size_t n, bool again) {
        for (std::size_t k = 0; k < n; ++k) {
            slot& s = run.slots[k];
            if (s.done)
                continue;
            natsMsg* msg = nullptr;
            natsStatus status = natsMsg_Create(&msg, subject.c_str(), nullptr, s.payload.data(),
                                               static_cast<int>(s.payload.size()));
            if (status == NATS_OK)
                status = natsMsgHeader_Set(msg, "Nats-Msg-Id", s.id.c_str());
            if (status != NATS_OK) {
                natsMsg_Destroy(msg);
                s.error = failure(status, static_cast<jsErrCode>(0), nullptr, subject, s.id);
                continue;
            }
            {
                std::lock_guard lock(mutex_);
                pending_.emplace(msg, pending_entry{&run, k});
                ++run.awaited;
            }
            jsPubOptions publish;
            jsPubOptions_Init(&publish);
            publish.MaxWait = options_.ack_timeout.count();
            natsMsg* sent = msg;
            status = js_PublishMsgAsync(js_, &sent, &publish);
            if (again)
                republished_.fetch_add(1, std::memory_order_relaxed);
            if (status != NATS_OK) {
                // Not taken: the message is still ours, and no acknowledgement will come.
                std::lock_guard lock(mutex_);
                pending_.erase(msg);
                --run.awaited;
                natsMsg_Destroy(msg);
                s.error = failure(status, static_cast<jsErrCode>(0), nullptr, subject, s.id);
            }
        }
    }

    /// Until every published message of the run is acknowledged or refused (the client times
    /// each out after ack_timeout; a second ack_timeout is the guard against a lost callback).
    void await(const context& ctx, run_state& run) {
        std::unique_lock lock(mutex_);
        const auto deadline = std::chrono::steady_clock::now() + 2 * options_.ack_timeout;
        (void)run.acked.wait_until(lock, ctx.token(), deadline, [&] { return run.awaited == 0; });
        if (run.awaited == 0)
            return;
        for (auto it = pending_.begin(); it != pending_.end();) {
            if (it->second.run == &run) {
                slot& s = run.slots[it->second.index];
                s.error = std::make_exception_ptr(std::system_error(
                    errc::publish_failed, "eventbus::nats: no acknowledgement of message " + s.id));
                it = pending_.erase(it);  // its message stays the client's, destroyed on_ack
            } else {
                ++it;
            }
        }
        run.awaited = 0;
    }

    /// The backoff before a retry; a store's close() that gives up waiting (the context's
    /// stop) cuts it short.
    static void wait_for(const context& ctx, std::chrono::nanoseconds delay) {
        std::mutex sleeping;
        std::unique_lock lock(sleeping);
        std::condition_variable_any wake;
        (void)wake.wait_for(lock, ctx.token(), delay, [] { return false; });
    }

    static std::exception_ptr failure(natsStatus status, jsErrCode code, const char* text,
                                      const std::string& subject, const std::string& id) {
        std::string what = "eventbus::nats: publishing message " + id + " to " + subject +
                           " failed: " + natsStatus_GetText(status);
        if (text != nullptr && *text != '\0')
            what += std::string(" (") + text + ")";
        if (code != 0)
            what += " (JetStream error " + std::to_string(code) + ")";
        return std::make_exception_ptr(std::system_error(errc::publish_failed, what));
    }

    // The client's thread: an acknowledgement (pa) or a refusal or time-out (pae).
    static void on_ack(jsCtx*, natsMsg* msg, jsPubAck* pa, jsPubAckErr* pae,
                       void* closure) noexcept {
        auto* self = static_cast<outbound*>(closure);
        {
            std::lock_guard lock(self->mutex_);
            const auto it = self->pending_.find(msg);
            if (it != self->pending_.end()) {
                run_state& run = *it->second.run;
                slot& s = run.slots[it->second.index];
                self->pending_.erase(it);
                if (pa != nullptr) {
                    s.done = true;
                    s.error = nullptr;
                    self->published_.fetch_add(1, std::memory_order_relaxed);
                    if (pa->Duplicate)
                        self->duplicates_.fetch_add(1, std::memory_order_relaxed);
                } else {
                    try {
                        s.error = failure(pae != nullptr ? pae->Err : NATS_ERR,
                                          pae != nullptr ? pae->ErrCode : static_cast<jsErrCode>(0),
                                          pae != nullptr ? pae->ErrText : nullptr,
                                          natsMsg_GetSubject(msg), s.id);
                    } catch (...) {
                        s.error = std::current_exception();
                    }
                }
                if (--run.awaited == 0)
                    run.acked.notify_all();
            }
        }
        natsMsg_Destroy(msg);
    }

    connection* nats_;
    outbound_options options_;
    jsCtx* js_ = nullptr;
    detail::id_source ids_;
    std::mutex mutex_;  // pending_, the runs' awaited counts and slots, registrations_
    std::unordered_map<natsMsg*, pending_entry> pending_;
    std::vector<scoped_registration> registrations_;
    std::atomic<std::uint64_t> published_{0};
    std::atomic<std::uint64_t> duplicates_{0};
    std::atomic<std::uint64_t> republished_{0};
    std::atomic<std::uint64_t> failed_{0};
    std::atomic<std::uint64_t> encode_errors_{0};
};

// inbound /////////////////////////////////////////////////////////////////////////////////////

/// What went wrong with one message or one fetch (inbound_options::on_error).
struct inbound_error {
    std::error_code code{};  ///< errc::malformed_payload, or the client's status
    std::string subject{};   ///< empty for a fetch
    std::uint64_t stream_sequence = 0;
    std::string message{};  ///< what, in words
};

struct inbound_options {
    std::string stream = "EVENTS";
    std::string durable = "eventbus";  ///< the durable consumer's name: one per application
    std::string prefix = "events";     ///< consumes `<prefix>.>`; projection = the rest
    /// Deliveries of a message in all; a failure on the last is a local dead letter (and the
    /// message is terminated). The server itself redelivers without limit, so a message whose
    /// last delivery a crash interrupted comes again.
    std::uint32_t max_deliveries = 5;
    /// Unacknowledged this long (the process died, say), the server delivers it again.
    std::chrono::milliseconds ack_wait{30000};
    /// The NAK delay after the n-th failed delivery.
    backoff_policy redelivery =
        backoff_policy::exponential(std::chrono::milliseconds(100), 2.0, std::chrono::seconds(10));
    std::size_t batch = 64;           ///< messages per fetch, at most
    std::size_t max_in_flight = 256;  ///< messages handed to the store and not yet settled
    std::chrono::milliseconds fetch_wait{200};  ///< one fetch's wait for messages
    /// Told of malformed messages and failed fetches, on the pulling thread; must not throw.
    std::function<void(const inbound_error&)> on_error{};
};

/// What an inbound bridge did; exact after stop().
struct inbound_metrics {
    std::uint64_t received = 0;       ///< messages fetched (redeliveries included)
    std::uint64_t acked = 0;          ///< handled by every handler without a failure
    std::uint64_t nacked = 0;         ///< a handler failed, or the store refused or dropped it
    std::uint64_t dead_lettered = 0;  ///< failed on the last delivery: terminated
    std::uint64_t malformed = 0;      ///< did not decode: terminated, told to on_error
    std::uint64_t ack_errors = 0;     ///< an ack or nak that could not be sent (redelivered)
    std::uint64_t fetch_errors = 0;   ///< fetches that failed (not the empty ones)
    std::uint64_t in_flight = 0;      ///< handed to the store, not yet settled
};

/// A durable JetStream pull consumer of `<prefix>.>` feeding a local store: each message
/// becomes one event (typed through a route's codec, else dynamic from JSON) committed with
/// commit_async, and is acknowledged once every handler of it finished without throwing. A
/// failure is a NAK delayed by `redelivery`; on delivery `max_deliveries` it is a dead letter
/// of the store and the message is terminated. At most `max_in_flight` messages are in the
/// store at once, and a `block` store that is full stops the pulling (nothing buffers without
/// bound). Routes are added before start(); the store and the connection must outlive it.
template <overflow_policy Policy>
class inbound {
  public:
    /// Creates the durable consumer (or binds to it). Throws std::system_error with the
    /// server's reason (no such stream, say), std::invalid_argument for bad options.
    inbound(connection& nats, event_store<Policy>& store, inbound_options options = {})
        : nats_(&nats), store_(&store), options_(std::move(options)) {
        detail::check_subject(options_.prefix, "prefix");
        if (options_.durable.empty() || options_.stream.empty())
            throw std::invalid_argument("eventbus::nats: inbound needs a stream and a durable");
        if (options_.max_deliveries == 0 || options_.batch == 0 || options_.max_in_flight == 0)
            throw std::invalid_argument(
                "eventbus::nats: max_deliveries, batch and max_in_flight must not be 0");
        if (options_.fetch_wait < std::chrono::milliseconds(1) ||
            options_.ack_wait < std::chrono::milliseconds(1))
            throw std::invalid_argument(
                "eventbus::nats: fetch_wait and ack_wait must be at least 1 ms");
        filter_ = options_.prefix + ".>";
        // The consumer is created here, not by the subscription, so that destroying the
        // subscription never deletes it: it outlives this process.
        jsConsumerConfig config;
        jsConsumerConfig_Init(&config);
        config.Durable = options_.durable.c_str();
        config.FilterSubject = filter_.c_str();
        config.AckPolicy = js_AckExplicit;
        config.AckWait =
            std::chrono::duration_cast<std::chrono::nanoseconds>(options_.ack_wait).count();
        config.MaxDeliver = -1;  // counted here: see max_deliveries
        config.MaxAckPending = static_cast<std::int64_t>(
            std::max<std::size_t>(options_.max_in_flight + options_.batch, 1024));
        jsErrCode code = static_cast<jsErrCode>(0);
        jsConsumerInfo* info = nullptr;
        natsStatus s = js_AddConsumer(&info, nats.jetstream(), options_.stream.c_str(), &config,
                                      nullptr, &code);
        if (s != NATS_OK) {  // it may exist with other settings: then use it as it is
            const jsErrCode add_code = code;
            s = js_GetConsumerInfo(&info, nats.jetstream(), options_.stream.c_str(),
                                   options_.durable.c_str(), nullptr, &code);
            if (s != NATS_OK)
                detail::throw_jetstream(s, add_code,
                                        "cannot create the durable consumer " + options_.durable +
                                            " of stream " + options_.stream + " on " + filter_);
        }
        jsConsumerInfo_Destroy(info);
        // Pull requests are made here, on an inbox of this bridge, rather than with the C
        // client's natsSubscription_Fetch: in cnats 3.4 a fetch that receives the answers to
        // requests it queued while reconnecting writes past the end of its list. Here the
        // messages queue on the inbox, and each fetch takes what it asked for.
        const std::string prefix = nats.jetstream_api_prefix();
        next_subject_ = prefix + ".CONSUMER.MSG.NEXT." + options_.stream + "." + options_.durable;
        natsInbox* inbox = nullptr;
        if (const natsStatus made = natsInbox_Create(&inbox); made != NATS_OK)
            detail::throw_status(made, "cannot create an inbox");
        inbox_ = inbox;
        natsInbox_Destroy(inbox);
        natsSubscription* sub = nullptr;
        s = natsConnection_SubscribeSync(&sub, nats.native(), inbox_.c_str());
        if (s != NATS_OK)
            detail::throw_status(s,
                                 "cannot subscribe to the inbox of consumer " + options_.durable);
        // Bounded by the requests in flight (one, or a few across a reconnect) times `batch`.
        (void)natsSubscription_SetPendingLimits(sub, -1, -1);
        subscription_ = sub;
    }

    inbound(const inbound&) = delete;
    inbound& operator=(const inbound&) = delete;

    ~inbound() {
        stop();
        (void)natsSubscription_Unsubscribe(subscription_);
        natsSubscription_Destroy(subscription_);
    }

    /// Messages of `<prefix>.<projection>` become typed events T through `c.decode`.
    /// std::logic_error after start(), std::invalid_argument for a bad projection or codec.
    template <typed_event T>
    void route(std::string_view projection, codec<T> c) {
        if (puller_.joinable())
            throw std::logic_error("eventbus::nats: route() after start()");
        if (!c.decode)
            throw std::invalid_argument("eventbus::nats: the codec has no decode function");
        detail::check_subject(projection, "projection");
        routes_[std::string(projection)] = [decode = std::move(c.decode)](
                                               typename event_store<Policy>::transaction& tx,
                                               std::string_view payload) {
            return tx.publish(decode(payload));
        };
    }

    /// Starts the pulling thread. std::logic_error if started already; std::system_error if
    /// the thread cannot start.
    void start() {
        if (puller_.joinable())
            throw std::logic_error("eventbus::nats: inbound started twice");
        puller_ = std::jthread([this](std::stop_token stop) { pull(stop); });
    }

    /// Stops pulling, then waits until every message handed to the store is settled (acked or
    /// nacked): with the store's handlers still running, or its close() done. Idempotent.
    void stop() {
        if (!puller_.joinable())
            return;
        puller_.request_stop();  // wakes the puller's waits (they take its stop token)
        puller_.join();
        std::unique_lock lock(mutex_);
        settled_.wait(lock, [&] { return in_flight_ == 0; });
    }

    [[nodiscard]] inbound_metrics metrics() const noexcept {
        inbound_metrics m;
        m.received = received_.load(std::memory_order_relaxed);
        m.acked = acked_.load(std::memory_order_relaxed);
        m.nacked = nacked_.load(std::memory_order_relaxed);
        m.dead_lettered = dead_lettered_.load(std::memory_order_relaxed);
        m.malformed = malformed_.load(std::memory_order_relaxed);
        m.ack_errors = ack_errors_.load(std::memory_order_relaxed);
        m.fetch_errors = fetch_errors_.load(std::memory_order_relaxed);
        std::lock_guard lock(mutex_);
        m.in_flight = in_flight_;
        return m;
    }
    [[nodiscard]] const inbound_options& options() const noexcept { return options_; }

  private:
    using transaction = typename event_store<Policy>::transaction;
    using route_fn = std::function<std::error_code(transaction&, std::string_view)>;

    void pull(const std::stop_token& stop) {
        const context ctx(stop);
        const std::size_t batch = std::min(options_.batch, options_.max_in_flight);
        while (!stop.stop_requested()) {
            {
                std::unique_lock lock(mutex_);
                settled_.wait(lock, stop,
                              [&] { return in_flight_ + batch <= options_.max_in_flight; });
            }
            if (stop.stop_requested())
                break;
            if (store_->is_closed()) {  // nothing could be handed over: leave them in the stream
                std::unique_lock lock(mutex_);
                (void)settled_.wait_for(lock, stop, options_.fetch_wait, [] { return false; });
                continue;
            }
            if (const natsStatus s = fetch(ctx, batch); s != NATS_OK && s != NATS_TIMEOUT) {
                fetch_errors_.fetch_add(1, std::memory_order_relaxed);
                tell({status_error(s),
                      {},
                      0,
                      std::string("eventbus::nats: fetch from ") + options_.durable +
                          " failed: " + natsStatus_GetText(s)});
                std::unique_lock lock(mutex_);  // the server may be restarting: not a busy loop
                (void)settled_.wait_for(lock, stop, options_.fetch_wait, [] { return false; });
            }
        }
    }

    // One pull request for up to `batch` messages, expiring after fetch_wait; hands over what
    // arrives (answers to earlier requests included) until `batch` messages, the request's end
    // (a status message: 408 expired, 404 or 409), or fetch_wait and a margin have passed.
    natsStatus fetch(const context& ctx, std::size_t batch) {
        const auto wait = options_.fetch_wait;
        char request[96];
        const int length =
            std::snprintf(request, sizeof request, "{\"batch\":%zu,\"expires\":%lld}", batch,
                          static_cast<long long>(
                              std::chrono::duration_cast<std::chrono::nanoseconds>(wait).count()));
        natsStatus s = natsConnection_PublishRequest(nats_->native(), next_subject_.c_str(),
                                                     inbox_.c_str(), request, length);
        if (s != NATS_OK)
            return s;
        const auto deadline =
            std::chrono::steady_clock::now() + wait + wait / 2 + std::chrono::milliseconds(50);
        for (std::size_t got = 0; got < batch;) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0)
                return NATS_TIMEOUT;
            natsMsg* msg = nullptr;
            s = natsSubscription_NextMsg(&msg, subscription_, left.count());
            if (s != NATS_OK)
                return s;
            const char* status = nullptr;
            if (natsMsg_GetDataLength(msg) == 0 &&
                natsMsgHeader_Get(msg, "Status", &status) == NATS_OK && status != nullptr) {
                const bool heartbeat = std::string_view(status) == "100";
                natsMsg_Destroy(msg);  // else the end of a request (this one, or an earlier one)
                if (heartbeat)
                    continue;
                return NATS_OK;
            }
            if (natsMsg_GetReply(msg) == nullptr) {
                natsMsg_Destroy(msg);  // not a JetStream delivery
                continue;
            }
            ++got;
            hand_over(ctx, msg);
        }
        return NATS_OK;
    }

    /// A delivery's number and stream sequence, from its reply subject:
    /// $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>,
    /// or, with a domain and an account hash, the same after two more tokens.
    static void delivery_of(const char* reply, std::uint32_t& delivery, std::uint64_t& sequence) {
        std::vector<std::string_view> tokens;
        std::string_view rest = reply != nullptr ? reply : "";
        while (!rest.empty()) {
            const std::size_t dot = rest.find('.');
            tokens.push_back(rest.substr(0, dot));
            rest = dot == std::string_view::npos ? std::string_view{} : rest.substr(dot + 1);
        }
        if (tokens.size() < 9 || tokens[0] != "$JS" || tokens[1] != "ACK")
            return;
        const std::size_t at = tokens.size() >= 11 ? 6 : 4;
        const auto number = [](std::string_view t) {
            std::uint64_t v = 0;
            for (const char c : t) {
                if (c < '0' || c > '9')
                    return std::uint64_t{0};
                v = v * 10 + static_cast<std::uint64_t>(c - '0');
            }
            return v;
        };
        delivery = static_cast<std::uint32_t>(std::clamp<std::uint64_t>(
            number(tokens[at]), 1, std::numeric_limits<std::uint32_t>::max()));
        sequence = number(tokens[at + 1]);
    }

    // One fetched message: decoded into a transaction of one event, committed without waiting;
    // settle() acks or naks it once the event is handled.
    void hand_over(const context& ctx, natsMsg* msg) {
        received_.fetch_add(1, std::memory_order_relaxed);
        std::uint32_t delivery = 1;
        std::uint64_t sequence = 0;
        delivery_of(natsMsg_GetReply(msg), delivery, sequence);
        std::optional<transaction> tx;
        try {
            tx.emplace(store_->begin_transaction(
                {.delivery = delivery, .max_deliveries = options_.max_deliveries}));
        } catch (...) {  // no memory: it comes again
            answer(msg, nak_with(std::chrono::milliseconds(100)));
            nacked_.fetch_add(1, std::memory_order_relaxed);
            natsMsg_Destroy(msg);
            return;
        }
        const char* subject_text = natsMsg_GetSubject(msg);
        const std::string_view subject = subject_text != nullptr ? subject_text : "";
        std::string why;
        try {
            const std::string_view under(filter_.data(), filter_.size() - 1);  // "<prefix>."
            if (subject.size() <= under.size() || subject.substr(0, under.size()) != under)
                detail::malformed("subject " + std::string(subject) + " is not under " + filter_);
            const std::string_view projection = subject.substr(under.size());
            const std::string_view payload(natsMsg_GetData(msg),
                                           static_cast<std::size_t>(natsMsg_GetDataLength(msg)));
            if (const auto route = routes_.find(std::string(projection)); route != routes_.end()) {
                (void)route->second(*tx, payload);
            } else {
                const char* id = nullptr;
                if (natsMsgHeader_Get(msg, "Nats-Msg-Id", &id) != NATS_OK)
                    id = nullptr;
                (void)tx->publish(from_json(payload, projection, id != nullptr ? id : ""));
            }
        } catch (const std::bad_alloc&) {  // not the message's fault: it comes again
            answer(msg, nak_with(std::chrono::milliseconds(100)));
            nacked_.fetch_add(1, std::memory_order_relaxed);
            natsMsg_Destroy(msg);
            return;
        } catch (const std::exception& e) {
            why = e.what();
        } catch (...) {
            why = "the decoder threw something that is not a std::exception";
        }
        if (!why.empty() || tx->size() != 1) {
            malformed_.fetch_add(1, std::memory_order_relaxed);
            answer(msg, "+TERM");
            tell({make_error_code(errc::malformed_payload), std::string(subject), sequence,
                  "eventbus::nats: message " + std::to_string(sequence) + " on " +
                      std::string(subject) +
                      " is malformed: " + (why.empty() ? std::string("no event") : why)});
            natsMsg_Destroy(msg);
            return;
        }
        {
            std::lock_guard lock(mutex_);
            ++in_flight_;
        }
        for (;;) {
            const std::error_code refused =
                tx->commit_async(ctx, [this, msg, delivery](std::error_code outcome) noexcept {
                    settle(msg, delivery, outcome);
                });
            if (!refused)
                return;
            // A full return_error store: wait here (the fetching stops, as with block) rather
            // than spend a delivery; closed, or stopping: it comes again.
            if (refused == eventbus::errc::buffer_full && !ctx.done() && !store_->is_closed()) {
                std::unique_lock lock(mutex_);
                (void)settled_.wait_for(lock, ctx.token(), std::chrono::milliseconds(1),
                                        [] { return false; });
                continue;
            }
            settle(msg, delivery, refused);
            return;
        }
    }

    static std::string nak_with(std::chrono::nanoseconds delay) {
        if (delay <= std::chrono::nanoseconds(0))
            return "-NAK";
        return "-NAK {\"delay\":" + std::to_string(delay.count()) + "}";
    }

    /// Acknowledges (+ACK), refuses (-NAK) or terminates (+TERM) a delivery: one publish to
    /// its reply subject, not confirmed.
    natsStatus answer(natsMsg* msg, std::string_view how) noexcept {
        const char* reply = natsMsg_GetReply(msg);
        if (reply == nullptr)
            return NATS_ILLEGAL_STATE;
        return natsConnection_Publish(nats_->native(), reply, how.data(),
                                      static_cast<int>(how.size()));
    }

    // A store's thread (or the pulling one): the event's handlers are done.
    void settle(natsMsg* msg, std::uint32_t delivery, std::error_code outcome) noexcept {
        natsStatus s = NATS_OK;
        if (!outcome) {
            s = answer(msg, "+ACK");
            acked_.fetch_add(1, std::memory_order_relaxed);
        } else if (outcome == eventbus::errc::handler_failed &&
                   delivery >= options_.max_deliveries) {
            s = answer(msg, "+TERM");  // the store dead-lettered it
            dead_lettered_.fetch_add(1, std::memory_order_relaxed);
        } else {
            try {
                const std::chrono::nanoseconds delay =
                    outcome == eventbus::errc::handler_failed
                        ? options_.redelivery.delay(delivery, detail::jitter_draw())
                        : std::chrono::nanoseconds(std::chrono::milliseconds(100));
                s = answer(msg, nak_with(delay));
            } catch (...) {
                s = answer(msg, "-NAK");
            }
            nacked_.fetch_add(1, std::memory_order_relaxed);
        }
        if (s != NATS_OK)
            ack_errors_.fetch_add(1, std::memory_order_relaxed);
        natsMsg_Destroy(msg);
        std::lock_guard lock(mutex_);
        --in_flight_;
        settled_.notify_all();
    }

    void tell(const inbound_error& error) noexcept {
        if (!options_.on_error)
            return;
        try {
            options_.on_error(error);
        } catch (...) {
        }
    }

    connection* nats_;
    event_store<Policy>* store_;
    inbound_options options_;
    std::string filter_;
    std::string next_subject_;  // $JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>
    std::string inbox_;
    natsSubscription* subscription_ = nullptr;
    std::unordered_map<std::string, route_fn> routes_;
    mutable std::mutex mutex_;  // in_flight_
    std::condition_variable_any settled_;
    std::size_t in_flight_ = 0;
    std::atomic<std::uint64_t> received_{0};
    std::atomic<std::uint64_t> acked_{0};
    std::atomic<std::uint64_t> nacked_{0};
    std::atomic<std::uint64_t> dead_lettered_{0};
    std::atomic<std::uint64_t> malformed_{0};
    std::atomic<std::uint64_t> ack_errors_{0};
    std::atomic<std::uint64_t> fetch_errors_{0};
    std::jthread puller_;  // last: stopped before the rest goes
};

}  // namespace eventbus::nats

#endif  // EVENTBUS_NATS_HPP
