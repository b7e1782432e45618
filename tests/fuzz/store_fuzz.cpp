// A sync event_store<Policy> (default store_options) against a model written from README.md's
// contract. The input chooses the policy and the capacity (1 to 128: batches of 64 are split),
// then a sequence of operations: handlers added (typed and dynamic, under four keys, with
// priorities, registered in every way the dispatcher offers, some where they must be refused)
// and removed (through a registration, a scoped_registration, a copy, or never: handles
// dropped), hooks and middleware added and removed, typed and dynamic events subscribed (one or
// a burst), publish, trigger, transactions (begin, publish, commit, rollback), schedule in the
// past, schedule_after(0) and far in the future with cancel, drain and close, with contexts that
// have or have not ended.
//
// Handlers may do one thing each when called (up to three handlers deep, 32 times per
// operation): remove themselves ("once") or another handler, add a handler, subscribe a
// follow-up event, publish (nested), trigger, commit a transaction, drain, close or schedule;
// and then throw std::runtime_error, or an int, or return. The model predicts every handler and
// hook call in order (a sync store's order is deterministic), what each call and operation
// returns, and every counter of metrics(); all of it is compared after every operation, with
// the identity published + triggered == handled + unhandled + dropped + (events still in the
// ring).
//
// A handler of a block store schedules in the past only with an ended context: an immediate
// schedule() waits for room as subscribe does outside a handler, which from inside a handler of
// a full store would wait for its own thread.
#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "fuzz_support.hpp"

namespace {

using namespace std::chrono_literals;
using eventbus::context;
using eventbus::errc;
using eventbus_fuzz::contexts;
using eventbus_fuzz::ctx_kind;
using eventbus_fuzz::fail;
using eventbus_fuzz::input;

constexpr std::uint32_t absent = 0xFFFFFFFFU;  // a log value for "none"
constexpr std::size_t max_handlers = 24;
constexpr std::size_t max_hooks = 8;
constexpr int max_depth = 3;
// Handler actions per top-level operation: nested triggers and publishes fan out (each call may
// reach every handler of a key), and a few hundred calls per operation find as much as millions.
constexpr int action_budget = 32;
constexpr std::size_t tx_slots = 2;
constexpr std::size_t timer_slots = 4;
constexpr std::size_t batch_size = 64;  // events a sync publish claims at once

// Payload instances alive now: typed events and the token every dynamic event's args hold.
std::atomic<long> live_tokens{0};

struct token {
    token() noexcept { live_tokens.fetch_add(1, std::memory_order_relaxed); }
    token(const token&) noexcept { live_tokens.fetch_add(1, std::memory_order_relaxed); }
    token(token&&) noexcept { live_tokens.fetch_add(1, std::memory_order_relaxed); }
    token& operator=(const token&) noexcept = default;
    token& operator=(token&&) noexcept = default;
    ~token() { live_tokens.fetch_sub(1, std::memory_order_relaxed); }
};

struct small_ev {  // stored inline in a ring slot
    std::uint32_t id = 0;
    token life{};
};
struct big_ev {  // boxed: larger than the inline payload
    std::uint32_t id = 0;
    std::array<std::uint64_t, 8> bulk{};
    token life{};
};
static_assert(eventbus::detail::stored_inline<small_ev>);
static_assert(!eventbus::detail::stored_inline<big_ev>);

// Event kinds: dynamic under "a" or "b", typed small or big, and dynamic events under the key
// of a typed one (whose typed handlers refuse them, failing the call).
enum event_kind : std::uint8_t {
    kind_a,
    kind_b,
    kind_small,
    kind_big,
    kind_dyn_small,
    kind_dyn_big,
    kind_count
};
// The handler table's keys: "a", "b", key::of<small_ev>(), key::of<big_ev>().
constexpr std::size_t key_count = 4;

constexpr std::uint8_t table_key(std::uint8_t kind) {
    return kind < key_count ? kind : static_cast<std::uint8_t>(kind - 2);
}
constexpr bool typed_kind(std::uint8_t kind) {
    return kind == kind_small || kind == kind_big;
}

enum class action : std::uint8_t {
    none,
    remove_self,
    remove_other,
    add_handler,
    subscribe,
    publish,
    trigger,
    commit,
    drain,
    close,
    schedule_past,
    schedule_future,
    count
};

struct handler_spec {
    std::uint8_t key = 0;     // table key
    bool typed = false;       // typed form (else it takes args)
    bool wrong_type = false;  // typed, registered under the other type's key: refused
    action act = action::none;
    std::uint8_t param = 0;
    std::uint8_t throws = 0;  // 0: returns; 1: std::runtime_error; 2: an int
    bool returns_result = false;
    bool named = false;
    bool scoped = false;
    std::uint8_t variant = 0;  // which registration call
    int priority = 0;          // handler_options::priority: -1, 0 or 1

