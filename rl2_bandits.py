"""RL²: a recurrent agent that learns a bandit algorithm, against the classical ones (Table 1 of the paper).

The idea (Duan et al. 2016, "RL²: Fast Reinforcement Learning via Slow Reinforcement Learning"): train a
recurrent policy with ordinary RL ("slow" RL, here PPO) over a *distribution* of tasks, rewarding it for the
total reward of a whole trial of n pulls in one task. Its hidden state, carried from pull to pull, then runs a
"fast" learning algorithm inside each new task: explore the arms, remember what paid, exploit.

    tasks     k-armed Bernoulli bandits, arm means p_a ~ U[0, 1] drawn once per trial, n pulls per trial
    agent     h_t = GRU(x_t, h_{t-1}),  π(a | history) = softmax(W h_t + b),  V(history) from a second GRU
              (at n ≥ 100 it also reads the trial's clock and the task's true means: training only);
              x_t = (one-hot of the previous arm, the previous reward, a first-pull flag)
    PPO       L = −E[min(ρA, clip(ρ, 1−ε, 1+ε)A)] + c_v E[(V − R)²]/2 − c_H E[H(π)],  ρ = π/π_old
    GAE       δ_t = r_t + V_{t+1} − V_t,  A_t = δ_t + λ A_{t+1} over the whole trial (γ = 1): a pull that
              teaches the agent something is credited with the reward that knowledge earns later

The claim it tests (the paper's Table 1): on unseen tasks the trained agent scores about as well as the
Gittins index and the other classical algorithms (Random, Thompson sampling, the authors' OTS: TS keeping the
most probable of m samples, UCB1, ε-greedy, greedy), all with a Beta(1, 1) prior and tuned as the authors
tuned them, but on tasks disjoint from the reported ones. Where the exact Bayes-optimal value can be computed
(dynamic programming over posterior counts, n = 10), every method is measured against it.

Run:  python rl2_bandits.py                   n=10, k=5: train one agent, evaluate everything
      python rl2_bandits.py --cells n100_k5   Table 1's cells; --full: all nine, 3 seeds (1 at n=500), hours:
                                              run it in parts with --cells
      python rl2_bandits.py --params runs/rl2_bandits/params.npz   evaluate saved agents, no training
Outputs (runs/rl2_bandits/, or _full/ with --full): metrics.json, params.npz, figures. Results: see README.md.
Each trained stage is kept in the output folder's parts/, so a stopped run resumes when the same command is run
again (an edited script or changed settings train again).
"""

import hashlib
import json
import math
import os
import time

import autodiff as ad  # before numpy: it makes BLAS single-threaded (small matrices, busy cores)
import numpy as np

# ----------------------------------------------------------------------------
# 1. Settings: the lesson run, what --full changes, and the lesson agent's PPO settings
# ----------------------------------------------------------------------------
SETTINGS = {
    "cells": "n10_k5",        # which (n pulls, k arms) cells of Table 1
    "training_seeds": 1,      # agents trained per cell (n <= 100)
    "n500_seeds": 1,          # agents trained per n = 500 cell (each about 40 min)
    "eval_tasks": 50_000,     # unseen tasks per cell at n = 10 (fewer at larger n: Part 2, TASKS_PER_N)
    "tune_tasks": 2_000,      # other tasks on which the baselines' parameters are chosen, at n = 10
    "n10_iterations": 250,    # PPO iterations at n = 10, where every longer trial's curriculum starts
}
# --full: four times the n = 10 stage (within 1% of Gittins in every n = 10 cell; 250 leave k = 10, 50 at Greedy)
FULL = {"cells": "all", "training_seeds": 3, "eval_tasks": 100_000, "tune_tasks": 10_000, "n10_iterations": 1000}
# what each setting means (its --help text): Part 2, HELP

LESSON = dict(               # PPO for n = 10: the lesson's agent
    hidden=64,               # GRU units per network; the paper's 256 make the recurrence 16x more costly
    trials=256,              # trials (tasks) per PPO iteration
    iterations=SETTINGS["n10_iterations"],   # PPO iterations (250 x 256 x 10 = 640,000 pulls; --n10-iterations)
    minibatches=2,           # whole trials per minibatch = trials / minibatches
    epochs=4,                # passes over each batch
    lr=6e-3,                 # Adam, decayed linearly to 0
    clip=0.2,                # PPO's ε
    value_coef=0.5,          # critic's loss weight (separate networks + Adam: it only sets where clipping bites)
    entropy_coef=0.01,       # entropy bonus
    entropy_decay=False,     # True: the bonus decays to 0 with the step size (an entropy schedule)
    discount=1.0,            # the trial's total reward is the objective: no discount within a trial
    lam=0.3,                 # GAE λ, the authors' value
    max_grad_norm=0.5,       # gradient clipping, per network
    center_per_pull=True,    # subtract the batch's mean advantage at each pull index (see train_rl2)
    critic_sees="history",   # what else the critic reads: "time", "time+means" (Part 2, critic_features)
)
# PPO for 100- and 500-pull trials, each starting from the agent of the shorter ones: Part 2, PPO_BY_N


# ----------------------------------------------------------------------------
# 2. Environment: a batch of k-armed Bernoulli bandits, one task per row
# ----------------------------------------------------------------------------
def sample_tasks(rng, n_tasks, n_arms, n_pulls):
    """Arm means p ~ U[0, 1] (n_tasks, n_arms), drawn once per trial, and one uniform per (pull, task):
    pull t of arm a pays 1[u_t < p_a]. Drawing the uniforms up front gives every method the same luck on
    the same tasks (common random numbers), and each reward is still Bernoulli(p_a) given the past,
    because u_t is independent of everything that chose a."""
    return rng.uniform(size=(n_tasks, n_arms)), rng.uniform(size=(n_pulls, n_tasks))


def pull(means, arms, uniforms_t):
    """Rewards (B,) of pulling arms (B,) in each task of the batch: one NumPy call for all B bandits."""
    return (uniforms_t < means[np.arange(len(arms)), arms]).astype(np.float64)


# ----------------------------------------------------------------------------
# 3. Model: two GRUs (policy and value) reading (previous arm, previous reward, first-pull flag)
# ----------------------------------------------------------------------------
def make_agent(n_arms, hidden, rng, dtype=np.float64, critic_sees="history"):
    """Separate GRUs for policy and value, so the critic's large regression gradients never disturb the
    policy's memory. Training uses float32 (faster on these small matrices), the tests float64."""
    agent = {
        "policy_gru": ad.nn.GRUCell(n_arms + 2, hidden, rng),
        # small initial logits: the untrained policy is uniform over arms
        "policy_head": ad.nn.Linear(hidden, n_arms, rng, init="orthogonal", gain=0.01),
        # the critic reads the policy's k + 2 inputs, or more with critic_sees (Part 2, critic_size)
        "value_gru": ad.nn.GRUCell(critic_size(n_arms, critic_sees), hidden, rng),
        "value_head": ad.nn.Linear(hidden, 1, rng, init="orthogonal", gain=1.0),
    }
    for p in agent_parameters(agent).values():
        p.data = p.data.astype(dtype)
    return agent


def first_inputs(batch, n_arms):
    """The input at the first pull: no previous arm or reward, flag = 1."""
    x = np.zeros((batch, n_arms + 2))
    x[:, -1] = 1.0
    return x


def next_inputs(arms, rewards, n_arms):
    """The input after a pull: one-hot(arm), reward, flag = 0."""
    x = np.zeros((len(arms), n_arms + 2))
    x[np.arange(len(arms)), arms] = 1.0
    x[:, n_arms] = rewards
    return x


def policy_log_probs(agent, inputs):
    """log π(· | history) at every pull of every trial, (n, B, k), by one fused GRU over the whole trial
    (BPTT through all n pulls). Same as rollout's pull-by-pull steps, tested equal in tests/test_rl2_bandits.py."""
    h0 = np.zeros((inputs.shape[1], agent["policy_gru"].n_hidden), dtype=inputs.dtype)
    return ad.log_softmax(agent["policy_head"](agent["policy_gru"].sequence(inputs, h0)), axis=-1)


