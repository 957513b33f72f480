"""Where pendulum_bptt.py's gap to the optimum comes from, and what closing it would take: development starts only.

Every figure here is measured on the development starts, Gymnasium reset seeds 0-999 (DEVELOPMENT_SEEDS: the
starts the method was chosen on; disjoint from the evaluation set, 1,000,000+, and the fresh set, 10,000,000+),
each paired with the value-iteration controller's return on the same start (301 x 241 grid, the lesson run's).

    python docs/pendulum_bptt_study.py --arm default     # one arm: BPTT seeds 0-2 (about 2 CPU-min for the
                                                         # default's cost; "phase 2 eight times as long": 11)
    python docs/pendulum_bptt_study.py --diagnose        # where the default's gap sits (per start, per step)
    python docs/pendulum_bptt_study.py --near-bottom ARM --seeds 0   # its near-bottom starts' swing-ups against
                                                         # the optimum's (first push, side, turn, energy, splice)
    python docs/pendulum_bptt_study.py --adjoint-norms   # how large the state's gradient gets (50, 100 steps)
    python docs/pendulum_bptt_study.py --summarise       # every finished arm -> docs/results/pendulum_bptt_study.json

Arms are kept in runs/pendulum_bptt_study/ as they finish (rerunning an arm reuses what is there).
"""

import argparse
import functools
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import autodiff as ad       # noqa: E402  (first: single-threaded BLAS before NumPy loads)
import numpy as np          # noqa: E402

import pendulum_bptt as pb  # noqa: E402

DEVELOPMENT_SEEDS = np.arange(1000)   # Gymnasium reset seeds 0-999
TRAINING_SEEDS = (0, 1, 2)
GRID = (301, 241)
OUT = os.path.join(ROOT, "runs", "pendulum_bptt_study")
RESULTS = os.path.join(ROOT, "docs", "results", "pendulum_bptt_study.json")
DEFAULT = dict(phase_1=dict(sim_steps=pb.SETTINGS["sim_steps"], batch=pb.SETTINGS["batch"],
                            window=pb.SETTINGS["window"], lr=pb.SETTINGS["lr"]),
               phase_2=dict(sim_steps=pb.SETTINGS["long_sim_steps"], batch=pb.SETTINGS["long_batch"],
                            window=pb.SETTINGS["long_window"], lr=pb.SETTINGS["long_lr"]),
               hidden=pb.SETTINGS["hidden"])


def with_phase_2(**changes):
    return dict(DEFAULT, phase_2=dict(DEFAULT["phase_2"], **changes))


def linear_decay(seed):
    """An Adam step-size schedule (pendulum_bptt.adam_schedule's signature) decaying linearly to 5% throughout."""
    return lambda lr, done, total: lr * (1.0 - 0.95 * done / total)


def noisy_torque(sigma, seed):
    """policy_torque plus N(0, sigma^2) per step: the return, averaged over the noise, is a smoothed objective."""
    plain, rng = pb.policy_torque, np.random.default_rng((seed, 4))

    def policy_torque(net, obs, kind="odd"):
        torque = plain(net, obs, kind)
        return torque + ad.Tensor(sigma * rng.standard_normal(torque.shape))
    return policy_torque


def bottom_heavy_starts(fraction, seed=None):
    """Pendulum-v1's start distribution, except that `fraction` of the starts have |θ| > 2.6 (near hanging down)."""
    plain = pb.reset_states

    def reset_states(rng, n):
        states = plain(rng, n)
        bottom = rng.uniform(size=n) < fraction
        states[bottom, 0] = np.sign(states[bottom, 0]) * rng.uniform(2.6, np.pi, bottom.sum())
        return states
    return reset_states


# An input that breaks the tie: a constant c = 1 fed to f beside the observation, flipped by the mirror
# (mirror(o, c) = (mirror o, −c)), so that u = 2 tanh(f(o, 1) − f(mirror o, −1) + ε) stays odd only while f
# ignores c. f's weights from c start at zero (phase 2 starts from the odd policy phase 1 learned), and BPTT
# may break the tie where that pays (at rest hanging straight down the odd policy's torque is 2 tanh ε = 0.02).
def tie_breaking_input():
    plain_make_policy = pb.make_policy

    def make_policy(rng, hidden=64):
        net = plain_make_policy(rng, hidden)            # the same draws as the odd policy's
        W, b = net.layers[0]
        net.layers[0] = (ad.nn.parameter(np.vstack([W.data, np.zeros((1, W.shape[1]))])), b)
        net.sizes = (4,) + net.sizes[1:]
        return net

    def policy_torque(net, obs, kind="odd"):
        batch = obs.shape[0]
        c = ad.Tensor(np.concatenate([np.ones((batch, 1)), -np.ones((batch, 1))]))
        z = net(ad.concatenate([pb.mirror_pair(obs), c], axis=1))
        return pb.MAX_TORQUE * ad.tanh(z[:batch] - z[batch:] + pb.TIE_BREAK)
    return {"make_policy": make_policy, "policy_torque": policy_torque}


# Averaged weights: phase 2's last updates wander around a minimum at a step size Adam keeps finite; the average
# of the weights over those updates (tail averaging, as in Polyak-Ruppert and SWA) sits nearer its centre than
# any one iterate. It reads the weights only, so the training, and the raw final net, are the un-averaged arm's.
class WeightAverage:
    """Running averages of a net's weights over phase 2's last `fraction` of updates: the uniform mean and an
    exponential one, ema <- ema + (w - ema) / horizon, with horizon = 10% of the updates averaged over."""

    def __init__(self, net, updates, fraction=0.25):
        self.net, self.updates, self.first = net, updates, int(round(updates * (1 - fraction)))
        self.horizon, self.seen = max(1.0, 0.1 * (updates - self.first)), 0
        self.mean = self.ema = None

    def checkpoints(self, steps_before, steps_per_update):
        """The running totals (learning-curve checkpoints of pendulum_bptt.train_bptt) at which to read the net."""
        return [steps_before + k * steps_per_update for k in range(self.first, self.updates)]

    def observe(self, policy):                    # train_bptt's curve_policy_eval: the net after each update
        weights = [p.data.copy() for p in self.net.parameters()]
        self.seen += 1
        if self.mean is None:
            self.mean, self.ema = weights, [w.copy() for w in weights]
        else:
            for m, e, w in zip(self.mean, self.ema, weights):
                m += (w - m) / self.seen
                e += (w - e) / self.horizon
        return float("nan")                        # recorded as the curve's point; nothing reads it

    def net_with(self, which):
        """A copy of the net with the `which` ("mean" or "ema") weights."""
        net = pb.make_policy(0, self.net.layers[0][0].shape[1])
        for p, w in zip(net.parameters(), getattr(self, which)):
            p.data = w.copy()
        return net


