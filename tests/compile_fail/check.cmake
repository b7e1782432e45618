# Checks that a program does not compile, and why.
#
#   cmake -DCOMPILER=<c++> -DSOURCE=<file.cpp> -DINCLUDE_DIR=<dir> [-DFLAGS=<flags>]
#         -P tests/compile_fail/check.cmake
#
# SOURCE begins with comment lines that say what to expect:
#
#   // expect: <regex>         required, first line: the first error must match <regex>
#   // expect-count: <N>       optional: exactly N errors, each matching <regex>
#   // flags: <flags>          optional: more compiler flags for this file
#
# "An error" is a line of the compiler's output with the error severity (`error:` at its start
# or after a space or a colon: `file:line:col: error: ...`, `fatal error: ...`, `cc1plus:
# error: ...`); <regex> (CMake syntax) is matched against its text from `error:` on, so not
# against a file's path. The file is only parsed and checked (-fsyntax-only, -std=c++20), in
# the C locale, without colours; on any mismatch the compiler's whole output is printed.

cmake_minimum_required(VERSION 3.21)

foreach(var COMPILER SOURCE INCLUDE_DIR)
    if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
        message(FATAL_ERROR "check.cmake: pass -D${var}=...")
    endif()
endforeach()

# The leading comment lines, read as one string (a list would split a regex at `;`).
file(READ "${SOURCE}" text LIMIT 8192)
string(REGEX MATCH "^(//[^\n]*\n)+" header "${text}")
if(NOT header MATCHES "^// expect: ([^\n]+)\n")
    message(FATAL_ERROR "${SOURCE}:1: the first line must be `// expect: <regex>`")
endif()
set(expect "${CMAKE_MATCH_1}")
set(expect_count "")
if(header MATCHES "\n// expect-count: *([0-9]+) *\n")
    set(expect_count "${CMAKE_MATCH_1}")
endif()
set(file_flags "")
if(header MATCHES "\n// flags: *([^\n]*)\n")
    separate_arguments(file_flags UNIX_COMMAND "${CMAKE_MATCH_1}")
endif()
separate_arguments(flags UNIX_COMMAND "${FLAGS}")

set(command "${COMPILER}" -std=c++20 -fsyntax-only -fdiagnostics-color=never ${flags}
    ${file_flags} "-I${INCLUDE_DIR}" "${SOURCE}")
execute_process(
    COMMAND "${CMAKE_COMMAND}" -E env LC_ALL=C LANG=C LANGUAGE= ${command}
    RESULT_VARIABLE status
    OUTPUT_VARIABLE output
    ERROR_VARIABLE output)
list(JOIN command " " command_line)

# fail(<message>): shows the command and its output, then the reason, unwrapped.
function(fail why)
    message("---- ${command_line}\n${output}----\nFAILED: ${SOURCE}: ${why}")
    message(FATAL_ERROR "compile-fail check failed (above)")
endfunction()

if(status EQUAL 0)
    fail("compiled, but it must not")
endif()

# Split the output into lines without letting CMake's list syntax (`;` separates, `[` and `]`
# group) reinterpret what the compiler printed.
string(REPLACE ";" "<semicolon>" safe "${output}")
string(REPLACE "[" "<open-bracket>" safe "${safe}")
string(REPLACE "]" "<close-bracket>" safe "${safe}")
string(REPLACE "\n" ";" lines "${safe}")

set(first_error "")
set(errors 0)
set(matching 0)
set(others "")
foreach(line IN LISTS lines)
    string(REPLACE "<semicolon>" ";" line "${line}")
    string(REPLACE "<open-bracket>" "[" line "${line}")
    string(REPLACE "<close-bracket>" "]" line "${line}")
    # The diagnostic from `error:` on: the regex must not match a file's path.
    string(REGEX MATCH "(^|[ :])error:.*" diagnostic "${line}")
    if(diagnostic STREQUAL "")
        continue()
    endif()
    math(EXPR errors "${errors} + 1")
    if(first_error STREQUAL "")
        set(first_error "${line}")
        set(first_diagnostic "${diagnostic}")
    endif()
    if(diagnostic MATCHES "${expect}")
        math(EXPR matching "${matching} + 1")
    else()
        string(APPEND others "\n  ${line}")
    endif()
endforeach()

if(first_error STREQUAL "")
    fail("failed to compile (status ${status}), but printed no error line")
endif()
if(NOT first_diagnostic MATCHES "${expect}")
    fail("the first error does not match `${expect}`:\n  ${first_error}")
endif()
if(NOT expect_count STREQUAL "")
    if(NOT matching EQUAL expect_count OR NOT errors EQUAL expect_count)
        set(counts "got ${errors} errors, ${matching} of them matching")
        fail("expected ${expect_count} errors matching `${expect}`; ${counts}. Others:${others}")
    endif()
endif()

if(expect_count STREQUAL "")
    message(STATUS "fails as expected: ${first_error}")
else()
    message(STATUS "fails as expected: ${expect_count} errors matching `${expect}`")
endif()
