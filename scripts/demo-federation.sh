#!/usr/bin/env bash
# A federation to watch: three nodes on this machine — two States (XAA, XBB) and a regional
# body (REG) — wired with pinned keys and certificates. XAA records two sample seizures and
# shares with XBB (replicate: location at admin1, no case references) and with REG
# (replicate: country only). The script shows what each partner would receive and why, then
# what actually arrived, then the signed receipts XAA got back.
#
# usage: scripts/demo-federation.sh            (data in a temporary folder, removed at the end)
#        DEMO_DIR=/tmp/fed scripts/demo-federation.sh   (kept, nodes stopped at the end)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
samples="${SAMPLES:-$here/../shared/data/samples}"
cargo build --release -q -p ammotrace --bin ammotrace --manifest-path "$here/Cargo.toml"
bin="$here/target/release/ammotrace"
work="${DEMO_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/ammotrace-demo.XXXXXX")}"
mkdir -p "$work"
# shellcheck source=scripts/lib.sh
. "$here/scripts/lib.sh"
cleanup() {
  stop_nodes
  [ -n "${DEMO_DIR:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# Small printers for the JSON answers.
cat >"$work/show.py" <<'PY'
import json, sys
what = sys.argv[1]
if what == "records":
    for line in sys.stdin:
        r = json.loads(line)
        loc = r.get("event", {}).get("location", {})
        lots = [i.get("lot", {}).get("raw") for i in r.get("items", [])]
        print(f"     {r['record_id']} from {r['originating_state']}: lots {lots}, "
              f"location {loc}, case_refs {'case_refs' in r}")
elif what == "hits":
    for h in json.load(sys.stdin)["hits"][:3]:
        print(f"     {h['record_id']} origin {h['origin']} match {h['match']['kind']} "
              f"score {h['match']['score']:.2f}")
elif what == "receipts":
    d = json.load(sys.stdin)
    got = ", ".join(f"{r['partner']} applied v{r['version']}" for r in d["receipts"]) or "none yet"
    print(f"     {d['record_id']} v{d['version']}: {got}")
PY
api() { # node path
  curl -sf -H "Authorization: Bearer $(cat "$work/$1/admin.token")" "$(cat "$work/$1.url")$2"
}

say "1. Three nodes: init, and each partner's card (id, URL, public key, TLS certificate)"
for id in XAA XBB REG; do
  "$bin" init --data-dir "$work/$id" --node-id "$id" | sed 's/^/   /'
  free_port >"$work/$id.port"
  "$bin" peers card --data-dir "$work/$id" --url "https://127.0.0.1:$(cat "$work/$id.port")" >"$work/$id.card"
done

say "2. Policies: what XAA shares with each partner (everything else: mode none, default deny)"
cat >"$work/xaa-to-xbb.json" <<'JSON'
{"mode": "replicate", "categories": ["*"], "fields": ["*"], "location_precision": "admin1",
 "case_references": false, "max_tlp": "AMBER"}
JSON
cat >"$work/xaa-to-reg.json" <<'JSON'
{"mode": "replicate", "categories": ["small_arms_ammunition"], "fields": ["/event", "/items", "/supply_chain"],
 "location_precision": "country", "max_tlp": "AMBER"}
JSON
"$bin" peers add --data-dir "$work/XAA" --card "$work/XBB.card" --policy "$work/xaa-to-xbb.json" --no-pull | sed 's/^/   XAA: /'
"$bin" peers add --data-dir "$work/XAA" --card "$work/REG.card" --policy "$work/xaa-to-reg.json" --no-pull | sed 's/^/   XAA: /'
for id in XBB REG; do
  "$bin" peers add --data-dir "$work/$id" --card "$work/XAA.card" | sed "s/^/   $id: /"
done
for id in XAA XBB REG; do sed -i 's/^pull_interval_ms = 5000/pull_interval_ms = 1000/' "$work/$id/config.toml"; done
"$bin" policy show XBB --data-dir "$work/XAA" | sed 's/^/   /'

say "3. Start the nodes (local API on plain HTTP, federation API on HTTPS)"
for id in XAA XBB REG; do
  launch_node "$work/$id" "$(cat "$work/$id.port")"
done
for id in XAA XBB REG; do
  node_url "$work/$id" >"$work/$id.url"
  grep -E "API:|federation:" "$work/$id.log" | sed "s/^ */   $id /"
done

say "4. XAA records two sample seizures (shared/data/samples record-1 and record-3, as its own)"
cat "$samples/record-1.json" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))' >"$work/xaa.jsonl"
cat "$samples/record-3.json" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))' >>"$work/xaa.jsonl"
"$bin" import "$work/xaa.jsonl" --data-dir "$work/XAA" --url "$(cat "$work/XAA.url")" --as-own 2>&1 | tail -2 | sed 's/^/   /'
ids="$(api XAA /api/v1/export | python3 -c 'import json,sys; [print(json.loads(l)["record_id"]) for l in sys.stdin]')"
first="$(echo "$ids" | head -1)"

say "5. Dry run on XAA: exactly which fields of record-1 each partner would receive, and why"
"$bin" policy show XBB --data-dir "$work/XAA" --url "$(cat "$work/XAA.url")" --record "$first" | head -30 | sed 's/^/   /'
echo "   …"
"$bin" policy show REG --data-dir "$work/XAA" --url "$(cat "$work/XAA.url")" --record "$first" | head -1 | sed 's/^/   /'

say "6. What arrived (XAA notified its partners; they pulled, verified every signature and disclosure)"
sleep 3
for id in XBB REG; do
  echo "   $id holds:"
  api "$id" /api/v1/export | python3 "$work/show.py" records
done

say "7. A search at XBB finds XAA's lot, however it is transcribed"
lot="$(api XAA "/api/v1/records/$first" | python3 -c 'import json,sys; print(json.load(sys.stdin)["items"][0]["lot"]["raw"])')"
query="$(echo "$lot" | tr 'A-Z' 'a-z' | tr -d '-')"
echo "   query lot=$query"
api XBB "/api/v1/search?lot=$(python3 -c "import urllib.parse,sys; print(urllib.parse.quote(sys.argv[1]))" "$query")" | python3 "$work/show.py" hits

say "8. Signed receipts at XAA: who applied which version"
for id in $ids; do
  api XAA "/api/v1/records/$id/receipts" | python3 "$work/show.py" receipts
done

say "9. Audit logs verify"
for id in XAA XBB REG; do "$bin" audit verify --data-dir "$work/$id" | sed "s/^/   $id: /"; done