def train_with_weight_average(seed, arm):
    """train_two_phases (the same streams and schedule), reading phase 2's weights after each of its last
    quarter's updates. Returns the tail-averaged net; the raw final net and the exponential average are in
    net.study_nets (measured on the development starts beside it)."""
    phase_1, phase_2 = arm["phase_1"], arm["phase_2"]
    net, _, info = pb.train_bptt(seed, hidden=arm["hidden"], label=f"seed {seed} phase 1", **phase_1)
    per_update = phase_2["batch"] * phase_2["window"]           # 200-step episodes: every window is whole
    updates = -(-phase_2["sim_steps"] // per_update)
    average = WeightAverage(net, updates, arm["average"])
    pb.train_bptt((seed, 2), net=net, steps_before=info["sim_steps"], label=f"seed {seed} phase 2",
                  curve_at=average.checkpoints(info["sim_steps"], per_update),
                  curve_policy_eval=average.observe, **phase_2)
    averaged = average.net_with("mean")
    averaged.study_nets = {"raw final": net, "exponential average": average.net_with("ema")}
    averaged.study_info = {"updates_averaged": average.seen}
    return averaged


# Phase 2 started from the optimum itself: is the gap the 50-step objective's, or the optimisation's? A policy
# cloned from the value iteration's controller (DAgger: the optimum labels the states the clone itself visits)
# starts phase 2 as close to the optimum as this net can be. If phase 2 leaves it and ends where the default ends,
# the truncated objective prefers the worse swing-up; if it stays, the default's gap is where phase 1 left it.
@functools.lru_cache(maxsize=1)
def optimum_values():
    return pb.value_iteration(*GRID)


def optimum_teacher():
    values = optimum_values()
    return lambda state, t: greedy_torque(values, state, t)


def policy_teacher(net):
    """A trained policy as a teacher (the control: the same cloning, a teacher with the default's swing-up)."""
    return lambda state, t: pb.act(net, np.stack([np.cos(state[:, 0]), np.sin(state[:, 0]), state[:, 1]], axis=1))


def clone_optimum(seed, hidden, rounds=4, starts_per_round=512, updates_per_round=4000, batch=1024, lr=3e-3,
                  teacher=None):
    """A net fitted to the optimal controller's torques (squared error on u) by DAgger on the twin: round 0 on
    the optimum's own trajectories, each later round adding the states the current clone visits (every one
    labelled with the optimum's torque at its step t). The starts come from a stream of their own, (seed, 7),
    drawn as Gymnasium's reset draws them; no development start is used. teacher(state, t) -> torques replaces
    the optimum (policy_teacher). Returns the net."""
    rng, teacher = np.random.default_rng((seed, 7)), teacher or optimum_teacher()
    net = pb.make_policy(rng, hidden)
    optimizer = ad.optim.Adam(net.parameters(), lr=lr)
    observations, targets = [], []
    for k in range(rounds):
        state = pb.reset_states(rng, starts_per_round)
        for t in range(pb.EPISODE_STEPS):
            obs = np.stack([np.cos(state[:, 0]), np.sin(state[:, 0]), state[:, 1]], axis=1)
            best = teacher(state, t)
            observations.append(obs)
            targets.append(best)
            state = pb.step_numpy(state, best if k == 0 else pb.act(net, obs))[0]
        all_obs, all_targets = np.concatenate(observations), np.concatenate(targets)
        for _ in range(updates_per_round):
            pick = rng.integers(0, len(all_obs), batch)
            error = pb.policy_torque(net, ad.Tensor(all_obs[pick]))[:, 0] - ad.Tensor(all_targets[pick])
            loss = (error * error).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"seed {seed}: cloning round {k + 1}/{rounds}, {len(all_obs):,} labelled states, "
              f"squared torque error {loss.item():.4f}", flush=True)
    return net


def train_from_clone(seed, arm):
    """Phase 1 replaced by clone_optimum, then phase 2 as in train_two_phases (its stream, (seed, 2), and its
    schedule). The clone itself is measured beside the result (net.study_nets)."""
    teacher = policy_teacher(load_arm_policy(arm["teacher"], seed)) if "teacher" in arm else None
    clone = clone_optimum(seed, arm["hidden"], teacher=teacher)
    start = pb.make_policy(0, arm["hidden"])
    for p, q in zip(start.parameters(), clone.parameters()):
        p.data = q.data.copy()
    net = pb.train_bptt((seed, 2), net=start, steps_before=arm["phase_1"]["sim_steps"],
                        label=f"seed {seed} phase 2 from the clone", **arm["phase_2"])[0]
    net.study_nets, net.study_info = {"clone": clone}, {}
    return net


class swapped:
    """with swapped(arm): pendulum_bptt's functions replaced by the arm's "policy_swaps" (training and measuring)."""

    def __init__(self, arm):
        self.swaps = arm.get("policy_swaps", lambda: {})()

    def __enter__(self):
        self.originals = {name: getattr(pb, name) for name in self.swaps}
        for name, replacement in self.swaps.items():
            setattr(pb, name, replacement)

    def __exit__(self, *error):
        for name, original in self.originals.items():
            setattr(pb, name, original)


def load_arm_policy(name, seed):
    """The saved net of one seed of an arm (one with "policy_swaps" rebuilt by its own make_policy)."""
    path = seed_path(name, seed) + ".npz"
    if "policy_swaps" not in ARMS[name]:
        return pb.load_policy(path)[0]
    arrays = ad.nn.load_arrays(path)
    with swapped(ARMS[name]):
        net = pb.make_policy(0, arrays["W1"].shape[1])
    for key, p in net.named_parameters().items():
        p.data = arrays[key].astype(np.float64)
    return net


# A learned value tail on each truncated window: the window's loss adds the critic's estimate of the cost
# still to come (to the episode's end) from the state where the window is cut, so the gradient of a torque
# early in a window also sees, through the critic, what its effect on the end state costs later. The
# critic V(obs, steps left) is regressed on the costs-to-go the policy's own simulated episodes gave.
VALUE_SCALE = 100.0                                     # the critic predicts cost-to-go / 100
FEATURE_SCALE = np.array([1.0, 1.0, 1.0 / pb.MAX_SPEED])


def critic_features(obs, steps_left):
    """Tensor (B, 3) observations and the steps left in the episode -> the critic's input (B, 4)."""
    left = ad.Tensor(np.full((obs.shape[0], 1), steps_left / pb.EPISODE_STEPS))
    return ad.concatenate([obs * ad.Tensor(FEATURE_SCALE), left], axis=1)


def state_features(states, steps_left):
    obs = np.stack([np.cos(states[:, 0]), np.sin(states[:, 0]), states[:, 1] / pb.MAX_SPEED], axis=1)
    return np.concatenate([obs, np.full((len(states), 1), steps_left / pb.EPISODE_STEPS)], axis=1)


# The exact tail: instead of a learned critic, the optimum's own cost-to-go −V_t from the value iteration (the
# table the optimal controller acts on). No learned critic can be better than this, so it bounds what a value
# tail can do: if BPTT with it still takes the extra swing, the cut is not what stops the gradient.
@ad.primitive(name="optimum_cost_to_go")
def optimum_cost_to_go(state, values=None, grid=GRID):
    """−V_t(state) for a (B, 2) state, bilinear between the grid points (values: V_t, one row of
    pendulum_bptt.value_iteration). Backward: the interpolant's slope in its cell,
        d/dθ = n_θ/(2π) · [(1 − f_θ̇)(V10 − V00) + f_θ̇ (V11 − V01)],
        d/dθ̇ = (n_θ̇ − 1)/16 · [(1 − f_θ)(V01 − V00) + f_θ (V11 − V10)],   (the sign flipped for the cost)."""
    index, weight = pb.grid_neighbours(state, *grid)
    v = values[index].astype(np.float64)                      # (4, B): V00, V01, V10, V11
    x = (pb.angle_normalize(state[:, 0]) + np.pi) * (grid[0] / (2 * np.pi))
    y = (state[:, 1] + pb.MAX_SPEED) * ((grid[1] - 1) / (2 * pb.MAX_SPEED))
    fx, fy = x - np.floor(x), y - np.clip(np.floor(y), 0, grid[1] - 2)

    def vjp(g):
        d_theta = ((1 - fy) * (v[2] - v[0]) + fy * (v[3] - v[1])) * (grid[0] / (2 * np.pi))
        d_speed = ((1 - fx) * (v[1] - v[0]) + fx * (v[3] - v[2])) * ((grid[1] - 1) / (2 * pb.MAX_SPEED))
        return (-np.stack([d_theta, d_speed], axis=1) * g[:, None],)
    return -(weight * v).sum(axis=0), vjp


