// examples/nats consumer: a durable JetStream consumer feeding a local async store, whose
// handlers record each event's id, one line per event, in a file (the "effect").
//
//   example_nats_consumer --server nats://127.0.0.1:4222 --durable billing --record ids.txt
//                         [--dedupe] [--expect N] [--handle-us U] [--ack-wait-ms MS]
//
// A message is acknowledged only once its handler returned, so a consumer killed mid-stream
// and started again handles every event at least once: those handled but not yet
// acknowledged when it died come again. With --dedupe the handler first looks the id up in
// what it recorded (reloaded at start), and each event's effect happens exactly once.
// Runs until SIGINT or SIGTERM, or until it has recorded N distinct ids (--expect); then stops
// pulling, closes the store and prints its counts. Exits 0 when they add up.
#include <eventbus/eventbus.hpp>
#include <eventbus/nats.hpp>

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <exception>
#include <fstream>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_set>

#include "events.hpp"

namespace {

/// The handlers' effect: appends ids to a file, each line with one write(2), so that a line
/// is either in the file or not, however the process ends.
class recorder {
  public:
    recorder(const std::string& path, bool dedupe) : dedupe_(dedupe) {
        std::ifstream in(path);  // what an earlier run recorded
        for (std::string line; std::getline(in, line);)
            seen_.insert(line);
        fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd_ < 0)
            throw std::runtime_error("cannot open " + path);
    }
    ~recorder() { ::close(fd_); }

    void record(const std::string& id) {
        std::lock_guard lock(mutex_);
        if (dedupe_ && seen_.contains(id))
            return;  // a redelivery of what was done already
        const std::string line = id + "\n";
        if (::write(fd_, line.data(), line.size()) != static_cast<ssize_t>(line.size()))
            throw std::runtime_error("cannot record " + id);  // a NAK: it comes again
        seen_.insert(id);
    }
    /// Ids recorded, by this run or an earlier one.
    std::size_t distinct() {
        std::lock_guard lock(mutex_);
        return seen_.size();
    }

  private:
    bool dedupe_;
    int fd_ = -1;
    std::mutex mutex_;
    std::unordered_set<std::string> seen_;
};

}  // namespace

int main(int argc, char** argv) {
    std::string server = "nats://127.0.0.1:4222";
    std::string durable = "billing";
    std::string path = "ids.txt";
    bool dedupe = false;
    std::size_t expect = 0;
    long handle_us = 0;
    std::chrono::milliseconds ack_wait{30000};  // how soon a dead consumer's messages come again
    for (int i = 1; i < argc; ++i) {
        const std::string_view flag = argv[i];
        const bool has_value = i + 1 < argc;
        if (flag == "--dedupe")
            dedupe = true;
        else if (flag == "--server" && has_value)
            server = argv[++i];
        else if (flag == "--durable" && has_value)
            durable = argv[++i];
        else if (flag == "--record" && has_value)
            path = argv[++i];
        else if (flag == "--expect" && has_value)
            expect = std::stoul(argv[++i]);
        else if (flag == "--handle-us" && has_value)
            handle_us = std::stol(argv[++i]);
        else if (flag == "--ack-wait-ms" && has_value)
            ack_wait = std::chrono::milliseconds(std::stol(argv[++i]));
        else {
            std::fprintf(stderr,
                         "usage: %s [--server URL] [--durable NAME] [--record FILE] [--dedupe] "
                         "[--expect N] [--handle-us U] [--ack-wait-ms MS]\n",
                         argv[0]);
            return 2;
        }
    }
    // SIGINT and SIGTERM are waited for below, by this thread only (blocked in every thread
    // started after this).
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
    try {
        recorder effects(path, dedupe);
        const auto work = [&](const std::string& id) {
            if (handle_us > 0)
                std::this_thread::sleep_for(std::chrono::microseconds(handle_us));
            effects.record(id);
        };
        eventbus::dispatcher handlers;
        (void)handlers.on<shop::order_placed>(
            [&](const shop::order_placed& o) { work("order-" + std::to_string(o.id)); });
        (void)handlers.on("user_signed_up", [&](const eventbus::context&, const eventbus::args& a) {
            work("user-" + std::to_string(eventbus::arg<std::int64_t>(a, "number")));
        });

        eventbus::nats::connection nats({.servers = {server}, .name = "example-consumer"});
        eventbus::nats::ensure_stream(nats, {.name = "EVENTS", .subjects = {"events.>"}});
        eventbus::event_store<eventbus::block> store(
            handlers, 1024, {.async = true, .workers = 2, .dead_letter_capacity = 1024});
        eventbus::nats::inbound in(
            nats, store,
            {.durable = durable, .ack_wait = ack_wait, .on_error = [](const auto& error) {
                 std::fprintf(stderr, "%s\n", error.message.c_str());
             }});
        in.route<shop::order_placed>("orders", shop::order_codec());
        in.start();

        const timespec tick{0, 50'000'000};
        while (expect == 0 || effects.distinct() < expect)
            if (sigtimedwait(&stop_signals, nullptr, &tick) > 0)
                break;
        in.stop();  // everything handed to the store is settled (acked or nacked)
        if (store.close(eventbus::context{}))
            return 1;
        const eventbus::nats::inbound_metrics m = in.metrics();
        const eventbus::store_metrics s = store.metrics();
        std::printf(
            "received %llu, acked %llu, nacked %llu, dead letters %llu, malformed %llu; "
            "recorded %zu distinct\n",
            static_cast<unsigned long long>(m.received), static_cast<unsigned long long>(m.acked),
            static_cast<unsigned long long>(m.nacked),
            static_cast<unsigned long long>(m.dead_lettered),
            static_cast<unsigned long long>(m.malformed), effects.distinct());
        // Every message was acked, nacked, dead-lettered or malformed, and every event the
        // store took was handled.
        const bool adds_up = m.received == m.acked + m.nacked + m.dead_lettered + m.malformed &&
                             s.published == s.handled + s.unhandled + s.dropped;
        return adds_up ? 0 : 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