def state_values(agent, inputs):
    """V(history) at every pull, (n, B), in units of reward per trial (the caller scales by n)."""
    h0 = np.zeros((inputs.shape[1], agent["value_gru"].n_hidden), dtype=inputs.dtype)
    v = agent["value_head"](agent["value_gru"].sequence(inputs, h0))
    return ad.reshape(v, inputs.shape[:2])


def rollout(agent, means, uniforms, rng, greedy_actions=False):
    """One trial of n pulls in every task with the current policy (no graph); the hidden state, carried from
    pull to pull, is its only memory of the task. Returns inputs (n, B, k+2), arms, rewards, log π(arm) (n, B)."""
    n, B = uniforms.shape
    k = means.shape[1]
    dtype = agent["policy_gru"].Wx.dtype
    inputs = np.empty((n, B, k + 2), dtype=dtype)
    arms, rewards, log_probs = np.empty((n, B), dtype=np.int64), np.empty((n, B)), np.empty((n, B))
    x, h = first_inputs(B, k).astype(dtype), np.zeros((B, agent["policy_gru"].n_hidden), dtype=dtype)
    with ad.no_grad():
        for t in range(n):
            inputs[t] = x
            h = agent["policy_gru"](x, h).data                              # h' = GRU(x, h): one pull
            logits = agent["policy_head"](h).data.astype(np.float64)        # h' W + b
            log_pi = logits - logits.max(axis=1, keepdims=True)
            log_pi -= np.log(np.exp(log_pi).sum(axis=1, keepdims=True))
            if greedy_actions:
                arms[t] = np.argmax(log_pi, axis=1)
            else:  # sample by inverting the cumulative distribution
                cdf = np.cumsum(np.exp(log_pi), axis=1)
                arms[t] = np.minimum((rng.uniform(size=(B, 1)) * cdf[:, -1:] > cdf).sum(axis=1), k - 1)
            log_probs[t] = log_pi[np.arange(B), arms[t]]
            rewards[t] = pull(means, arms[t], uniforms[t])
            x = next_inputs(arms[t], rewards[t], k).astype(dtype)
    return inputs, arms, rewards, log_probs


# ----------------------------------------------------------------------------
# 4. Loss: GAE over the whole trial, then PPO's clipped surrogate
# ----------------------------------------------------------------------------
def gae(rewards, values, discount, lam):
    """Generalised advantage estimates over the whole trial, (n, B) arrays:
        δ_t = r_t + γ V_{t+1} − V_t,   A_t = δ_t + γλ A_{t+1},   V_n = 0.
    The trial, not the pull, is the episode: V_{t+1} is the value of the rest of the trial, so a pull that
    teaches the agent something is credited with the reward that knowledge earns later. (Cutting the return
    at every pull, as one public reimplementation does, trains a one-step greedy agent.)
    Returns (advantages, returns = advantages + values), the critic's targets."""
    advantages = np.zeros_like(rewards)
    running = np.zeros(rewards.shape[1])
    for t in reversed(range(len(rewards))):
        next_value = values[t + 1] if t + 1 < len(rewards) else 0.0
        running = rewards[t] + discount * next_value - values[t] + discount * lam * running
        advantages[t] = running
    return advantages, advantages + values


def ppo_loss(agent, inputs, value_inputs, arms_onehot, old_log_probs, advantages, returns, value_scale, config):
    """The PPO objective on a minibatch of whole trials (as a loss to minimise):
        L = −E[min(ρ A, clip(ρ, 1−ε, 1+ε) A)] + c_v E[(V − R)²]/2 − c_H E[H(π)],
    ρ = π(a|h)/π_old(a|h). The clip stops a batch from pushing the policy far from the one that collected
    it; the entropy bonus keeps it exploring across tasks until the advantages say otherwise."""
    log_pi = policy_log_probs(agent, inputs)                                  # (n, b, k)
    log_prob = ad.sum(log_pi * arms_onehot, axis=-1)
    ratio = ad.exp(log_prob - old_log_probs)
    eps = config["clip"]
    surrogate = ad.minimum(ratio * advantages, ad.clip(ratio, 1.0 - eps, 1.0 + eps) * advantages)
    policy_loss = -ad.mean(surrogate)
    entropy = -ad.mean(ad.sum(ad.exp(log_pi) * log_pi, axis=-1))
    # the critic predicts returns divided by n, so its targets are O(1) whatever the trial length
    value_error = state_values(agent, value_inputs) - returns / value_scale
    value_loss = 0.5 * ad.mean(value_error * value_error)
    loss = policy_loss + config["value_coef"] * value_loss - config["entropy_coef"] * entropy
    return loss, ppo_diagnostics(policy_loss, value_loss, entropy, ratio.data, eps)     # KL, clip fraction: Part 2


# ----------------------------------------------------------------------------
# 5. Update: a few epochs of minibatch steps on one batch of trials
# ----------------------------------------------------------------------------
def ppo_update(agent, optimizer, batch, n_pulls, config, rng):
    """Forward, backward, clip, step, on minibatches of whole trials (BPTT from pull 0). Gradients are
    clipped per network, so a large critic gradient does not shrink the policy's step.
    Returns the last minibatch's statistics and the policy's gradient norm before clipping."""
    policy_params = list(agent["policy_gru"].parameters()) + list(agent["policy_head"].parameters())
    value_params = list(agent["value_gru"].parameters()) + list(agent["value_head"].parameters())
    B = config["trials"]
    minibatch = B // config["minibatches"]
    for epoch in range(config["epochs"]):
        order = rng.permutation(B)
        for start in range(0, B - minibatch + 1, minibatch):
            idx = order[start:start + minibatch]
            optimizer.zero_grad()
            loss, stats = ppo_loss(agent, *(part[:, idx] for part in batch), n_pulls, config)
            ad.runs.check_finite("the PPO loss", loss, f"epoch {epoch}")
            loss.backward()
            grad_norm = ad.optim.clip_grad_norm(policy_params, config["max_grad_norm"])
            ad.optim.clip_grad_norm(value_params, config["max_grad_norm"])
            checked_step(optimizer, policy_params + value_params, epoch)   # a diverging step is one line: Part 2
    return stats, grad_norm


# ----------------------------------------------------------------------------
# 6. Training: PPO over a stream of freshly sampled tasks
# ----------------------------------------------------------------------------
def train_rl2(n_pulls, n_arms, config, seed, label="train", start_from=None):
    """Slow RL. `start_from` is an agent (same k and size) whose weights to start from, e.g. one trained on
    shorter trials. Returns the agent and its training history."""
    rng = np.random.default_rng(seed)
    agent = make_agent(n_arms, config["hidden"], rng, dtype=np.float32, critic_sees=config["critic_sees"])
    if start_from is not None:
        copy_weights(start_from, agent)          # every weight whose shape matches (Part 2)
    optimizer = ad.optim.Adam(list(agent_parameters(agent).values()), lr=config["lr"], eps=1e-5)
    history = {key: [] for key in HISTORY}     # per iteration: Part 2, log_iteration
    progress = ad.runs.Progress(config["iterations"], label)
    for it in range(config["iterations"]):
        remaining = 1.0 - it / config["iterations"]
        optimizer.lr = config["lr"] * remaining          # linear decay: settled at the end
        # an entropy schedule, if asked for: explore across tasks early, and nothing pulls the settled policy to chance
        bonus = config["entropy_coef"] * (remaining if config["entropy_decay"] else 1.0)
        means, uniforms = sample_tasks(rng, config["trials"], n_arms, n_pulls)
        inputs, arms, rewards, old_log_probs = rollout(agent, means, uniforms, rng)
        with ad.no_grad():
            value_inputs = critic_features(inputs, means, config["critic_sees"])   # by default, `inputs`
            values = state_values(agent, value_inputs).data * n_pulls
        advantages, returns = gae(rewards, values, config["discount"], config["lam"])
        # centred per pull index (a baseline in t alone: unbiased), so a critic error that depends only on t (it
        # must count the pulls left) cannot reinforce what the policy does at t; scaled, so no step depends on n
        if config["center_per_pull"]:
            advantages = advantages - advantages.mean(axis=1, keepdims=True)
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        dtype = agent["policy_gru"].Wx.dtype
        batch = (inputs, value_inputs, np.eye(n_arms, dtype=dtype)[arms],
                 *(a.astype(dtype) for a in (old_log_probs, advantages, returns)))
        stats, grad_norm = ppo_update(agent, optimizer, batch, n_pulls, dict(config, entropy_coef=bonus), rng)
        log_iteration(history, progress, it, stats, reward=float(rewards.sum(axis=0).mean()), grad_norm=grad_norm)
    return agent, history


