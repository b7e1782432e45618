// http_service: an HTTP front for an async eventbus store, with Prometheus metrics.
//
//   service.hpp  bodies to events, the handlers, the refusal counters and /metrics
//   main.cpp     this file: options, the cpp-httplib server and its routes, signals, shutdown
//
// Routes (the server listens on 127.0.0.1 only):
//   POST /events/<projection>  a flat JSON object becomes a dynamic eventbus::event: 202
//   POST /orders               {"id": "...", "amount_cents": N} becomes a typed order_placed
//   POST /baseline             parsed like /events/<projection>, then no bus work
//   GET  /metrics              Prometheus text: the store's eventbus_* metrics and the service's
//   GET  /healthz              200 "ok"; 503 once shutting down
// Refusals: 400 (invalid JSON, not an object, unsupported value, invalid order, too many
// projections), 404 (no such route), 413 (body over --max-body), 503 (ring full: with
// Retry-After; or closed). Each is counted in http_requests_rejected_total{reason}.
//
// SIGINT and SIGTERM are blocked in every thread but one, which waits for them with sigwait and
// stops the server; main then closes the store (everything accepted is handled, within
// --shutdown-timeout-ms), prints one "handled: ..." line and exits 0 if every accepted event was
// handled, 1 otherwise.
#include "service.hpp"

// cpp-httplib is included as a system header (see CMakeLists.txt): its warnings are not ours.
#include <httplib.h>

#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <charconv>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>

namespace {

constexpr std::string_view usage_text =
    "usage: example_http_service [options]\n"
    "  --port N                 TCP port on 127.0.0.1; 0 (default) picks a free one\n"
    "  --capacity N             the store's ring capacity, a power of two (default 4096)\n"
    "  --workers N              the store's worker threads (default 2)\n"
    "  --http-threads N         threads serving connections, one connection each (default 8)\n"
    "  --max-body N             largest request body in bytes; larger: 413 (default 65536)\n"
    "  --max-projections N      distinct projections accepted (default 64)\n"
    "  --handler-delay-us N     each handler call sleeps N microseconds (default 0)\n"
    "  --shutdown-timeout-ms N  how long shutdown waits for the handlers (default 10000)\n";

struct config {
    int port = 0;
    http_service::options service;
    std::size_t http_threads = 8;
    std::size_t max_body = 64 * 1024;
    long shutdown_timeout_ms = 10000;
};

template <class T>
bool parse_number(std::string_view text, T& out) {
    const char* end = text.data() + text.size();
    const auto [ptr, ec] = std::from_chars(text.data(), end, out);
    return ec == std::errc() && ptr == end;
}

std::optional<config> parse_options(int argc, char** argv) {
    config cfg;
    for (int i = 1; i < argc; ++i) {
        const std::string_view name = argv[i];
        if (name == "--help" || name == "-h") {
            std::cout << usage_text;
            std::exit(0);
        }
        if (i + 1 >= argc) {
            std::cerr << "missing value for " << name << '\n' << usage_text;
            return std::nullopt;
        }
        const std::string_view value = argv[++i];
        bool ok = false;
        long long number = 0;
        if (parse_number(value, number) && number >= 0) {
            ok = true;
            const auto n = static_cast<std::size_t>(number);
            if (name == "--port" && number <= 65535)
                cfg.port = static_cast<int>(number);
            else if (name == "--capacity")
                cfg.service.capacity = n;
            else if (name == "--workers" && n > 0)
                cfg.service.workers = n;
            else if (name == "--http-threads" && n > 0)
                cfg.http_threads = n;
            else if (name == "--max-body")
                cfg.max_body = n;
            else if (name == "--max-projections")
                cfg.service.max_projections = n;
            else if (name == "--handler-delay-us")
                cfg.service.handler_delay = std::chrono::microseconds(number);
            else if (name == "--shutdown-timeout-ms")
                cfg.shutdown_timeout_ms = static_cast<long>(number);
            else
                ok = false;
        }
        if (!ok) {
            std::cerr << "bad option: " << name << ' ' << value << '\n' << usage_text;
            return std::nullopt;
        }
    }
    return cfg;
}

void send(httplib::Response& res, http_service::reply r) {
    res.status = r.status;
    if (r.retry_after)
        res.set_header("Retry-After", "1");
    res.set_content(std::move(r.body), "application/json");
}

}  // namespace

