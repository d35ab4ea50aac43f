#!/usr/bin/env bash
# Federated search benchmark (issue 4): five partner nodes hold FED_N items between them
# (default 1,000,000, split evenly); a sixth node (XQQ) asks them all with scope=federated
# (every partner in `query` mode, over TLS, signed requests, 3 s deadline). Measured: HTTP
# latency p50/p99 of GET /api/v1/search at XQQ for exact, confusable, wildcard and fuzzy lot
# queries, beside local search on one partner (FED_N/5 items) in the same run. Writes the
# "Federated search" section of docs/benchmarks.md.
#
# usage: scripts/bench-federated.sh
#        FED_N=100000 QUERIES=200 scripts/bench-federated.sh
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
n="${FED_N:-1000000}"
queries="${QUERIES:-500}"
out="$here/docs/benchmarks.md"
partners="XAA XBB XCC XDD XEE"

cargo build --release -q -p ammotrace --bin ammotrace --example bench --manifest-path "$here/Cargo.toml"
bin="$here/target/release/ammotrace"
bench="$here/target/release/examples/bench"
work="$(mktemp -d "${TMPDIR:-/tmp}/ammotrace-fed.XXXXXX")"
# shellcheck source=scripts/lib.sh
. "$here/scripts/lib.sh"
cleanup() { stop_nodes; [ -n "${KEEP:-}" ] || rm -rf "$work"; }
trap cleanup EXIT

echo '{"mode":"query","categories":["*"],"fields":["*"],"location_precision":"exact","max_tlp":"AMBER+STRICT"}' >"$work/policy.json"
for id in $partners XQQ; do
  "$bin" init --data-dir "$work/$id" --node-id "$id" >/dev/null
  free_port >"$work/$id.port"
  "$bin" peers card --data-dir "$work/$id" --url "https://127.0.0.1:$(cat "$work/$id.port")" >"$work/$id.card"
done
for id in $partners; do
  "$bin" peers add --data-dir "$work/$id" --card "$work/XQQ.card" --policy "$work/policy.json" --no-pull >/dev/null
  "$bin" peers add --data-dir "$work/XQQ" --card "$work/$id.card" --no-pull >/dev/null
  sed -i 's/^query_rate_per_minute = 60/query_rate_per_minute = 1000000/; s/^query_burst = 20/query_burst = 100000/' "$work/$id/config.toml"
done
declare -A api
for id in $partners XQQ; do
  launch_node "$work/$id" "$(cat "$work/$id.port")"
done
for id in $partners XQQ; do
  api[$id]="$(node_url "$work/$id")"
done

echo "generating and importing $n items over five partners…" >&2
"$bench" gen "$n" "$work/all.jsonl"
split -n l/5 -d --additional-suffix=.jsonl "$work/all.jsonl" "$work/part."
i=0
imports=()
for id in $partners; do
  "$bin" import "$work/part.0$i.jsonl" --url "${api[$id]}" --token "$(cat "$work/$id/admin.token")" \
    --as-own --batch 5000 --partial --jobs 1 >"$work/import-$id.log" 2>&1 &
  imports+=($!)
  i=$((i + 1))
done
for p in "${imports[@]}"; do wait "$p"; done
tail -q -n1 "$work"/import-*.log >&2
for id in $partners; do # until every partner has indexed what it holds
  while :; do
    h="$(curl -sf "${api[$id]}/healthz")"
    [ "$(echo "$h" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["last_seq"] == d["indexed_seq"] and d["last_seq"] > 0)')" = True ] && break
    sleep 0.2
  done
done

echo "measuring…" >&2
# The generator numbers lots 0..n-1 across the file; partner XAA holds the first fifth.
local_lat="$("$bench" latency "${api[XAA]}" "$(cat "$work/XAA/admin.token")" "$queries" "$((n / 5))")"
fed_lat="$(BENCH_EXTRA="scope=federated&purpose=benchmark&case_ref=bench-1" "$bench" latency "${api[XQQ]}" "$(cat "$work/XQQ/admin.token")" "$queries" "$n")"

python3 - "$out" "$n" "$queries" "$local_lat" "$fed_lat" <<'PY' | python3 "$here/scripts/bench_section.py" "$out" federated
import datetime, json, re, subprocess, sys
out, n, queries, local, fed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4]), json.loads(sys.argv[5])
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
rows = []
for name, lat, items in (("local, one partner", local, n // 5), ("federated, 5 partners", fed, n)):
    cells = [name, f"{items:,}"]
    for kind in ("exact", "confusable", "wildcard", "fuzzy"):
        l = lat[kind]
        cells.append(f"{l['p50_ms']:.1f} / {l['p99_ms']:.1f} ({l['found_share']:.0%})")
    rows.append("| " + " | ".join(cells) + " |")
rows = "\n".join(rows)
section = f"""## Federated search (issue 4)

- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; machine: {cpu}; all six nodes and the client on the same 2 cores
- command: `FED_N={n} QUERIES={queries} scripts/bench-federated.sh`
- five partner nodes hold {n:,} one-item records between them ({n // 5:,} each); XQQ asks all of
  them with `scope=federated` (signed requests over TLS, every partner in `query` mode,
  answers verified: signature and disclosures of every hit). Sequential queries, one client,
  after 400 warm-up queries; p50 / p99 in ms, with the share of queries whose true lot was
  among the ten hits. "local" is `GET /api/v1/search` on one partner, in the same run.

| search | items | exact p50 / p99 | confusable p50 / p99 | wildcard p50 / p99 | fuzzy p50 / p99 |
|---|---|---|---|---|---|
{rows}

Target (issue 4): federated p99 ≤ 150 ms.
"""
print(section)
PY