# ----------------------------------------------------------------------------
# 7. Baseline: Gittins index, Greedy and Random on Beta(1 + s, 1 + f) posteriors; Table 1's other columns: Part 2
# ----------------------------------------------------------------------------
def play(choose, means, uniforms, rng):
    """Run a counting policy choose(successes, failures, t, rng) -> arms over a trial in every task.
    Returns arms (n, B) and rewards (n, B)."""
    n, B = uniforms.shape
    successes, failures = np.zeros((2,) + means.shape, dtype=np.int64)    # per task and arm
    rows = np.arange(B)
    arms, rewards = np.empty((n, B), dtype=np.int64), np.empty((n, B))
    for t in range(n):
        arms[t] = choose(successes, failures, t, rng)
        rewards[t] = pull(means, arms[t], uniforms[t])
        successes[rows, arms[t]] += rewards[t].astype(np.int64)
        failures[rows, arms[t]] += 1 - rewards[t].astype(np.int64)
    return arms, rewards


def first_argmax(scores):
    """argmax over arms; ties go to the lowest-numbered arm, as in the paper's Greedy column: a tried arm at
    posterior mean 0.5 then beats an untried one, so Greedy (and UCB1 at c = 0) explores less."""
    return np.argmax(scores, axis=1)


def random_policy(s, f, t, rng):
    return rng.integers(s.shape[1], size=s.shape[0])


def greedy(s, f, t, rng):
    """Pull the arm with the highest posterior mean (1 + s) / (2 + s + f)."""
    return first_argmax((1.0 + s) / (2.0 + s + f))


def gittins_table(discount, max_pulls, grid_size=256, truncation=1000):
    """Gittins indices index[s, f], s + f < max_pulls, of a Bernoulli arm with a Beta(1, 1) prior, by backward
    induction (the authors' method). Calibration: a safe arm pays λ per pull forever; with μ = (1 + s)/(2 + s + f),
        V(s, f; λ) = max(λ/(1 − γ),  μ (1 + γ V(s+1, f)) + (1 − μ) γ V(s, f+1)),
    and the index of (s, f) is the λ at which both branches are equal. One backward sweep over the triangle
    s + f ≤ N does every state for a whole grid of λ at once; the crossing is interpolated linearly between
    grid points. At depth N (the authors' 1,000, or less when γ^N is negligible) the arm learns nothing more:
    V = max(λ, μ)/(1 − γ). The finite horizon is handled as the authors did: γ is tuned."""
    horizon = int(math.ceil(math.log(1e-12) / math.log(discount)))
    depth = max(max_pulls, min(truncation, max_pulls + horizon))
    lam = 1.0 - np.linspace(1.0, 0.0, grid_size + 1)[:, None] ** 2   # (G, 1) safe-arm rewards, dense near 1
    safe = lam / (1.0 - discount)
    value = np.maximum(safe, ((1.0 + np.arange(depth + 1)) / (2.0 + depth)) / (1.0 - discount))
    index = np.full((max_pulls, max_pulls), np.nan)
    for d in range(depth - 1, -1, -1):                               # d = s + f pulls so far
        s = np.arange(d + 1)
        mu = (1.0 + s) / (2.0 + d)
        risky = mu * (1.0 + discount * value[:, 1:]) + (1.0 - mu) * discount * value[:, :-1]
        if d < max_pulls:
            gap = risky - safe                                       # decreasing in λ; > 0 at λ = 0
            j = np.argmax(gap <= 0.0, axis=0)                        # first grid point where the safe arm wins
            lo, hi = gap[j - 1, s], gap[j, s]
            index[s, d - s] = lam[j - 1, 0] + lo / (lo - hi) * (lam[j, 0] - lam[j - 1, 0])
        value = np.maximum(safe, risky)
    return index


def gittins(table):
    def choose(s, f, t, rng):
        return first_argmax(table[s, f])
    return choose


# ----------------------------------------------------------------------------
# 8. Measurement: every method on the same unseen tasks, beside the exact optimum where it is known
# ----------------------------------------------------------------------------
# Three disjoint task sets per cell, each from its own random stream: training draws fresh tasks from
# (seed, n, k[, training seed]); the baselines' parameters are tuned on TUNE tasks (the authors tuned on the
# very tasks they reported, which flatters the tuned methods); every figure is measured on EVAL tasks.
TUNE_STREAM, EVAL_STREAM = 20_000, 10_000
BASELINES = ("Random", "Gittins", "TS", "OTS", "UCB1", "eps-greedy", "Greedy")   # by name: Part 2, make_baseline
# The exact optimum (n <= 12), every method's ceiling, by dynamic programming over posterior counts (Part 2):
#     V(counts) = max_a μ_a (1 + V(a succeeds)) + (1 − μ_a) V(a fails),   μ_a = (1 + s_a)/(2 + s_a + f_a)


def evaluate_cell(agents, n_pulls, n_arms, seed, eval_tasks, tune_tasks):
    """Every baseline (tuned on TUNE tasks) and every trained agent on the same EVAL tasks with the same luck.
    Returns {method: trial record (Part 2, trial_record)}, with "RL2" a list (one per agent), the tuning
    record and the tasks' means."""
    tuned = tune_baselines(n_pulls, n_arms, seed, tune_tasks)     # the authors' grids on TUNE tasks: Part 2
    means, uniforms = sample_tasks(np.random.default_rng([seed, n_pulls, n_arms, EVAL_STREAM]), eval_tasks, n_arms,
                                   n_pulls)
    results = {name: trial_record(means, *play(make_baseline(name, tuned.get(name), n_pulls), means, uniforms,
                                               np.random.default_rng(seed))) for name in BASELINES}
    results["RL2"] = [trial_record(means, *rollout(agent, means, uniforms,
                                                   np.random.default_rng([seed, i, EVAL_STREAM]))[1:3])
                      for i, agent in enumerate(agents)]
    results["RL2 (argmax)"] = [rollout(agent, means, uniforms, None, greedy_actions=True)[2].sum(axis=0)
                               for agent in agents]
    return results, tuned, means


def headline(results, exact):
    """RL² against the others on the same tasks: paired differences with Gittins and Greedy, the gap to the
    exact optimum, and the normalised score (RL² − Random)/(Gittins − Random), 1 = as good as Gittins.
    With several agents, each agent's mean over the tasks, then mean ± SE across them (Part 2, across_agents)."""
    ours = [r["totals"] for r in results["RL2"]]
    random_mean, gittins_mean = results["Random"]["totals"].mean(), results["Gittins"]["totals"].mean()
    figures = {f"RL2 - {name} (paired)": across_agents([x - results[name]["totals"] for x in ours])
               for name in ("Gittins", "Greedy")}
    figures["normalised score"] = across_agents([(x - random_mean) / (gittins_mean - random_mean) for x in ours])
    if exact is not None:
        figures["RL2 - optimum"] = across_agents([x - exact for x in ours])
    return figures


