// The README's first example: one producer thread pushes 1..1000 into a blocking ring and closes
// it; the main thread pops until the ring reports that it is closed and drained.
#include <eventbus/eventbus.hpp>

#include <iostream>
#include <thread>

int main() {
    eventbus::ring_buffer<int, eventbus::block> ring{1024};  // capacity: a power of two

    std::jthread producer{[&] {
        for (int i = 1; i <= 1000; ++i)
            (void)ring.push(eventbus::context{}, i);  // waits for room
        ring.close();
    }};
    long long sum = 0;
    while (auto r = ring.pop(eventbus::context{}))
        sum += *r.value;  // until closed and drained

    std::cout << "sum = " << sum << '\n';
    return sum == 500500 ? 0 : 1;
}