    // A typed handler under a string key, or under the other type's key.
    [[nodiscard]] bool refused() const { return typed && (key < 2 || wrong_type); }
};

// What a handler adds when its action is add_handler.
handler_spec derived_spec(std::uint8_t param) {
    handler_spec spec;
    spec.key = static_cast<std::uint8_t>(param % key_count);
    spec.typed = spec.key >= 2 && (param & 4) != 0;
    spec.returns_result = (param & 8) != 0;
    spec.named = (param & 16) != 0;
    spec.variant = static_cast<std::uint8_t>(param >> 5);
    spec.priority = static_cast<int>(param % 3) - 1;
    return spec;
}

enum class hook_kind : std::uint8_t { before, after, error, failure, unhandled, middleware, count };

// The log both sides write: handler and hook calls, what handlers' actions and the operations
// returned.
enum class what : std::uint8_t {
    call,        // a: handler, b: event, c: whether its context had ended
    act,         // a: handler, b: action, c: outcome
    before,      // a: hook, b: event (absent for a typed event)
    middleware,  // a: hook, b: event (absent for a typed event)
    after,       // a: hook, b: event (absent for a typed event), c: result (absent: it threw)
    error,       // a: hook, b: event (absent for a typed event)
    failure,     // a: hook, b: event, c: the handler's name
    unhandled,   // a: hook, b: event
    result,      // a: operation, b and c: what it returned
};

struct entry {
    what kind;
    std::uint32_t a;
    std::uint32_t b;
    std::uint32_t c;
    bool operator==(const entry&) const = default;
};

std::string describe(const entry& e) {
    static const char* const names[] = {"call",  "act",     "before",    "middleware", "after",
                                        "error", "failure", "unhandled", "result"};
    const auto number = [](std::uint32_t v) {
        return v == absent ? std::string("-") : std::to_string(v);
    };
    return std::string(names[static_cast<std::size_t>(e.kind)]) + "(" + number(e.a) + ", " +
           number(e.b) + ", " + number(e.c) + ")";
}

// An error code as a log value: its errc, or 1000 + its value for another category.
std::uint32_t code(const std::error_code& ec) {
    if (!ec)
        return 0;
    const auto value = static_cast<std::uint32_t>(ec.value());
    return ec.category() == eventbus::error_category() ? value : 1000 + value;
}
std::uint32_t code(errc e) {
    return static_cast<std::uint32_t>(e);
}

enum class op : std::uint8_t {
    add_handler,
    remove_handler,
    subscribe,
    burst,
    publish,
    trigger,
    tx_begin,
    tx_publish,
    tx_commit,
    tx_rollback,
    schedule_past,
    schedule_future,
    cancel_timer,
    drain,
    close,
    add_hook,
    remove_hook,
    count
};

const char* const op_names[] = {
    "add handler",  "remove handler", "subscribe",    "subscribe burst", "publish",
    "trigger",      "begin tx",       "tx publish",   "tx commit",       "tx rollback",
    "schedule now", "schedule later", "cancel timer", "drain",           "close",
    "add hook",     "remove hook",
};
static_assert(std::size(op_names) == static_cast<std::size_t>(op::count));

// One top-level operation, decided by the driver (with the model's help, so that nothing waits).
struct op_args {
    op code = op::publish;
    handler_spec spec;
    std::uint8_t kind = 0;
    ctx_kind ctx = ctx_kind::never;
    std::size_t slot = 0;
    std::uint8_t variant = 0;
};

std::uint32_t id_of(const eventbus::event& ev) {
    return ev.id.empty() ? absent : static_cast<std::uint32_t>(std::stoul(ev.id));
}
std::uint32_t id_of(const eventbus::event_view& view) {
    if (const eventbus::event* dynamic = view.dynamic())
        return id_of(*dynamic);
    if (const small_ev* small = view.get_if<small_ev>())
        return small->id;
    if (const big_ev* big = view.get_if<big_ev>())
        return big->id;
    fail("a hook saw a typed event of an unknown type");
}
std::uint32_t name_of(std::string_view name) {
    if (name.empty())
        return absent;
    if (name.front() != 'h')
        fail("a failure hook saw the handler name '%.*s'", static_cast<int>(name.size()),
             name.data());
    return static_cast<std::uint32_t>(std::stoul(std::string(name.substr(1))));
}

eventbus::key string_key(std::uint8_t key) {
    return eventbus::key(key == 0 ? "a" : "b");
}
eventbus::key projection_of(std::uint8_t kind) {
    switch (table_key(kind)) {
        case 2:
            return eventbus::key::of<small_ev>();
        case 3:
            return eventbus::key::of<big_ev>();
        default:
            return string_key(table_key(kind));
    }
}
eventbus::event dynamic_event(std::uint8_t kind, std::uint32_t id) {
    return eventbus::event{.id = std::to_string(id),
                           .projection = projection_of(kind),
                           .args = {{"n", id}, {"token", token{}}}};
}

// The real store ////////////////////////////////////////////////////////////////////////////////

template <class Policy>
class real_bus {
  public:
    using store_type = eventbus::event_store<Policy>;
    static constexpr bool blocks = std::is_same_v<Policy, eventbus::block>;

    real_bus(std::size_t capacity, const contexts& cx) : store_(handlers_, capacity), cx_(cx) {}

    std::vector<entry> log;

    void apply(const op_args& a) {
        budget_ = action_budget;
        const context& ctx = cx_.get(a.ctx);
        switch (a.code) {
            case op::add_handler:
                result(a, add(a.spec));
                break;
            case op::remove_handler:
                remove(a.slot, a.variant);
                break;
            case op::subscribe:
            case op::burst:
                result(a, code(subscribe(ctx, a.kind, next_id_++, a.variant)));
                break;
            case op::publish:
                store_.publish();
                break;
            case op::trigger:
                result(a, code(trigger(ctx, a.kind, next_id_++)));
                break;
            case op::tx_begin:
                tx_[a.slot] = store_.begin_transaction();
                break;
            case op::tx_publish:
                if (tx_[a.slot]) {
                    const std::uint32_t id = next_id_++;
                    result(a, code(typed_kind(a.kind)
                                       ? tx_publish_typed(*tx_[a.slot], a.kind, id)
                                       : tx_[a.slot]->publish(dynamic_event(a.kind, id))));
                }
                break;
            case op::tx_commit:
                if (tx_[a.slot])
                    result(a, code(tx_[a.slot]->commit(ctx)));
                break;
            case op::tx_rollback:
                if (tx_[a.slot])
                    result(a, code(tx_[a.slot]->rollback()));
                break;
            case op::schedule_past: {
                const eventbus::timer_handle h = schedule_now(ctx, a.kind, next_id_++, a.variant);
                result(a, code(h.error()), static_cast<bool>(h));
                break;
            }
            case op::schedule_future:
                timers_[a.slot] = schedule_later(ctx, a.kind, next_id_++, a.variant);
                result(a, code(timers_[a.slot].error()), static_cast<bool>(timers_[a.slot]));
                break;
            case op::cancel_timer:
                result(a, timers_[a.slot].cancel());
                break;
            case op::drain:
                result(a, code(store_.drain(ctx)));
                break;
            case op::close: {
                std::error_code error = store_.close(ctx);
                // With an ended context, close() may find the timer thread still finishing and
                // return the context's error; it has then closed all the same.
                if (timers_started_ && contexts::ended(a.ctx) && error == contexts::error_of(a.ctx))
                    error = {};
                result(a, code(error));
                break;
            }
            case op::add_hook:
                result(a, add_hook(static_cast<hook_kind>(a.variant)));
                break;
            case op::remove_hook:
                if (a.slot < hook_count_)
                    hooks_[a.slot].remove();
                break;
            case op::count:
                break;
        }
    }

    [[nodiscard]] eventbus::store_metrics metrics() const { return store_.metrics(); }
    [[nodiscard]] bool registered(std::size_t h) const {
        return specs_[h].scoped ? static_cast<bool>(scoped_[h]) : static_cast<bool>(plain_[h]);
    }
    [[nodiscard]] std::size_t handler_count() const { return count_; }
    [[nodiscard]] bool tx_exists(std::size_t s) const { return tx_[s].has_value(); }
    [[nodiscard]] bool tx_open(std::size_t s) const { return tx_[s] && tx_[s]->is_open(); }
    [[nodiscard]] std::size_t tx_size(std::size_t s) const { return tx_[s] ? tx_[s]->size() : 0; }
    [[nodiscard]] bool timer_pending(std::size_t s) const { return static_cast<bool>(timers_[s]); }

