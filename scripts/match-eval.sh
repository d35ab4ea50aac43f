#!/usr/bin/env bash
# Match quality on a query set: starts a node in a temporary directory, imports
# DIR/records.jsonl as the node's own records, runs DIR/queries.jsonl through
# GET /api/v1/search and prints recall@10 and MRR (definitions: ../shared/data/README.md).
#
# usage: scripts/match-eval.sh [DIR]     (default: ../shared/data/dev-set)
#        MISSES=1 scripts/match-eval.sh  also prints the queries that missed
#        scripts/match-eval.sh --federated [DIR]
#            splits the records by originating_state over one node per State (all partners
#            in `query` mode over TLS), and sends each query with scope=federated from the
#            node of the State that recorded its from_record.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
federated=""
if [ "${1:-}" = "--federated" ]; then federated=1; shift; fi
dir="${1:-$here/../shared/data/dev-set}"
[ -f "$dir/records.jsonl" ] && [ -f "$dir/queries.jsonl" ] || { echo "no records.jsonl/queries.jsonl in $dir" >&2; exit 2; }

cargo build --release -q -p ammotrace --manifest-path "$here/Cargo.toml"
bin="$here/target/release/ammotrace"
work="$(mktemp -d)"
# shellcheck source=scripts/lib.sh
. "$here/scripts/lib.sh"
trap 'stop_nodes; rm -rf "$work"' EXIT
if [ -n "$federated" ]; then
  states="$(python3 -c 'import json,sys; print(" ".join(sorted({json.loads(l)["originating_state"] for l in open(sys.argv[1]) if l.strip()})))' "$dir/records.jsonl")"
  echo '{"mode":"query","categories":["*"],"fields":["*"],"location_precision":"exact","max_tlp":"AMBER+STRICT","case_references":true,"casualties":true}' >"$work/policy.json"
  for s in $states; do
    "$bin" init --data-dir "$work/$s" --node-id "$s" >/dev/null
    free_port >"$work/$s.port"
    "$bin" peers card --data-dir "$work/$s" --url "https://127.0.0.1:$(cat "$work/$s.port")" >"$work/$s.card"
    python3 -c 'import json,sys; [print(l, end="") for l in open(sys.argv[1]) if l.strip() and json.loads(l)["originating_state"] == sys.argv[2]]' "$dir/records.jsonl" "$s" >"$work/$s.jsonl"
  done
  for s in $states; do
    for o in $states; do
      [ "$s" = "$o" ] || "$bin" peers add --data-dir "$work/$s" --card "$work/$o.card" --policy "$work/policy.json" --no-pull >/dev/null
    done
    # An evaluation asks far more than an investigator would: lift the query rate limit.
    sed -i 's/^query_rate_per_minute = 60/query_rate_per_minute = 1000000/; s/^query_burst = 20/query_burst = 100000/' "$work/$s/config.toml"
    launch_node "$work/$s" "$(cat "$work/$s.port")"
  done
  echo "{" >"$work/nodes.json"; first=1
  for s in $states; do
    url="$(node_url "$work/$s")"
    "$bin" import "$work/$s.jsonl" --url "$url" --token "$(cat "$work/$s/admin.token")" 2>&1 | tail -1
    [ -n "$first" ] || echo "," >>"$work/nodes.json"; first=""
    echo "\"$s\": {\"url\": \"$url\", \"token\": \"$(cat "$work/$s/admin.token")\"}" >>"$work/nodes.json"
  done
  echo "}" >>"$work/nodes.json"
  python3 "$here/scripts/match_eval.py" --federated "$work/nodes.json" "$dir/records.jsonl" "$dir/queries.jsonl"
  exit 0
fi

"$bin" init --data-dir "$work/data" --node-id XAA >/dev/null
start_node "$work/data"
token="$(cat "$work/data/admin.token")"

"$bin" import "$dir/records.jsonl" --as-own --url "$url" --token "$token"
python3 "$here/scripts/match_eval.py" "$url" "$token" "$dir/queries.jsonl"
