#!/usr/bin/env bash
# Held-out match evaluation: variants the dev set does not contain. scripts/heldout/gen.py
# builds, deterministically and from the domain rules and the shared tables (not from the dev
# set), ~120 physical lots in five lot conventions, each recorded by 2-3 States, with sibling
# and other-factory distractors and background seizures, and ~6,400 queries in ~60 variant
# categories (separators, labels, scripts, OCR confusions, worn characters, headstamp order,
# clock positions, calibre aliases…). A fresh node imports the records; eval.py runs every
# query through GET /api/v1/search and writes recall@10 and MRR per category.
#
# usage: scripts/match-heldout.sh [OUTDIR]     (default target/heldout)
#        HELDOUT_OUT=OUTDIR python3 scripts/heldout/show.py CATEGORY   (its failing queries)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$here/target/heldout}"
mkdir -p "$out"
cargo build --release -q -p ammotrace --manifest-path "$here/Cargo.toml"
bin="$here/target/release/ammotrace"
work="$(mktemp -d)"
# shellcheck source=scripts/lib.sh
. "$here/scripts/lib.sh"
trap 'stop_nodes; rm -rf "$work"' EXIT
python3 "$here/scripts/heldout/gen.py" "$work"
"$bin" init --data-dir "$work/node" --node-id XAA >/dev/null
start_node "$work/node"
token="$(cat "$work/node/admin.token")"
"$bin" import "$work/records.jsonl" --url "$url" --token "$token" | tail -1
python3 "$here/scripts/heldout/eval.py" "$url" "$token" "$work" "$out"
echo "per category: $out/summary.md" >&2
