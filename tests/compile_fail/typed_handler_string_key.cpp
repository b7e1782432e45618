// expect: eventbus: a typed handler
// A typed handler under a string key: typed events are keyed by their type (on<order>(fn)).
#include <eventbus/eventbus.hpp>

struct order {
    int id = 0;
};

int main() {
    eventbus::dispatcher d;
    d.on("order", [](const order&) {});
}