def train_value_tail(seed, net, sim_steps, batch, window, lr, warmup=400_000, critic_lr=1e-3, critic_batch=256,
                     critic_steps=16, memory=16, max_grad_norm=100.0, label="value tail", tail=True,
                     first_window=None, exact_tail=False):
    """pendulum_bptt.train_bptt (same start stream, schedule and clipping) with the critic's tail on each
    window that ends before the episode does (after `warmup` steps, while the critic learns first).
    tail=False: no tail; first_window: the first window of each episode has this many steps ("staggered":
    a number drawn uniformly from 1 to `window` for each batch of episodes, so the cuts fall anywhere).
    exact_tail: the optimum's cost-to-go (optimum_cost_to_go) as the tail from the first step on, no critic."""
    values = pb.value_iteration(*GRID) if exact_tail else None
    rng, critic_rng = np.random.default_rng((seed, 2)), np.random.default_rng((seed, 5))
    critic = ad.nn.MLP((4, 64, 64, 1), critic_rng, activation="tanh", out_activation=None)
    optimizer = ad.optim.Adam(net.parameters(), lr=lr)
    critic_optimizer = ad.optim.Adam(critic.parameters(), lr=critic_lr)
    samples, done = [], 0
    state, t, starts, window_costs = pb.reset_states(rng, batch), 0, [], []
    progress = ad.runs.Progress(sim_steps, label, every=5.0)
    while done < sim_steps:
        optimizer.lr = pb.adam_schedule(lr, done, sim_steps)
        first = int(critic_rng.integers(1, window + 1)) if first_window == "staggered" else first_window
        steps = min(first if first and t == 0 else window, pb.EPISODE_STEPS - t)
        end, costs = ad.Tensor(state), []
        for _ in range(steps):
            end, cost = pb.step_fused(end, pb.policy_torque(net, pb.observation(end)))
            costs.append(cost)
        per_episode = ad.stack(costs).sum(axis=0)
        total = per_episode.sum()
        if exact_tail and t + steps < pb.EPISODE_STEPS:
            total = total + optimum_cost_to_go(end, values=values[t + steps]).sum()
        elif tail and not exact_tail and t + steps < pb.EPISODE_STEPS and done >= warmup:
            value = critic(critic_features(pb.observation(end), pb.EPISODE_STEPS - t - steps))
            total = total + VALUE_SCALE * value.sum()
        loss = ad.runs.check_finite("phase 2 loss", total / (batch * steps), f"step {done:,}")
        optimizer.zero_grad()
        loss.backward()
        ad.optim.clip_grad_norm(optimizer.params, max_grad_norm)
        optimizer.step()
        starts.append((state, t))
        window_costs.append(per_episode.data)
        state, t, done = end.data, t + steps, done + batch * steps
        if t >= pb.EPISODE_STEPS and (exact_tail or not tail):
            state, t, starts, window_costs = pb.reset_states(rng, batch), 0, [], []
        elif t >= pb.EPISODE_STEPS:
            to_go = np.cumsum(np.array(window_costs)[::-1], axis=0)[::-1]     # cost from window k's start on
            samples = samples[-(memory - 1):] + [(np.concatenate([state_features(s, pb.EPISODE_STEPS - t0)
                                                                  for s, t0 in starts[1:]]),
                                                  np.concatenate(to_go[1:]) / VALUE_SCALE)]
            x, y = np.concatenate([a for a, _ in samples]), np.concatenate([b for _, b in samples])
            for _ in range(critic_steps):
                index = critic_rng.integers(0, len(x), critic_batch)
                critic_loss = ad.mean((critic(ad.Tensor(x[index]))[:, 0] - ad.Tensor(y[index])) ** 2)
                critic_optimizer.zero_grad()
                critic_loss.backward()
                critic_optimizer.step()
            state, t, starts, window_costs = pb.reset_states(rng, batch), 0, [], []
        progress.update(min(done, sim_steps), last_window_loss=loss.item())
    return net


# Longer windows with a bounded backward signal. Windows longer than 50 see past the swing-up's cut but break it.
# The hypothesis tested: near the top's separatrix the state's gradient (the adjoint) explodes, so a few
# trajectories' far-off costs decide the update; bounding each trajectory's adjoint at every step would keep the
# long window's reach and drop those spikes (a biased gradient, like a clipped one, that still sees past step 50).
@ad.primitive(name="bounded_adjoint")
def bounded_adjoint(state, limit=1.0):
    """Identity forward; backward: each row of the incoming gradient g (B, 2) scaled down to norm <= limit,
        g_b <- g_b · min(1, limit / |g_b|)."""
    def vjp(g):
        norm = np.sqrt((g * g).sum(axis=1, keepdims=True))
        return (g * np.minimum(1.0, limit / np.maximum(norm, 1e-300)),)
    return state.copy(), vjp


def window_loss_through(state_op):
    """pendulum_bptt.window_loss with state_op(state, k, scale) applied to the state before each step k, where
    scale = B · window is the loss's divisor (so that an op can work per trajectory and per step of cost)."""
    def window_loss(net, state, window, kind="odd"):
        scale, costs = state.shape[0] * window, []
        for k in range(window):
            state = state_op(state, k, scale)
            state, cost = pb.step_fused(state, pb.policy_torque(net, pb.observation(state), kind))
            costs.append(cost)
        return ad.stack(costs).sum() / scale, state
    return window_loss


def window_loss_bounded(limit):
    """window_loss with bounded_adjoint at every step, `limit` per trajectory and per step of cost."""
    return window_loss_through(lambda state, k, scale: bounded_adjoint(state, limit=limit / scale))


def adjoint_norms(name="default re-run on a second CPU", seed=0, batch=256, windows=(50, 100)):
    """How large the state's gradient gets: for `name`'s policy, windows from Gymnasium-drawn training starts (a
    stream of their own), each trajectory's state-gradient norm at every step, per step of cost (x B · window)."""
    net, _ = pb.load_policy(seed_path(name, seed) + ".npz")
    report = {"policy": f"{name}, seed {seed}", "batch": batch}
    for window in windows:
        seen = {}

        @ad.primitive(name="record_adjoint")
        def record(state, k=0, scale=1.0):
            def vjp(g):
                seen[k] = np.sqrt((g * g).sum(axis=1)) * scale
                return (g,)
            return state.copy(), vjp
        start = ad.Tensor(pb.reset_states(np.random.default_rng((seed, 7)), batch), requires_grad=True)  # reach step 0
        loss, _ = window_loss_through(lambda state, k, scale: record(state, k=k, scale=scale))(net, start, window)
        loss.backward()
        every = np.concatenate([seen[k] for k in range(window)])
        report[f"windows of {window}"] = {
            "first step, percentiles 50/90/99/100": np.round(np.percentile(seen[0], [50, 90, 99, 100]), 2).tolist(),
            "every step, percentiles 50/90/99/100": np.round(np.percentile(every, [50, 90, 99, 100]), 2).tolist()}
    ad.runs.write_json(os.path.join(OUT, "adjoint_norms.json"), report)
    print(json.dumps(report, indent=1))
    return report


