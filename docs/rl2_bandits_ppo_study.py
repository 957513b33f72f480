"""A study for rl2_bandits.py's go-further (not part of the lesson): the n = 100 stage's PPO settings, one change
at a time, measured by rl2_bandits.py's own main (the same unseen tasks, the same tuning, the same paired table).

    python docs/rl2_bandits_ppo_study.py ARM --full --cells n100_k10 --training-seeds 1 --out runs/rl2_ppo_ARM

ARM names a change to PPO_BY_N[100] (the n = 10 stage is untouched). With --training-seeds 1 the arm's seed 0 is
evaluated on the same tasks as seed 0 of the committed cell (docs/results/rl2_bandits_full_n100_k10.json): compare
their per-seed "RL2 - Greedy (paired)" and "RL2 - Gittins (paired)".
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import autodiff as ad  # noqa: E402  (first: single-threaded BLAS before NumPy loads)

import rl2_bandits as rl2  # noqa: E402

# what each arm changes in the n = 100 stage; the exploration test's settings learnt fastest per pull at n = 50
ARMS = {
    "default": {},
    "lr_1e-2": dict(lr=1e-2),                        # the same number of gradient steps, a larger step
    "minibatches_4_lr_6e-3": dict(minibatches=4, lr=6e-3),   # twice the gradient steps
    # the exploration test's asymmetric critic (reads the trial's clock and the task's true means; training only):
    # a value that knows the means leaves the advantage with the luck of the draws, not with which task it was
    "critic_time+means": dict(critic_sees="time+means"),
    "entropy_1e-2": dict(entropy_coef=0.01),          # the n = 10 stage's entropy bonus kept at n = 100
    "iterations_1600": dict(iterations=1600),         # twice the training (and twice the wall time)
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ARMS:
        raise ad.runs.BadInput(f"the first argument names an arm: one of {', '.join(ARMS)}")
    rl2.PPO_BY_N[100] = dict(rl2.PPO_BY_N[100], **ARMS[argv[0]])
    return rl2.main(argv[1:])


if __name__ == "__main__":
    ad.runs.run(main)
