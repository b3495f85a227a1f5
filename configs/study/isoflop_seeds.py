# Writes configs/study/isoflop-seeds.json (python3 configs/study/isoflop_seeds.py): two more seeds (7, 42) at each
# method's best size of each budget whose isoFLOP curve is complete in the committed summaries. Each point keeps the
# exact patches of configs/study/isoflop.json, so the report folds its seeds into the isoflop point.
import copy, glob, json, os
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..')
spec = json.load(open(f'{root}/configs/study/isoflop.json'))
done = {}
for f in glob.glob(f'{root}/docs/reproduction/runs/isoflop/*.json'):
    s = json.load(open(f))
    done[(s['labels']['method'], s['labels']['size'], s['budget'])] = s['eval']['c4']['perplexity']
grids = []
for g in spec['grids']:
    method = g['axes'][0]['values'][0]['name']
    for budget in g['budgets']:
        # The best size of a budget is looked for over every grid of the method that runs that budget.
        planned = [(v['name'], v) for h in spec['grids'] if h['axes'][0]['values'][0]['name'] == method
                   and budget in h['budgets'] for v in h['axes'][1]['values']]
        if any((method, size, budget) not in done for size, _ in planned):
            continue
        best = min(planned, key=lambda p: done[(method, p[0], budget)])
        if best[1] not in g['axes'][1]['values']:
            continue
        grids.append({"name": "isoflop-seeds",
                      "axes": [copy.deepcopy(g['axes'][0]), {"name": "size", "values": [copy.deepcopy(best[1])]}],
                      "budgets": [budget], "seeds": [7, 42]})
out = {k: spec[k] for k in ('data', 'eval', 'base')}
out['grids'] = grids
json.dump(out, open(f'{root}/configs/study/isoflop-seeds.json', 'w'), indent=1)
