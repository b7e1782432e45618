// expect: eventbus: a handler must be callable as one of
// A handler of dynamic events must take the context too: (const context&, const args&).
#include <eventbus/eventbus.hpp>

int main() {
    eventbus::dispatcher d;
    d.on("k", [](const eventbus::args&) {});
}