# Each arm changes one thing. "then" continues the default's trained policy with one more phase.
ARMS = {
    "default": dict(DEFAULT, note="pendulum_bptt.py's settings (phase 1: 320,000 steps, windows 25, batch 8, "
                                  "Adam 0.01; phase 2: 4,000,000 steps, windows 50, batch 64, Adam 0.001)"),
    "phase 3: whole episodes": dict(DEFAULT, then=dict(sim_steps=1_280_000, batch=64, window=200, lr=1e-4),
                                    note="then 1,280,000 more steps with 200-step windows (the whole episode: "
                                         "the loss is the evaluated return exactly), Adam 1e-4"),
    "phase 2 twice as long": dict(with_phase_2(sim_steps=8_000_000), note="phase 2: 8,000,000 steps"),
    "phase 2 four times as long": dict(with_phase_2(sim_steps=16_000_000), note="phase 2: 16,000,000 steps"),
    "phase 2 eight times as long": dict(with_phase_2(sim_steps=32_000_000), note="phase 2: 32,000,000 steps"),
    "phase 2 eight times as long, windows of 100": dict(with_phase_2(sim_steps=32_000_000, window=100),
                                                        note="phase 2: 32,000,000 steps with 100-step windows "
                                                             "(a swing-up from hanging down takes longer than 50)"),
    "phase 2 with a value tail": dict(DEFAULT, variant={},
                                      note="phase 2 adds a learned critic's cost-to-go at each window's cut "
                                           "(a value-aware tail), the critic regressed on the policy's own "
                                           "simulated costs-to-go"),
    "phase 2 written out (control)": dict(DEFAULT, variant=dict(tail=False),
                                          note="the default, with phase 2 run by this file's train_value_tail "
                                               "(no tail, no other change): a check that the variants' loop "
                                               "is pendulum_bptt.train_bptt's"),
    "phase 2 first window 100": dict(DEFAULT, variant=dict(tail=False, first_window=100),
                                     note="phase 2: each episode's first window 100 steps, then 50 (a swing-up "
                                          "from hanging down ends near step 45, at the 50-step cut)"),
    "phase 2 first window 75": dict(DEFAULT, variant=dict(tail=False, first_window=75),
                                    note="phase 2: each episode's first window 75 steps, then 50, 50 and 25"),
    "phase 2 first window 25": dict(DEFAULT, variant=dict(tail=False, first_window=25),
                                    note="phase 2: each episode's first window 25 steps, then 50, 50, 50 and 25 "
                                         "(the swing-up's end, near step 45, falls inside a window)"),
    "phase 2 staggered windows": dict(DEFAULT, variant=dict(tail=False, first_window="staggered"),
                                      note="phase 2: each batch's first window 1-50 steps (uniform), then 50s: "
                                           "the cuts fall anywhere in the episode"),
    "phase 2 windows of 100": dict(with_phase_2(window=100), note="phase 2: 100-step windows instead of 50"),
    "phase 2 sixteen times as long": dict(with_phase_2(sim_steps=64_000_000), note="phase 2: 64,000,000 steps"),
    "phase 2 at a larger step": dict(with_phase_2(lr=0.003), note="phase 2: Adam 0.003 instead of 0.001"),
    "phase 2 at half the batch": dict(with_phase_2(batch=32), note="phase 2: 32 episodes side by side instead of "
                                                                   "64 (twice the updates for the same steps)"),
    "wider policy": dict(DEFAULT, hidden=128, note="128 hidden units per layer instead of 64"),
    "phase 2 decays throughout": dict(DEFAULT, phase_2_swaps={"adam_schedule": linear_decay},
                                      note="phase 2's Adam step decays linearly from 0.001 to 5% over the whole phase (the default: over its last quarter)"),
    "phase 2 with torque noise": dict(DEFAULT, phase_2_swaps={"policy_torque": lambda seed: noisy_torque(0.3, seed)},
                                      note="phase 2 trains with N(0, 0.3^2) added to each torque (a smoothed "
                                           "objective); evaluated without noise"),
    "phase 2 starts near the bottom": dict(DEFAULT, phase_2_swaps={"reset_states": lambda seed: bottom_heavy_starts(0.5)},
                                           note="phase 2: half of the training starts have |θ| > 2.6 (hanging "
                                                "down), where most of the gap is"),
    # The arms below ran on a second machine (an AMD EPYC), where the same seeds train to different policies:
    # the training is chaotic and NumPy's sin, cos and tanh may round differently on another CPU's vector units.
    # Each is paired with the default re-run there ("baseline"), not with the first machine's default.
    "default re-run on a second CPU": dict(DEFAULT, note="pendulum_bptt.py's settings, trained again on the second "
                                                         "machine: the baseline of the arms after it"),
    "phase 2 eight times as long, re-run on a second CPU": dict(
        with_phase_2(sim_steps=32_000_000), baseline="default re-run on a second CPU",
        note="phase 2: 32,000,000 steps, trained again on the second machine (for the near-bottom measurement)"),
    "phase 2 with the optimum's cost-to-go at each cut": dict(
        DEFAULT, variant=dict(exact_tail=True), baseline="default re-run on a second CPU",
        note="phase 2 adds, at each window's cut, the optimum's own cost from there to the episode's end "
             "(−V_t of the value iteration, bilinear, differentiated through): a perfect value tail"),
    "an input that breaks the tie": dict(
        DEFAULT, policy_swaps=tie_breaking_input, baseline="default re-run on a second CPU",
        note="phase 2: f gets a fourth input, 1 for the observation and −1 for its mirror image, its weights "
             "starting at zero, so that BPTT can make the policy other than odd (at rest hanging down, the odd "
             "policy's torque is 2 tanh 0.01)"),
    "phase 2 eight times as long, with the optimum's cost-to-go at each cut": dict(
        with_phase_2(sim_steps=32_000_000), variant=dict(exact_tail=True),
        baseline="phase 2 eight times as long, re-run on a second CPU",
        note="phase 2: 32,000,000 steps, with the optimum's own cost-to-go added at each window's cut"),
    "three phase 1 restarts, the best on training starts kept": dict(
        with_phase_2(sim_steps=pb.SETTINGS["long_sim_steps"] - 2 * pb.SETTINGS["sim_steps"]), restarts=3,
        baseline="default re-run on a second CPU",
        note="phase 1 three times from different initialisations (the default's first), the one with the lowest "
             "whole-episode twin cost on 1,000 training starts kept; phase 2 shorter by the two extra phase 1s "
             "(3,360,000 steps), so the budget is the default's"),
}
for _name, _base in (("", DEFAULT), (" eight times as long", with_phase_2(sim_steps=32_000_000))):
    ARMS[f"phase 2{_name}, its last quarter's weights averaged"] = dict(
        # trained on the first machine's CPU type (the raw final net reproduces the un-averaged arm's figures);
        # paired with the default as the table's other rows are, and with its own raw net in its readouts
        _base, average=0.25, baseline="default",
        note=f"phase 2{_name and ': 32,000,000 steps'}, evaluated with the mean of its weights over the last quarter "
             "of its updates (where the step size decays); the same training's raw final net and an exponential "
             "average (horizon 10% of those updates) measured beside it")
for _name, _base in (("", DEFAULT), (" eight times as long", with_phase_2(sim_steps=32_000_000))):
    ARMS[f"phase 2{_name}, from a clone of the optimum"] = dict(
        _base, from_clone=True, baseline="default re-run on a second CPU",
        note=f"phase 1 replaced by a net cloned from the optimal controller (DAgger on the twin, 4 rounds of 512 "
             f"starts), then phase 2{_name and ' (32,000,000 steps)'} from it: does the truncated objective keep "
             "the optimum's swing-up? The clone itself is measured beside it")
ARMS["phase 2, from a clone of the default's policy (control)"] = dict(
    DEFAULT, from_clone=True, teacher="default re-run on a second CPU", baseline="default re-run on a second CPU",
    note="the control of the clone arms: the same cloning (DAgger, 4 rounds of 512 starts), the teacher the "
         "default's own trained policy (the same seed's) instead of the optimum, then the default's phase 2")
# Phase 1 sets the swing-up that phase 2 only refines (phase 2 from the clone keeps the optimum's): does phase 1,
# with longer windows, learn a swing-up nearer the optimum's? Same steps, so fewer updates
def with_phase_1(**changes):
    return dict(DEFAULT, phase_1=dict(DEFAULT["phase_1"], **changes))


for _window in (35, 50):
    ARMS[f"phase 1 with {_window}-step windows"] = dict(
        with_phase_1(window=_window), baseline="default re-run on a second CPU",
        note=f"phase 1: {_window}-step windows instead of 25 (the same 320,000 steps, so fewer updates), "
             "then the default's phase 2")
ARMS["phase 2 windows of 100, re-run on a second CPU"] = dict(
    with_phase_2(window=100), baseline="default re-run on a second CPU",
    note="phase 2: 100-step windows instead of 50, trained again on the second machine (the smoothed and capped "
         "long windows' reference)")