# ----------------------------------------------------------------------------
# 9. main: train each cell's agent, evaluate it beside the baselines, report
# ----------------------------------------------------------------------------
def main(argv=None, command=None):
    """command: what the results record as the command, when a study calls main (default: this script's)."""
    started = time.perf_counter()
    args = parse_arguments(argv, command)
    out = ad.runs.prepare_out(args.out)
    report, per_cell, trained = {}, {}, {}
    for n, k in args.cell_list:
        cell_started = time.perf_counter()
        runs, agents = cell_agents(n, k, args, trained)        # trained (with any curriculum), or --params
        tune_tasks, eval_tasks = tasks_for(n, args)
        print(f"n={n}, k={k}: tuning the baselines on {tune_tasks:,} tasks, evaluating all on {eval_tasks:,} others")
        results, tuned, means = evaluate_cell(agents, n, k, args.seed, eval_tasks, tune_tasks)
        exact = exact_optimum(n, k)
        rows = cell_rows(results, tuned, n, k, exact)
        print_cell_table(rows, n, k, eval_tasks, tune_tasks, exact, runs)
        per_cell[(n, k)] = dict(results=results, means=means, rows=rows, runs=runs, agents=agents)
        report[f"n{n}_k{k}"] = cell_report(rows, results, runs, exact, (tune_tasks, eval_tasks),
                                           time.perf_counter() - cell_started)
    print_summary(per_cell, args.cell_list)                     # with more than one cell
    write_outputs(out, per_cell, report, args, started)


# ============================== Part 2: running the experiment ==============================
# The paper's table; what Part 1 points to (PPO for longer trials, the critic's variants, Table 1's other
# columns, the baselines' tuning, the exact optimum's dynamic program); the command line; saved agents; the
# printed tables and the figures.

METHODS = BASELINES + ("RL2",)
PAPER = {  # (n pulls, k arms) -> the row of Table 1 (Duan et al. 2016), total reward per trial, METHODS order
    (10, 5): (5.0, 6.6, 5.7, 6.5, 6.7, 6.6, 6.6, 6.7),
    (10, 10): (5.0, 6.6, 5.5, 6.2, 6.7, 6.6, 6.6, 6.7),
    (10, 50): (5.1, 6.5, 5.2, 5.5, 6.6, 6.5, 6.5, 6.8),
    (100, 5): (49.9, 78.3, 74.7, 77.9, 78.0, 75.4, 74.8, 78.7),
    (100, 10): (49.9, 82.8, 76.7, 81.4, 82.4, 77.4, 77.1, 83.5),
    (100, 50): (49.8, 85.2, 64.5, 67.7, 84.3, 78.3, 78.0, 84.9),
    (500, 5): (249.8, 405.8, 402.0, 406.7, 405.8, 388.2, 380.6, 401.6),
    (500, 10): (249.0, 437.8, 429.5, 438.9, 437.1, 408.0, 395.0, 432.5),
    (500, 50): (249.6, 463.7, 427.2, 437.6, 457.6, 413.6, 402.8, 438.9),
}
LIMITS = dict(trials=100_000, iterations=1_000_000, hidden=4096, eval_tasks=2_000_000, training_seeds=100,
              eval_pulls=5_000_000)


# ----------------------------------------------------------------------------
# Section 1's PPO settings for longer trials: a curriculum from the shorter trials' agent
# ----------------------------------------------------------------------------
PPO_BY_N = {
    10: LESSON,
    # n = 100 starts from the n = 10 agent of the same k (a curriculum): from scratch, PPO on 100-pull trials
    # made the policy deterministic before it learnt to use rewards (54 and 63 after 300 iterations at k = 5
    # and 10), while an n = 10 agent already scores 72.7 at n = 100, k = 5. λ = 0.3 or 0.5 let the critic's
    # errors collapse the policy at n = 100. The critic reads the trial's clock and the task's true means (used
    # in training only), so an advantage measures the luck of the pulls, not which task was drawn; with it and
    # the n = 10 bonus kept (1e-2, not 1e-3) RL² - Gittins at k = 10 went from -5.40 to -2.26 (3 seeds each;
    # README, the ablation of docs/rl2_bandits_ppo_study.py).
    100: dict(LESSON, start_from_n=10, trials=128, iterations=800, lr=3e-3, lam=0.9, critic_sees="time+means"),
    # n = 500 continues the n = 100 agent the same way, with the n = 100 stage's step (3e-3) and the bonus back
    # to 1e-3: at step 1e-3 and bonus 1e-2 its updates stayed far inside PPO's clip (median approximate KL 0.0006
    # per iteration), and this lifted k = 10 and k = 50 by 8.9 and 4.2 (one seed each). About 25-35 min per
    # cell on 2 busy cores, curriculum included.
    500: dict(LESSON, start_from_n=100, trials=64, iterations=400, lr=3e-3, entropy_coef=0.001, lam=0.9,
              critic_sees="time+means"),
}


# ----------------------------------------------------------------------------
# Section 3's variants of what the critic reads
# ----------------------------------------------------------------------------
def critic_features(inputs, means, sees):
    """What the critic reads: the policy's inputs, plus (if `sees` says so) the fraction of the trial gone
    and the task's true means. The critic is used only in training, so it may see what the policy cannot
    (an "asymmetric" critic): "time+means" at n = 100 and 500, "history" at n = 10 (the lesson's critic)."""
    n, B = inputs.shape[:2]
    parts = [inputs]
    if sees in ("time", "time+means"):
        parts.append(np.broadcast_to((np.arange(n) / n)[:, None, None], (n, B, 1)))
    if sees == "time+means":
        parts.append(np.broadcast_to(means[None], (n, B, means.shape[1])))
    return np.concatenate(parts, axis=2).astype(inputs.dtype)


def critic_size(n_arms, sees):
    return n_arms + 2 + (sees in ("time", "time+means")) + (n_arms if sees == "time+means" else 0)


# ----------------------------------------------------------------------------
# Sections 3-6's bookkeeping: PPO's diagnostics, a checked step, weights by name, the curriculum, the history
# ----------------------------------------------------------------------------
def ppo_diagnostics(policy_loss, value_loss, entropy, rho, eps):
    """The minibatch's losses, KL(π_old ‖ π) estimated as E[(ρ − 1) − log ρ], and how often the clip bit."""
    return dict(policy_loss=policy_loss.item(), value_loss=value_loss.item(), entropy=entropy.item(),
                approx_kl=float(np.mean((rho - 1.0) - np.log(rho))),
                clip_fraction=float(np.mean(np.abs(rho - 1.0) > eps)))


def checked_step(optimizer, params, epoch):
    """optimizer.step(), then Diverged (one line) if any weight is not finite."""
    with np.errstate(over="ignore", invalid="ignore"):
        optimizer.step()
    for p in params:
        ad.runs.check_finite("a weight of the agent", p, f"epoch {epoch} (lr {optimizer.lr:.3g})")


def agent_parameters(agent):
    """{"policy_gru.Wx": Tensor, ...}: the agent's weights by name."""
    return {f"{part}.{name}": p for part, module in agent.items() for name, p in module.named_parameters().items()}


def copy_weights(source, agent):
    """Start `agent` from `source`'s weights (a curriculum): every weight of the same name and shape."""
    for name, p in agent_parameters(source).items():
        if agent_parameters(agent)[name].shape == p.shape:
            agent_parameters(agent)[name].data = p.data.astype(np.float32)


HISTORY = ("reward", "entropy", "value_loss", "grad_norm", "approx_kl", "clip_fraction", "elapsed")


def log_iteration(history, progress, it, stats, **more):
    """Append one PPO iteration's figures to `history` (HISTORY's keys) and show the progress line."""
    for key, value in dict(stats, **more, elapsed=progress.elapsed()).items():
        if key in history:
            history[key].append(value)
    progress.update(it + 1, reward=history["reward"][-1], entropy=stats["entropy"], kl=stats["approx_kl"],
                    value_loss=stats["value_loss"])


