#!/usr/bin/env bash
# Sync benchmark (issue 3): two real nodes over TLS on this machine. XAA holds N records
# (imported while XBB is stopped); XBB starts and pulls XAA's feed. Measured: records/s until
# XBB's cursor reaches XAA's last change (every envelope verified, stored, flushed) and until
# XBB's index has caught up. The ed25519 sign/verify limits are measured in the same run.
# Writes the "Sync" section of docs/benchmarks.md (between its markers), leaving the rest.
#
# usage: scripts/bench-sync.sh            (100,000 records)
#        SYNC_N=20000 scripts/bench-sync.sh
#        SYNC_PAGE=2000 scripts/bench-sync.sh   (feed page size; default 1000, the nodes' default)
#        SYNC_BIN=/tmp/ammotrace-old scripts/bench-sync.sh   (another build of the node, to compare)
#        SYNC_COMMIT_MS=1000 scripts/bench-sync.sh   (the receiver's index.commit_interval_ms)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
n="${SYNC_N:-100000}"
out="$here/docs/benchmarks.md"

cargo build --release -q -p ammotrace --bin ammotrace --example bench --manifest-path "$here/Cargo.toml"
bin="${SYNC_BIN:-$here/target/release/ammotrace}"
bench="$here/target/release/examples/bench"
work="$(mktemp -d "${TMPDIR:-/tmp}/ammotrace-sync.XXXXXX")"
# shellcheck source=scripts/lib.sh
. "$here/scripts/lib.sh"
cleanup() {
  stop_nodes
  if [ -n "${KEEP_LOGS:-}" ]; then cp "$work"/*.log "$KEEP_LOGS"/ 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
echo "measuring physical limits…" >&2
limits="$("$bench" limits)"

a="$work/xaa"; b="$work/xbb"
pa="$(free_port)"; pb="$(free_port)"
"$bin" init --data-dir "$a" --node-id XAA >/dev/null
"$bin" init --data-dir "$b" --node-id XBB >/dev/null
"$bin" peers card --data-dir "$a" --url "https://127.0.0.1:$pa" >"$work/a.card"
"$bin" peers card --data-dir "$b" --url "https://127.0.0.1:$pb" >"$work/b.card"
echo '{"mode":"replicate","categories":["*"],"fields":["*"],"location_precision":"exact"}' >"$work/share-all.json"
"$bin" peers add --data-dir "$a" --card "$work/b.card" --policy "$work/share-all.json" --no-pull >/dev/null
"$bin" peers add --data-dir "$b" --card "$work/a.card" >/dev/null
sed -i 's/^pull_interval_ms = 5000/pull_interval_ms = 200/' "$b/config.toml"
page="${SYNC_PAGE:-1000}" # feed page size on both nodes (the server caps at its own)
sed -i "s/^page_size = [0-9]*/page_size = $page/" "$a/config.toml" "$b/config.toml"
if [ -n "${SYNC_COMMIT_MS:-}" ]; then # the receiver's index commit interval, to compare
  sed -i "s/^commit_interval_ms = [0-9]*/commit_interval_ms = $SYNC_COMMIT_MS/" "$b/config.toml"
fi

"$bench" gen "$n" "$work/records.jsonl"
start_node "$a" "$pa"; url_a="$url"
"$bin" import "$work/records.jsonl" --url "$url_a" --token "$(cat "$a/admin.token")" --batch 5000 --partial --jobs 3 >&2
last="$(curl -sf "$url_a/healthz" | json_get 'd["last_seq"]')"
echo "XAA holds $last changes; starting XBB" >&2

while :; do # XAA's indexer finishes the import first, so XAA's CPU below is the serving only
  h="$(curl -sf "$url_a/healthz")"
  [ "$(echo "$h" | json_get 'd["last_seq"]')" = "$(echo "$h" | json_get 'd["indexed_seq"]')" ] && break
  sleep 0.05
done
ticks="$(getconf CLK_TCK)"
cpu_ms() { awk -v t="$ticks" '{print int(($14+$15)*1000/t)}' "/proc/$1/stat"; }
cpu_a0_ms="$(cpu_ms "${pids[0]}")" # XAA's CPU so far (the import): the serving is measured from here
t0=$(now_ms)
start_node "$b" "$pb"; url_b="$url"; tok_b="$(cat "$b/admin.token")"
if [ -n "${PERF_OUT:-}" ]; then # profile both nodes while they sync: PERF_OUT=/tmp/sync.perf
  perf record -q -F 199 --call-graph dwarf,16384 -p "${pids[0]},${pids[1]}" -o "$PERF_OUT" 2>/dev/null &
  perf_pid=$!
fi
stored=""
while :; do
  after="$(curl -sf -H "Authorization: Bearer $tok_b" "$url_b/api/v1/peers" | json_get '[p["pulled_after"] for p in d["peers"] if p["id"]=="XAA"][0]')"
  if [ -z "$stored" ] && [ "$after" -ge "$n" ]; then stored=$(now_ms); fi
  if [ -n "$stored" ]; then
    h="$(curl -sf "$url_b/healthz")"
    if [ "$(echo "$h" | json_get 'd["last_seq"]')" = "$(echo "$h" | json_get 'd["indexed_seq"]')" ]; then break; fi
  fi
  sleep 0.05
done
t2=$(now_ms)
if [ -n "${PERF_OUT:-}" ]; then kill -INT "$perf_pid"; wait "$perf_pid" || true; fi
count="$(curl -sf -H "Authorization: Bearer $tok_b" "$url_b/api/v1/export" | wc -l)"
rss_kb="$(awk '/VmHWM/ {print $2}' /proc/${pids[1]}/status)"
cpu_a_ms="$(( $(cpu_ms "${pids[0]}") - cpu_a0_ms ))"
cpu_b_ms="$(cpu_ms "${pids[1]}")"
echo "CPU: XAA ${cpu_a_ms} ms (serving the feed), XBB ${cpu_b_ms} ms" >&2

python3 - "$out" "$limits" "$n" "$t0" "$stored" "$t2" "$count" "$rss_kb" "$page" "$cpu_b_ms" "$cpu_a_ms" <<'PY' | python3 "$here/scripts/bench_section.py" "$out" sync
import datetime, json, re, subprocess, sys
out, limits, n, t0, stored, t2, count, rss, page, cpu_b, cpu_a = sys.argv[1], json.loads(sys.argv[2]), *map(int, sys.argv[3:12])
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
section = f"""## Sync between two nodes (issue 3)

- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; machine: {cpu}, both nodes and the client on the same 2 cores
- command: `SYNC_N={n} SYNC_PAGE={page} scripts/bench-sync.sh`
- XAA holds {n:,} one-item records (signed at import); XBB, stopped meanwhile, starts and pulls
  XAA's feed over HTTPS (pages of {page}, `replicate` policy sharing every field). Each page is
  verified (chain, signature of every envelope, every disclosure digest), stored with the
  cursor in one sled transaction, flushed, acknowledged by a signed receipt, then indexed;
  page N+1 is fetched and verified while page N is written. "XBB CPU per record" is the CPU
  time of the receiving node (every thread, including index merges) divided by the records;
  "XAA CPU per record" the same for the sending node while it serves the feed: they show the
  work per record where the rate shows the shared machine's moment too.

| records | verified + stored (records/s) | … + indexed (records/s) | records at XBB | XBB CPU per record | XAA CPU per record | XBB peak RSS | ed25519 sign (same run) | ed25519 verify (same run) | reference receive pipeline (same run) |
|---|---|---|---|---|---|---|---|---|---|
| {n:,} | {n / ((stored - t0) / 1000):,.0f} | {n / ((t2 - t0) / 1000):,.0f} | {count:,} | {cpu_b * 1000 / n:,.0f} µs | {cpu_a * 1000 / n:,.0f} µs | {rss / 1024:,.0f} MiB | {limits['sign_per_s']:,.0f}/s | {limits['verify_per_s']:,.0f}/s | {limits['receive_pipeline_per_s']:,.0f}/s |

The reference receive pipeline is the least a receiver can do per record, one thread, no HTTP
and no sender: a signed canonical record parsed, its signature verified, inserted in sled (a
flush every 1,000) and indexed by lot and calibre (`bench limits`). The node also checks every
disclosure's digest and the hash chain, normalises, keeps the envelope, the change log and the
cursor, signs receipts, and shares the two cores with the sender.

Target (issue 3): ≥ 15k records/s.
"""
print(section)
PY
