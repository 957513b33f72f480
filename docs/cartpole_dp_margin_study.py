"""How cartpole_dp.py's stopping margin was chosen: on development seeds and development starts only.

DP training seeds 100-149 (never used for a reported figure) each train 10 episodes without stopping. After
every episode the policy is scored on the twin on the stopping starts (cartpole_dp.STOPPING_SEEDS, 100) and on
the 1,000 development starts (cartpole_dp.DEVELOPMENT_SEEDS). Each candidate rule is then replayed on these
curves: where would it have stopped, and what would the development starts have said of that policy?

    python docs/cartpole_dp_margin_study.py            # about 10 min on 2 busy cores
    python docs/cartpole_dp_margin_study.py --summarise runs/cartpole_dp_margin_study/curves.json

writes runs/cartpole_dp_margin_study/curves.json and docs/results/cartpole_dp_margin_study.json.
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import autodiff as ad   # noqa: E402  (first: single-threaded BLAS before NumPy loads)
import numpy as np      # noqa: E402

import cartpole_dp as cp  # noqa: E402

TRAINING_SEEDS = range(100, 150)
EPISODES = 10
RULES = [("margin", m) for m in (0, 5, 10, 15, 20, 25)] + [("one more episode", 0), ("stopping-set min", 400)]


def curves():
    stopping = cp.gym_initial_states(cp.STOPPING_SEEDS)
    development = cp.gym_initial_states(cp.DEVELOPMENT_SEEDS)
    rows = []
    for seed in TRAINING_SEEDS:
        rng = np.random.default_rng(seed)
        policy = cp.make_network(rng)
        optimizer = ad.optim.Adam(cp.trainable_weights(policy), 0.01)
        row = {"seed": seed, "stop_mean": [], "stop_min": [], "dev_mean": []}
        for _ in range(EPISODES):
            cp.train_dp_episode(policy, optimizer, rng)
            score = cp.scorer(policy)
            stop, dev = cp.evaluate_on_twin(score, stopping), cp.evaluate_on_twin(score, development)
            row["stop_mean"].append(float(stop.mean()))
            row["stop_min"].append(float(stop.min()))
            row["dev_mean"].append(float(dev.mean()))
        rows.append(row)
        print(seed, np.round(row["stop_mean"], 1).tolist(), flush=True)
    return rows


def stop_episode(row, kind, value, bar=cp.REWARD_THRESHOLD):
    """The 0-based episode at which a rule stops, or None."""
    for episode in range(len(row["stop_mean"])):
        mean = row["stop_mean"][episode]
        if kind == "margin" and mean >= bar + value:
            return episode
        if kind == "one more episode" and mean >= bar:
            return min(episode + 1, len(row["stop_mean"]) - 1)
        if kind == "stopping-set min" and mean >= bar and row["stop_min"][episode] >= value:
            return episode
    return None


def summarise(rows):
    table = []
    for kind, value in RULES:
        stops = [stop_episode(row, kind, value) for row in rows]
        reached = [(s, row["dev_mean"][s]) for s, row in zip(stops, rows) if s is not None]
        table.append({"rule": kind, "value": value, "seeds": len(rows), "reached": len(reached),
                      "mean_episodes": float(np.mean([s + 1 for s, _ in reached])),
                      "max_episodes": max(s + 1 for s, _ in reached),
                      "within_5_and_development_at_bar": sum(s + 1 <= 5 and d >= cp.REWARD_THRESHOLD
                                                             for s, d in reached),
                      "development_below_bar": sum(d < cp.REWARD_THRESHOLD for _, d in reached),
                      "worst_development_mean": min(d for _, d in reached)})
    return table


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--summarise", metavar="CURVES", help="summarise saved curves instead of training")
    args = p.parse_args()
    if args.summarise:
        with open(args.summarise) as f:
            rows = json.load(f)
    else:
        rows = curves()
        out = ad.runs.prepare_out(os.path.join(ROOT, "runs", "cartpole_dp_margin_study"))
        ad.runs.write_json(os.path.join(out, "curves.json"), rows)
    table = summarise(rows)
    ad.runs.print_table(list(table[0]), [list(r.values()) for r in table],
                        title="Stopping rules replayed on development seeds 100-149 and development starts")
    ad.runs.write_json(os.path.join(ROOT, "docs", "results", "cartpole_dp_margin_study.json"),
                       {"metrics": {"rules": table}, "provenance": ad.runs.provenance()})


if __name__ == "__main__":
    main()
