// A real nats-server for tests and benchmarks: started with JetStream on 127.0.0.1 and a free
// port, its store in a fresh temporary directory; killed and restarted on the same port and
// store; stopped (SIGTERM, then SIGKILL) and its directory removed by the destructor.
#ifndef EVENTBUS_TESTS_NATS_SERVER_HPP
#define EVENTBUS_TESTS_NATS_SERVER_HPP

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace eventbus_test {

/// A child process: started with arguments, its output to a file; killed or terminated.
class child_process {
  public:
    child_process() = default;
    child_process(const std::vector<std::string>& argv, const std::string& log) {
        start(argv, log);
    }
    child_process(const child_process&) = delete;
    child_process& operator=(const child_process&) = delete;
    ~child_process() { stop(); }

    void start(const std::vector<std::string>& argv, const std::string& log) {
        std::vector<char*> args;
        for (const std::string& a : argv)
            args.push_back(const_cast<char*>(a.c_str()));
        args.push_back(nullptr);
        const pid_t pid = fork();
        if (pid < 0)
            throw std::system_error(errno, std::generic_category(), "fork");
        if (pid == 0) {
            // However the test process ends (a crash, a timeout's SIGKILL), its children go too.
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
            if (fd >= 0) {
                dup2(fd, 1);
                dup2(fd, 2);
            }
            execv(args[0], args.data());
            _exit(127);
        }
        pid_ = pid;
    }
    /// SIGKILL: as a crash.
    void kill() { signal_and_wait(SIGKILL, std::chrono::seconds(0)); }
    /// SIGTERM, then SIGKILL after `grace`. Returns the exit status (-1 if killed or none).
    int stop(std::chrono::milliseconds grace = std::chrono::seconds(5)) {
        return signal_and_wait(SIGTERM, grace);
    }
    /// Waits for the process to exit by itself, at most `timeout`; its exit code, or -1.
    int wait(std::chrono::milliseconds timeout) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (pid_ > 0) {
            int status = 0;
            if (waitpid(pid_, &status, WNOHANG) == pid_) {
                pid_ = -1;
                return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
            }
            if (std::chrono::steady_clock::now() > deadline)
                return -1;
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        return -1;
    }
    [[nodiscard]] bool running() const noexcept { return pid_ > 0; }

  private:
    int signal_and_wait(int sig, std::chrono::milliseconds grace) {
        if (pid_ <= 0)
            return -1;
        ::kill(pid_, sig);
        const auto deadline = std::chrono::steady_clock::now() + grace;
        int status = 0;
        for (;;) {
            const pid_t done = waitpid(pid_, &status, WNOHANG);
            if (done == pid_)
                break;
            if (std::chrono::steady_clock::now() >= deadline) {
                ::kill(pid_, SIGKILL);
                waitpid(pid_, &status, 0);
                break;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }

    pid_t pid_ = -1;
};

/// A port on 127.0.0.1 that nothing listens on now (the kernel's choice).
inline int free_loopback_port() {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    address.sin_port = 0;
    socklen_t size = sizeof address;
    if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
        getsockname(fd, reinterpret_cast<sockaddr*>(&address), &size) != 0) {
        if (fd >= 0)
            close(fd);
        throw std::system_error(errno, std::generic_category(), "no free port");
    }
    close(fd);
    return ntohs(address.sin_port);
}

inline bool accepts_connections(int port) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    address.sin_port = htons(static_cast<std::uint16_t>(port));
    const bool ok =
        fd >= 0 && connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

class nats_server {
  public:
    /// `binary`: the nats-server executable. Starts it and waits (at most 10 s) until it
    /// accepts connections; std::runtime_error, with its log's path, if it does not.
    explicit nats_server(std::string binary)
        : binary_(std::move(binary)), port_(free_loopback_port()) {
        char pattern[] = "/tmp/eventbus-nats-XXXXXX";
        if (mkdtemp(pattern) == nullptr)
            throw std::system_error(errno, std::generic_category(), "mkdtemp");
        dir_ = pattern;
        start();
    }
    nats_server(const nats_server&) = delete;
    nats_server& operator=(const nats_server&) = delete;
    ~nats_server() {
        process_.stop();
        std::error_code ignored;
        std::filesystem::remove_all(dir_, ignored);
    }

    [[nodiscard]] std::string url() const { return "nats://127.0.0.1:" + std::to_string(port_); }
    [[nodiscard]] int port() const noexcept { return port_; }
    [[nodiscard]] const std::string& directory() const noexcept { return dir_; }
    [[nodiscard]] std::string log() const { return dir_ + "/server.log"; }

    /// As a crash: SIGKILL, nothing flushed.
    void kill() { process_.kill(); }
    /// Starts it again on the same port with the same store (after kill()).
    void start() {
        process_.start({binary_, "-a", "127.0.0.1", "-p", std::to_string(port_), "-js", "-sd",
                        dir_ + "/store"},
                       log());
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (!accepts_connections(port_)) {
            if (std::chrono::steady_clock::now() > deadline)
                throw std::runtime_error("nats-server did not start; see " + log());
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
    }

  private:
    std::string binary_;
    int port_;
    std::string dir_;
    child_process process_;
};

}  // namespace eventbus_test

#endif  // EVENTBUS_TESTS_NATS_SERVER_HPP
