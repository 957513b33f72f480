"""How trebuchet.py's default training settings were chosen: on the 'tuning' stream only.

One variant per call: train the aimer as trebuchet.py's section 6 does (Adam, cosine learning rate from --lr
down to --floor × --lr, targets out of reach trained towards the nearest reachable distance), with the options
below, then measure it on the 1,000 (target, wind) pairs of the 'tuning' random stream (never 'test', the
stream every reported figure comes from). Without --warmup, --floor and --ema the training is trebuchet.py's
own, step for step (same streams, same batches, the same learning rates: tests/test_trebuchet_study.py), so
`python trebuchet.py --eval-stream tuning --lr X --adam-beta2 B --steps N` should print the same held-out
figures. (The defaults here are the previous lesson run's: 600 steps, lr 2e-2, β2 0.999.) The CPU seconds are
those of the training loop alone (no monitor set), so they are a little below the script's.

    python docs/trebuchet_tuning_study.py --lr 4e-2 --steps 800     # about a minute on 2 quiet cores

appends one row (the variant, its command, the commit, the figures) to docs/results/trebuchet_tuning_study.json.
"""

import argparse
import json
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import autodiff as ad   # noqa: E402  (first: single-threaded BLAS before NumPy loads)
import numpy as np      # noqa: E402

import trebuchet as T   # noqa: E402

RESULTS = os.path.join(ROOT, "docs", "results", "trebuchet_tuning_study.json")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-2)
    p.add_argument("--hidden", type=int, default=48)
    p.add_argument("--warmup", type=int, default=0, help="steps of linear warm-up of the learning rate")
    p.add_argument("--floor", type=float, default=0.0, help="the cosine ends at floor × lr")
    p.add_argument("--ema", type=float, default=0.0, help="also measure an exponential average of the weights")
    p.add_argument("--beta2", type=float, default=0.999, help="Adam's second-moment decay")
    p.add_argument("--seed", type=int, default=0, help="seed of the init and train streams (the tuning pairs "
                                                       "always come from seed 0's tuning stream)")
    p.add_argument("--tag", default="", help="a name for the row")
    p.add_argument("--results", default=RESULTS)
    return p.parse_args(argv)


def train(net, rng, a, reach_curve):
    optimizer = ad.optim.Adam(net.parameters(), lr=a.lr, betas=(0.9, a.beta2))
    average = [p.data.copy() for p in net.parameters()]
    for step in range(a.steps):
        lr = a.floor * a.lr + (1 - a.floor) * a.lr * 0.5 * (1 + math.cos(math.pi * step / a.steps))
        if step < a.warmup:
            lr *= (step + 1) / a.warmup
        T.update(optimizer, lambda: T.aimer_loss(net, *T.sample_shots(rng, a.batch), reach_curve), lr)
        if a.ema:
            for e, p in zip(average, net.parameters()):
                e *= a.ema
                e += (1 - a.ema) * p.data
    return average


def summary(net, tuning, reach_curve):
    r = T.miss_statistics(net, *tuning, reach_curve)["reachable"]
    return dict(n=r["n"], mean_m=r["mean_m"], median_m=r["median_m"], p95_m=r["p95_m"])


def main(argv=None):
    a = parse(argv)
    streams = ad.runs.random_streams(0, *T.STREAMS)
    tuning = T.sample_shots(streams["tuning"], 1000)
    if a.seed:
        streams = ad.runs.random_streams(a.seed, *T.STREAMS)
    reach_curve = T.ReachCurve()
    net = T.make_aimer(streams["init"], a.hidden)
    started = time.process_time()
    average = train(net, streams["train"], a, reach_curve)
    row = dict(variant={k: v for k, v in vars(a).items() if k != "results"},
               train_cpu_seconds=round(time.process_time() - started, 1), tuning=summary(net, tuning, reach_curve))
    if a.ema:
        for p, e in zip(net.parameters(), average):
            p.data = e
        row["tuning_weight_average"] = summary(net, tuning, reach_curve)
    row["provenance"] = ad.runs.provenance()
    rows = json.load(open(a.results))["rows"] if os.path.exists(a.results) else []
    ad.runs.write_json(a.results, dict(note=__doc__.splitlines()[0], rows=rows + [row]))
    print(json.dumps({k: row[k] for k in row if k != "provenance"}))


if __name__ == "__main__":
    main()