int main(int argc, char** argv) {
    const std::optional<config> cfg = parse_options(argc, argv);
    if (!cfg)
        return 2;

    // Before any thread starts (the store's workers, the server's pool): they inherit the mask,
    // so SIGINT and SIGTERM reach only the thread that waits for them below.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    if (const int error = pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr); error != 0) {
        std::cerr << "pthread_sigmask: " << std::system_category().message(error) << '\n';
        return 1;
    }

    std::optional<http_service::service> svc;
    try {
        svc.emplace(cfg->service);
    } catch (const std::exception& e) {  // e.g. a capacity that is not a power of two
        std::cerr << "cannot create the store: " << e.what() << '\n';
        return 2;
    }

    std::atomic<bool> shutting_down{false};
    httplib::Server server;
    const std::size_t http_threads = cfg->http_threads;
    server.new_task_queue = [http_threads] { return new httplib::ThreadPool(http_threads); };
    server.set_payload_max_length(cfg->max_body);
    // The headers and the body of an answer are written separately: without TCP_NODELAY, Nagle's
    // algorithm holds the body until the client's delayed ACK, 40 ms per keep-alive request.
    server.set_tcp_nodelay(true);
    // A connection is not closed after some number of requests: cpp-httplib listens with a
    // backlog of 5, so clients reconnecting all at once would see SYNs dropped and wait for the
    // kernel's 1 s retransmission.
    server.set_keep_alive_max_count(std::numeric_limits<std::size_t>::max());
    server.set_keep_alive_timeout(2);  // also bounds how long shutdown waits for idle clients
    server.set_read_timeout(5);
    server.set_write_timeout(5);

    server.Post(R"(/events/([A-Za-z0-9_.\-]{1,64}))",
                [&](const httplib::Request& req, httplib::Response& res) {
                    send(res, svc->post_event(req.matches[1].str(), req.body));
                });
    server.Post("/orders", [&](const httplib::Request& req, httplib::Response& res) {
        send(res, svc->post_order(req.body));
    });
    server.Post("/baseline", [&](const httplib::Request& req, httplib::Response& res) {
        send(res, svc->baseline(req.body));
    });
    server.Get("/metrics", [&](const httplib::Request&, httplib::Response& res) {
        res.set_content(svc->metrics_text(), "text/plain; version=0.0.4");
    });
    server.Get("/healthz", [&](const httplib::Request&, httplib::Response& res) {
        if (shutting_down.load()) {
            res.status = 503;
            res.set_content("shutting down", "text/plain");
        } else {
            res.set_content("ok", "text/plain");
        }
    });
    // Called for every answer of 400 or more: the routes' own already carry a JSON body; those
    // cpp-httplib makes itself (no route, body too large, a malformed request) are counted here.
    server.set_error_handler(
        httplib::Server::HandlerWithResponse([&](const httplib::Request&, httplib::Response& res) {
            if (!res.body.empty())
                return httplib::Server::HandlerResponse::Unhandled;
            http_service::reason why = http_service::reason::bad_request;
            std::string message = "bad request";
            if (res.status == 404) {
                why = http_service::reason::not_found;
                message = "no such route";
            } else if (res.status == 413) {
                why = http_service::reason::too_large;
                message = "the body exceeds " + std::to_string(cfg->max_body) + " bytes";
            }
            svc->count(why);
            res.set_content(http_service::error_body(
                                http_service::reason_names[static_cast<std::size_t>(why)], message),
                            "application/json");
            return httplib::Server::HandlerResponse::Handled;
        }));

    int port = cfg->port;
    if (port == 0) {
        port = server.bind_to_any_port("127.0.0.1");
    } else if (!server.bind_to_port("127.0.0.1", port)) {
        port = -1;
    }
    if (port <= 0) {
        std::cerr << "cannot listen on 127.0.0.1:" << cfg->port << '\n';
        return 1;
    }

    // Waits for SIGINT or SIGTERM, outside any signal handler, so it may do anything. A stop
    // before listen_after_bind has started would be lost: it repeats until listening ends.
    std::atomic<bool> listening_done{false};
    std::atomic<int> received{0};
    std::thread signal_waiter([&] {
        int signal_number = 0;
        if (sigwait(&stop_signals, &signal_number) != 0)
            return;
        received.store(signal_number);
        shutting_down.store(true);
        while (!listening_done.load()) {
            server.stop();
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
    });

    std::cout << "listening on 127.0.0.1:" << port << std::endl;  // flushed: scripts wait for it
    const bool listened = server.listen_after_bind();             // returns once stopped and idle
    listening_done.store(true);
    shutting_down.store(true);
    if (received.load() == 0)  // the server ended by itself: let the waiter go
        pthread_kill(signal_waiter.native_handle(), SIGTERM);
    signal_waiter.join();

    const auto deadline = std::chrono::milliseconds(cfg->shutdown_timeout_ms);
    const std::error_code closed = svc->close(eventbus::context{}.with_timeout(deadline));
    if (closed)
        std::cerr << "close: " << closed.message() << " (not everything was handled in time)\n";
    std::cout << svc->final_line() << std::endl;

    if (!listened || received.load() == 0) {
        std::cerr << "the server stopped without a signal\n";
        return 1;
    }
    return !closed && svc->reconciles() ? 0 : 1;
}