  private:
    void result(const op_args& a, std::uint32_t b, std::uint32_t c = 0) {
        log.push_back({what::result, static_cast<std::uint32_t>(a.code), b, c});
    }

    // Every handler's body.
    eventbus::result called(std::uint32_t h, std::uint32_t event_id, const context& ctx) {
        log.push_back({what::call, h, event_id, ctx.done() ? 1U : 0U});
        const handler_spec spec = specs_[h];
        ++depth_;
        struct leave {
            int& depth;
            ~leave() { --depth; }
        } const left{depth_};
        if (depth_ <= max_depth && budget_ > 0) {
            --budget_;
            act(h, spec, ctx);
        }
        if (spec.throws == 1)
            throw std::runtime_error("handler " + std::to_string(h));
        if (spec.throws == 2)
            throw 42;
        return eventbus::result{std::to_string(h)};
    }

    void act(std::uint32_t h, const handler_spec& spec, const context& ctx) {
        const auto kind = static_cast<std::uint8_t>(spec.param % kind_count);
        const auto note = [&](std::uint32_t outcome) {
            log.push_back({what::act, h, static_cast<std::uint32_t>(spec.act), outcome});
        };
        switch (spec.act) {
            case action::none:
            case action::count:
                break;
            case action::remove_self:
                remove(h, 0);
                break;
            case action::remove_other:
                if (count_ != 0)
                    remove(spec.param % count_, spec.param / 32);
                break;
            case action::add_handler:
                note(add(derived_spec(spec.param)));
                break;
            case action::subscribe:
                note(code(subscribe(ctx, kind, next_id_++, spec.param / 32)));
                break;
            case action::publish:
                store_.publish();
                break;
            case action::trigger:
                note(code(trigger(ctx, kind, next_id_++)));
                break;
            case action::commit: {
                auto tx = store_.begin_transaction();
                const std::size_t n = 1 + (spec.param / kind_count) % 2;
                for (std::size_t i = 0; i < n; ++i) {
                    const std::uint32_t id = next_id_++;
                    const std::error_code buffered = typed_kind(kind)
                                                         ? tx_publish_typed(tx, kind, id)
                                                         : tx.publish(dynamic_event(kind, id));
                    if (buffered)
                        fail("an open transaction refused an event: %s",
                             buffered.message().c_str());
                }
                note(code(tx.commit(ctx)));
                break;
            }
            case action::drain:
                note(code(store_.drain(ctx)));
                break;
            case action::close:
                note(code(store_.close(ctx)));
                break;
            case action::schedule_past: {
                const eventbus::timer_handle t = schedule_now(
                    blocks ? cx_.get(ctx_kind::cancelled) : ctx, kind, next_id_++, spec.param / 32);
                note(code(t.error()) + (static_cast<bool>(t) ? 100U : 0U));
                break;
            }
            case action::schedule_future: {
                eventbus::timer_handle& t = timers_[spec.param % timer_slots];
                t = schedule_later(ctx, kind, next_id_++, spec.param / 32);
                note(code(t.error()) + (static_cast<bool>(t) ? 100U : 0U));
                break;
            }
        }
    }

    template <class T>
    auto typed_fn(std::uint32_t h, bool returns) {
        return [this, h, returns](const context& ctx, const T& ev) {
            eventbus::result r = called(h, ev.id, ctx);
            if (!returns)
                r.message.clear();
            return r;
        };
    }
    template <class T>
    auto typed_void_fn(std::uint32_t h) {
        return [this, h](const context& ctx, const T& ev) { (void)called(h, ev.id, ctx); };
    }
    auto dynamic_fn(std::uint32_t h) {
        return [this, h](const context& ctx, const eventbus::args& a) {
            return called(h, eventbus::arg<std::uint32_t>(a, "n"), ctx);
        };
    }
    auto dynamic_void_fn(std::uint32_t h) {
        return [this, h](const context& ctx, const eventbus::args& a) {
            (void)called(h, eventbus::arg<std::uint32_t>(a, "n"), ctx);
        };
    }

    template <class T, class Other>
    eventbus::registration register_typed(std::uint32_t h, const handler_spec& spec,
                                          eventbus::handler_options options) {
        eventbus::dispatcher& d = (spec.variant & 4) != 0 ? store_.dispatcher() : handlers_;
        const eventbus::key k = eventbus::key::of<T>();
        if (spec.key < 2)  // refused: a typed handler under a string key
            return d.on(string_key(spec.key), eventbus::handler(typed_void_fn<T>(h)), options);
        if (spec.wrong_type)  // refused: a typed handler under another type's key
            return d.on(k, eventbus::handler(typed_void_fn<Other>(h)), options);
        switch (spec.variant % 4) {
            case 0:
                if (spec.returns_result)
                    return d.on<T>(typed_fn<T>(h, true), options);
                return d.on<T>(typed_void_fn<T>(h), options);
            case 1:
                if (spec.returns_result)
                    return d.on(k, typed_fn<T>(h, true), options);
                return d.on(k, typed_void_fn<T>(h), options);
            case 2: {
                const bool returns = spec.returns_result;
                auto generic = [this, h, returns](const context& ctx, const auto& ev) {
                    eventbus::result r = called(h, ev.id, ctx);
                    if (!returns)
                        r.message.clear();
                    return r;
                };
                return d.on(k, eventbus::handler::of<T>(generic), options);
            }
            default:
                if (spec.returns_result)
                    return d.on(k, eventbus::handler(typed_fn<T>(h, true)), options);
                return d.on(k, eventbus::handler(typed_void_fn<T>(h)), options);
        }
    }

    eventbus::registration register_dynamic(std::uint32_t h, const handler_spec& spec,
                                            eventbus::handler_options options) {
        eventbus::dispatcher& d = (spec.variant & 4) != 0 ? store_.dispatcher() : handlers_;
        if (spec.key >= 2) {
            const eventbus::key k =
                spec.key == 2 ? eventbus::key::of<small_ev>() : eventbus::key::of<big_ev>();
            if (spec.returns_result)
                return d.on(k, eventbus::handler(dynamic_fn(h)), options);
            return d.on(k, eventbus::handler(dynamic_void_fn(h)), options);
        }
        const std::string_view name = spec.key == 0 ? "a" : "b";
        switch (spec.variant % 3) {
            case 0:
                if (spec.returns_result)
                    return d.on(name, dynamic_fn(h), options);
                return d.on(name, dynamic_void_fn(h), options);
            case 1:
                if (spec.returns_result)
                    return d.on(eventbus::key(name), dynamic_fn(h), options);
                return d.on(eventbus::key(name), dynamic_void_fn(h), options);
            default:
                if (spec.returns_result)
                    return d.on(std::string(name), dynamic_fn(h), options);
                return d.on(std::string(name), dynamic_void_fn(h), options);
        }
    }

