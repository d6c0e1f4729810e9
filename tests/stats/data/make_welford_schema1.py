"""Written with the parallelaverage of commit fa570f1 (schema 1, before weights were exact):
Welford pickles and what that version reported for them, for tests/stats/test_welford.py.

Run with a build of that commit (git worktree add /tmp/old fa570f1; pip install /tmp/old):
    python tests/stats/data/make_welford_schema1.py tests/stats/data/welford_schema1.pickle
"""
import pickle, sys
import numpy as np

from parallelaverage.stats import Welford
rng = np.random.default_rng(2024)
cases = {}
acc = Welford()
for _ in range(50):
    acc.add(1e9 + rng.standard_normal((3, 2)))
cases["unweighted_offset_1e9"] = acc
acc = Welford()
for i in range(40):
    acc.add(rng.standard_normal(4) * 3 + 10, weight=float(rng.uniform(0.1, 2.0)))
cases["weighted"] = acc
acc = Welford()
for i in range(30):
    acc.add(rng.standard_normal(2) + 1j * rng.standard_normal(2))
cases["complex"] = acc
acc = Welford()
acc.add(2.5)
cases["one_sample"] = acc
acc = Welford()
for x in (1.0, 2.0, 4.0):
    acc.add(x, weight=0.0)
cases["zero_weights_only"] = acc
cases["empty"] = Welford()
reported = {}
for name, acc in cases.items():
    if acc.count == 0:
        reported[name] = {"count": 0}
        continue
    with np.errstate(all="ignore"):
        reported[name] = {"count": acc.count, "total_weight": acc.total_weight, "mean": np.asarray(acc.mean),
                          "variance": np.asarray(acc.variance), "sem": np.asarray(acc.sem), "shape": acc.shape}
with open(sys.argv[1], "wb") as f:
    pickle.dump({"accumulators": cases, "reported": reported}, f, protocol=4)
print("wrote", sys.argv[1])