# Long windows on a smoothed objective: the cliff that breaks them is in the return as a function of the weights;
# averaging the return over torque noise smooths it (the randomised smoothing of Suh et al. 2022)
for _sigma in (0.3, 0.6):
    ARMS[f"phase 2 windows of 100, torque noise {_sigma:g}"] = dict(
        with_phase_2(window=100), phase_2_swaps={"policy_torque": lambda seed, sigma=_sigma: noisy_torque(sigma, seed)},
        baseline="default re-run on a second CPU",
        note=f"phase 2: 100-step windows, trained with N(0, {_sigma:g}^2) added to each torque (a smoothed objective); "
             "evaluated without noise")
for _window, _limit in ((100, 100.0), (100, 30.0), (100, 10.0), (50, 30.0)):
    ARMS[f"phase 2 windows of {_window}, adjoint bounded at {_limit:g}"] = dict(
        with_phase_2(window=_window), phase_2_swaps={"window_loss": lambda seed, limit=_limit: window_loss_bounded(limit)},
        baseline="default re-run on a second CPU",
        note=f"phase 2: {_window}-step windows, each trajectory's state gradient bounded at every step to norm "
             f"{_limit:g} per step of cost (bounded_adjoint): the window sees past the swing-up's cut, and the "
             "spikes the cap is meant to drop are cut off")


def development_returns(policy):
    return pb.run_gymnasium(policy, seeds=DEVELOPMENT_SEEDS)[0]


def optimum_returns():
    path = os.path.join(OUT, "optimum.npy")
    if not os.path.exists(path):
        values = pb.value_iteration(*GRID)
        os.makedirs(OUT, exist_ok=True)
        np.save(path, development_returns(pb.optimal_controller(values, *GRID)))
    return np.load(path)


def twin_episode_cost(net, starts):
    """Mean summed cost of whole 200-step episodes on the twin from `starts` (B, 2): the training objective
    without its cuts, which is minus Gymnasium's return."""
    state, total = starts.copy(), np.zeros(len(starts))
    for _ in range(pb.EPISODE_STEPS):
        obs = np.stack([np.cos(state[:, 0]), np.sin(state[:, 0]), state[:, 1]], axis=1)
        state, cost = pb.step_numpy(state, pb.act(net, obs))
        total += cost
    return float(total.mean())


def train_with_restarts(seed, arm):
    """Phase 1 from `restarts` initialisations (the default's own first), the one whose whole episodes cost
    least on the twin from 1,000 training starts (a stream of their own, never a development start) kept,
    then phase 2 from it as in train_two_phases. Returns the net, with the choice in net.study_info."""
    starts = pb.reset_states(np.random.default_rng((seed, 6)), 1000)
    candidates = []
    for k in range(arm["restarts"]):
        net, _, info = pb.train_bptt(seed if k == 0 else (seed, 10 + k), hidden=arm["hidden"],
                                     label=f"seed {seed} phase 1, restart {k}", **arm["phase_1"])
        candidates.append((twin_episode_cost(net, starts), k, net, info))
    costs = [round(c[0], 3) for c in candidates]
    _, chosen, net, info = min(candidates, key=lambda c: c[0])
    print(f"seed {seed}: phase 1 restarts' twin costs on training starts {costs}, restart {chosen} kept", flush=True)
    net = pb.train_bptt((seed, 2), net=net, steps_before=info["sim_steps"], label=f"seed {seed} phase 2",
                        **arm["phase_2"])[0]
    net.study_info = {"phase_1_restart_twin_costs": costs, "restart_kept": chosen}
    return net


def train_arm(arm, seed):
    """One seed of one arm: returns the trained net (an arm with "then" starts from the default's net)."""
    if "restarts" in arm:
        return train_with_restarts(seed, arm)
    if "average" in arm:
        return train_with_weight_average(seed, arm)
    if arm.get("from_clone"):
        return train_from_clone(seed, arm)
    if "policy_swaps" in arm:
        # phase 1 with the odd policy (a policy free to be other than odd learns first to push one way, section
        # 3 of pendulum_bptt.py), then the swapped policy's net, the same function at first, for phase 2
        net, _, info = pb.train_bptt(seed, hidden=arm["hidden"], label=f"seed {seed} phase 1", **arm["phase_1"])
        with swapped(arm):
            extended = pb.make_policy(0, arm["hidden"])
            for (W, b), (W_odd, b_odd) in zip(extended.layers, net.layers):
                W.data[:W_odd.shape[0]], b.data[:] = W_odd.data, b_odd.data
                W.data[W_odd.shape[0]:] = 0.0
            return pb.train_bptt((seed, 2), net=extended, steps_before=info["sim_steps"],
                                 label=f"seed {seed} phase 2", **arm["phase_2"])[0]
    if "then" in arm:
        net, _ = pb.load_policy(seed_path("default", seed) + ".npz")
        return pb.train_bptt((seed, 3), net=net, label=f"seed {seed} phase 3", **arm["then"])[0]
    if "variant" in arm:
        net, _, info = pb.train_bptt(seed, hidden=arm["hidden"], label=f"seed {seed} phase 1", **arm["phase_1"])
        return train_value_tail(seed, net, label=f"seed {seed} phase 2 (variant)", **arm["phase_2"],
                                **arm["variant"])
    if "phase_2_swaps" not in arm:
        return pb.train_two_phases(seed, arm["phase_1"], arm["phase_2"], hidden=arm["hidden"], label=f"seed {seed}")[0]
    # train_two_phases written out, to swap a piece of pendulum_bptt for phase 2 only (same random streams)
    net, _, info = pb.train_bptt(seed, hidden=arm["hidden"], label=f"seed {seed} phase 1", **arm["phase_1"])
    originals = {name: getattr(pb, name) for name in arm["phase_2_swaps"]}
    try:
        for name, replacement in arm["phase_2_swaps"].items():
            setattr(pb, name, replacement(seed))
        return pb.train_bptt((seed, 2), net=net, steps_before=info["sim_steps"], label=f"seed {seed} phase 2",
                             **arm["phase_2"])[0]
    finally:
        for name, original in originals.items():
            setattr(pb, name, original)


def seed_path(name, seed):
    return os.path.join(OUT, name.replace(" ", "_").replace(":", ""), f"seed_{seed}")


def run_arm(name, seeds=TRAINING_SEEDS):
    arm, optimum = ARMS[name], optimum_returns()
    for seed in seeds:
        path = seed_path(name, seed)
        if os.path.exists(path + ".json"):
            continue
        t0, cpu0 = time.perf_counter(), time.process_time()
        net = train_arm(arm, seed)
        with swapped(arm):
            returns = development_returns(lambda obs: pb.act(net, obs))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pb.save_policy(path + ".npz", net, "odd", seed=seed)
        gap = ad.runs.paired_difference(optimum, returns)
        for label, other in getattr(net, "study_nets", {}).items():      # the same training's other readouts
            other_returns = development_returns(lambda obs: pb.act(other, obs))
            net.study_info[f"gap_to_optimum_{label.replace(' ', '_')}"] = ad.runs.paired_difference(optimum, other_returns)
            net.study_info[f"gain_over_{label.replace(' ', '_')}"] = ad.runs.paired_difference(returns, other_returns)
        ad.runs.write_json(path + ".json", {"seed": seed, **getattr(net, "study_info", {}),
                                            "returns": returns.tolist(), "gap_to_optimum": gap,
                                            "train_seconds": round(time.perf_counter() - t0, 1),
                                            "cpu_seconds": round(time.process_time() - cpu0, 1)})
        print(f"{name}, seed {seed}: {returns.mean():.2f}, gap to the optimum {gap['mean']:.2f} ± {gap['se']:.2f} "
              f"({time.process_time() - cpu0:.0f} CPU-s)", flush=True)