# ----------------------------------------------------------------------------
# Section 7's other classical algorithms, Table 1's other columns: ε-greedy, UCB1, Thompson sampling, OTS
# ----------------------------------------------------------------------------
def eps_greedy(epsilon):
    def choose(s, f, t, rng):
        explore = rng.uniform(size=s.shape[0]) < epsilon
        return np.where(explore, random_policy(s, f, t, rng), greedy(s, f, t, rng))
    return choose


def ucb1(c):
    """The authors' UCB1 on the prior's pseudo-counts: mean + c √(2 ln N / m), m = 2 + s + f pulls of the
    arm (1 success in 2 from the prior), N = Σ m."""
    def choose(s, f, t, rng):
        m = 2.0 + s + f
        bonus = np.sqrt(2.0 * np.log(m.sum(axis=1, keepdims=True)) / m)
        return first_argmax((1.0 + s) / m + c * bonus)
    return choose


def posterior_samples(rng, s, f, size=()):
    """Samples of every arm's mean from its Beta(1 + s, 1 + f) posterior, shape size + s.shape. An untried
    arm's posterior is Beta(1, 1) = U[0, 1]: drawn as a uniform, which is 10x cheaper than a Beta draw
    (at k = 50 most arms are untried for most of a short trial)."""
    theta = rng.uniform(size=tuple(size) + s.shape)
    tried = (s + f) > 0
    theta[..., tried] = rng.beta(1.0 + s[tried], 1.0 + f[tried], size=tuple(size) + (int(tried.sum()),))
    return theta


def thompson(s, f, t, rng):
    """One sample from each posterior, pull the largest."""
    return np.argmax(posterior_samples(rng, s, f), axis=1)


def thompson_most_probable(m):
    """The authors' "OTS": draw m samples of the whole mean vector from the posterior, keep the most
    probable one (highest joint Beta log-density), pull its largest arm. m = 1 is Thompson sampling; large
    m tends to acting on the posterior mode. Keeping the best sample *jointly* (not per arm) reproduces the
    paper's column (6.20 vs 6.2 at n=10, k=10 on 10,000 tasks, where a per-arm choice scores 6.43). The
    "OTS" of the wider literature, max(sample, mean), is a different algorithm."""
    def choose(s, f, t, rng):
        theta = np.clip(posterior_samples(rng, s, f, (m,)), 1e-12, 1.0 - 1e-12)               # (m, B, k)
        log_density = np.sum(s * np.log(theta) + f * np.log1p(-theta), axis=2)                # up to a constant
        kept = np.take_along_axis(theta, np.argmax(log_density, axis=0)[None, :, None], axis=0)[0]
        return first_argmax(kept)
    return choose


# ----------------------------------------------------------------------------
# Section 8's helpers: the baselines by name and their tuning, a method's trial record, the SE across
# agents, the exact optimum's dynamic program
# ----------------------------------------------------------------------------
def make_baseline(name, value, n_pulls):
    return {"Random": lambda _: random_policy, "TS": lambda _: thompson, "Greedy": lambda _: greedy,
            "Gittins": lambda g: gittins(gittins_table(g, n_pulls)), "OTS": thompson_most_probable,
            "UCB1": ucb1, "eps-greedy": eps_greedy}[name](value)


def trial_record(means, arms, rewards):
    """One method's trials on the tasks `means`: {"totals" (B,), "arms" and "rewards" (n, B), "regret_per_pull"
    (n,)}, the expected regret of each pull (best mean − the pulled arm's mean, without the coin's luck)."""
    pulled = np.take_along_axis(means, arms.T, axis=1).T                  # (n, B): the pulled arms' means
    return dict(totals=rewards.sum(axis=0), arms=arms, rewards=rewards,
                regret_per_pull=(means.max(axis=1) - pulled).mean(axis=1))


def across_agents(per_task):
    """Mean ± SE of a per-task figure (e.g. RL² − Gittins on each task) over several trained agents: each
    agent's mean over the tasks, then the mean and SE across agents (training seeds), which holds both the
    training and the task noise. With one agent, the SE over its tasks."""
    means = [float(np.mean(x)) for x in per_task]
    if len(means) == 1:
        mean, se = ad.runs.mean_and_se(per_task[0])
        return dict(mean=mean, se=se, se_over="tasks", per_seed=means)
    mean, se = ad.runs.mean_and_se(means)
    return dict(mean=mean, se=se, se_over=f"{len(means)} training seeds", per_seed=means)


TUNING_GRIDS = {           # the authors' grids
    "Gittins": ("discount", (0.9, 0.99, 0.999, 0.9999)),
    "OTS": ("samples", tuple(range(1, 21))),
    "UCB1": ("c", tuple(np.round(np.arange(0.0, 1.01, 0.1), 1))),
    "eps-greedy": ("epsilon", tuple(np.round(np.arange(0.0, 1.01, 0.1), 1))),
}


def tune_baselines(n_pulls, n_arms, seed, n_tasks):
    """Each tuned method's grid tried on TUNE tasks (same tasks and luck for every value): {name: best value,
    name + " curve": {value: mean total}}."""
    means, uniforms = sample_tasks(np.random.default_rng([seed, n_pulls, n_arms, TUNE_STREAM]), n_tasks, n_arms,
                                   n_pulls)
    tuned, done = {}, 0
    progress = ad.runs.Progress(sum(len(grid) for _, grid in TUNING_GRIDS.values()), "tuning", every=10)
    for name, (parameter, grid) in TUNING_GRIDS.items():
        curve = {}
        for v in grid:
            _, rewards = play(make_baseline(name, v, n_pulls), means, uniforms, np.random.default_rng(seed))
            curve[v], done = rewards.sum(axis=0).mean(), done + 1
            progress.update(done, method=name)
        tuned[name] = max(grid, key=curve.get)
        tuned[name + " curve"] = {str(v): float(c) for v, c in curve.items()}
    return tuned


EXACT_MAX_PULLS = 12       # the exact optimum's states: 4,435 at n = 10, 348,000 at n = 20


def exact_optimum(n_pulls, n_arms):
    """The Bayes-optimal expected total reward, or None where n is too large for the dynamic program."""
    return bayes_optimal_value(n_pulls, n_arms) if n_pulls <= EXACT_MAX_PULLS else None


def bayes_optimal_value(n_pulls, n_arms):
    """The exact Bayes-optimal expected total reward, by dynamic programming over posterior counts:
        V(state) = max_a  μ_a (1 + V(state with a success on a)) + (1 − μ_a) V(state with a failure on a),
    μ_a = (1 + s_a)/(2 + s_a + f_a), V = 0 after n pulls. Arms with the same counts are interchangeable, so a
    state is the sorted list of the tried arms' (s, f) (the untried arms are all alike): built level by level,
    then one vectorised backward sweep per level."""
    levels, moves = [{(): 0}], []
    for depth in range(n_pulls):                     # forward: every reachable state and its children
        following, rows = {}, []
        for state in levels[-1]:
            options = sorted(set(state)) + ([(0, 0)] if len(state) < n_arms else [])
            row = []
            for s, f in options:
                rest = list(state)
                if (s, f) in rest:
                    rest.remove((s, f))
                win, lose = tuple(sorted(rest + [(s + 1, f)])), tuple(sorted(rest + [(s, f + 1)]))
                row.append(((1.0 + s) / (2.0 + s + f), following.setdefault(win, len(following)),
                            following.setdefault(lose, len(following))))
            rows.append(row)
        levels.append(following)
        moves.append(rows)
    value = np.zeros(len(levels[-1]))
    for rows in reversed(moves):                     # backward: the best action in every state of a level
        table = np.zeros((len(rows), max(map(len, rows)), 3))
        table[:, :, 0] = -1.0                        # padding: an impossible action (never the max)
        for i, row in enumerate(rows):
            table[i, :len(row)] = row
        mu, win, lose = table[..., 0], table[..., 1].astype(int), table[..., 2].astype(int)
        value = np.where(mu >= 0, mu * (1.0 + value[win]) + (1.0 - mu) * value[lose], -np.inf).max(axis=1)
    return float(value[0])