    // The new handler's number, absent when there is no room, 1000 + the number when refused.
    std::uint32_t add(const handler_spec& spec) {
        if (count_ == max_handlers)
            return absent;
        const auto h = static_cast<std::uint32_t>(count_);
        specs_[h] = spec;
        eventbus::handler_options options;
        options.priority = spec.priority;
        if (spec.named)
            options.name = "h" + std::to_string(h);
        eventbus::registration r;
        try {
            if (!spec.typed)
                r = register_dynamic(h, spec, options);
            else if (spec.key == 3)
                r = register_typed<big_ev, small_ev>(h, spec, options);
            else
                r = register_typed<small_ev, big_ev>(h, spec, options);
        } catch (const std::invalid_argument&) {
            return 1000 + h;
        }
        if (spec.refused())
            fail("handler %u was registered where it must be refused", h);
        ++count_;
        if (spec.scoped)
            scoped_[h] = std::move(r);
        else
            plain_[h] = std::move(r);
        return h;
    }

    // variant 0: remove(); 1: a copy's remove() / a scoped one assigned an empty one;
    // 2: scoped release() then remove(); 3: drop the handle without removing.
    void remove(std::size_t h, std::size_t variant) {
        if (h >= count_)
            return;
        if (specs_[h].scoped) {
            switch (variant % 4) {
                case 0:
                    scoped_[h].remove();
                    break;
                case 1:
                    scoped_[h] = eventbus::scoped_registration{};
                    break;
                case 2:
                    scoped_[h].release().remove();
                    break;
                default:
                    (void)scoped_[h].release();
                    break;
            }
            return;
        }
        switch (variant % 4) {
            case 0:
            case 2:
                plain_[h].remove();
                break;
            case 1: {
                eventbus::registration copy = plain_[h];
                copy.remove();
                break;
            }
            default:
                plain_[h] = eventbus::registration{};
                break;
        }
    }

    std::error_code subscribe(const context& ctx, std::uint8_t kind, std::uint32_t id,
                              std::size_t variant) {
        if (kind == kind_small) {
            if (variant % 2 == 0)
                return store_.subscribe(ctx, small_ev{id});
            const small_ev value{id};
            return store_.subscribe(ctx, value);
        }
        if (kind == kind_big)
            return store_.subscribe(ctx, big_ev{id, {}});
        return store_.subscribe(ctx, dynamic_event(kind, id));
    }

    std::error_code trigger(const context& ctx, std::uint8_t kind, std::uint32_t id) {
        if (kind == kind_small)
            return store_.trigger(ctx, small_ev{id});
        if (kind == kind_big)
            return store_.trigger(ctx, big_ev{id, {}});
        return store_.trigger(ctx, dynamic_event(kind, id));
    }

    static std::error_code tx_publish_typed(typename store_type::transaction& tx, std::uint8_t kind,
                                            std::uint32_t id) {
        if (kind == kind_small)
            return tx.publish(small_ev{id});
        return tx.publish(big_ev{id, {}});
    }

    template <class Event>
    eventbus::timer_handle schedule_now_event(const context& ctx, Event&& ev, std::size_t variant) {
        using clock = std::chrono::steady_clock;
        switch (variant % 5) {
            case 0:
                return store_.schedule(ctx, clock::time_point::min(), std::forward<Event>(ev));
            case 1:
                return store_.schedule(ctx, clock::now() - 1s, std::forward<Event>(ev));
            case 2:
                return store_.schedule(ctx, std::chrono::system_clock::time_point::min(),
                                       std::forward<Event>(ev));
            case 3:
                return store_.schedule_after(ctx, 0ms, std::forward<Event>(ev));
            default:
                return store_.schedule_after(ctx, -5s, std::forward<Event>(ev));
        }
    }
    eventbus::timer_handle schedule_now(const context& ctx, std::uint8_t kind, std::uint32_t id,
                                        std::size_t variant) {
        if (kind == kind_small)
            return schedule_now_event(ctx, small_ev{id}, variant);
        if (kind == kind_big)
            return schedule_now_event(ctx, big_ev{id, {}}, variant);
        return schedule_now_event(ctx, dynamic_event(kind, id), variant);
    }

    template <class Event>
    eventbus::timer_handle schedule_later_event(const context& ctx, Event&& ev,
                                                std::size_t variant) {
        switch (variant % 3) {
            case 0:
                return store_.schedule_after(ctx, 1h, std::forward<Event>(ev));
            case 1:
                return store_.schedule(ctx, std::chrono::steady_clock::now() + 1h,
                                       std::forward<Event>(ev));
            default:
                return store_.schedule(ctx, std::chrono::system_clock::now() + 1h,
                                       std::forward<Event>(ev));
        }
    }
    eventbus::timer_handle schedule_later(const context& ctx, std::uint8_t kind, std::uint32_t id,
                                          std::size_t variant) {
        eventbus::timer_handle t;
        if (kind == kind_small)
            t = schedule_later_event(ctx, small_ev{id}, variant);
        else if (kind == kind_big)
            t = schedule_later_event(ctx, big_ev{id, {}}, variant);
        else
            t = schedule_later_event(ctx, dynamic_event(kind, id), variant);
        if (static_cast<bool>(t))
            timers_started_ = true;
        return t;
    }

    std::uint32_t add_hook(hook_kind kind) {
        if (hook_count_ == max_hooks)
            return absent;
        const auto k = static_cast<std::uint32_t>(hook_count_);
        switch (kind) {
            case hook_kind::before:
                hooks_[k] = store_.on_before([this, k](const context&, const eventbus::event& ev) {
                    log.push_back({what::before, k, id_of(ev), 0});
                });
                break;
            case hook_kind::after:
                hooks_[k] = store_.on_after([this, k](const context&, const eventbus::event& ev,
                                                      const eventbus::result& r,
                                                      const std::exception_ptr& error) {
                    const std::uint32_t outcome = error               ? absent
                                                  : r.message.empty() ? absent - 1
                                                                      : name_of("h" + r.message);
                    log.push_back({what::after, k, id_of(ev), outcome});
                });
                break;
            case hook_kind::error:
                hooks_[k] = store_.on_error(eventbus::error_hook(
                    [this, k](const context&, const eventbus::event& ev, std::exception_ptr) {
                        log.push_back({what::error, k, id_of(ev), 0});
                    }));
                break;
            case hook_kind::failure:
                hooks_[k] = store_.on_error(eventbus::failure_hook(
                    [this, k](const context&, const eventbus::handler_failure& f) {
                        log.push_back({what::failure, k, id_of(f.event), name_of(f.handler)});
                    }));
                break;
            case hook_kind::unhandled:
                hooks_[k] = store_.on_unhandled(
                    [this, k](const context&, const eventbus::event_view& view) {
                        log.push_back({what::unhandled, k, id_of(view), 0});
                    });
                break;
            default:
                hooks_[k] = store_.use([this, k](const context& ctx, const eventbus::event& ev,
                                                 const eventbus::next_handler& next) {
                    log.push_back({what::middleware, k, id_of(ev), 0});
                    return next(ctx, ev);
                });
                break;
        }
        ++hook_count_;
        return k;
    }

