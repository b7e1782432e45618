// Consumer smoke test: only needs the public header and the eventbus::eventbus target.
#include <eventbus/eventbus.hpp>

int main() {
    eventbus::ring_buffer<int, eventbus::return_error> r{8};
    (void)r.try_push(1);
    auto v = r.try_pop();
    return v && *v == 1 ? 0 : 1;
}