# ----------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------
HELP = {
    "cells": "comma-separated cells nN_kK of Table 1 (n in 10, 100, 500; k in 5, 10, 50), or 'all'",
    "training_seeds": "agents trained per cell with n <= 100, reported as mean ± SE across them",
    "n500_seeds": "agents trained per cell with n = 500",
    "eval_tasks": "unseen tasks on which every method is evaluated, per cell with n = 10 (n = 100: a fifth, "
                  "n = 500: a tenth)",
    "tune_tasks": "tasks (disjoint from those) on which the baselines are tuned, per n = 10 cell (scaled alike)",
    "n10_iterations": "PPO iterations of the n = 10 stage: the n = 10 cells' agents, and the start of every "
                      "longer trial's curriculum",
}


def add_agent_arguments(parser):
    """Flags that are not settings: one cell by --n/--k, PPO overrides, and --params."""
    parser.add_argument("--n", type=ad.runs.positive_int, help="pulls per trial: one cell, with --k "
                        "(same as --cells nN_kK; default: --cells)")
    parser.add_argument("--k", type=ad.runs.positive_int, help="arms (with --n; default 5)")
    for key, kind, text in (("iterations", ad.runs.whole(1, LIMITS["iterations"]), "PPO iterations"),
                            ("trials", ad.runs.whole(LESSON["minibatches"], LIMITS["trials"]), "trials per iteration"),
                            ("hidden", ad.runs.whole(1, LIMITS["hidden"]), "GRU units per network"),
                            ("lr", ad.runs.number(exclusive_minimum=0.0), "Adam step size, decayed linearly to 0")):
        shown = ", ".join(f"n={n}: {'--n10-iterations' if (n, key) == (10, 'iterations') else config[key]}"
                          for n, config in PPO_BY_N.items())
        parser.add_argument("--" + key, type=kind, help=f"{text}, for every cell (default: each n's own, {shown})")
    shown = ", ".join(f"n={n}: {config['critic_sees']}" for n, config in PPO_BY_N.items())
    parser.add_argument("--critic-sees", choices=("history", "time", "time+means"),
                        help=f"what the critic reads besides the history, for every cell (default: each n's own, "
                             f"{shown}; time+means is privileged: the task's true means, read in training only)")
    parser.add_argument("--params", help="evaluate the agents in this params.npz (written by this script) "
                                         "instead of training (default folder then runs/rl2_bandits_params)")


def parse_cells(text):
    """'n10_k5,n100_k10' (or 'all') -> [(10, 5), (100, 10)]; a BadInput-free ValueError for argparse."""
    if text.strip() == "all":
        return list(PAPER)
    cells = []
    for part in text.split(","):
        try:
            n, k = part.strip().split("_")
            cell = (int(n.lstrip("n")), int(k.lstrip("k")))
        except ValueError:
            raise ValueError(f"--cells: {part!r} is not a cell like n10_k5") from None
        cells.append(cell)
    return cells


def parse_arguments(argv, command=None):
    """The command line, checked before any work: every problem is one line and exit 2."""
    types = dict(cells=str, training_seeds=ad.runs.whole(1, LIMITS["training_seeds"]),
                 n500_seeds=ad.runs.whole(1, LIMITS["training_seeds"]),
                 eval_tasks=ad.runs.whole(10, LIMITS["eval_tasks"]), tune_tasks=ad.runs.whole(10, LIMITS["eval_tasks"]),
                 n10_iterations=ad.runs.whole(1, LIMITS["iterations"]))
    args = ad.runs.command_line(__doc__, "rl2_bandits", SETTINGS, FULL, HELP, types=types, argv=argv,
                                add_arguments=add_agent_arguments, command=command)
    fail = ad.runs.OneLineParser(prog="rl2_bandits.py").error
    try:
        args.cell_list = [(args.n or 10, args.k or 5)] if args.n or args.k else parse_cells(args.cells)
    except ValueError as error:
        fail(str(error))
    for n, k in args.cell_list:
        if (n, k) not in PAPER:
            fail(f"the paper has no figures for n={n}, k={k}: choose n in {{10, 100, 500}} and k in {{5, 10, 50}}")
    for n, k in args.cell_list:
        if n * tasks_for(n, args)[1] > LIMITS["eval_pulls"]:
            fail(f"--eval-tasks {args.eval_tasks}: {n * tasks_for(n, args)[1]:,} pulls per method at n={n}, "
                 f"more than {LIMITS['eval_pulls']:,} fit in memory; evaluate fewer tasks")
    if args.params is not None:
        if not os.path.exists(args.params):
            fail(f"--params {args.params}: no such file")
        if args.out == os.path.join("runs", "rl2_bandits" + ("_full" if args.full else "")):
            args.out += "_params"             # never replace the training run's metrics.json and figures
        if os.path.abspath(os.path.dirname(args.params)) == os.path.abspath(args.out):
            fail(f"--out {args.out} holds the run that wrote {args.params}: choose another folder for its evaluation")
    if not (args.full or args.params) and any(n > 10 for n, _ in args.cell_list):   # say what is not measured
        start = cell_config(10, args)["iterations"]
        print(f"note: without --full, n >= 100 starts from an n = 10 stage of {start} iterations (--full: "
              f"{FULL['n10_iterations']}), a combination the README does not report; its figures are --full's")
    return args


def cell_config(n, args):
    """PPO's settings for trials of n pulls, with the command line's overrides (--iterations, for every cell,
    wins over --n10-iterations)."""
    stage = dict(iterations=args.n10_iterations) if n == 10 else {}
    overrides = {key: getattr(args, key) for key in ("iterations", "trials", "hidden", "lr", "critic_sees")
                 if getattr(args, key) is not None}
    return {**PPO_BY_N[n], **stage, **overrides}


def seeds_for(n, args):
    return args.n500_seeds if n >= 500 else args.training_seeds


TASKS_PER_N = {10: 1.0, 100: 0.2, 500: 0.1}   # fraction of --eval-tasks/--tune-tasks at each n: the SE per task
                                              # grows like the mean there, so 1/5 at n = 100 keeps SE <= 0.2%


def tasks_for(n, args):
    """(tuning tasks, evaluation tasks) for trials of n pulls."""
    return tuple(max(2, int(round(TASKS_PER_N[n] * count))) for count in (args.tune_tasks, args.eval_tasks))


def cell_agents(n, k, args, trained):
    """(training runs or None, agents) for cell (n, k): trained here, or loaded from --params."""
    if args.params:
        agents = load_agents(args.params, n, k)
        print(f"n={n}, k={k}: loaded {len(agents)} agent(s) from {args.params}")
        return None, agents
    runs = [train_cell(n, k, i, args, trained) for i in range(seeds_for(n, args))]
    return runs, [run["agent"] for run in runs]


