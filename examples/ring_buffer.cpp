// One producer thread pushes 1..1000 into a blocking ring buffer and closes it; the main thread
// pops until the buffer reports that it is closed and drained.
#include <eventbus/eventbus.hpp>

#include <iostream>
#include <thread>

int main() {
    eventbus::ring_buffer<int, eventbus::block> ring{64};

    std::jthread producer{[&ring] {
        for (int i = 1; i <= 1000; ++i) {
            // Cannot fail: the buffer is closed only after the last push.
            (void)ring.push(eventbus::context{}, i);
        }
        ring.close();
    }};

    long long sum = 0;
    while (true) {
        auto r = ring.pop(eventbus::context{});
        if (!r) {
            break;
        }
        sum += *r.value;
    }

    std::cout << "sum = " << sum << '\n';
    return sum == 500500 ? 0 : 1;
}
