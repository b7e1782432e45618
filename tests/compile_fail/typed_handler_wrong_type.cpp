// expect: eventbus: a handler of typed events of type T must be callable as
// on<int>(fn) with a handler that cannot take an int.
#include <eventbus/eventbus.hpp>

#include <string>

int main() {
    eventbus::dispatcher d;
    d.on<int>([](const std::string&) {});
}