def train_cell(n, k, index, args, trained):
    """Train agent `index` (a training seed) for (n, k), first training the shorter-trial agent it starts
    from, if any (kept in `trained`). Returns {"agent", "history", "config", "train_time_s" (this stage),
    "total_time_s" and "pulls" (with the curriculum's earlier stages), "key" (what trained it: stage_key)}.
    Each stage is kept in out/parts/ as soon as it is trained, so a stopped --full resumes (stage_part)."""
    if (n, k, index) not in trained:
        config = cell_config(n, args)
        start = dict(agent=None, total_time_s=0.0, pulls=0, key=None)
        if config.get("start_from_n"):
            print(f"n={n}, k={k}, seed {index}: curriculum: first the n={config['start_from_n']}, k={k} agent")
            start = train_cell(config["start_from_n"], k, index, args, trained)
        seed = [args.seed, n, k] + ([index] if index else [])       # seed 0 keeps the single-agent stream
        key = stage_key(config, seed, start["key"])
        path = os.path.join(args.out, "parts", prefix_for(n, k, index))
        run = stage_part(path, key, n, k, index)
        if run is None:
            print(f"n={n}, k={k}, seed {index}: training RL² with PPO, {config['iterations']} iterations x "
                  f"{config['trials']} trials, GRU {config['hidden']} units")
            agent, history = train_rl2(n, k, config, seed, label=f"n={n} k={k} seed {index}",
                                       start_from=start["agent"])
            seconds = history["elapsed"][-1]
            run = dict(agent=agent, history=history, config=config, train_time_s=seconds,
                       total_time_s=start["total_time_s"] + seconds,
                       pulls=start["pulls"] + config["iterations"] * config["trials"] * n, key=key)
            keep_stage_part(path, run, n, k, index)
        else:
            print(f"n={n}, k={k}, seed {index}: resumed from {path}.npz (trained before, by the same settings)")
        trained[(n, k, index)] = run
    return trained[(n, k, index)]


# ----------------------------------------------------------------------------
# Resuming: every trained stage is kept in out/parts/, and reused when the same settings ask for it again
# ----------------------------------------------------------------------------
def stage_key(config, seed, start_key):
    """A fingerprint of everything that decides a trained stage: this file's text, the stage's PPO settings
    (which a study may change), its random stream and the stage it started from. Training is deterministic
    given these on one machine, so a stored stage with the same key is the agent training would give."""
    with open(os.path.abspath(__file__), "rb") as f:
        script = hashlib.sha1(f.read()).hexdigest()
    described = json.dumps(dict(script=script, config=config, seed=seed, start=start_key), sort_keys=True,
                           default=str)
    return hashlib.sha1(described.encode()).hexdigest()


def keep_stage_part(path, run, n, k, index):
    """Write the stage's agent (path.npz) and then its record (path.json), each atomically: a record is
    written only after its agent, so a record always has a whole agent beside it."""
    ad.nn.save_parameters(path + ".npz", agent_file_entries(run["agent"], n, k, index))
    ad.runs.write_json(path + ".json", {key: value for key, value in run.items() if key != "agent"})


def stage_part(path, key, n, k, index):
    """The stored stage at `path` if it was trained with `key`, else None (train it). A part that cannot be
    read is trained again, with a one-line note: parts are this script's own cache, never a user's input."""
    if not os.path.exists(path + ".json"):
        return None
    try:
        with open(path + ".json") as f:
            run = json.load(f)
        if run.get("key") != key:
            return None
        arrays = ad.runs.load_arrays(path + ".npz", what="stored stage of rl2_bandits.py")
        run["agent"] = load_agent(path + ".npz", arrays, n, k, index)
        return run
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        print(f"note: {path}: the stored stage is unreadable ({str(error).splitlines()[0][:120]}); training it again")
        return None


# ----------------------------------------------------------------------------
# Saved agents
# ----------------------------------------------------------------------------
def prefix_for(n, k, index=0):
    """Names in params.npz: "n10_k5.policy_gru.Wx" for the first agent of a cell, "n10_k5_s1...." after."""
    return f"n{n}_k{k}" + (f"_s{index}" if index else "")


def prefixed_parameters(agent, n_pulls, n_arms, index=0):
    return {f"{prefix_for(n_pulls, n_arms, index)}.{name}": p for name, p in agent_parameters(agent).items()}


def agent_file_entries(agent, n, k, index=0):
    """What params.npz holds for one agent: the weights, the GRU size and the critic's input size."""
    named = prefixed_parameters(agent, n, k, index)
    named[f"{prefix_for(n, k, index)}.hidden"] = np.array(agent["policy_gru"].n_hidden)
    named[f"{prefix_for(n, k, index)}.critic_inputs"] = np.array(agent["value_gru"].Wx.shape[0])
    return named


def load_agents(path, n_pulls, n_arms):
    """Every agent for cell (n, k) in a params.npz this script wrote; any other file is a one-line error."""
    arrays = ad.runs.load_arrays(path, what="params.npz of rl2_bandits.py")
    if f"{prefix_for(n_pulls, n_arms)}.hidden" not in arrays:
        cells = sorted({name.split(".")[0] for name in arrays})
        raise ad.runs.BadInput(f"{path}: no agent for n={n_pulls}, k={n_arms} (the file has {cells[:8]})")
    agents = []
    while f"{prefix_for(n_pulls, n_arms, len(agents))}.hidden" in arrays:
        agents.append(load_agent(path, arrays, n_pulls, n_arms, len(agents)))
    return agents


def load_agent(path, arrays, n_pulls, n_arms, index):
    prefix = prefix_for(n_pulls, n_arms, index)
    hidden = ad.runs.check_array(arrays[f"{prefix}.hidden"], f"{path}: {prefix}.hidden", shape=())
    if hidden.dtype.kind not in "iu" or not 1 <= int(hidden) <= LIMITS["hidden"]:
        raise ad.runs.BadInput(f"{path}: {prefix}.hidden is {hidden}, not a GRU size in 1..{LIMITS['hidden']}")
    critic_inputs = ad.runs.check_array(arrays.get(f"{prefix}.critic_inputs", n_arms + 2),
                                        f"{path}: {prefix}.critic_inputs", shape=())
    sees = {critic_size(n_arms, sees): sees for sees in ("history", "time", "time+means")}.get(int(critic_inputs))
    if sees is None:
        raise ad.runs.BadInput(f"{path}: the critic of n={n_pulls}, k={n_arms} reads {critic_inputs} inputs, "
                               f"which no --critic-sees option gives")
    agent = make_agent(n_arms, int(hidden), np.random.default_rng(0), dtype=np.float32, critic_sees=sees)
    named = prefixed_parameters(agent, n_pulls, n_arms, index)
    ad.runs.load_arrays(path, expected={name: p.shape for name, p in named.items()},
                        what="params.npz of rl2_bandits.py")
    for name, p in named.items():
        p.data = arrays[name].astype(np.float32)
    return agent


# ----------------------------------------------------------------------------
# Tables and the report
# ----------------------------------------------------------------------------
def cell_rows(results, tuned, n_pulls, n_arms, exact):
    """One row per method: our mean ± SE beside the paper's figure and the gap to the exact optimum.
    "agrees" allows 2 SE plus 0.05, since the paper prints one decimal."""
    rows = {}
    for method, paper in zip(METHODS, PAPER[(n_pulls, n_arms)]):
        if method == "RL2":
            row = across_agents([r["totals"] for r in results["RL2"]])
        else:
            row = dict(zip(("mean", "se"), ad.runs.mean_and_se(results[method]["totals"])))
        row.update(paper=paper, z=(row["mean"] - paper) / row["se"],
                   agrees=bool(abs(row["mean"] - paper) <= 2 * row["se"] + 0.05))
        if exact is not None:
            row["gap_to_optimum"] = row["mean"] - exact
        if method in TUNING_GRIDS:
            row["tuned"] = {TUNING_GRIDS[method][0]: tuned[method]}
            row["tuning_curve"] = tuned[method + " curve"]
        rows[method] = row
    rows["RL2 (argmax)"] = across_agents(results["RL2 (argmax)"])
    rows.update(headline(results, exact))
    return rows


