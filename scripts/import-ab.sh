#!/usr/bin/env bash
# Compares the import cost of two builds of ammotrace on this machine:
#   scripts/import-ab.sh BIN_A BIN_B [RECORDS] [ROUNDS]
# Imports the same RECORDS (100000) synthetic records into a fresh node of each binary, A then
# B, ROUNDS (3) times, the way scripts/bench.sh does, and prints each run's rate and the node's
# CPU time per record (until indexed), then each binary's lowest CPU per record. On a shared
# machine the rate of one binary varies by a quarter from run to run; its lowest CPU per
# record is the steadiest figure to compare. Build a baseline with, for example:
#   git worktree add /tmp/base <commit> && (cd /tmp/base && cargo build --release --bin ammotrace)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
[ $# -ge 2 ] || { sed -n '2,9p' "$0" >&2; exit 2; }
bin_a="$(realpath "$1")"; bin_b="$(realpath "$2")"
records="${3:-100000}"; rounds="${4:-3}"

cargo build --release -q -p ammotrace --example bench --manifest-path "$here/Cargo.toml"
bench="$here/target/release/examples/bench"
work="$(mktemp -d "${TMPDIR:-/tmp}/ammotrace-ab.XXXXXX")"
bin="$bin_a"
. "$here/scripts/lib.sh"
cleanup() { stop_nodes; rm -rf "$work"; }
trap cleanup EXIT

file="$work/records.jsonl"
"$bench" gen "$records" "$file"

wait_indexed() {
  while :; do
    h="$(curl -sf "$url/healthz")"
    [ "$(echo "$h" | json_get 'd["last_seq"] == d["indexed_seq"]')" = "True" ] && break
    sleep 0.05
  done
}

run() { # run LABEL BINARY: one import on a fresh node; prints "LABEL rate cpu_us"
  bin="$2"
  local data="$work/node"
  rm -rf "$data" "$data.log"
  "$bin" init --data-dir "$data" --node-id XAA >/dev/null
  start_node "$data"
  local c0 t0 t1 c1
  c0=$(cpu_ms "$pid"); t0=$(now_ms)
  "$bin" import "$file" --url "$url" --token "$(cat "$data/admin.token")" \
    --batch 5000 --partial --jobs 3 >/dev/null 2>&1
  wait_indexed
  t1=$(now_ms); c1=$(cpu_ms "$pid")
  stop_nodes; pids=()
  echo "$1 $(( records * 1000 / (t1 - t0) )) $(( (c1 - c0) * 1000 / records ))"
}

results=""
for r in $(seq 1 "$rounds"); do
  for side in A B; do
    if [ "$side" = A ]; then line="$(run A "$bin_a")"; else line="$(run B "$bin_b")"; fi
    set -- $line
    echo "round $r, $side: $2 records/s, $3 µs of node CPU per record" >&2
    results="$results$line"$'\n'
  done
done
echo "$results" | awk 'NF == 3 { if (!($1 in best) || $3 < best[$1]) best[$1] = $3; rate[$1] = rate[$1] " " $2 }
  END { for (s in best) printf "%s: lowest %d µs of node CPU per record; rates:%s records/s\n", s, best[s], rate[s] }' | sort
