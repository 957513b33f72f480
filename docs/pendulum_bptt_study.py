"""Where pendulum_bptt.py's gap to the optimum comes from, and what closing it would take: development starts only.

Every figure here is measured on the development starts, Gymnasium reset seeds 0-999 (DEVELOPMENT_SEEDS: the
starts the method was chosen on; disjoint from the evaluation set, 1,000,000+, and the fresh set, 10,000,000+),
each paired with the value-iteration controller's return on the same start (301 x 241 grid, the lesson run's).

    python docs/pendulum_bptt_study.py --arm default     # one arm: BPTT seeds 0-2 (about 2 CPU-min for the
                                                         # default's cost; "phase 2 eight times as long": 11)
    python docs/pendulum_bptt_study.py --diagnose        # where the default's gap sits (per start, per step)
    python docs/pendulum_bptt_study.py --summarise       # every finished arm -> docs/results/pendulum_bptt_study.json

Arms are kept in runs/pendulum_bptt_study/ as they finish (rerunning an arm reuses what is there).
"""

import argparse
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


def train_value_tail(seed, net, sim_steps, batch, window, lr, warmup=400_000, critic_lr=1e-3, critic_batch=256,
                     critic_steps=16, memory=16, max_grad_norm=100.0, label="value tail", tail=True,
                     first_window=None):
    """pendulum_bptt.train_bptt (same start stream, schedule and clipping) with the critic's tail on each
    window that ends before the episode does (after `warmup` steps, while the critic learns first).
    tail=False: no tail; first_window: the first window of each episode has this many steps ("staggered":
    a number drawn uniformly from 1 to `window` for each batch of episodes, so the cuts fall anywhere)."""
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
        if tail and t + steps < pb.EPISODE_STEPS and done >= warmup:
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
        if t >= pb.EPISODE_STEPS and not tail:
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
}


def development_returns(policy):
    return pb.run_gymnasium(policy, seeds=DEVELOPMENT_SEEDS)[0]


def optimum_returns():
    path = os.path.join(OUT, "optimum.npy")
    if not os.path.exists(path):
        values = pb.value_iteration(*GRID)
        os.makedirs(OUT, exist_ok=True)
        np.save(path, development_returns(pb.optimal_controller(values, *GRID)))
    return np.load(path)


def train_arm(arm, seed):
    """One seed of one arm: returns the trained net (an arm with "then" starts from the default's net)."""
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
        returns = development_returns(lambda obs: pb.act(net, obs))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pb.save_policy(path + ".npz", net, "odd", seed=seed)
        gap = ad.runs.paired_difference(optimum, returns)
        ad.runs.write_json(path + ".json", {"seed": seed, "returns": returns.tolist(), "gap_to_optimum": gap,
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
           "cpu_seconds_per_seed": [r["cpu_seconds"] for r in rows]}
    if name != "default":
        default = arm_summary("default", optimum)
        if default and default["seeds"] == out["seeds"]:
            base = np.array([r["returns"] for r in map(read_seed("default"), out["seeds"])]).mean(axis=0)
            out["return_gain_over_default"] = ad.runs.paired_difference(returns.mean(axis=0), base)
    return out


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


def script_sha1():
    import hashlib
    with open(os.path.join(ROOT, "pendulum_bptt.py"), "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def summarise():
    """Every arm kept in runs/pendulum_bptt_study/; an arm (or the diagnosis) found only in the results file
    already there, summarised by an earlier run in another folder, is kept from it and named as such."""
    optimum = optimum_returns()
    earlier = {}
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            earlier = json.load(f)
    found = {name: s for name in ARMS if (s := arm_summary(name, optimum))}
    kept = [name for name in earlier.get("arms", {}) if name not in found]
    arms = {name: found.get(name) or earlier["arms"][name] for name in ARMS if name in found or name in kept}
    results = {"development_starts": "Gymnasium reset seeds 0-999", "training_seeds": list(TRAINING_SEEDS),
               "optimum": {"grid": list(GRID), "mean_return": float(optimum.mean())}, "arms": arms,
               "command": "python docs/pendulum_bptt_study.py --arm NAME (each arm), --diagnose, then --summarise",
               "pendulum_bptt_py_sha1": script_sha1(), "provenance": ad.runs.provenance()}
    if kept:
        results["arms_kept_from_an_earlier_summary"] = kept
        results["earlier_summary_provenance"] = earlier.get("earlier_summary_provenance", earlier.get("provenance"))
    if os.path.exists(os.path.join(OUT, "diagnosis.json")):
        with open(os.path.join(OUT, "diagnosis.json")) as f:
            results["diagnosis_default_seed_0"] = json.load(f)
    elif "diagnosis_default_seed_0" in earlier:
        results["diagnosis_default_seed_0"] = earlier["diagnosis_default_seed_0"]
    ad.runs.write_json(RESULTS, results)
    for name, s in arms.items():
        g = s["gap_seed_averaged"]
        gain = s.get("return_gain_over_default")
        extra = f", return gain over the default {gain['mean']:+.2f} ± {gain['se']:.2f} (paired)" if gain else ""
        print(f"{name}: gap per seed {s['gap_per_seed']}, seed-averaged {g['mean']:.2f} ± {g['se']:.2f}{extra}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arm", choices=list(ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", choices=TRAINING_SEEDS, default=TRAINING_SEEDS,
                        help="train only these seeds of the arm (a long arm in parts)")
    parser.add_argument("--diagnose", action="store_true")
    parser.add_argument("--summarise", action="store_true")
    args = parser.parse_args()
    if args.arm:
        run_arm(args.arm, args.seeds)
    if args.diagnose:
        diagnose()
    if args.summarise:
        summarise()


if __name__ == "__main__":
    main()
