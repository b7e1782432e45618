// Shared by the fuzz targets: reading the input bytes as a sequence of small choices, and
// stopping with an explanation when the library and its model disagree.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <stop_token>
#include <string>
#include <system_error>
#include <thread>

#include <eventbus/eventbus.hpp>

namespace eventbus_fuzz {

/// The fuzzer's bytes, consumed front to back. Past the end every read returns 0, so that any
/// input, however short, is a complete program.
class input {
  public:
    input(const std::uint8_t* data, std::size_t size) noexcept : data_(data), size_(size) {}

    [[nodiscard]] bool empty() const noexcept { return pos_ >= size_; }

    std::uint8_t byte() noexcept { return pos_ < size_ ? data_[pos_++] : std::uint8_t{0}; }

    /// A number in [0, n), n > 0, from one byte (two when n exceeds 256).
    std::size_t below(std::size_t n) noexcept {
        if (n <= 256)
            return byte() % n;
        const std::size_t high = byte();
        return ((high << 8) | byte()) % n;
    }

    bool flag() noexcept { return (byte() & 1) != 0; }

  private:
    const std::uint8_t* data_;
    std::size_t size_;
    std::size_t pos_ = 0;
};

/// Prints why the run is wrong, then aborts (libFuzzer saves the input as a crash).
[[noreturn]] inline void fail(const char* format, ...) {
    std::fputs("eventbus fuzz: MISMATCH: ", stderr);
    va_list list;
    va_start(list, format);
    std::vfprintf(stderr, format, list);
    va_end(list);
    std::fputs("\n", stderr);
    std::fflush(stderr);
    std::abort();
}

inline std::string describe(const std::error_code& ec) {
    if (!ec)
        return "no error";
    return ec.message() + " (" + std::to_string(ec.value()) + ")";
}

inline void expect_error(const char* what, const std::error_code& got,
                         const std::error_code& want) {
    if (got != want)
        fail("%s returned %s, the model expects %s", what, describe(got).c_str(),
             describe(want).c_str());
}

/// The contexts an operation can be given, chosen by one byte.
enum class ctx_kind : std::uint8_t {
    never,           ///< context{}: never ends
    cancelled,       ///< stop already requested
    expired,         ///< deadline already passed
    cancelled_late,  ///< both: cancellation is reported first
    far_deadline,    ///< a deadline an hour away: has one, not ended
    count
};

/// Builds the contexts of `ctx_kind` once per run.
class contexts {
  public:
    contexts() {
        stopped_.request_stop();
        const auto past = std::chrono::steady_clock::now() - std::chrono::seconds(1);
        cancelled_ = eventbus::context(stopped_.get_token());
        expired_ = eventbus::context{}.with_deadline(past);
        both_ = cancelled_.with_deadline(past);
        far_ = eventbus::context{}.with_timeout(std::chrono::hours(1));
    }

    [[nodiscard]] const eventbus::context& get(ctx_kind kind) const noexcept {
        switch (kind) {
            case ctx_kind::cancelled:
                return cancelled_;
            case ctx_kind::expired:
                return expired_;
            case ctx_kind::cancelled_late:
                return both_;
            case ctx_kind::far_deadline:
                return far_;
            case ctx_kind::never:
            case ctx_kind::count:
                break;
        }
        return never_;
    }

    static bool ended(ctx_kind kind) noexcept {
        return kind == ctx_kind::cancelled || kind == ctx_kind::expired ||
               kind == ctx_kind::cancelled_late;
    }

    /// The error an ended context reports (cancellation first), else none.
    static std::error_code error_of(ctx_kind kind) {
        switch (kind) {
            case ctx_kind::cancelled:
            case ctx_kind::cancelled_late:
                return eventbus::errc::cancelled;
            case ctx_kind::expired:
                return eventbus::errc::deadline_exceeded;
            default:
                return {};
        }
    }

    static ctx_kind pick(input& in) {
        return static_cast<ctx_kind>(in.below(static_cast<std::size_t>(ctx_kind::count)));
    }

  private:
    std::stop_source stopped_;
    eventbus::context never_;
    eventbus::context cancelled_;
    eventbus::context expired_;
    eventbus::context both_;
    eventbus::context far_;
};

/// A second thread that runs one call at a time for the fuzz target, which waits for it: a
/// thread other than the first producer, without the cost of starting one per call. Started by
/// the first call; joined at exit.
class other_thread {
  public:
    static void run(const std::function<void()>& call) {
        static other_thread instance;
        instance.call(call);
    }

    other_thread(const other_thread&) = delete;
    other_thread& operator=(const other_thread&) = delete;

  private:
    other_thread() : thread_([this] { serve(); }) {}
    ~other_thread() {
        {
            std::lock_guard lock(mutex_);
            stopping_ = true;
        }
        wake_.notify_all();
        thread_.join();
    }

    void call(const std::function<void()>& fn) {
        std::unique_lock lock(mutex_);
        task_ = &fn;
        wake_.notify_all();
        wake_.wait(lock, [this] { return task_ == nullptr; });
    }

    void serve() {
        std::unique_lock lock(mutex_);
        for (;;) {
            wake_.wait(lock, [this] { return stopping_ || task_ != nullptr; });
            if (task_ == nullptr)
                return;
            (*task_)();
            task_ = nullptr;
            wake_.notify_all();
        }
    }

    std::mutex mutex_;
    std::condition_variable wake_;
    const std::function<void()>* task_ = nullptr;
    bool stopping_ = false;
    std::thread thread_;
};

}  // namespace eventbus_fuzz
