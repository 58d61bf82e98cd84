#!/usr/bin/env bash
# .ci/no_lto_wrapper_build.sh: the build must work where link-time optimisation cannot.
#
# Builds _core with CXX set to a g++ wrapper script whose driver cannot find lto-wrapper (as with
# a toolchain installed that way): the configure must say that LTO is off, and the build must
# succeed. Once GCC_EXEC_PREFIX is set, the driver looks for its helper programs under
# $GCC_EXEC_PREFIX/<machine>/<version>/ only, and the compiler finds its headers relative to it.
# The wrapper points it at a mirror of the toolchain's prefix (symlinks) whose helper folder lacks
# lto-wrapper; the script first checks that an LTO link with it really fails.
#
# Usage: .ci/no_lto_wrapper_build.sh [source dir (default: this repository)] [scratch dir]
set -euo pipefail
src=${1:-$(cd "$(dirname "$0")/.." && pwd)}
tmp=${2:-$(mktemp -d)}
gxx=$(command -v g++) || { echo "no-LTO build check skipped: no g++"; exit 0; }
helpers=$(dirname "$("$gxx" -print-prog-name=lto-wrapper)")  # e.g. /usr/lib/gcc/x86_64-linux-gnu/12
[ -x "$helpers/lto-wrapper" ] || { echo "no-LTO build check skipped: $gxx has no lto-wrapper to hide"; exit 0; }

prefix=$(cd "$helpers/../../../.." && pwd)  # <prefix>/lib/gcc/<machine>/<version>
farm=$tmp/lib/gcc/$(basename "$(dirname "$helpers")")/$(basename "$helpers")
mkdir -p "$farm" "$tmp/bin"
for f in "$helpers"/*; do [ "${f##*/}" = lto-wrapper ] || ln -sf "$f" "$farm/"; done
ln -sfn "$prefix/include" "$tmp/include"
printf '#!/bin/sh\nGCC_EXEC_PREFIX=%s/lib/gcc/ exec %s "$@"\n' "$tmp" "$gxx" >"$tmp/bin/g++"
chmod +x "$tmp/bin/g++"

printf '#include <vector>\nint main() { return static_cast<int>(std::vector<int>(1).size()) - 1; }\n' >"$tmp/lto.cpp"
if "$tmp/bin/g++" -flto "$tmp/lto.cpp" -o "$tmp/lto" 2>"$tmp/lto.err"; then
  echo "no-LTO build check: the wrapper does not hide lto-wrapper"; exit 1
fi
grep -q "lto-wrapper" "$tmp/lto.err" || { cat "$tmp/lto.err"; exit 1; }
"$tmp/bin/g++" "$tmp/lto.cpp" -o "$tmp/plain"  # the wrapper compiles and links without LTO

CXX=$tmp/bin/g++ cmake -S "$src" -B "$tmp/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DPython_EXECUTABLE="$(command -v python)" 2>&1 | tee "$tmp/configure.log"
grep -q "link-time optimisation is off" "$tmp/configure.log" || { echo "no LTO notice in the configure output"; exit 1; }
cmake --build "$tmp/build" --target _core
echo "no-LTO build check: ok ($tmp/build)"
