#!/usr/bin/env python3
"""recall@10 and MRR of a node's search on a query set (stdlib only).

usage: match_eval.py URL TOKEN QUERIES.jsonl
       match_eval.py --federated NODES.json RECORDS.jsonl QUERIES.jsonl
For each query: the first ten distinct records returned, excluding `from_record`; recall@10 is
the share of `expected` among them, MRR the reciprocal rank of the first expected record.

With --federated, NODES.json maps each State to {"url", "token"} of its node; every query is
sent with scope=federated to the node of the State that recorded its `from_record` (found in
RECORDS.jsonl), as an investigator there would.
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


def wait_indexed(url, token):
    health = json.load(urllib.request.urlopen(url + "/healthz"))
    search(url, token, {"calibre": "9mm", "limit": 1, "min_seq": health["last_seq"]})


def main():
    if sys.argv[1] == "--federated":
        nodes = json.load(open(sys.argv[2]))
        state_of = {}
        for line in open(sys.argv[3], encoding="utf-8"):
            if line.strip():
                r = json.loads(line)
                state_of[r["record_id"]] = r["originating_state"]
        path = sys.argv[4]
        for n in nodes.values():
            wait_indexed(n["url"], n["token"])

        def route(q):
            n = nodes[state_of[q["from_record"]]]
            extra = {"scope": "federated", "purpose": "match evaluation", "case_ref": q["query_id"]}
            return n["url"], n["token"], extra
    else:
        url, token, path = sys.argv[1:4]
        wait_indexed(url, token)

        def route(q):
            return url, token, {}
    queries = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    recall_sum, rr_sum, misses, statuses = 0.0, 0.0, [], {}
    started = time.time()
    for q in queries:
        params = {k: q[k] for k in ("lot", "headstamp", "calibre") if q.get(k)}
        params["limit"] = 50
        q_url, q_token, extra = route(q)
        answer = search(q_url, q_token, {**params, **extra})
        hits = answer["hits"]
        for p in answer.get("partners", []):
            if p["status"] not in ("answered", "no_hit"):
                statuses[p["status"]] = statuses.get(p["status"], 0) + 1
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
    if statuses:
        print(f"partner answers other than answered/no_hit: {statuses}")
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