def arm_summary(name, optimum):
    rows = []
    for seed in TRAINING_SEEDS:
        if os.path.exists(seed_path(name, seed) + ".json"):
            with open(seed_path(name, seed) + ".json") as f:
                rows.append(json.load(f))
    if not rows:
        return None
    returns = np.array([r["returns"] for r in rows])
    out = {"note": ARMS[name]["note"], "seeds": [r["seed"] for r in rows],
           "gap_per_seed": [round(r["gap_to_optimum"]["mean"], 3) for r in rows],
           "gap_se_per_seed": [round(r["gap_to_optimum"]["se"], 3) for r in rows],
           "gap_seed_averaged": ad.runs.paired_difference(optimum, returns.mean(axis=0)),
           # the starts a policy loses more than 10 on (an extra swing), and their share of its gap
           "starts_more_than_10_below_per_seed": [int(np.sum(optimum - r > 10)) for r in returns],
           "their_share_of_the_gap_per_seed": [round(float(np.sum((g := optimum - r)[g > 10]) / g.sum()), 3)
                                               for r in returns],
           # each band of start angles' part of the gap (the band's summed gap / 1000: the parts add up to the gap)
           "gap_from_start_angles_per_seed": {f"|θ| in [{lo}, {hi})": [round(float(np.sum((optimum - r)[inside])) / len(r), 3)
                                                                     for r in returns]
                                              for lo, hi in ANGLE_BANDS
                                              for inside in [(start_angles() >= lo) & (start_angles() < hi)]},
           "cpu_seconds_per_seed": [r["cpu_seconds"] for r in rows]}
    for key in ("restart_kept", "phase_1_restart_twin_costs"):          # train_with_restarts' choice
        if all(key in r for r in rows):
            out[f"{key}_per_seed"] = [r[key] for r in rows]
    for key in sorted(rows[0]):                 # the same training's other readouts (train_with_weight_average)
        if key.startswith(("gap_to_optimum_", "gain_over_")) and all(key in r for r in rows):
            out[f"{key}_per_seed"] = [round(r[key]["mean"], 3) for r in rows]
            out[f"{key}_se_per_seed"] = [round(r[key]["se"], 3) for r in rows]
            if key.startswith("gain_over_") and len(rows) > 1:        # mean ± SE across training seeds
                out[f"{key}_across_seeds"] = dict(zip(("mean", "se"), ad.runs.mean_and_se([r[key]["mean"] for r in rows])))
    baseline = ARMS[name].get("baseline", "default")
    if name not in ("default", "default re-run on a second CPU") and baseline != name:
        default = arm_summary(baseline, optimum)
        if default and set(out["seeds"]) <= set(default["seeds"]):     # paired on the seeds both have
            base = np.array([r["returns"] for r in map(read_seed(baseline), out["seeds"])]).mean(axis=0)
            out["return_gain_over_default"] = ad.runs.paired_difference(returns.mean(axis=0), base)
            if baseline != "default":
                out["paired_with"] = baseline
    return out


ANGLE_BANDS = ((0, 1), (1, 2), (2, 2.6), (2.6, 3.0), (3.0, 3.2))


@functools.lru_cache(maxsize=1)
def start_angles():
    """|θ| of the development starts (wrapped), the diagnosis's grouping."""
    return np.abs(pb.angle_normalize(ad.runs.reset_states("Pendulum-v1", DEVELOPMENT_SEEDS)[:, 0]))


def read_seed(name):
    def read(seed):
        with open(seed_path(name, seed) + ".json") as f:
            return json.load(f)
    return read


def diagnose():
    """Where the default policy (seed 0) loses to the optimum on the development starts."""
    values = pb.value_iteration(*GRID)
    optimum, _ = pb.run_gymnasium(pb.optimal_controller(values, *GRID), seeds=DEVELOPMENT_SEEDS)
    net, _ = pb.load_policy(seed_path("default", 0) + ".npz")
    policy = lambda obs: pb.act(net, obs)                                       # noqa: E731
    returns, angles = pb.run_gymnasium(policy, seeds=DEVELOPMENT_SEEDS)
    _, optimum_angles = pb.run_gymnasium(pb.optimal_controller(values, *GRID), seeds=DEVELOPMENT_SEEDS)
    gap = optimum - returns
    starts = ad.runs.reset_states("Pendulum-v1", DEVELOPMENT_SEEDS)
    ranked = np.sort(gap)[::-1]
    late = upright_for_good(angles) - upright_for_good(optimum_angles)
    report = {"gap": ad.runs.paired_difference(optimum, returns),
              "gap_quantiles_0_10_25_50_75_90_99_100": np.round(np.quantile(gap, [0, .1, .25, .5, .75, .9, .99, 1]),
                                                                  2).tolist(),
              "share_of_gap_in_worst_k_starts": {k: round(float(ranked[:k].sum() / gap.sum()), 3)
                                                 for k in (10, 50, 100, 200)},
              "by_start_angle": by_groups(gap, np.abs(pb.angle_normalize(starts[:, 0])), (0, 1, 2, 2.6, 3.0, 3.2)),
              "by_steps_later_upright_than_the_optimum": by_groups(gap, late, (-200, 3, 10, 201)),
              "policy_minus_twin_return_max_abs": twin_check(policy, starts, returns),
              **torque_comparison(policy, values, starts)}
    print(json.dumps(report, indent=1))
    ad.runs.write_json(os.path.join(OUT, "diagnosis.json"), report)
    return report


def upright_for_good(angles, tolerance=0.3):
    """The first step after which |θ| stays below `tolerance` to the end of the episode."""
    fallen = np.abs(angles) >= tolerance
    return np.where(fallen.any(axis=1), angles.shape[1] - np.argmax(fallen[:, ::-1], axis=1), 0)


def by_groups(gap, key, edges):
    total = gap.sum()
    groups = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (key >= lo) & (key < hi)
        if inside.any():
            mean, se = ad.runs.mean_and_se(gap[inside])
            groups[f"[{lo}, {hi})"] = {"starts": int(inside.sum()), "mean_gap": round(float(mean), 2),
                                       "se": round(float(se), 2), "share_of_gap": round(float(gap[inside].sum() / total), 3)}
    return groups


def twin_check(policy, starts, returns):
    """The training objective's quantity, −Σ_t cost over 200 steps on the twin, against Gymnasium's return."""
    state, total = starts.copy(), np.zeros(len(starts))
    for _ in range(pb.EPISODE_STEPS):
        obs = np.stack([np.cos(state[:, 0]), np.sin(state[:, 0]), state[:, 1]], axis=1).astype(np.float32)
        state, cost = pb.step_numpy(state, policy(obs.astype(np.float64)))
        total -= cost
    return float(np.abs(total - returns).max())


def torque_comparison(policy, values, starts):
    """Along the policy's own trajectories: its torque against the optimal controller's at the same state and step."""
    state, difference, saturated, optimal_saturated = starts.copy(), [], [], []
    for t in range(pb.EPISODE_STEPS):
        obs = np.stack([np.cos(state[:, 0]), np.sin(state[:, 0]), state[:, 1]], axis=1)
        torque = policy(obs)
        best = greedy_torque(values, state, t)
        difference.append(np.abs(torque - best))
        saturated.append(np.abs(torque) > 1.95)
        optimal_saturated.append(np.abs(best) > 1.95)
        state, _ = pb.step_numpy(state, torque)
    difference = np.array(difference)
    return {"mean_abs_torque_difference_per_20_steps": [round(float(difference[a:a + 20].mean()), 3)
                                                        for a in range(0, pb.EPISODE_STEPS, 20)],
            "saturated_fraction_policy": round(float(np.mean(saturated)), 4),
            "saturated_fraction_optimum": round(float(np.mean(optimal_saturated)), 4)}


def greedy_torque(values, state, t):
    """The optimal controller's torque at step t (pendulum_bptt.optimal_controller, without its clock)."""
    successors, cost = pb.step_numpy(np.repeat(state, len(pb.GREEDY_TORQUES), axis=0),
                                     np.tile(pb.GREEDY_TORQUES, len(state)))
    index, weight = pb.grid_neighbours(successors, *GRID)
    q = (weight * values[t + 1][index]).sum(axis=0) - cost
    return pb.GREEDY_TORQUES[q.reshape(len(state), -1).argmax(axis=1)]


