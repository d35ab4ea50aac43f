#!/usr/bin/env python3
"""recall@10 and MRR of a node's search on a query set (stdlib only).

usage: match_eval.py URL TOKEN QUERIES.jsonl
For each query: the first ten distinct records returned, excluding `from_record`; recall@10 is
the share of `expected` among them, MRR the reciprocal rank of the first expected record.
"""
import json
import os
import sys
import time
import urllib.parse
import urllib.request


def search(url, token, params):
    req = urllib.request.Request(
        url + "/api/v1/search?" + urllib.parse.urlencode(params),
        headers={"Authorization": "Bearer " + token},
    )
    with urllib.request.urlopen(req) as resp:
        return json.load(resp)


def main():
    url, token, path = sys.argv[1:4]
    health = json.load(urllib.request.urlopen(url + "/healthz"))
    # Wait until every imported record is indexed.
    search(url, token, {"calibre": "9mm", "limit": 1, "min_seq": health["last_seq"]})
    queries = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    recall_sum, rr_sum, misses = 0.0, 0.0, []
    started = time.time()
    for q in queries:
        params = {k: q[k] for k in ("lot", "headstamp", "calibre") if q.get(k)}
        params["limit"] = 50
        hits = search(url, token, params)["hits"]
        ranked = []
        for h in hits:
            rid = h["record_id"]
            if rid != q.get("from_record") and rid not in ranked:
                ranked.append(rid)
        top = ranked[:10]
        expected = set(q["expected"])
        recall = len(expected & set(top)) / len(expected) if expected else 1.0
        rr = 0.0
        for i, rid in enumerate(ranked):
            if rid in expected:
                rr = 1.0 / (i + 1)
                break
        recall_sum += recall
        rr_sum += rr
        if recall < 1.0 or rr < 1.0:
            misses.append((q, recall, rr, hits[:3]))
    n = len(queries)
    elapsed = time.time() - started
    print(f"queries: {n}  recall@10: {recall_sum / n:.4f}  MRR: {rr_sum / n:.4f}  ({elapsed:.1f} s, {n / elapsed:.0f} queries/s)")
    if os.environ.get("MISSES"):
        for q, recall, rr, top in misses:
            print(f"- {q['query_id']} lot={q['lot']!r} hs={q['headstamp']!r} cal={q['calibre']!r} recall={recall:.2f} rr={rr:.2f}")
            for h in top:
                item = h.get("item") or {}
                print(
                    "    ", h["match"]["kind"], h["match"]["score"], (item.get("lot") or {}).get("raw"),
                    (item.get("headstamp") or {}).get("raw_transcription"), (item.get("calibre") or {}).get("raw"),
                    "EXPECTED" if h["record_id"] in q["expected"] else "",
                )


if __name__ == "__main__":
    main()