    eventbus::dispatcher handlers_;
    store_type store_;
    const contexts& cx_;
    std::array<handler_spec, max_handlers> specs_{};
    std::array<eventbus::registration, max_handlers> plain_;
    std::array<eventbus::scoped_registration, max_handlers> scoped_;
    std::size_t count_ = 0;
    std::array<eventbus::registration, max_hooks> hooks_;
    std::size_t hook_count_ = 0;
    std::array<eventbus::timer_handle, timer_slots> timers_;
    bool timers_started_ = false;
    // Destroyed before the store, which they must not outlive.
    std::array<std::optional<typename store_type::transaction>, tx_slots> tx_;
    std::uint32_t next_id_ = 0;
    int depth_ = 0;
    int budget_ = 0;  // handler actions left in this operation
};

// The model ////////////////////////////////////////////////////////////////////////////////////

template <class Policy>
class model_bus {
  public:
    static constexpr bool drops = std::is_same_v<Policy, eventbus::drop_oldest>;
    static constexpr bool blocks = std::is_same_v<Policy, eventbus::block>;

    explicit model_bus(std::size_t capacity) : capacity_(capacity) {}

    std::vector<entry> log;
    eventbus::store_metrics m;

    [[nodiscard]] std::size_t pending() const { return ring_.size(); }
    [[nodiscard]] bool closed() const { return closed_; }
    [[nodiscard]] std::size_t capacity() const { return capacity_; }
    [[nodiscard]] bool would_wait(std::size_t n) const {
        return blocks && !closed_ && n <= capacity_ && ring_.size() + n > capacity_;
    }
    [[nodiscard]] std::size_t tx_events(std::size_t s) const { return tx_[s].buffered.size(); }
    [[nodiscard]] bool registered(std::size_t h) const {
        return h < handlers_.size() && handlers_[h].handle && !handlers_[h].removed;
    }
    [[nodiscard]] std::size_t handler_count() const { return handlers_.size(); }
    [[nodiscard]] bool tx_exists(std::size_t s) const { return tx_[s].exists; }
    [[nodiscard]] bool tx_open(std::size_t s) const { return tx_[s].exists && tx_[s].open; }
    [[nodiscard]] bool timer_pending(std::size_t s) const {
        return timer_slot_[s] >= 0 && timers_[static_cast<std::size_t>(timer_slot_[s])];
    }

    void apply(const op_args& a) {
        budget_ = action_budget;
        const bool ended = contexts::ended(a.ctx);
        const std::error_code ctx_error = contexts::error_of(a.ctx);
        switch (a.code) {
            case op::add_handler:
                result(a, add(a.spec));
                break;
            case op::remove_handler:
                remove(a.slot, a.variant);
                break;
            case op::subscribe:
            case op::burst:
                result(a, code(subscribe(ended, ctx_error, {next_id_++, a.kind})));
                break;
            case op::publish:
                publish();
                break;
            case op::trigger:
                result(a, code(trigger(ended, ctx_error, {next_id_++, a.kind})));
                break;
            case op::tx_begin:
                tx_[a.slot] = tx_state{true, true, {}};
                break;
            case op::tx_publish:
                if (tx_[a.slot].exists) {
                    const event e{next_id_++, a.kind};
                    if (tx_[a.slot].open)
                        tx_[a.slot].buffered.push_back(e);
                    result(a, tx_[a.slot].open ? 0 : code(errc::finished));
                }
                break;
            case op::tx_commit:
                if (tx_[a.slot].exists)
                    result(a, code(commit(tx_[a.slot], ended, ctx_error)));
                break;
            case op::tx_rollback:
                if (tx_[a.slot].exists) {
                    const bool was_open = std::exchange(tx_[a.slot].open, false);
                    tx_[a.slot].buffered.clear();
                    result(a, was_open ? 0 : code(errc::finished));
                }
                break;
            case op::schedule_past:
                result(a, code(schedule_now(ended, ctx_error, {next_id_++, a.kind})), 0);
                break;
            case op::schedule_future: {
                const std::int32_t t = schedule_later(ended, ctx_error, next_id_++);
                timer_slot_[a.slot] = t;
                result(a, t >= 0 ? 0 : code(timer_error(ended, ctx_error)), t >= 0 ? 1 : 0);
                break;
            }
            case op::cancel_timer: {
                const std::int32_t t = timer_slot_[a.slot];
                const bool stopped = t >= 0 && timers_[static_cast<std::size_t>(t)];
                if (stopped) {
                    timers_[static_cast<std::size_t>(t)] = false;
                    ++m.cancelled;
                }
                result(a, stopped ? 1 : 0);
                break;
            }
            case op::drain:
                result(a, code(drain()));
                break;
            case op::close:
                close(ended);
                result(a, 0);
                break;
            case op::add_hook:
                result(a, add_hook(static_cast<hook_kind>(a.variant)));
                break;
            case op::remove_hook:
                if (a.slot < hooks_.size())
                    hooks_[a.slot].live = false;
                break;
            case op::count:
                break;
        }
    }

  private:
    struct event {
        std::uint32_t id;
        std::uint8_t kind;
        std::int32_t tx = -1;  // the commit's record
        std::uint64_t position = 0;
    };
    struct handler {
        handler_spec spec;
        bool removed = false;
        bool handle = true;  // a registration can still remove it
    };
    struct hook {
        hook_kind kind;
        bool live = true;
    };
    struct tx_state {
        bool exists = false;
        bool open = false;
        std::vector<event> buffered;
    };
    struct record {
        bool failed = false;
        bool dropped = false;
    };
    // What a dispatch reads once, when it starts: the handlers of each key, and the hooks.
    struct snapshot {
        std::array<std::vector<std::uint32_t>, key_count> table;
        std::vector<std::pair<std::uint32_t, hook_kind>> hooks;
    };

    void result(const op_args& a, std::uint32_t b, std::uint32_t c = 0) {
        log.push_back({what::result, static_cast<std::uint32_t>(a.code), b, c});
    }

    [[nodiscard]] snapshot take_snapshot() const {
        snapshot s;
        s.table = table_;
        for (std::size_t k = 0; k < hooks_.size(); ++k)
            if (hooks_[k].live)
                s.hooks.emplace_back(static_cast<std::uint32_t>(k), hooks_[k].kind);
        return s;
    }

