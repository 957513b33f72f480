"""What the lesson run's training costs against an earlier version of trebuchet.py, measured in one process.

CPU seconds on a shared machine depend on what else runs, so two figures taken at different times do not
compare. This benchmark trains two aimers side by side, interleaving a few steps of each, and prints the ratio
of their CPU seconds: the current trebuchet.py with its lesson settings, and the file as it was at --against
(git show) with the settings given by --old-steps/--old-lr/--old-beta2 (the earlier lesson run's by default).
Multiply the earlier run's CPU seconds on a quiet machine by the ratio to estimate the current one's there.

    python benchmarks/trebuchet_training_cost.py                   # about 2 min of CPU on 2 cores
    python benchmarks/trebuchet_training_cost.py --against f890876 --old-steps 600 --old-lr 0.02 --old-beta2 0.999
"""

import argparse
import importlib.util
import math
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import autodiff as ad   # noqa: E402  (first: single-threaded BLAS before NumPy loads)
import numpy as np      # noqa: E402, F401


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Trainer:
    """Section 6's loop of one version of the script, a few steps at a time, with its own CPU clock."""

    def __init__(self, T, steps, lr, beta2):
        streams = ad.runs.random_streams(0, *T.STREAMS)
        self.T, self.steps, self.lr, self.step, self.cpu = T, steps, lr, 0, 0.0
        self.reach_curve = T.ReachCurve()
        self.net = T.make_aimer(streams["init"], 48)
        self.rng = streams["train"]
        self.optimizer = ad.optim.Adam(self.net.parameters(), lr=lr, betas=(0.9, beta2))

    def run(self, n):
        started = time.process_time()
        for _ in range(min(n, self.steps - self.step)):
            lr = self.lr * 0.5 * (1.0 + math.cos(math.pi * self.step / self.steps))
            self.T.update(self.optimizer, lambda: self.T.aimer_loss(self.net, *self.T.sample_shots(self.rng, 128),
                                                                    self.reach_curve), lr)
            self.step += 1
        self.cpu += time.process_time() - started


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--against", default="f890876", help="the earlier commit (default: before the speed-ups)")
    p.add_argument("--old-steps", type=int, default=600)
    p.add_argument("--old-lr", type=float, default=2e-2)
    p.add_argument("--old-beta2", type=float, default=0.999)
    p.add_argument("--out", default=None, help="also write the figures to this JSON file")
    a = p.parse_args()
    source = subprocess.run(["git", "-C", ROOT, "show", f"{a.against}:trebuchet.py"], capture_output=True, text=True,
                            check=True).stdout
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trebuchet_then.py")
        with open(path, "w") as f:
            f.write(source)
        then = load(path, "trebuchet_then")
        now = load(os.path.join(ROOT, "trebuchet.py"), "trebuchet_now")
        s = now.SETTINGS
        old, new = Trainer(then, a.old_steps, a.old_lr, a.old_beta2), Trainer(now, s["steps"], s["lr"], s["adam_beta2"])
        while old.step < old.steps or new.step < new.steps:     # the same share of each run in every round
            old.run(max(1, round(10 * old.steps / new.steps)))
            new.run(10)
    result = dict(against=a.against, old=dict(steps=old.steps, lr=old.lr, cpu_seconds=old.cpu),
                  new=dict(steps=new.steps, lr=new.lr, cpu_seconds=new.cpu), ratio_new_to_old=new.cpu / old.cpu,
                  per_step_ratio=(new.cpu / new.steps) / (old.cpu / old.steps), provenance=ad.runs.provenance())
    print(f"{a.against}, {old.steps} steps: {old.cpu:.1f} CPU-s;  now, {new.steps} steps: {new.cpu:.1f} CPU-s;  "
          f"ratio {result['ratio_new_to_old']:.3f} (per step {result['per_step_ratio']:.3f})")
    if a.out:
        ad.runs.write_json(a.out, result)
    return result


if __name__ == "__main__":
    main()
