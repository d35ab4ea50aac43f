#!/usr/bin/env python3
"""Runs set/queries.jsonl against a node and reports recall@10 / MRR per category.

usage: eval.py URL TOKEN SETDIR OUTDIR
recall@10 = share of `expected` records among the first ten distinct records returned;
MRR = 1/rank of the first record of the physical lot (expected or extra_relevant);
distractor stats: a sibling / other-maker record ranked above (or tied in score with) the best true record.
"""
import collections
import json
import sys
import urllib.parse
import urllib.request

url, token, setdir, outdir = sys.argv[1:5]


def search(params):
    req = urllib.request.Request(url + "/api/v1/search?" + urllib.parse.urlencode(params),
                                 headers={"Authorization": "Bearer " + token})
    try:
        with urllib.request.urlopen(req) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return {"error": e.code, "body": e.read().decode()[:300], "hits": []}


health = json.load(urllib.request.urlopen(url + "/healthz"))
search({"calibre": "9mm", "limit": 1, "min_seq": health["last_seq"]})

queries = [json.loads(l) for l in open(f"{setdir}/queries.jsonl", encoding="utf-8")]
stats = collections.defaultdict(lambda: dict(n=0, recall=0.0, rr=0.0, dist_n=0, dist_above=0, dist_tie=0, errors=0, kinds=collections.Counter()))
out = open(f"{outdir}/results.jsonl", "w", encoding="utf-8")
for qq in queries:
    params = {k: qq[k] for k in ("lot", "headstamp", "calibre") if qq.get(k)}
    params["limit"] = 50
    ans = search(params)
    hits = ans.get("hits", [])
    ranked, best = [], {}
    for h in hits:
        if h["record_id"] not in best:
            ranked.append(h["record_id"])
            best[h["record_id"]] = h
    exp = set(qq["expected"])
    rel = exp | set(qq["extra_relevant"])
    top = ranked[:10]
    recall = len(exp & set(top)) / len(exp) if exp else 1.0
    rr, true_rank = 0.0, None
    for i, r in enumerate(ranked):
        if r in rel:
            rr, true_rank = 1.0 / (i + 1), i
            break
    s = stats[qq["category"]]
    s["n"] += 1
    s["recall"] += recall
    s["rr"] += rr
    if "error" in ans:
        s["errors"] += 1
    dist_flag = None
    if qq["distractors"]:
        s["dist_n"] += 1
        dranks = [(ranked.index(d), kind) for kind, d in qq["distractors"] if d in ranked]
        if dranks:
            dr, dk = min(dranks)
            tscore = best[ranked[true_rank]]["match"]["score"] if true_rank is not None else -1
            dscore = best[ranked[dr]]["match"]["score"]
            if true_rank is None or dr < true_rank:
                if dscore == tscore:
                    s["dist_tie"] += 1
                    dist_flag = f"tie:{dk}"
                else:
                    s["dist_above"] += 1
                    dist_flag = f"above:{dk}"
    def brief(h):
        it = h.get("item") or {}
        return dict(rid=h["record_id"], match=h["match"], lot=(it.get("lot") or {}).get("raw"),
                    hs=(it.get("headstamp") or {}).get("raw_transcription"), cal=(it.get("calibre") or {}).get("raw"),
                    role=("EXPECTED" if h["record_id"] in exp else "RELEVANT" if h["record_id"] in rel else
                          next((k for k, d in qq["distractors"] if d == h["record_id"]), "")))
    true_hits = [brief(best[r]) for r in ranked if r in rel]
    # how the best expected record matched, on the component the category varies
    comp = "lot" if qq["category"].startswith(("lot_", "baseline", "stored_")) else "headstamp" if qq["category"].startswith("hs_") else "calibre"
    e = [best[r] for r in ranked if r in exp]
    s["kinds"][e[0]["match"].get(comp, "-") if e else "NOT_RETURNED"] += 1
    out.write(json.dumps(dict(query=qq, recall=recall, rr=rr, true_rank=true_rank, distractor=dist_flag,
                              error=ans.get("error"), body=ans.get("body"),
                              top=[brief(best[r]) for r in ranked[:5]], true_hits=true_hits[:3]), ensure_ascii=False) + "\n")
out.close()

lines = ["| category | n | recall@10 | MRR | distractor above / tie (of n with distractors) | varied component: match kind of best expected hit |", "|---|---|---|---|---|---|"]
for cat in sorted(stats):
    s = stats[cat]
    d = f"{s['dist_above']} / {s['dist_tie']} (of {s['dist_n']})" if s["dist_n"] else "-"
    err = f" [{s['errors']} HTTP errors]" if s["errors"] else ""
    kinds = ", ".join(f"{k} {v}" for k, v in s["kinds"].most_common())
    lines.append(f"| {cat} | {s['n']} | {s['recall'] / s['n']:.3f} | {s['rr'] / s['n']:.3f} | {d}{err} | {kinds} |")
tot = sum(s["n"] for s in stats.values())
lines.append(f"| ALL | {tot} | {sum(s['recall'] for s in stats.values()) / tot:.3f} | {sum(s['rr'] for s in stats.values()) / tot:.3f} | | |")
open(f"{outdir}/summary.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
