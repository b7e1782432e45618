# Findcnats: the NATS C client (https://github.com/nats-io/nats.c), as the imported target
# cnats::nats, the name its own CMake package uses.
#
# A find module rather than the client's CMake package: Debian 12's libnats-dev ships a
# cnats-config.cmake that also imports cnats::nats_static, whose libnats_static.a the package
# does not contain, and that file stops the configure with a fatal error instead of reporting
# "not found". This module finds the header and the shared library directly (set cnats_ROOT,
# or CMAKE_PREFIX_PATH, for another installation).
#
# Result: cnats_FOUND, cnats_VERSION (from nats/version.h), target cnats::nats.
find_path(cnats_INCLUDE_DIR NAMES nats/nats.h)
find_library(cnats_LIBRARY NAMES nats)

if(cnats_INCLUDE_DIR AND EXISTS "${cnats_INCLUDE_DIR}/nats/version.h")
    file(STRINGS "${cnats_INCLUDE_DIR}/nats/version.h" cnats_version_line
         REGEX "^#define NATS_VERSION_STRING +\"[^\"]+\"")
    if(cnats_version_line MATCHES "\"([^\"]+)\"")
        set(cnats_VERSION "${CMAKE_MATCH_1}")
    endif()
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(cnats
    REQUIRED_VARS cnats_LIBRARY cnats_INCLUDE_DIR
    VERSION_VAR cnats_VERSION)

if(cnats_FOUND AND NOT TARGET cnats::nats)
    add_library(cnats::nats UNKNOWN IMPORTED)
    set_target_properties(cnats::nats PROPERTIES
        IMPORTED_LOCATION "${cnats_LIBRARY}"
        INTERFACE_INCLUDE_DIRECTORIES "${cnats_INCLUDE_DIR}")
endif()
mark_as_advanced(cnats_INCLUDE_DIR cnats_LIBRARY)
