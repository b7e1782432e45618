// expect: nodiscard|unused-result
// expect-count: 16
// flags: -Werror=unused-result
// Every call that reports an error (std::error_code) or returns a timer_handle is [[nodiscard]]:
// each statement of audit() ignores one such result, and each must be an error. Nothing else in
// this file may fail to compile.
#include <eventbus/eventbus.hpp>

#include <chrono>
#include <span>

namespace {

struct order {
    int id = 0;
};

void audit(eventbus::event_store<>& store, eventbus::ring_buffer<int>& ring) {
    using namespace std::chrono_literals;
    const eventbus::context ctx;
    int values[2] = {1, 2};

    store.subscribe(ctx, eventbus::event{.id = "e1", .projection = "k", .args = {}});
    store.subscribe(ctx, order{1});
    store.drain(ctx);
    store.close(ctx);
    store.trigger(ctx, eventbus::event{.id = "e2", .projection = "k", .args = {}});
    store.trigger(ctx, order{2});
    store.schedule_after(ctx, 1h, order{3});
    store.schedule(ctx, eventbus::context::clock::now() + 1h, order{4});

    auto tx = store.begin_transaction();
    tx.publish(order{5});
    tx.commit(ctx);
    tx.rollback();

    ring.try_push(1);
    ring.push(ctx, 2);
    ring.try_push_n(std::span<int>(values));
    ring.try_pop();
    ring.pop(ctx);
}

}  // namespace

int main() {
    eventbus::dispatcher dispatcher;
    eventbus::event_store<> store(dispatcher, 64);
    eventbus::ring_buffer<int> ring{64};
    audit(store, ring);
}
