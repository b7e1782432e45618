#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the fuzz targets: corpus/ring/hand-*.bin and
corpus/store/hand-*.bin, one per area of the API, each a readable program in the byte language
that ring_fuzz.cpp and store_fuzz.cpp read (every choice is one byte, taken modulo the number of
choices). The corpus also holds inputs found by libFuzzer and merged in with -merge=1 (named by
their SHA-1); this script does not touch those.

    tests/fuzz/make_seeds.py            # rewrites the hand-made seeds
"""

import pathlib

HERE = pathlib.Path(__file__).resolve().parent

# Contexts (fuzz_support.hpp, ctx_kind).
NEVER, CANCELLED, EXPIRED, CANCELLED_LATE, FAR = range(5)

# ring_fuzz.cpp ///////////////////////////////////////////////////////////////////////////////

(TRY_PUSH, TRY_PUSH_COPY, TRY_EMPLACE, PUSH, PUSH_COPY, EMPLACE, TRY_PUSH_N, PUSH_N, TRY_POP,
 TRY_POP_INTO, POP, TRY_POP_BEFORE, TRY_POP_BEFORE_INTO, TRY_POP_BATCH, CLOSE, SAVE_MARK,
 OTHER_THREAD) = range(17)
# The operations the other thread may run, by their index in ring_fuzz.cpp's `choices`.
OTHER = {TRY_PUSH: 0, TRY_EMPLACE: 1, PUSH: 2, TRY_PUSH_N: 3, PUSH_N: 4, TRY_POP: 5, POP: 6,
         TRY_POP_BATCH: 7, CLOSE: 8}
# pick_limit(): the current mark, a saved one, head + 2k, head - 2k.
MARK_NOW, MARK_SAVED, MARK_AHEAD, MARK_BEHIND = range(4)


def ring_header(policy, size=0, single_producer=False, capacity_log2=2, offset=3, high=0):
    """policy 0 drop_oldest, 1 block, 2 return_error; size 0, 1, 2: 8, 16, 56-byte elements."""
    return [policy + 3 * size + (9 if single_producer else 0), capacity_log2, offset, high]


def ring_everything():
    """Every operation once on a ring of 4, through full, empty, wrap-around and close."""
    return [
        TRY_PUSH, TRY_PUSH_COPY, TRY_EMPLACE, PUSH, NEVER,  # full
        TRY_PUSH, PUSH_COPY, CANCELLED, EMPLACE, EXPIRED,  # policy decides
        PUSH, FAR,  # block: waits, so the context is replaced by an ended one
        TRY_POP, TRY_POP_INTO, POP, NEVER,
        SAVE_MARK, 0,
        TRY_PUSH_N, 2, PUSH_N, 3, CANCELLED_LATE, TRY_PUSH_N, 5,  # too many
        TRY_PUSH_N, 0,
        TRY_POP_BEFORE, MARK_SAVED, 0, TRY_POP_BEFORE_INTO, MARK_NOW,
        TRY_POP_BEFORE, MARK_AHEAD, 1, TRY_POP_BEFORE, MARK_BEHIND, 1,
        TRY_POP_BATCH, MARK_NOW, 2, TRY_POP_BATCH, MARK_AHEAD, 5, 4,
        OTHER_THREAD, OTHER[TRY_PUSH], OTHER_THREAD, OTHER[TRY_PUSH_N], 3,
        TRY_PUSH,  # the first thread again, after the ownership moved
        OTHER_THREAD, OTHER[TRY_POP_BATCH], MARK_NOW, 1,
        POP, EXPIRED, TRY_POP, TRY_POP, POP, CANCELLED,  # empty
        TRY_EMPLACE, CLOSE, TRY_PUSH, PUSH, NEVER, TRY_PUSH_N, 1, TRY_PUSH_N, 0, PUSH_N, 1, NEVER,
        CLOSE, POP, NEVER, POP, NEVER,  # drained after close
    ]


def ring_seeds():
    seeds = {}
    for policy, name in enumerate(["drop_oldest", "block", "return_error"]):
        for size in range(3):
            seeds[f"{name}-{size}"] = ring_header(policy, size) + ring_everything()
        seeds[f"{name}-single-producer"] = (ring_header(policy, 1, single_producer=True) +
                                            ring_everything())
        # Capacity 1 and 16, starting exactly at the wrap and just before 2^63.
        seeds[f"{name}-capacity-1-wrap"] = (ring_header(policy, 0, capacity_log2=0, offset=1) +
                                            [TRY_PUSH, TRY_PUSH, TRY_POP, TRY_PUSH_N, 1, TRY_POP,
                                             OTHER_THREAD, OTHER[PUSH], NEVER, TRY_POP] * 3)
        seeds[f"{name}-capacity-16-near-2-63"] = (ring_header(policy, 2, capacity_log2=4, offset=20,
                                                         high=0x80) +
                                             [TRY_PUSH_N, 16, TRY_PUSH_N, 9, TRY_POP_BATCH,
                                              MARK_NOW, 16] * 4 + [CLOSE, TRY_POP_BATCH, 0, 8])
    seeds["refused-capacity-3"] = [0, 0x83, 0, 0]
    seeds["refused-capacity-0"] = [0, 0x80, 0, 0]
    seeds["refused-odd-start"] = [0, 2, 0xFF, 0]
    return seeds


# store_fuzz.cpp //////////////////////////////////////////////////////////////////////////////

(ADD_HANDLER, REMOVE_HANDLER, SUBSCRIBE, BURST, PUBLISH, TRIGGER, TX_BEGIN, TX_PUBLISH,
 TX_COMMIT, TX_ROLLBACK, SCHEDULE_PAST, SCHEDULE_FUTURE, CANCEL_TIMER, DRAIN, CLOSE_STORE,
 ADD_HOOK, REMOVE_HOOK) = range(17)
(A_NONE, A_REMOVE_SELF, A_REMOVE_OTHER, A_ADD_HANDLER, A_SUBSCRIBE, A_PUBLISH, A_TRIGGER,
 A_COMMIT, A_DRAIN, A_CLOSE, A_SCHEDULE_PAST, A_SCHEDULE_FUTURE) = range(12)
# Event kinds and handler keys.
KIND_A, KIND_B, KIND_SMALL, KIND_BIG, KIND_DYN_SMALL, KIND_DYN_BIG = range(6)
KEY_A, KEY_B, KEY_SMALL, KEY_BIG = range(4)
HOOK_BEFORE, HOOK_AFTER, HOOK_ERROR, HOOK_FAILURE, HOOK_UNHANDLED, HOOK_MIDDLEWARE = range(6)


def store_header(policy, capacity_log2):
    """policy 0 drop_oldest, 1 block, 2 return_error; capacity 2**capacity_log2 (0..7)."""
    return [policy + 3 * capacity_log2]


def handler(key, act=A_NONE, param=0, typed=False, throws=0, returns=False, named=False,
            scoped=False, variant=0, priority=0, refused=None):
    """ADD_HANDLER: a handler of `key` doing `act` (with `param`) when called."""
    shape = key | (4 if typed else 0)
    if refused == "string key":  # a typed handler under a string key
        shape = key | 0xF4
    elif refused == "wrong type":  # a typed handler under the other type's key
        shape = key | 0xEC
    flags = throws | (4 if returns else 0) | (8 if named else 0) | (16 if scoped else 0)
    flags |= variant << 5
    return [ADD_HANDLER, shape, act, param, flags, priority + 1]


def remove(slot, how=0):
    """how: 0 remove(), 1 a copy's (or an empty scoped one assigned), 2 release, 3 drop."""
    return [REMOVE_HANDLER, slot, how]


