// What README.md's C++ fragments may use without declaring it.
//
// tests/readme/extract_snippets.py compiles each ```cpp block of README.md that has no
// `int main(` as the body of a function placed after this header (a ```cpp namespace block: at
// namespace scope after it); its docstring has the rules. Fragments may use:
//
//   - <eventbus/eventbus.hpp> and the standard headers included below;
//   - the std::chrono literals (20ms, 1h);
//   - ctx         a const eventbus::context that never ends;
//   - dispatcher  an eventbus::dispatcher without handlers;
//   - store       an eventbus::event_store<> (sync mode, drop_oldest) on that dispatcher;
//   - house_was_sold {std::string address; int price;} and order_placed {int order_id;
//     double amount;}, the README's example events.
//
// A fragment may declare names of its own, these included: its declarations hide these.
// Fragments are compiled and linked, never run. They compile with the project's warnings as
// errors, except the "unused" ones: an example may show a parameter or a variable that it does
// not use (the pragmas below, after the library's header, which keeps every warning).

#ifndef EVENTBUS_TESTS_README_PRELUDE_HPP
#define EVENTBUS_TESTS_README_PRELUDE_HPP

#include <eventbus/eventbus.hpp>

#include <any>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

namespace eventbus_readme {

struct house_was_sold {
    std::string address;
    int price = 0;
};

struct order_placed {
    int order_id = 0;
    double amount = 0;
};

inline const eventbus::context ctx;
inline eventbus::dispatcher dispatcher;
inline eventbus::event_store<> store(dispatcher, 1024);

}  // namespace eventbus_readme

using namespace std::chrono_literals;
using namespace eventbus_readme;

#if defined(__GNUC__)  // GCC and Clang
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wunused-variable"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#pragma GCC diagnostic ignored "-Wunused-local-typedefs"
#elif defined(_MSC_VER)
#pragma warning(disable : 4100 4101 4189)
#endif

#endif  // EVENTBUS_TESTS_README_PRELUDE_HPP
