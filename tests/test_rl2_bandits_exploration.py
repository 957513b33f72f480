"""rl2_bandits.py: a learning test where exploration matters.

At n = 10 pulls Greedy (always pull the arm with the best posterior mean) is 0.1 below the exact optimum, so
a test there cannot tell an agent that explores from one that does not. At n = 50 pulls and k = 5 arms the Gittins
index beats Greedy by about 1.3 per trial: trying an arm that might be better pays for itself over the 50 pulls.

The test trains RL² briefly (a curriculum: PPO on 10-pull trials, then on 50-pull trials, 1.3 M pulls in all,
about 30 s of one core) and asks its policy's most probable arms to beat Greedy on the same unseen tasks, with
the same luck, by BAR. Agents that do not explore miss it:
- Greedy itself (margin 0), and Greedy with random tie-breaks (+0.33, it tries an untried arm more often);
- RL² trained with the per-pull cut of the returns (one public reimplementation's GAE, no bootstrap from one
  pull to the next: A_t = r_t − V_t), which can only learn to maximise the next reward.
Measured margins (RL² − Greedy on these tasks, SE ≈ 0.06), training seeds 0-5: +0.68, +0.56, +0.72, +0.71,
+0.61, +0.75; with the per-pull cut (seeds 0-4) −0.05, +0.02, −0.40, −0.22, −0.10. The test trains seed 0.
"""

import numpy as np

import autodiff as ad
import rl2_bandits as rl2

N_PULLS, N_ARMS = 50, 5
# the lesson's PPO with what makes it learn fast enough for a test: larger batches cut into 8 minibatches,
# a larger step, λ = 0.9 over the 50 pulls and the privileged critic (it reads the task's true means)
CONFIG = dict(rl2.LESSON, hidden=32, trials=512, minibatches=8, lr=1e-2, lam=0.9, critic_sees="time+means")
CURRICULUM = (10, 60)        # first 60 iterations on 10-pull trials (cheap: the agent learns to use rewards)
ITERATIONS = 40              # then 40 on 50-pull trials
TRAINING_SEED = 0
EVAL_TASKS = 10_000          # unseen: their own stream, never drawn in training
BAR = 0.4                    # RL² − Greedy, paired, mean total reward per trial


def evaluation_tasks():
    return rl2.sample_tasks(np.random.default_rng([123, N_PULLS, N_ARMS]), EVAL_TASKS, N_ARMS, N_PULLS)


def baseline_totals(choose, means, uniforms):
    return rl2.play(choose, means, uniforms, np.random.default_rng(1))[1].sum(axis=0)


def greedy_random_ties(s, f, t, rng):
    """Greedy, ties broken at random: an untried arm then beats a tried one at posterior mean 0.5 half the time."""
    mean = (1.0 + s) / (2.0 + s + f)
    return np.argmax(mean + 1e-9 * rng.uniform(size=mean.shape), axis=1)


def test_exploration_matters_in_this_cell():
    """Gittins (γ = 0.95: better here than every value of the authors' grid, 0.9 to 0.9999) − Greedy > 1 on the
    evaluation tasks, while a greedy agent that explores a little by chance stays below the bar."""
    means, uniforms = evaluation_tasks()
    greedy = baseline_totals(rl2.greedy, means, uniforms)
    gain = baseline_totals(rl2.gittins(rl2.gittins_table(0.95, N_PULLS)), means, uniforms) - greedy
    mean, se = ad.runs.mean_and_se(gain)
    assert mean - 3 * se > 1.0, (mean, se)
    assert np.mean(baseline_totals(greedy_random_ties, means, uniforms) - greedy) < BAR


def test_rl2_learns_to_explore_beyond_greedy():
    short_n, short_iterations = CURRICULUM
    start, _ = rl2.train_rl2(short_n, N_ARMS, dict(CONFIG, iterations=short_iterations), [TRAINING_SEED, 1],
                             label=f"n={short_n}")
    agent, _ = rl2.train_rl2(N_PULLS, N_ARMS, dict(CONFIG, iterations=ITERATIONS), [TRAINING_SEED, 2],
                             label=f"n={N_PULLS}", start_from=start)
    means, uniforms = evaluation_tasks()
    ours = rl2.rollout(agent, means, uniforms, None, greedy_actions=True)[2].sum(axis=0)
    margin, se = ad.runs.mean_and_se(ours - baseline_totals(rl2.greedy, means, uniforms))
    print(f"RL² (argmax) − Greedy = {margin:+.3f} ± {se:.3f} on {EVAL_TASKS:,} tasks (bar {BAR})")
    assert margin > BAR
