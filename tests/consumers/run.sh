#!/usr/bin/env bash
# Consume eventbus the ways a user would and check that it behaves:
#   add_subdirectory        -DEVENTBUS_SOURCE_DIR=<repo>
#   fetch_content           FetchContent_Declare(GIT_REPOSITORY file://<repo> GIT_TAG <sha>)
#                           with HEAD's sha, and again with GIT_TAG main if there is a branch
#                           main: committed content only (add_subdirectory builds the working
#                           tree, uncommitted changes included)
#   find_package            after `cmake --install` into a temporary prefix
#   find_package (build)    eventbus_DIR=<eventbus build tree> (build-tree export)
#   wrong version           find_package(eventbus 99) must fail to configure
# Each consumer is built with its own CMAKE_CXX_FLAGS; eventbus must not add its warning flags,
# -Werror, or its own tests/examples/benchmarks to the consumer's build.
#
# usage: tests/consumers/run.sh <repo-root> <work-dir>
set -euo pipefail

if (($# != 2)); then
    echo "usage: $0 <repo-root> <work-dir>" >&2
    exit 2
fi

repo="$(cd "$1" && pwd)"
mkdir -p "$2"
work="$(cd "$2" && pwd)"
consumers="$repo/tests/consumers"

generator=()
if command -v ninja >/dev/null 2>&1; then
    generator=(-G Ninja)
fi

# A marker only the consumer sets; it must reach the consumer's compile line untouched.
consumer_flags="-DEVENTBUS_CONSUMER_OWN_FLAG=1"

failures=0
fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}

# run <log> <command>...: run quietly, show the log tail on failure.
run() {
    local log="$1"
    shift
    if ! "$@" >>"$log" 2>&1; then
        echo "---- last lines of $log" >&2
        tail -n 40 "$log" >&2
        echo "----" >&2
        return 1
    fi
}

configure() {
    local src="$1" bin="$2" log="$3"
    shift 3
    run "$log" cmake -S "$src" -B "$bin" "${generator[@]}" \
        -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_CXX_FLAGS="$consumer_flags" \
        -DCMAKE_EXPORT_COMPILE_COMMANDS=ON \
        -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF \
        "$@"
}

# check_flags <name> <build-dir>: the consumer's compile commands carry its own flags and none
# of eventbus' warning flags or targets.
check_flags() {
    local name="$1" db="$2/compile_commands.json" ok=1
    if [[ ! -f "$db" ]]; then
        fail "$name: $db was not generated"
        return
    fi
    if ! grep -q -- "$consumer_flags" "$db"; then
        fail "$name: the consumer's own CMAKE_CXX_FLAGS ($consumer_flags) are missing"
        ok=0
    fi
    if grep -E -- '(^|[ "])-W(all|extra|pedantic|conversion|sign-conversion|shadow|error)([ "=]|$)' "$db"; then
        fail "$name: eventbus warning flags leaked into the consumer's compile commands (above)"
        ok=0
    fi
    if grep -E -- "\"file\": *\"($repo|[^\"]*/_deps/eventbus-src)/(tests|examples|bench)/[^/]*\.cpp\"" "$db"; then
        fail "$name: eventbus tests/examples/benchmarks are built as part of the consumer (above)"
        ok=0
    fi
    ((ok)) && echo "   flags ok (own flags kept, no eventbus warnings/-Werror, no extra targets)"
    return 0
}

# consume <name> <project-dir> [cmake args...]: configure, build, run, check flags.
consume() {
    local name="$1" project="$2"
    shift 2
    local bin="$work/$name" log="$work/$name.log"
    rm -rf "$bin" "$log"
    echo "== consumer: $name"
    if ! configure "$consumers/$project" "$bin" "$log" "$@"; then
        fail "$name: configure failed (log: $log)"
        return
    fi
    if ! run "$log" cmake --build "$bin"; then
        fail "$name: build failed (log: $log)"
        return
    fi
    local status=0
    "$bin/consumer" || status=$?
    if ((status != 0)); then
        fail "$name: the consumer executable exited with status $status"
        return
    fi
    echo "   built and ran"
    check_flags "$name" "$bin"
}

# expect_found_at <name> <build-dir> <dir>: find_package resolved eventbus where we meant it to.
expect_found_at() {
    local found
    found="$(sed -n 's/^eventbus_DIR:[A-Z]*=//p' "$2/CMakeCache.txt")"
    if [[ "$(cd "$found" 2>/dev/null && pwd)" != "$(cd "$3" && pwd)" ]]; then
        fail "$1: find_package used eventbus_DIR='$found', expected '$3'"
    fi
}

# 1. add_subdirectory ----------------------------------------------------------------------------
consume add_subdirectory add_subdirectory -DEVENTBUS_SOURCE_DIR="$repo"

# 2. FetchContent, as README.md shows it (GIT_REPOSITORY + GIT_TAG), from this checkout --------
# fetched_commit <name>: the commit FetchContent checked out for consumer <name>.
fetched_commit() {
    git -C "$work/$1/_deps/eventbus-src" rev-parse HEAD 2>/dev/null || echo "(none)"
}

if head="$(git -C "$repo" rev-parse --verify HEAD 2>&1)"; then
    if [[ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]]; then
        echo "note: fetch_content builds the committed HEAD ($head); uncommitted changes are not" \
            "part of it"
    fi
    before=$failures
    consume fetch_content fetch_content -DEVENTBUS_GIT_REPOSITORY="file://$repo" \
        -DEVENTBUS_GIT_TAG="$head"
    got="$(fetched_commit fetch_content)"
    if ((failures == before)) && [[ "$got" != "$head" ]]; then
        fail "fetch_content: GIT_TAG $head checked out $got"
    fi

    if main="$(git -C "$repo" rev-parse --verify -q refs/heads/main)"; then
        before=$failures
        consume fetch_content_main fetch_content -DEVENTBUS_GIT_REPOSITORY="file://$repo" \
            -DEVENTBUS_GIT_TAG=main
        got="$(fetched_commit fetch_content_main)"
        if ((failures == before)) && [[ "$got" != "$main" ]]; then
            fail "fetch_content_main: GIT_TAG main checked out $got, not main ($main)"
        fi
    else
        echo "note: no branch main in $repo; GIT_TAG main not tried"
    fi
else
    fail "fetch_content: $repo is not a git checkout with a commit (git: $head)"
fi

# 3. find_package after install ----------------------------------------------------------------
echo "== install eventbus into a temporary prefix"
prefix="$work/prefix"
eb_build="$work/eventbus-build"
eb_log="$work/eventbus-install.log"
rm -rf "$prefix" "$eb_build" "$eb_log"
installed=0
if configure "$repo" "$eb_build" "$eb_log" -DEVENTBUS_BUILD_TESTS=OFF \
    -DEVENTBUS_BUILD_EXAMPLES=OFF -DEVENTBUS_BUILD_BENCHMARKS=OFF &&
    run "$eb_log" cmake --build "$eb_build" &&
    run "$eb_log" cmake --install "$eb_build" --prefix "$prefix"; then
    installed=1
    cmake_dir="$prefix/share/eventbus/cmake"
    for f in include/eventbus/eventbus.hpp share/eventbus/cmake/eventbusConfig.cmake \
        share/eventbus/cmake/eventbusConfigVersion.cmake \
        share/eventbus/cmake/eventbusTargets.cmake; do
        [[ -f "$prefix/$f" ]] || fail "install: $f is missing from the install tree"
    done
    if grep -rn -- "$repo" "$cmake_dir"; then
        fail "install: installed package files refer to the source tree (above); not relocatable"
    fi
    if grep -rn -E -- '-W(all|extra|error)' "$cmake_dir"; then
        fail "install: installed package files carry warning flags (above)"
    fi
    echo "   installed to $prefix"
else
    fail "install: configuring/building/installing eventbus failed (log: $eb_log)"
fi

if ((installed)); then
    consume find_package find_package -DCMAKE_PREFIX_PATH="$prefix"
    [[ -f "$work/find_package/CMakeCache.txt" ]] &&
        expect_found_at find_package "$work/find_package" "$cmake_dir"

    # 4. find_package from the build tree (export(EXPORT ...)) ---------------------------------
    consume find_package_build_tree find_package -Deventbus_DIR="$eb_build"
    [[ -f "$work/find_package_build_tree/CMakeCache.txt" ]] &&
        expect_found_at find_package_build_tree "$work/find_package_build_tree" "$eb_build"

    # 5. an unavailable version must be refused -------------------------------------------------
    echo "== consumer: find_package_wrong_version (must fail to configure)"
    bin="$work/find_package_wrong_version"
    log="$work/find_package_wrong_version.log"
    rm -rf "$bin" "$log"
    if cmake -S "$consumers/find_package_wrong_version" -B "$bin" "${generator[@]}" \
        -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF >"$log" 2>&1; then
        fail "find_package_wrong_version: configure succeeded, but eventbus 0.x must not satisfy 99"
    elif ! grep -q 'compatible with requested version "99"' "$log" ||
        ! grep -q 'eventbusConfig.cmake, version: ' "$log"; then
        cat "$log" >&2
        fail "find_package_wrong_version: configure failed, but not because of the version (above)"
    else
        echo "   refused as expected: $(grep -o 'eventbusConfig.cmake, version: .*' "$log" | head -n 1)"
    fi
fi

echo
if ((failures)); then
    echo "consumer tests: $failures failure(s); logs in $work" >&2
    exit 1
fi
echo "consumer tests: all passed"