    std::uint32_t add(const handler_spec& spec) {
        if (handlers_.size() == max_handlers)
            return absent;
        const auto h = static_cast<std::uint32_t>(handlers_.size());
        if (spec.refused())
            return 1000 + h;
        handlers_.push_back({spec, false, true});
        // After every handler of the same or a higher priority.
        std::vector<std::uint32_t>& list = table_[spec.key];
        const auto before = std::find_if(list.begin(), list.end(), [&](std::uint32_t other) {
            return handlers_[other].spec.priority < spec.priority;
        });
        list.insert(before, h);
        return h;
    }

    void remove(std::size_t h, std::size_t variant) {
        if (h >= handlers_.size() || !handlers_[h].handle)
            return;
        handler& target = handlers_[h];
        const std::size_t how = variant % 4;
        if (how == 3) {  // the handle is dropped; nobody can remove it any more
            target.handle = false;
            return;
        }
        if (how == 2 && target.spec.scoped)  // released, then removed through what was released
            target.handle = false;
        if (target.removed)
            return;
        target.removed = true;
        std::erase(table_[target.spec.key], static_cast<std::uint32_t>(h));
    }

    // One event into the ring: closed, room, drop_oldest's drop, return_error's refusal, block's
    // would_deadlock from a handler or the ended context's error outside one.
    std::error_code push(event e, bool ended, const std::error_code& ctx_error) {
        if (closed_)
            return errc::closed;
        if (ring_.size() == capacity_) {
            if constexpr (drops) {
                drop_front();
            } else if constexpr (blocks) {
                if (depth_ > 0)
                    return errc::would_deadlock;
                if (!ended)
                    fail("the model was asked for a subscribe that waits");
                return ctx_error;
            } else {
                return errc::buffer_full;
            }
        }
        e.position = m.published++;
        ring_.push_back(e);
        return {};
    }

    void drop_front() {
        if (ring_.front().tx >= 0)
            records_[static_cast<std::size_t>(ring_.front().tx)].dropped = true;
        ring_.pop_front();
        ++m.dropped;
    }

    std::error_code subscribe(bool ended, const std::error_code& ctx_error, const event& e) {
        return push(e, ended, ctx_error);
    }

    void publish() {
        if (!ring_.empty())
            dispatch_until(m.published);
    }

    // Handles the events before `limit` in batches of up to 64, with the handlers and hooks as
    // they were when it started.
    void dispatch_until(std::uint64_t limit) {
        const snapshot s = take_snapshot();
        for (;;) {
            std::vector<event> batch;
            while (batch.size() < batch_size && !ring_.empty() && ring_.front().position < limit) {
                batch.push_back(ring_.front());
                ring_.pop_front();
            }
            if (batch.empty())
                return;
            for (const event& e : batch) {
                const std::size_t errors = dispatch(e, s, stopped_);
                if (e.tx >= 0 && errors != 0)
                    records_[static_cast<std::size_t>(e.tx)].failed = true;
            }
        }
    }

    // One event's handler calls; returns how many of them failed.
    std::size_t dispatch(const event& e, const snapshot& s, bool ctx_done) {
        bool reached = false;
        std::size_t errors = 0;
        for (const std::uint32_t h : s.table[table_key(e.kind)]) {
            if (handlers_[h].removed)
                continue;
            reached = true;
            if (run_one(h, e, s, ctx_done))
                ++errors;
        }
        if (reached) {
            ++m.handled;
        } else {
            ++m.unhandled;
            for (const auto& [id, kind] : s.hooks)
                if (kind == hook_kind::unhandled)
                    log.push_back({what::unhandled, id, e.id, 0});
        }
        return errors;
    }

    // One handler call with its hooks; true if it failed.
    bool run_one(std::uint32_t h, const event& e, const snapshot& s, bool ctx_done) {
        const std::uint32_t hook_id = typed_kind(e.kind) ? absent : e.id;
        for (const auto& [id, kind] : s.hooks)
            if (kind == hook_kind::before)
                log.push_back({what::before, id, hook_id, 0});
        for (const auto& [id, kind] : s.hooks)
            if (kind == hook_kind::middleware)
                log.push_back({what::middleware, id, hook_id, 0});
        const handler_spec spec = handlers_[h].spec;
        bool failed = true;  // a typed handler given a dynamic event, or the other way round
        if (spec.typed == typed_kind(e.kind)) {
            log.push_back({what::call, h, e.id, ctx_done ? 1U : 0U});
            ++depth_;
            if (depth_ <= max_depth && budget_ > 0) {
                --budget_;
                act(h, spec, ctx_done);
            }
            --depth_;
            failed = spec.throws != 0;
        }
        ++m.processed;
        if (failed)
            ++m.errors;
        for (const auto& [id, kind] : s.hooks)
            if (kind == hook_kind::after)
                log.push_back({what::after, id, hook_id,
                               failed                ? absent
                               : spec.returns_result ? h
                                                     : absent - 1});
        if (failed) {
            for (const auto& [id, kind] : s.hooks)
                if (kind == hook_kind::error)
                    log.push_back({what::error, id, hook_id, 0});
            for (const auto& [id, kind] : s.hooks)
                if (kind == hook_kind::failure)
                    log.push_back({what::failure, id, e.id, spec.named ? h : absent});
        }
        return failed;
    }

    void act(std::uint32_t h, const handler_spec& spec, bool ctx_done) {
        const auto kind = static_cast<std::uint8_t>(spec.param % kind_count);
        const std::error_code ctx_error =
            ctx_done ? std::error_code(errc::cancelled) : std::error_code();
        const auto note = [&](std::uint32_t outcome) {
            log.push_back({what::act, h, static_cast<std::uint32_t>(spec.act), outcome});
        };
        switch (spec.act) {
            case action::none:
            case action::count:
                break;
            case action::remove_self:
                remove(h, 0);
                break;
            case action::remove_other:
                if (!handlers_.empty())
                    remove(spec.param % handlers_.size(), spec.param / 32);
                break;
            case action::add_handler:
                note(add(derived_spec(spec.param)));
                break;
            case action::subscribe:
                note(code(subscribe(ctx_done, ctx_error, {next_id_++, kind})));
                break;
            case action::publish:
                publish();
                break;
            case action::trigger:
                note(code(trigger(ctx_done, ctx_error, {next_id_++, kind})));
                break;
            case action::commit: {
                tx_state tx{true, true, {}};
                const std::size_t n = 1 + (spec.param / kind_count) % 2;
                for (std::size_t i = 0; i < n; ++i)
                    tx.buffered.push_back({next_id_++, kind});
                note(code(commit(tx, ctx_done, ctx_error)));
                break;
            }
            case action::drain:
                note(code(drain()));
                break;
            case action::close:
                close(ctx_done);
                note(0);
                break;
            case action::schedule_past: {
                const event e{next_id_++, kind};
                note(code(blocks ? schedule_now(true, errc::cancelled, e)
                                 : schedule_now(ctx_done, ctx_error, e)));
                break;
            }
            case action::schedule_future: {
                const std::int32_t t = schedule_later(ctx_done, ctx_error, next_id_++);
                timer_slot_[spec.param % timer_slots] = t;
                note(t >= 0 ? 100U : code(timer_error(ctx_done, ctx_error)));
                break;
            }
        }
    }

