// Catch2 v2/v3 compatibility: tests include "catch.hpp" and build against either version.
#pragma once

#if defined(EVENTBUS_CATCH2_V3)
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#else
#include <catch2/catch.hpp>
#endif
