// Replaces the global allocation functions (all of them, so that nothing escapes) with ones
// that call eventbus_test::observed_allocate(size, alignment) first, which the including test
// defines: it counts, or makes the allocation fail (nullptr: std::bad_alloc, or nullptr from
// the nothrow forms), then returns eventbus_test::system_allocate(size, alignment).
// Include it in exactly one translation unit of a test binary.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <new>

namespace eventbus_test {

void* observed_allocate(std::size_t size,
                        std::size_t alignment = alignof(std::max_align_t)) noexcept;

inline void* system_allocate(std::size_t size, std::size_t alignment) noexcept {
    if (size == 0)
        size = 1;
    return alignment > alignof(std::max_align_t)
               ? std::aligned_alloc(alignment, (size + alignment - 1) / alignment * alignment)
               : std::malloc(size);
}

// Out of line: GCC otherwise sees free() of a pointer from operator new through inlining and
// warns (-Wmismatched-new-delete), although the replaced operator new got it from malloc.
[[gnu::noinline]] inline void release(void* p) noexcept {
    std::free(p);
}

}  // namespace eventbus_test

void* operator new(std::size_t size) {
    if (void* p = eventbus_test::observed_allocate(size))
        return p;
    throw std::bad_alloc();
}
void* operator new[](std::size_t size) {
    if (void* p = eventbus_test::observed_allocate(size))
        return p;
    throw std::bad_alloc();
}
void* operator new(std::size_t size, std::align_val_t alignment) {
    if (void* p = eventbus_test::observed_allocate(size, static_cast<std::size_t>(alignment)))
        return p;
    throw std::bad_alloc();
}
void* operator new[](std::size_t size, std::align_val_t alignment) {
    if (void* p = eventbus_test::observed_allocate(size, static_cast<std::size_t>(alignment)))
        return p;
    throw std::bad_alloc();
}
void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
    return eventbus_test::observed_allocate(size);
}
void* operator new[](std::size_t size, const std::nothrow_t&) noexcept {
    return eventbus_test::observed_allocate(size);
}
void operator delete(void* p) noexcept {
    eventbus_test::release(p);
}
void operator delete[](void* p) noexcept {
    eventbus_test::release(p);
}
void operator delete(void* p, std::size_t) noexcept {
    eventbus_test::release(p);
}
void operator delete[](void* p, std::size_t) noexcept {
    eventbus_test::release(p);
}
void operator delete(void* p, std::align_val_t) noexcept {
    eventbus_test::release(p);
}
void operator delete[](void* p, std::align_val_t) noexcept {
    eventbus_test::release(p);
}
void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
    eventbus_test::release(p);
}
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
    eventbus_test::release(p);
}
