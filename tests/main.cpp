// Test runner entry point. Catch2 v3 gets main() from Catch2::Catch2WithMain, so with v3 this
// translation unit is intentionally empty.
#if !defined(EVENTBUS_CATCH2_V3)
#define CATCH_CONFIG_MAIN
#include "catch.hpp"
#endif