def recorded_episodes(policy, seeds):
    """Gymnasium episodes from `seeds` in lockstep, recording what the policy saw and did at every step:
    (returns (B,), θ wrapped (B, 201), θ̇ before each step (B, 200), torques (B, 200))."""
    observations, torques = [], []

    def recording(obs):
        observations.append(np.array(obs))
        torques.append(np.asarray(policy(obs), dtype=np.float64).reshape(-1))
        return torques[-1]
    returns, angles = pb.run_gymnasium(recording, seeds=seeds)
    return returns, angles, np.array([o[:, 2] for o in observations]).T, np.array(torques).T


def swing_features(angles, speeds, torques, push=1.0, excursion=0.5, upright=0.3):
    """Per episode, what its swing-up looks like from the start on:
    first_push_step, first_push_sign: the first step whose torque reaches |u| >= `push`, and its sign;
    first_side: sign of sin θ at the first step the pendulum is `excursion` rad or more from hanging straight
        down (which way it swings first; θ measured counter-clockwise from upright);
    first_upright: the first step with |θ| < `upright`; upright_for_good: the first after which it stays;
    swings_before_upright: how often θ̇ changed sign before first_upright (each change is one turn of a pump);
    first_turn_step, energy_at_first_turn: where the first swing turns back (first_turn), and the energy there;
    first_reversal_step: the first step after the first push whose torque has the other sign;
    first_swing_push_end_step: the first step, from the first excursion on, whose torque opposes the swing's speed
        there, and mean_abs_torque_4_steps_before_push_end (whether the push eases off before it ends);
    peak_energy_steps_0_49: the highest energy in the first 50 steps (the first window of phase 2);
    weak_steps_0_4: steps 0-4 with |u| < `push`; torque_signs: the sign of the torque at steps 0-9."""
    n = len(angles)
    strong = np.abs(torques) >= push
    push_step = np.where(strong.any(axis=1), np.argmax(strong, axis=1), -1)
    push_sign = np.where(push_step >= 0, np.sign(torques[np.arange(n), np.maximum(push_step, 0)]), 0)
    away = np.pi - np.abs(angles) >= excursion
    side_step = np.argmax(away, axis=1)
    side = np.where(away.any(axis=1), np.sign(np.sin(angles[np.arange(n), side_step])), 0)
    near_top = np.abs(angles) < upright
    first_up = np.where(near_top.any(axis=1), np.argmax(near_top, axis=1), angles.shape[1])
    turns = np.array([int(np.sum(np.diff(np.sign(speeds[i, :first_up[i]])) != 0)) for i in range(n)])
    against = (np.sign(torques) == -push_sign[:, None]) & (np.arange(torques.shape[1]) > push_step[:, None])
    reversal = np.where(against.any(axis=1), np.argmax(against, axis=1), -1)
    # the pendulum's energy E = θ̇²/2 + 15 cos θ (15 upright at rest, −15 hanging at rest); dE/dt = 3 u θ̇, so
    # only the torque changes it, and a swing that peaks below E = 15 cannot reach the top
    energy = speeds ** 2 / 2 + pb.GRAVITY_TERM * np.cos(angles[:, :-1])
    turn = first_turn(angles, speeds)
    # the end of the first swing's push: the first step, from the excursion on, whose torque opposes the speed
    # the swing had then (a pump holds ±2 with the motion until the swing turns)
    opposes = (np.sign(torques) == -np.sign(speeds[np.arange(n), side_step])[:, None]) & \
        (np.arange(torques.shape[1]) >= side_step[:, None])
    push_end = np.argmax(opposes, axis=1)
    before_end = [np.abs(torques[i, max(push_end[i] - 4, 0):push_end[i]]).mean() if push_end[i] else 0.0 for i in range(n)]
    return {"first_swing_push_end_step": push_end, "mean_abs_torque_4_steps_before_push_end": np.array(before_end),
            "first_push_step": push_step, "first_push_sign": push_sign, "first_side": side,
            "first_turn_step": turn, "energy_at_first_turn": energy[np.arange(n), turn],
            "first_reversal_step": reversal, "peak_energy_steps_0_49": energy[:, :50].max(axis=1),
            "weak_steps_0_4": np.sum(np.abs(torques[:, :5]) < push, axis=1),
            "first_side_step": np.where(away.any(axis=1), side_step, -1), "first_upright": first_up,
            "upright_for_good": upright_for_good(angles), "swings_before_upright": turns,
            "torque_signs": np.sign(torques[:, :10]).astype(int)}


def first_turn(angles, speeds, excursion=0.5):
    """The step at which the first swing turns back: the first step, after the pendulum is `excursion` rad from
    hanging down, whose speed has the other sign."""
    turns = []
    for theta, speed in zip(angles, speeds):
        away = np.flatnonzero(np.pi - np.abs(theta[:-1]) >= excursion)[0]
        turns.append(away + np.argmax(np.sign(speed[away:]) != np.sign(speed[away])))
    return np.array(turns)


def costs_with_prefix(policy, starts, prefix, prefix_steps):
    """Per-step costs (B, 200) on the twin when each episode plays `prefix` (B, 200) torques for its first
    `prefix_steps` (B,) steps and the policy from then on (float32 observations, as Gymnasium gives them)."""
    state, costs = starts.copy(), np.zeros((len(starts), pb.EPISODE_STEPS))
    for t in range(pb.EPISODE_STEPS):
        obs = np.stack([np.cos(state[:, 0]), np.sin(state[:, 0]), state[:, 1]], axis=1).astype(np.float32)
        torque = np.where(t < prefix_steps, prefix[:, t], policy(obs.astype(np.float64)))
        state, costs[:, t] = pb.step_numpy(state, torque)
    return costs


def first_swing_swap(policy, starts, optimum_played, gap, cut=50):
    """What the optimum's first swing is worth to the policy, and how much of it a first window of `cut` steps
    sees: the optimum's torques up to its first turn (and one step past it), then the policy, against the
    policy throughout, on the twin, from the same starts."""
    _, angles, speeds, torques = optimum_played
    prefix_steps = first_turn(angles, speeds) + 1
    own = costs_with_prefix(policy, starts, torques, np.zeros(len(starts), dtype=int))
    swapped = costs_with_prefix(policy, starts, torques, prefix_steps)
    big = gap > 10
    report = {"prefix_steps_mean": round(float(prefix_steps[big].mean()), 2)}
    for name, steps in (("first_window", slice(0, cut)), ("after_the_cut", slice(cut, None)),
                        ("whole_episode", slice(None))):
        saved = own[:, steps].sum(axis=1) - swapped[:, steps].sum(axis=1)
        report[name] = {"cost_saved_mean": round(float(saved[big].mean()), 2),
                        "starts_where_it_saves": int(np.sum(saved[big] > 0)), "starts": int(big.sum())}
    return report


def optimum_gap(played):
    return played["optimum"][0] - played["policy"][0]