    std::error_code trigger(bool ended, const std::error_code& ctx_error, const event& e) {
        if (ended)
            return ctx_error;
        if (closed_ && depth_ == 0)
            return errc::closed;
        const snapshot s = take_snapshot();
        const std::size_t errors = dispatch(e, s, false);
        ++m.triggered;
        return errors != 0 ? std::error_code(errc::handler_failed) : std::error_code();
    }

    std::error_code commit(tx_state& tx, bool ended, const std::error_code& ctx_error) {
        if (!tx.open)
            return errc::finished;
        const std::size_t n = tx.buffered.size();
        if (n == 0) {
            tx.open = false;
            return {};
        }
        if (n > capacity_)
            return errc::exceeds_capacity;
        if (closed_)
            return errc::closed;
        if (ring_.size() + n > capacity_) {
            if constexpr (blocks) {
                if (depth_ > 0)
                    return errc::would_deadlock;
                if (!ended)
                    fail("the model was asked for a commit that waits");
                return ctx_error;
            } else if constexpr (!drops) {
                return errc::buffer_full;
            }
        }
        const auto r = static_cast<std::int32_t>(records_.size());
        records_.push_back({});
        for (event e : tx.buffered) {
            if (ring_.size() == capacity_)
                drop_front();
            e.tx = r;
            e.position = m.published++;
            ring_.push_back(e);
        }
        tx.buffered.clear();
        tx.open = false;
        publish();
        const record& done = records_[static_cast<std::size_t>(r)];
        if (done.dropped)
            return errc::dropped;
        if (done.failed)
            return errc::handler_failed;
        return {};
    }

    std::error_code schedule_now(bool ended, const std::error_code& ctx_error, const event& e) {
        if (ended)
            return ctx_error;
        const std::error_code error = push(e, ended, ctx_error);
        if (!error)
            publish();
        return error;
    }

    // The timer's number, or -1 (then timer_error says why).
    std::int32_t schedule_later(bool ended, const std::error_code&, std::uint32_t) {
        if (ended || closed_)
            return -1;
        ++m.scheduled;
        timers_.push_back(true);
        return static_cast<std::int32_t>(timers_.size() - 1);
    }
    [[nodiscard]] std::error_code timer_error(bool ended, const std::error_code& ctx_error) const {
        return ended ? ctx_error : std::error_code(errc::closed);
    }

    std::error_code drain() {
        if (depth_ > 0)
            return errc::would_deadlock;
        publish();
        return {};
    }

    void close(bool ended) {
        for (std::size_t t = 0; t < timers_.size(); ++t) {
            if (timers_[t]) {
                timers_[t] = false;
                ++m.cancelled;
            }
        }
        closed_ = true;
        if (ended)
            stopped_ = true;
        dispatch_until(m.published);
    }

    std::uint32_t add_hook(hook_kind kind) {
        if (hooks_.size() == max_hooks)
            return absent;
        hooks_.push_back({kind, true});
        return static_cast<std::uint32_t>(hooks_.size() - 1);
    }

    std::size_t capacity_;
    std::deque<event> ring_;
    bool closed_ = false;
    bool stopped_ = false;  // the handlers' context: close() was given an ended one
    std::vector<handler> handlers_;
    std::array<std::vector<std::uint32_t>, key_count> table_;
    std::vector<hook> hooks_;
    std::array<tx_state, tx_slots> tx_;
    std::vector<record> records_;
    std::vector<bool> timers_;  // pending
    std::array<std::int32_t, timer_slots> timer_slot_{-1, -1, -1, -1};
    std::uint32_t next_id_ = 0;
    int depth_ = 0;
    int budget_ = 0;
};

// The driver ///////////////////////////////////////////////////////////////////////////////////

template <class Policy>
class run {
  public:
    run(input& in, std::size_t capacity) : in_(in), real_(capacity, cx_), model_(capacity) {}

    void go() {
        while (!in_.empty()) {
            const auto code = static_cast<op>(in_.below(static_cast<std::size_t>(op::count)));
            if (code == op::burst) {
                op_args a = decode(op::burst);
                const std::size_t n = 1 + in_.below(100);
                for (std::size_t i = 0; i < n; ++i) {
                    a.kind = static_cast<std::uint8_t>((a.kind + i) % kind_count);
                    a.ctx = model_.would_wait(1) ? ctx_kind::cancelled : ctx_kind::never;
                    apply(a);
                }
            } else {
                apply(decode(code));
            }
        }
        // Everything accepted is handled by close(): the counters then add up exactly.
        op_args last;
        last.code = op::close;
        apply(last);
        const eventbus::store_metrics m = real_.metrics();
        if (m.published + m.triggered != m.handled + m.unhandled + m.dropped)
            fail(
                "after close(): published %llu + triggered %llu != handled %llu + unhandled "
                "%llu + dropped %llu",
                ull(m.published), ull(m.triggered), ull(m.handled), ull(m.unhandled),
                ull(m.dropped));
        // Nothing scheduled falls due within a run (an hour ahead): close() cancelled it all.
        if (m.scheduled != m.cancelled)
            fail("after close(): scheduled %llu != cancelled %llu", ull(m.scheduled),
                 ull(m.cancelled));
    }

  private:
    static unsigned long long ull(std::uint64_t v) { return v; }

    // A context for a call that may wait: ended, unless the model says it returns at once.
    ctx_kind waiting_context(bool would_wait) {
        ctx_kind kind = contexts::pick(in_);
        if (would_wait && !contexts::ended(kind))
            kind = ctx_kind::cancelled;
        return kind;
    }

