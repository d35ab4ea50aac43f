# usage: show.py CATEGORY [N] [fail|all]: the queries of a category from the last
# scripts/match-heldout.sh run (its OUTDIR in HELDOUT_OUT, default target/heldout).
import json,os,sys,collections
cat=sys.argv[1]; n=int(sys.argv[2]) if len(sys.argv)>2 else 5
mode=sys.argv[3] if len(sys.argv)>3 else 'fail'
rows=[json.loads(l) for l in open(os.path.join(os.environ.get('HELDOUT_OUT', 'target/heldout'), 'results.jsonl'))]
k=0
for r in rows:
    q=r['query']
    if q['category']!=cat: continue
    bad = r['recall']<1 or r['rr']<1 or r['distractor']
    if mode=='fail' and not bad: continue
    k+=1
    if k>n: continue
    print(f"--- {q['query_id']} lot={q['lot']!r} hs={q['headstamp']!r} cal={q['calibre']!r} recall={r['recall']:.2f} rr={r['rr']:.2f} true_rank={r['true_rank']} dist={r['distractor']} err={r['error']}")
    for h in r['top']: print('   top ', h['role'] or '-', h['match'], repr(h['lot']), repr(h['hs']), repr(h['cal']))
    for h in r['true_hits'][:2]:
        if h not in r['top']: print('   true', h['role'], h['match'], repr(h['lot']), repr(h['hs']), repr(h['cal']))
print('failing:',k)