def print_cell_table(rows, n_pulls, n_arms, eval_tasks, tune_tasks, exact, runs):
    optimum = f"the exact optimum {exact:.4f}" if exact is not None else "no exact optimum (n too large)"
    print(f"\nn={n_pulls}, k={n_arms}: total reward per trial on {eval_tasks:,} unseen tasks (mean ± SE), "
          f"the paper's Table 1, {optimum}")
    print(f"  {'method':24s} {'ours':>9s} {'± SE':>7s} {'paper':>7s} {'z-paper':>7s} {'− optimum':>10s}  "
          f"tuned on {tune_tasks:,} other tasks")
    for method in METHODS + tuple(name for name in rows if name not in METHODS):
        r = rows[method]
        paper = f"{r['paper']:7.1f} {r['z']:+7.1f}" if "paper" in r else " " * 15
        gap = f"{r['gap_to_optimum']:+10.3f}" if "gap_to_optimum" in r else " " * 10
        tuned = ", ".join(f"{k}={v}" for k, v in r.get("tuned", {}).items())
        print(f"  {method:24s} {r['mean']:9.3f} {r['se']:7.3f} {paper} {gap}  {tuned}")
    if runs:
        print(f"  RL2: {len(runs)} agent(s) (SE across them when more than one), trained "
              + ", ".join(f"{run['train_time_s']:.0f} s" for run in runs) + f" on {runs[0]['pulls']:,} pulls each")


def cell_report(rows, results, runs, exact, tasks, seconds):
    training = None if runs is None else [
        dict(config=run["config"], train_time_s=round(run["train_time_s"], 1), pulls_trained=run["pulls"],
             total_time_s_with_curriculum=round(run["total_time_s"], 1), training_curve=run["history"])
        for run in runs]
    return dict(table=rows, exact_optimum=exact, tune_tasks=tasks[0], eval_tasks=tasks[1], training=training,
                cell_wall_time_s=round(seconds, 1),
                regret_per_pull={m: (results[m][0] if m == "RL2" else results[m])["regret_per_pull"]
                                 for m in ("RL2", "Gittins", "UCB1", "TS", "Greedy")})


def print_summary(per_cell, cells):
    """The cells side by side, when there are two or more."""
    if len(cells) < 2:
        return
    print("\nSummary: ours ± SE (paper)")
    print("  " + "method".ljust(24) + "".join(f"n={n}, k={k}".rjust(23) for n, k in cells))
    names = METHODS + ("RL2 - Gittins (paired)", "normalised score", "RL2 - optimum")
    for method in names:
        cells_text = []
        for c in cells:
            r = per_cell[c]["rows"].get(method)
            paper = f" ({r['paper']:5.1f})" if r and "paper" in r else " " * 8
            cells_text.append(f"{r['mean']:8.3f} ±{r['se']:6.3f}{paper}" if r else "-".rjust(23))
        print("  " + method.ljust(24) + "".join(text.rjust(23) for text in cells_text))


def write_outputs(out, per_cell, report, args, started):
    if not args.params:
        named = {}
        for (n, k), cell in per_cell.items():
            for i, agent in enumerate(cell["agents"]):
                named.update(agent_file_entries(agent, n, k, i))
        ad.nn.save_parameters(os.path.join(out, "params.npz"), named)
        plot_training(per_cell, os.path.join(out, "rl2_bandits_training.png"))
    plot_regret(per_cell, os.path.join(out, "rl2_bandits_regret.png"))
    for n, k in per_cell:
        plot_trial(per_cell[(n, k)], n, k, os.path.join(out, f"rl2_bandits_trial_n{n}_k{k}.png"))
    ad.runs.write_metrics(out, report, args, started)
    print(f"\nwrote {out}/metrics.json{'' if args.params else ', params.npz'} and figures")


# ----------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------
def plot_training(cells, path):
    """Mean trial reward and policy entropy per PPO iteration, one column per cell."""
    plt = ad.runs.pyplot()
    fig, axes = plt.subplots(2, len(cells), figsize=(4.2 * len(cells), 5.5), squeeze=False, sharex="col")
    for col, ((n, k), cell) in enumerate(cells.items()):
        history, rows = cell["runs"][0]["history"], cell["rows"]
        reward = np.asarray(history["reward"])
        smooth = np.convolve(reward, np.ones(10) / 10, mode="valid") if len(reward) >= 10 else reward
        ax = axes[0, col]
        ax.plot(reward, color="C0", alpha=0.3, lw=0.8)
        ax.plot(np.arange(len(smooth)) + len(reward) - len(smooth), smooth, color="C0", label="RL² (training tasks)")
        ax.axhline(rows["Gittins"]["mean"], color="C3", ls="--", lw=1, label="Gittins (eval tasks)")
        ax.axhline(PAPER[(n, k)][-1], color="k", ls=":", lw=1, label="paper's RL²")
        ax.axhline(n / 2, color="0.6", lw=1, label="random")
        ax.set_title(f"n={n}, k={k}, seed 0  ({cell['runs'][0]['train_time_s']:.0f} s)")
        ax.set_ylabel("total reward per trial")
        axes[1, col].plot(history["entropy"], color="C2")
        axes[1, col].set_ylabel("policy entropy (nats)")
        axes[1, col].set_xlabel("PPO iteration")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_regret(cells, path):
    """Expected regret of each pull (best mean − pulled arm's mean), averaged over the tasks: how fast each
    method stops paying for exploration."""
    plt = ad.runs.pyplot()
    fig, axes = plt.subplots(2, len(cells), figsize=(4.2 * len(cells), 6), squeeze=False)
    styles = {"RL2": ("C0", "-"), "Gittins": ("C3", "--"), "UCB1": ("C1", "-."), "TS": ("C2", ":")}
    for col, ((n, k), cell) in enumerate(cells.items()):
        for method, (color, ls) in styles.items():
            result = cell["results"][method]
            regret = (result[0] if method == "RL2" else result)["regret_per_pull"]
            pulls = np.arange(1, n + 1)
            axes[0, col].plot(pulls, regret, color=color, ls=ls, label=method)
            axes[1, col].plot(pulls, np.cumsum(regret), color=color, ls=ls, label=method)
        axes[0, col].set_title(f"n={n}, k={k}")
        axes[0, col].set_ylabel("expected regret of pull t")
        axes[1, col].set_ylabel("cumulative expected regret")
        axes[1, col].set_xlabel("pull t")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_trial(cell, n, k, path, tasks=(0, 1, 2)):
    """What happens inside one trial: the arm pulled at each step (filled = paid 1, open = paid 0) by RL²
    and by Gittins on the same task, arms labelled with their true means (the best arm's row is shaded)."""
    plt = ad.runs.pyplot()
    results, means = cell["results"], cell["means"]
    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 1.0 + 0.32 * k * len(tasks) + 0.5),
                             squeeze=False, sharex=True)
    for row, task in enumerate(tasks):
        order = means[task]
        for col, method in enumerate(("RL2", "Gittins")):
            ax = axes[row, col]
            result = results[method][0] if method == "RL2" else results[method]
            arms, rewards = result["arms"][:, task], result["rewards"][:, task]
            paid = means[task, arms]
            t = np.arange(1, n + 1)
            ax.axhspan(np.argmax(order) - 0.45, np.argmax(order) + 0.45, color="gold", alpha=0.3, lw=0)
            ax.scatter(t[rewards == 1], arms[rewards == 1], s=22 if n <= 20 else 10, color="C0", zorder=3)
            ax.scatter(t[rewards == 0], arms[rewards == 0], s=22 if n <= 20 else 10, facecolor="white",
                       edgecolor="C0", zorder=3)
            ax.set_yticks(range(k))
            ax.set_yticklabels([f"p={p:.2f}" for p in order], fontsize=7)
            ax.set_ylim(-0.6, k - 0.4)
            total = int(rewards.sum())
            ax.set_title(f"{'RL²' if method == 'RL2' else method}, task {task}: total {total}, "
                         f"mean of pulled arms {paid.mean():.2f} (best {order.max():.2f})", fontsize=8)
        axes[row, 0].set_ylabel("arm (true mean)", fontsize=8)
    for col in range(2):
        axes[-1, col].set_xlabel("pull t")
    fig.suptitle(f"n={n}, k={k}, unseen tasks: the arm pulled at each step (filled: paid 1, open: paid 0; "
                 f"shaded: the best arm)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    ad.runs.run(main)