    op_args decode(op code) {
        op_args a;
        a.code = code;
        switch (code) {
            case op::add_handler: {
                const std::uint8_t shape = in_.byte();
                a.spec.key = static_cast<std::uint8_t>(shape % key_count);
                a.spec.typed = (shape & 4) != 0 && (a.spec.key >= 2 || (shape & 0xF0) == 0xF0);
                a.spec.wrong_type = a.spec.typed && (shape & 0xF8) == 0xE8;
                a.spec.act =
                    static_cast<action>(in_.below(static_cast<std::size_t>(action::count)));
                a.spec.param = in_.byte();
                const std::uint8_t flags = in_.byte();
                a.spec.throws = static_cast<std::uint8_t>(flags % 3);
                a.spec.returns_result = (flags & 4) != 0;
                a.spec.named = (flags & 8) != 0;
                a.spec.scoped = (flags & 16) != 0;
                a.spec.variant = static_cast<std::uint8_t>(flags >> 5);
                a.spec.priority = static_cast<int>(in_.below(3)) - 1;
                break;
            }
            case op::remove_handler:
                a.slot = in_.below(max_handlers);
                a.variant = static_cast<std::uint8_t>(in_.below(4));
                break;
            case op::subscribe:
                a.kind = static_cast<std::uint8_t>(in_.below(kind_count));
                a.variant = in_.byte();
                a.ctx = waiting_context(model_.would_wait(1));
                break;
            case op::burst:
                a.kind = static_cast<std::uint8_t>(in_.below(kind_count));
                break;
            case op::trigger:
                a.kind = static_cast<std::uint8_t>(in_.below(kind_count));
                a.ctx = contexts::pick(in_);
                break;
            case op::tx_begin:
            case op::tx_rollback:
                a.slot = in_.below(tx_slots);
                break;
            case op::tx_publish:
                a.slot = in_.below(tx_slots);
                a.kind = static_cast<std::uint8_t>(in_.below(kind_count));
                break;
            case op::tx_commit:
                a.slot = in_.below(tx_slots);
                a.ctx = waiting_context(model_.tx_open(a.slot) &&
                                        model_.would_wait(model_.tx_events(a.slot)));
                break;
            case op::schedule_past:
                a.kind = static_cast<std::uint8_t>(in_.below(kind_count));
                a.variant = in_.byte();
                a.ctx = waiting_context(model_.would_wait(1));
                break;
            case op::schedule_future:
                a.kind = static_cast<std::uint8_t>(in_.below(kind_count));
                a.variant = in_.byte();
                a.slot = in_.below(timer_slots);
                a.ctx = contexts::pick(in_);
                break;
            case op::cancel_timer:
                a.slot = in_.below(timer_slots);
                break;
            case op::drain:
            case op::close:
                a.ctx = contexts::pick(in_);
                break;
            case op::add_hook:
                a.variant = static_cast<std::uint8_t>(
                    in_.below(static_cast<std::size_t>(hook_kind::count)));
                break;
            case op::remove_hook:
                a.slot = in_.below(max_hooks);
                break;
            case op::publish:
            case op::count:
                break;
        }
        return a;
    }

    void apply(const op_args& a) {
        real_.apply(a);
        model_.apply(a);
        compare(a);
        ++step_;
    }

    void compare(const op_args& a) {
        const char* name = op_names[static_cast<std::size_t>(a.code)];
        const std::vector<entry>& got = real_.log;
        const std::vector<entry>& want = model_.log;
        if (got != want) {
            std::size_t first = 0;
            while (first < got.size() && first < want.size() && got[first] == want[first])
                ++first;
            std::string text;
            for (std::size_t i = 0; i < std::max(got.size(), want.size()); ++i) {
                text += i == first ? "\n  >> " : "\n     ";
                text += i < got.size() ? describe(got[i]) : std::string("(nothing)");
                text += "   model: ";
                text += i < want.size() ? describe(want[i]) : std::string("(nothing)");
            }
            fail(
                "operation %zu (%s): the store's calls and results differ from the model's "
                "from entry %zu:%s",
                step_, name, first, text.c_str());
        }
        real_.log.clear();
        model_.log.clear();

        const eventbus::store_metrics r = real_.metrics();
        const eventbus::store_metrics& w = model_.m;
        const auto counter = [&](const char* field, std::uint64_t g, std::uint64_t e) {
            if (g != e)
                fail("operation %zu (%s): metrics().%s is %llu, the model says %llu", step_, name,
                     field, ull(g), ull(e));
        };
        counter("published", r.published, w.published);
        counter("processed", r.processed, w.processed);
        counter("handled", r.handled, w.handled);
        counter("errors", r.errors, w.errors);
        counter("dropped", r.dropped, w.dropped);
        counter("unhandled", r.unhandled, w.unhandled);
        counter("triggered", r.triggered, w.triggered);
        counter("scheduled", r.scheduled, w.scheduled);
        counter("cancelled", r.cancelled, w.cancelled);
        if (r.published + r.triggered != r.handled + r.unhandled + r.dropped + model_.pending())
            fail(
                "operation %zu (%s): published + triggered != handled + unhandled + dropped + "
                "%zu still in the ring",
                step_, name, model_.pending());
        if (r.processed < r.handled || r.errors > r.processed)
            fail("operation %zu (%s): processed %llu, handled %llu, errors %llu", step_, name,
                 ull(r.processed), ull(r.handled), ull(r.errors));

        counter("the number of handlers", real_.handler_count(), model_.handler_count());
        for (std::size_t h = 0; h < real_.handler_count(); ++h)
            if (real_.registered(h) != model_.registered(h))
                fail("operation %zu (%s): handler %zu's registration says %s, the model %s", step_,
                     name, h, real_.registered(h) ? "registered" : "not registered",
                     model_.registered(h) ? "registered" : "not registered");
        for (std::size_t s = 0; s < tx_slots; ++s) {
            counter("a transaction's existence", real_.tx_exists(s), model_.tx_exists(s));
            counter("tx.is_open()", real_.tx_open(s), model_.tx_open(s));
            counter("tx.size()", real_.tx_size(s), model_.tx_events(s));
        }
        for (std::size_t s = 0; s < timer_slots; ++s)
            counter("a timer handle's operator bool", real_.timer_pending(s),
                    model_.timer_pending(s));
    }

    input& in_;
    contexts cx_;
    real_bus<Policy> real_;
    model_bus<Policy> model_;
    std::size_t step_ = 0;
};

template <class Policy>
void run_store(input& in, std::size_t capacity) {
    {
        run<Policy> r(in, capacity);
        r.go();
    }
    if (const long left = live_tokens.load(); left != 0)
        fail("%ld event payloads alive after the store, its transactions and timers are gone",
             left);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    input in(data, size);
    const std::uint8_t setup = in.byte();
    const std::size_t capacity = std::size_t{1} << ((setup / 3) % 8);  // 1..128
    switch (setup % 3) {
        case 0:
            run_store<eventbus::drop_oldest>(in, capacity);
            break;
        case 1:
            run_store<eventbus::block>(in, capacity);
            break;
        default:
            run_store<eventbus::return_error>(in, capacity);
            break;
    }
    return 0;
}
