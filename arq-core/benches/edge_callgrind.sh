#!/bin/sh
# Per-request instruction counts of the hello endpoint, bare axum vs the arq edge stack, from
# callgrind (repeatable on a loaded machine, unlike wall-clock figures).
# Usage: arq-core/benches/edge_callgrind.sh   (needs valgrind; honours CARGO_TARGET_DIR)
set -eu
cd "$(dirname "$0")/../.."
bin=$(cargo bench -p arq-core --bench edge_oneshot --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*edge_oneshot[^"]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "could not build the edge_oneshot bench" >&2; exit 1; }
out=$(mktemp -d)
count() { # which iters -> instructions
    ARQ_ONESHOT=$1 ARQ_ONESHOT_ITERS=$2 valgrind --tool=callgrind --callgrind-out-file="$out/$1.$2" \
        "$bin" 2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
lo=1000
hi=11000
for which in bare arq; do
    a=$(count $which $lo)
    b=$(count $which $hi)
    per=$(( (b - a) / (hi - lo) ))
    echo "$which: $per instructions per request"
    eval "per_$which=$per"
done
echo "ratio arq/bare: $(awk "BEGIN { printf \"%.2f\", $per_arq / $per_bare }")"
echo "callgrind files in $out (callgrind_annotate $out/arq.$hi)"
