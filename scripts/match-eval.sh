#!/usr/bin/env bash
# Match quality on a query set: starts a node in a temporary directory, imports
# DIR/records.jsonl as the node's own records, runs DIR/queries.jsonl through
# GET /api/v1/search and prints recall@10 and MRR (definitions: ../shared/data/README.md).
#
# usage: scripts/match-eval.sh [DIR]     (default: ../shared/data/dev-set)
#        MISSES=1 scripts/match-eval.sh  also prints the queries that missed
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$here/../shared/data/dev-set}"
[ -f "$dir/records.jsonl" ] && [ -f "$dir/queries.jsonl" ] || { echo "no records.jsonl/queries.jsonl in $dir" >&2; exit 2; }

cargo build --release -q -p ammotrace --manifest-path "$here/Cargo.toml"
bin="$here/target/release/ammotrace"
work="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT

"$bin" init --data-dir "$work/data" --node-id XAA >/dev/null
RUST_LOG=ammotrace=warn "$bin" serve --data-dir "$work/data" --listen 127.0.0.1:0 >"$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  url="$(sed -n 's#^ *API: *\(http://[^/ ]*\)/api/v1.*#\1#p' "$work/serve.log")"
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { cat "$work/serve.log" >&2; exit 1; }
token="$(cat "$work/data/admin.token")"

"$bin" import "$dir/records.jsonl" --as-own --url "$url" --token "$token"
python3 "$here/scripts/match_eval.py" "$url" "$token" "$dir/queries.jsonl"