def subscribe(kind, ctx=NEVER, variant=0):
    return [SUBSCRIBE, kind, variant, ctx]


def store_seeds():
    seeds = {}
    for policy, name in enumerate(["drop_oldest", "block", "return_error"]):
        seeds[f"{name}-basics"] = store_header(policy, 2) + (
            handler(KEY_A, returns=True) + handler(KEY_SMALL, typed=True) +
            handler(KEY_BIG, typed=True, variant=2) + handler(KEY_B, variant=1) +
            subscribe(KIND_A) + subscribe(KIND_SMALL, variant=1) + subscribe(KIND_BIG) +
            subscribe(KIND_B) + subscribe(KIND_A, CANCELLED) + subscribe(KIND_A, FAR) +
            [PUBLISH, TRIGGER, KIND_A, NEVER, TRIGGER, KIND_SMALL, FAR, TRIGGER, KIND_BIG,
             CANCELLED, TRIGGER, KIND_DYN_BIG, EXPIRED, DRAIN, NEVER] +
            subscribe(KIND_DYN_SMALL) + [DRAIN, CANCELLED, CLOSE_STORE, NEVER] +
            subscribe(KIND_A) + [TRIGGER, KIND_A, NEVER, DRAIN, NEVER, CLOSE_STORE, NEVER])
        seeds[f"{name}-hooks-and-failures"] = store_header(policy, 3) + (
            [ADD_HOOK, HOOK_BEFORE, ADD_HOOK, HOOK_MIDDLEWARE, ADD_HOOK, HOOK_AFTER, ADD_HOOK,
             HOOK_ERROR, ADD_HOOK, HOOK_FAILURE, ADD_HOOK, HOOK_UNHANDLED,
             ADD_HOOK, HOOK_MIDDLEWARE] +
            handler(KEY_A, throws=1, named=True) + handler(KEY_A, throws=2, returns=True) +
            handler(KEY_A, returns=True, named=True) + handler(KEY_SMALL, typed=True, throws=1) +
            handler(KEY_SMALL, named=True) +  # takes args: fails on typed events
            handler(KEY_BIG, typed=True, returns=True, variant=3) +
            subscribe(KIND_A) + subscribe(KIND_SMALL) + subscribe(KIND_DYN_SMALL) +
            subscribe(KIND_BIG) + subscribe(KIND_B) + subscribe(KIND_DYN_BIG) +
            [PUBLISH, TRIGGER, KIND_A, NEVER, TRIGGER, KIND_SMALL, NEVER, TRIGGER, KIND_B, NEVER,
             REMOVE_HOOK, 0, REMOVE_HOOK, 5, REMOVE_HOOK, 7] +
            subscribe(KIND_A) + subscribe(KIND_SMALL) +
            [PUBLISH, REMOVE_HOOK, 1, REMOVE_HOOK, 2, REMOVE_HOOK, 3, REMOVE_HOOK, 4,
             REMOVE_HOOK, 6] + subscribe(KIND_SMALL) + [PUBLISH, CLOSE_STORE, NEVER])
        seeds[f"{name}-removal"] = store_header(policy, 3) + (
            handler(KEY_A, A_REMOVE_SELF) +  # "once"
            handler(KEY_SMALL, A_REMOVE_SELF, typed=True, scoped=True) +
            handler(KEY_B, A_REMOVE_OTHER, param=3) +  # removes handler 3, the only other of b
            handler(KEY_B) +
            subscribe(KIND_A) + subscribe(KIND_A) + subscribe(KIND_SMALL) +
            subscribe(KIND_SMALL) + subscribe(KIND_B) + subscribe(KIND_B) +
            [ADD_HOOK, HOOK_UNHANDLED, PUBLISH] +  # the second of each pair: unhandled
            handler(KEY_BIG, typed=True, scoped=True) + handler(KEY_BIG, typed=True) +
            handler(KEY_BIG, typed=True, scoped=True) + handler(KEY_BIG, typed=True) +
            handler(KEY_BIG, typed=True, scoped=True) + handler(KEY_BIG, typed=True) +
            remove(4, 0) + remove(5, 1) + remove(6, 2) + remove(7, 3) + remove(8, 1) +
            remove(9, 2) + remove(7, 0) + remove(4, 0) + subscribe(KIND_BIG) +
            [PUBLISH, CLOSE_STORE, NEVER])
        seeds[f"{name}-nested"] = store_header(policy, 1) + (
            handler(KEY_A, A_SUBSCRIBE, param=KIND_B) +
            handler(KEY_B, A_PUBLISH) +
            handler(KEY_B, A_TRIGGER, param=KIND_SMALL) +
            handler(KEY_SMALL, A_COMMIT, param=6 + KIND_BIG, typed=True) +  # two events
            handler(KEY_BIG, A_DRAIN, typed=True) +
            handler(KEY_BIG, A_ADD_HANDLER, param=KIND_A, typed=True) +
            handler(KEY_A, A_SCHEDULE_PAST, param=KIND_DYN_SMALL + 96) +
            handler(KEY_SMALL, A_SUBSCRIBE, param=KIND_A, throws=1) +
            subscribe(KIND_A) + [PUBLISH] + subscribe(KIND_A) + subscribe(KIND_SMALL) +
            [PUBLISH, DRAIN, NEVER] +
            handler(KEY_B, A_CLOSE) + subscribe(KIND_A) + [PUBLISH, DRAIN, NEVER])
        seeds[f"{name}-close-from-handler-with-ended-context"] = store_header(policy, 2) + (
            handler(KEY_A, A_SUBSCRIBE, param=KIND_A) + handler(KEY_A, A_TRIGGER, param=KIND_B) +
            handler(KEY_B, A_SCHEDULE_FUTURE, param=KIND_A) +
            subscribe(KIND_A) + subscribe(KIND_A) + [CLOSE_STORE, CANCELLED] +
            [TRIGGER, KIND_A, NEVER, CLOSE_STORE, EXPIRED])
        seeds[f"{name}-transactions"] = store_header(policy, 2) + (
            handler(KEY_A) + handler(KEY_SMALL, typed=True, throws=2) +
            [TX_BEGIN, 0, TX_PUBLISH, 0, KIND_A, TX_PUBLISH, 0, KIND_BIG, TX_COMMIT, 0, NEVER,
             TX_COMMIT, 0, NEVER, TX_PUBLISH, 0, KIND_A, TX_ROLLBACK, 0,
             TX_BEGIN, 1, TX_PUBLISH, 1, KIND_SMALL, TX_COMMIT, 1, FAR,  # handler_failed
             TX_BEGIN, 0, TX_COMMIT, 0, NEVER,  # empty
             TX_BEGIN, 0, TX_PUBLISH, 0, KIND_B, TX_ROLLBACK, 0, TX_ROLLBACK, 0,
             TX_BEGIN, 1] + [TX_PUBLISH, 1, KIND_A] * 5 +
            [TX_COMMIT, 1, NEVER] +  # more than the capacity
            subscribe(KIND_B) + subscribe(KIND_B) + subscribe(KIND_B) +
            [TX_BEGIN, 0, TX_PUBLISH, 0, KIND_A, TX_PUBLISH, 0, KIND_A, TX_COMMIT, 0, NEVER,
             TX_COMMIT, 0, EXPIRED, PUBLISH, TX_COMMIT, 0, NEVER,
             TX_BEGIN, 0, TX_PUBLISH, 0, KIND_A, TX_BEGIN, 0,  # replaced while open
             CLOSE_STORE, NEVER, TX_PUBLISH, 0, KIND_A, TX_COMMIT, 0, NEVER, TX_COMMIT, 1,
             NEVER])
        seeds[f"{name}-schedule-now"] = store_header(policy, 1) + (
            handler(KEY_A) + handler(KEY_SMALL, typed=True) +
            [SCHEDULE_PAST, KIND_A, 0, NEVER, SCHEDULE_PAST, KIND_SMALL, 1, FAR,
             SCHEDULE_PAST, KIND_BIG, 2, NEVER, SCHEDULE_PAST, KIND_DYN_SMALL, 3, NEVER,
             SCHEDULE_PAST, KIND_A, 4, CANCELLED] +
            subscribe(KIND_A) + subscribe(KIND_A) +
            [SCHEDULE_PAST, KIND_A, 0, NEVER,  # full
             SCHEDULE_FUTURE, KIND_A, 0, 1, EXPIRED,  # an ended context: refused
             CANCEL_TIMER, 1, CANCEL_TIMER, 0, CLOSE_STORE, NEVER,
             SCHEDULE_PAST, KIND_A, 3, NEVER, SCHEDULE_FUTURE, KIND_SMALL, 1, 2, NEVER])
        seeds[f"{name}-schedule-later"] = store_header(policy, 2) + (
            handler(KEY_A, A_SCHEDULE_FUTURE, param=KIND_SMALL + 6 * 3) +  # into timer slot 0
            handler(KEY_SMALL, typed=True) +
            [SCHEDULE_FUTURE, KIND_A, 0, 1, NEVER, SCHEDULE_FUTURE, KIND_BIG, 1, 2, FAR,
             SCHEDULE_FUTURE, KIND_SMALL, 2, 3, NEVER, SCHEDULE_FUTURE, KIND_B, 0, 3, CANCELLED,
             CANCEL_TIMER, 1, CANCEL_TIMER, 1, CANCEL_TIMER, 3] +
            subscribe(KIND_A) + [PUBLISH, TRIGGER, KIND_A, FAR,
                                 SCHEDULE_FUTURE, KIND_A, 0, 1, NEVER,  # replaces a pending one
                                 CANCEL_TIMER, 0, CLOSE_STORE, EXPIRED,  # cancels the rest
                                 CANCEL_TIMER, 2, SCHEDULE_FUTURE, KIND_A, 0, 1, NEVER])
        seeds[f"{name}-batches-of-64"] = store_header(policy, 7) + (
            handler(KEY_A, A_SUBSCRIBE, param=KIND_A) + handler(KEY_SMALL, typed=True) +
            handler(KEY_SMALL, A_REMOVE_SELF, typed=True, priority=1) +
            [BURST, KIND_A, 99, BURST, KIND_SMALL, 60, PUBLISH, BURST, KIND_B, 99,
             TX_BEGIN, 0, TX_PUBLISH, 0, KIND_SMALL, TX_COMMIT, 0, CANCELLED,
             DRAIN, NEVER, CLOSE_STORE, NEVER])
        seeds[f"{name}-capacity-1"] = store_header(policy, 0) + (
            handler(KEY_A, A_SUBSCRIBE, param=KIND_A) + handler(KEY_A, A_COMMIT, param=KIND_A) +
            subscribe(KIND_A) + subscribe(KIND_A, CANCELLED) + [PUBLISH] +
            [TX_BEGIN, 0, TX_PUBLISH, 0, KIND_B, TX_COMMIT, 0, NEVER, DRAIN, NEVER])
    seeds["priorities"] = store_header(0, 3) + (
        handler(KEY_A, priority=0) + handler(KEY_A, priority=1) + handler(KEY_A, priority=-1) +
        handler(KEY_A, priority=1, variant=4) + handler(KEY_A, priority=0, variant=2) +
        handler(KEY_A, A_ADD_HANDLER, param=0x40, priority=-1) +  # adds one of priority 0
        subscribe(KIND_A) + subscribe(KIND_A) + [PUBLISH, CLOSE_STORE, NEVER])
    seeds["refused-registrations"] = store_header(2, 2) + (
        handler(KEY_A, typed=True, refused="string key") +
        handler(KEY_B, typed=True, refused="string key") +
        handler(KEY_SMALL, typed=True, refused="wrong type") +
        handler(KEY_BIG, typed=True, refused="wrong type") +
        handler(KEY_BIG, named=True) + handler(KEY_SMALL, typed=True, variant=1) +
        subscribe(KIND_BIG) + subscribe(KIND_DYN_BIG) + subscribe(KIND_DYN_SMALL) +
        [PUBLISH, CLOSE_STORE, NEVER])
    return seeds


def write(kind, seeds):
    directory = HERE / "corpus" / kind
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("hand-*.bin"):
        old.unlink()
    for name, program in seeds.items():
        (directory / f"hand-{name}.bin").write_bytes(bytes(b & 0xFF for b in program))
    print(f"{len(seeds)} hand-made {kind} seeds in {directory}")


if __name__ == "__main__":
    write("ring", ring_seeds())
    write("store", store_seeds())