def near_bottom(name="default", seed=0, band=(3.0, 3.2)):
    """The near-bottom starts (|θ| in `band`) of the development set: the policy's swing-up against the optimum's,
    start by start (first push, first swing's side, first upright, turns of the pump, torque signs in steps 0-9)."""
    values = pb.value_iteration(*GRID)
    starts = ad.runs.reset_states("Pendulum-v1", DEVELOPMENT_SEEDS)
    inside = (np.abs(starts[:, 0]) >= band[0]) & (np.abs(starts[:, 0]) < band[1])
    seeds = DEVELOPMENT_SEEDS[inside]
    net, kind = load_arm_policy(name, seed), "odd"
    with swapped(ARMS[name]):
        played = {"policy": recorded_episodes(lambda obs: pb.act(net, obs, kind), seeds),
                  "optimum": recorded_episodes(pb.optimal_controller(values, *GRID), seeds)}
        swap = first_swing_swap(lambda obs: pb.act(net, obs, kind), starts[inside], played["optimum"], optimum_gap(played))
    features = {who: swing_features(*p[1:]) for who, p in played.items()}
    gap = optimum_gap(played)
    f, o = features["policy"], features["optimum"]
    same_side = f["first_side"] == o["first_side"]
    rows = [{"reset_seed": int(s), "theta": round(float(starts[s, 0]), 4), "speed": round(float(starts[s, 1]), 4),
             "gap": round(float(gap[i]), 2),
             **{f"{who}_{key}": (features[who][key][i].tolist() if key == "torque_signs" else
                                 round(float(features[who][key][i]), 2) if key.startswith(("peak", "energy", "mean")) else
                                 int(features[who][key][i])) for who in features for key in features[who]}}
            for i, s in enumerate(seeds)]
    big = gap > 10

    def mean(values, where=slice(None)):
        values = np.asarray(values, dtype=float)[where]
        return round(float(values.mean()), 2) if values.size else None

    def compare(where):
        def both(key, feature=None):      # the policy's mean and the optimum's, side by side
            feature = feature or key
            return {f"{key}_policy": mean(f[feature], where), f"{key}_optimum": mean(o[feature], where)}

        def earlier(feature):             # on how many starts the policy's event comes before the optimum's
            return int(np.sum((f[feature] < o[feature])[where]))
        return {"starts": int(np.sum(np.ones(len(gap), bool)[where])), "mean_gap": mean(gap, where),
                "first_side_same_as_optimum": int(np.sum(same_side[where])),
                **both("first_push_step"), **both("first_side_step"), **both("first_upright"),
                **both("upright_for_good"), **both("turns_before_upright", "swings_before_upright"),
                **both("first_reversal_step"), "first_reversal_earlier_than_optimum": earlier("first_reversal_step"),
                **both("first_swing_push_end_step"),
                "first_swing_push_ends_earlier_than_optimum": earlier("first_swing_push_end_step"),
                **both("mean_abs_torque_4_steps_before_push_end"),
                **both("first_turn_step"), "first_turn_earlier_than_optimum": earlier("first_turn_step"),
                **both("energy_at_first_turn"), **both("peak_energy_steps_0_49"),
                "peak_energy_steps_0_49_below_14_policy": int(np.sum((f["peak_energy_steps_0_49"] < 14)[where])),
                "peak_energy_steps_0_49_below_14_optimum": int(np.sum((o["peak_energy_steps_0_49"] < 14)[where])),
                **both("weak_torque_steps_0_4", "weak_steps_0_4"),
                "torque_sign_agreement_steps_0_9": mean(f["torque_signs"] == o["torque_signs"], where),
                "mean_abs_torque_steps_0_9_policy": mean(np.abs(played["policy"][3][:, :10]).mean(axis=1), where),
                "mean_abs_torque_steps_0_9_optimum": mean(np.abs(played["optimum"][3][:, :10]).mean(axis=1), where)}
    report = {"policy": f"{name}, seed {seed}", "band_abs_theta": list(band),
              "all": compare(slice(None)), "gap_more_than_10": compare(big), "gap_at_most_10": compare(~big),
              "gap_more_than_10_first_side_differs": compare(big & ~same_side),
              "gap_more_than_10_first_side_same": compare(big & same_side),
              "optimum_first_swing_then_policy_gap_more_than_10": swap,
              "per_start": rows}
    print(json.dumps({k: v for k, v in report.items() if k != "per_start"}, indent=1))
    ad.runs.write_json(os.path.join(OUT, f"near_bottom_{name.replace(' ', '_')}_seed_{seed}.json"), report)
    return report


def script_sha1():
    import hashlib
    with open(os.path.join(ROOT, "pendulum_bptt.py"), "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def earlier_arm(earlier, name):
    """An arm kept from the results file already there, with the commit of the summary that found it (an arm the
    earlier file itself kept was found by the summary its earlier_summary_provenance names)."""
    arm = earlier["arms"][name]
    if "summarised_at_commit" not in arm:
        origin = (earlier.get("earlier_summary_provenance") if name in earlier.get("arms_kept_from_an_earlier_summary", [])
                  else earlier.get("provenance")) or {}
        arm = dict(arm, summarised_at_commit=origin.get("commit"))
    return arm


def summarise():
    """Every arm kept in runs/pendulum_bptt_study/; an arm (or the diagnosis) found only in the results file
    already there, summarised by an earlier run in another folder, is kept from it and named as such."""
    optimum = optimum_returns()
    earlier = {}
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            earlier = json.load(f)
    provenance = ad.runs.provenance()
    found = {name: dict(s, summarised_at_commit=provenance["commit"])
             for name in ARMS if (s := arm_summary(name, optimum))}
    kept = [name for name in earlier.get("arms", {}) if name not in found]
    arms = {name: found.get(name) or earlier_arm(earlier, name) for name in ARMS if name in found or name in kept}
    results = {"development_starts": "Gymnasium reset seeds 0-999", "training_seeds": list(TRAINING_SEEDS),
               "optimum": {"grid": list(GRID), "mean_return": float(optimum.mean())}, "arms": arms,
               "command": "python docs/pendulum_bptt_study.py --arm NAME (each arm), --diagnose, then --summarise",
               "pendulum_bptt_py_sha1": script_sha1(), "provenance": provenance}
    if kept:
        results["arms_kept_from_an_earlier_summary"] = kept
        results["earlier_summary_provenance"] = earlier.get("earlier_summary_provenance", earlier.get("provenance"))
    near = {}
    for name in ARMS:
        for seed in TRAINING_SEEDS:
            path = os.path.join(OUT, f"near_bottom_{name.replace(' ', '_')}_seed_{seed}.json")
            if os.path.exists(path):
                with open(path) as f:
                    near[f"{name}, seed {seed}"] = {k: v for k, v in json.load(f).items() if k != "per_start"}
    near = near or earlier.get("near_bottom_starts", {})
    if near:
        results["near_bottom_starts"] = near
    # the measurements kept in runs/ (else the results file's earlier copy, when they were made in another folder)
    for key, file_name in (("adjoint_norms", "adjoint_norms.json"), ("diagnosis_default_seed_0", "diagnosis.json")):
        if os.path.exists(os.path.join(OUT, file_name)):
            with open(os.path.join(OUT, file_name)) as f:
                results[key] = json.load(f)
        elif key in earlier:
            results[key] = earlier[key]
    ad.runs.write_json(RESULTS, results)
    for name, s in arms.items():
        g = s["gap_seed_averaged"]
        gain = s.get("return_gain_over_default")
        extra = (f", return gain over {s.get('paired_with', 'the default')} {gain['mean']:+.2f} ± {gain['se']:.2f} "
                 f"(paired)") if gain else ""
        print(f"{name}: gap per seed {s['gap_per_seed']}, seed-averaged {g['mean']:.2f} ± {g['se']:.2f}{extra}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arm", choices=list(ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", choices=TRAINING_SEEDS, default=TRAINING_SEEDS,
                        help="train only these seeds of the arm (a long arm in parts)")
    parser.add_argument("--diagnose", action="store_true")
    parser.add_argument("--near-bottom", metavar="ARM", choices=list(ARMS), default=None,
                        help="the near-bottom starts' swing-ups: this arm's policy (--seeds' first) against the optimum")
    parser.add_argument("--adjoint-norms", action="store_true",
                        help="how large the state's gradient gets in 50- and 100-step windows (the default re-run's policy)")
    parser.add_argument("--summarise", action="store_true")
    args = parser.parse_args()
    if args.arm:
        run_arm(args.arm, args.seeds)
    if args.diagnose:
        diagnose()
    if args.near_bottom:
        near_bottom(args.near_bottom, args.seeds[0])
    if args.adjoint_norms:
        adjoint_norms()
    if args.summarise:
        summarise()


if __name__ == "__main__":
    main()
