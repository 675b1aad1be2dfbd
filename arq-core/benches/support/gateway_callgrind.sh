#!/bin/sh
# Instructions per proxied request: the arq gateway (edge stack, routing, proxy, upstream pool)
# vs the minimal hyper-util proxy vs no proxy, client and hello upstream in the same process,
# from callgrind (repeatable on a loaded machine, unlike wall-clock figures).
# Usage: arq-core/benches/support/gateway_callgrind.sh [targets...]   (default: direct hyper arq;
# needs valgrind; ARQ_GATEWAY_BIN skips the build; honours CARGO_TARGET_DIR; ARQ_CG_OUT keeps the callgrind files there)
set -eu
cd "$(dirname "$0")/../../.."
bin=${ARQ_GATEWAY_BIN:-}
[ -n "$bin" ] || bin=$(nice -n 19 cargo bench -p arq-core --features gateway --bench gateway --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*gateway-[^"]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "could not build the gateway bench" >&2; exit 1; }
out=${ARQ_CG_OUT:-$(mktemp -d)}
mkdir -p "$out"
count() { # which iters -> instructions
    ARQ_GATEWAY_CALLGRIND=$1 ARQ_GATEWAY_ITERS=$2 nice -n 19 valgrind --tool=callgrind \
        --callgrind-out-file="$out/$1.$2" "$bin" 2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
lo=${ARQ_CG_LO:-500}
hi=${ARQ_CG_HI:-5500}
[ $# -gt 0 ] || set -- direct hyper arq
for which in "$@"; do
    a=$(count "$which" $lo)
    b=$(count "$which" $hi)
    echo "$which: $(( (b - a) / (hi - lo) )) instructions per request"
done
echo "callgrind files in $out (callgrind_annotate --inclusive=yes $out/arq.$hi)"
