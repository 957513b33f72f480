"""Pendulum-v1 swing-up learned by backpropagation through time through a differentiable twin, vs DDPG.

The idea (Innes, Joy & Karmali, "Differentiable programming vs RL", FluxML 2019): when the environment is a
differentiable program, the pendulum's state [θ, θ̇] is the hidden state of a recurrent net,

    state_{t+1} = step(state_t, policy(obs(state_t))),     loss = Σ_t cost(state_t, u_t),

and the summed cost of an episode is differentiated with respect to the policy's weights by backpropagation
through time (BPTT), exactly as for an RNN. A late cost reaches the torque that caused it through the physics:
no value function, no exploration noise.

What is here: a twin of Gymnasium's Pendulum-v1 (bitwise equal to its step; fused, with hand-written VJPs), a
mirror-symmetric policy u = 2 tanh(f(o) − f(mirror o)), truncated BPTT in two phases (short windows learn the
swing-up, longer ones refine it), DDPG on the real environment as the RL baseline, and returns on
gymnasium.make("Pendulum-v1") from fixed starts, each paired with a near-optimal controller's (value iteration).

The claim tested: the original (Flux's pendulum) says BPTT beats the RL leaderboard "in a single episode of
training". Here: how far below the optimum BPTT and DDPG end, on starts no choice was made on, and whether one
episode suffices on Gymnasium's pendulum, whose torque is clipped to ±2.

Run:  python pendulum_bptt.py            # the lesson run: BPTT seed 0 (both phases), DDPG seed 0, the map
      python pendulum_bptt.py --full     # 5 + 5 seeds, phase 2 eight times as long, DDPG at BPTT's compute, the
                                         # optimum's grid converged, a finer map (runs/pendulum_bptt_full/; resumable)
      python pendulum_bptt.py --play runs/pendulum_bptt/params.npz   # a saved policy on both evaluation sets
      python pendulum_bptt.py --help     # every setting, with the value each mode uses
Outputs in runs/pendulum_bptt/: metrics.json, params.npz, learning_curve.png, generalisation.png, swing_up.gif;
pendulum_bptt.policy_from_file("runs/pendulum_bptt/params.npz") maps a Gymnasium observation to an action.

Results: see README.md#pendulum_bpttpy.
"""

import hashlib
import json
import os
import time

import autodiff as ad   # first: it makes BLAS single-threaded before NumPy loads (small matrices, 2 cores)
import numpy as np

# ----------------------------------------------------------------------------
# 1. Settings: the lesson run's values in one dict; --full: more seeds, a longer phase 2, finer grids
# ----------------------------------------------------------------------------
SETTINGS = {
    "seeds": 1, "sim_steps": 320_000, "batch": 8, "window": 25, "lr": 0.01,
    "long_sim_steps": 4_000_000, "long_batch": 64, "long_window": 50, "long_lr": 0.001,
    "hidden": 64, "policy": "odd", "ddpg_steps": 20_000, "ddpg_seeds": 1,
    "eval_episodes": 100, "fresh_episodes": 1000, "curve_episodes": 20, "grid": 25,
    "vi_angles": 301, "vi_speeds": 241, "vi_convergence": False, "original_seeds": 3,
}
FULL = {"seeds": 5, "long_sim_steps": 32_000_000, "ddpg_seeds": 5, "ddpg_steps": 0, "grid": 61, "vi_angles": 601,
        "vi_speeds": 481, "vi_convergence": True, "original_seeds": 10}
HELP = {
    "seeds": "BPTT training seeds: seed, seed+1, ...",
    "sim_steps": "phase 1: simulated steps of training per BPTT seed (200 = one episode)",
    "batch": "phase 1: episodes side by side", "window": "phase 1: BPTT window (steps)",
    "lr": "phase 1: Adam step size",
    "long_sim_steps": "phase 2: simulated steps with longer windows (0: skip phase 2)",
    "long_batch": "phase 2: episodes side by side", "long_window": "phase 2: BPTT window (steps)",
    "long_lr": "phase 2: Adam step size", "hidden": "hidden units per layer of the policy",
    "policy": "odd (mirror-symmetric) or plain MLP",
    "ddpg_steps": "Gymnasium steps for DDPG (0: as many as give DDPG the network passes of one BPTT seed)",
    "ddpg_seeds": "DDPG training seeds",
    "eval_episodes": "episodes of the evaluation set that was seen during development",
    "fresh_episodes": "episodes of the fresh evaluation set, which no choice was made on",
    "curve_episodes": "Gymnasium episodes per learning-curve point",
    "grid": "generalisation map resolution in θ (at least 3)",
    "vi_angles": "value iteration (the optimum): grid points in θ",
    "vi_speeds": "value iteration (the optimum): grid points in θ̇",
    "vi_convergence": "also run value iteration on coarser grids, to show the optimum has converged",
    "original_seeds": "seeds of the original's setting re-created (one 1,000-step episode each)",
}
# Each flag's type and range (TYPES, POLICY_KINDS): see Part 2
# Gymnasium reset seeds of each set of starts, disjoint; none is ever used in training.
EVAL_SEED_BASE = 1_000_000    # the evaluation set, reset seeds 1,000,000 + k: seen while the method was chosen
FRESH_SEED_BASE = 10_000_000  # the fresh set, reset seeds 10,000,000 + k: first played after every choice was made
CURVE_SEED_BASE = 2_000_000   # learning-curve checks: reset seeds 2,000,000 + k
DDPG_SEED_BASE = 3_000_000    # DDPG's training environment (BPTT never touches Gymnasium in training)

# ----------------------------------------------------------------------------
# 2. Environment: Gymnasium's Pendulum-v1, constant for constant, and its differentiable twin
# ----------------------------------------------------------------------------
G, M, L = 10.0, 1.0, 1.0          # gravity, mass, length
DT = 0.05                         # seconds per step
MAX_SPEED, MAX_TORQUE = 8.0, 2.0  # |θ̇| is clipped to 8 after each step; |u| to 2 before it
EPISODE_STEPS = 200               # the TimeLimit of Pendulum-v1
GRAVITY_TERM = 3 * G / (2 * L)    # 15.0, written as Gymnasium writes it (same rounding)
TORQUE_TERM = 3.0 / (M * L ** 2)  # 3.0


def angle_normalize(theta):
    """θ wrapped into [−π, π); θ = 0 is upright."""
    return ((theta + np.pi) % (2 * np.pi)) - np.pi


# ----------------------------------------------------------------------------
# The step as a differentiable function, written two ways (step_fused is the fast one). The same step in
# plain NumPy, without a graph, is the value iteration's: Part 2, step_numpy. A torque may come as (B,)
# or as the policy's (B, 1) column (Part 2, _torque_vector).
# ----------------------------------------------------------------------------
def step_ops(state, torque):
    """One step with the engine's elementary ops (a graph of ~20 nodes): state Tensor (B, 2) = [θ, θ̇],
    torque Tensor (B,) or (B, 1). Returns (next_state (B, 2), cost (B,)), the cost being that of the
    pre-step state and the clipped torque, as in Gymnasium."""
    theta, speed = state[:, 0], state[:, 1]
    u = ad.clip(_torque_vector(torque), -MAX_TORQUE, MAX_TORQUE)
    # angle_normalize shifts θ by a multiple of 2π: a constant, so its slope is 1
    wrapped = theta + ad.Tensor(angle_normalize(theta.data) - theta.data)
    cost = wrapped * wrapped + 0.1 * (speed * speed) + 0.001 * (u * u)
    new_speed = ad.clip(speed + (GRAVITY_TERM * ad.sin(theta) + TORQUE_TERM * u) * DT, -MAX_SPEED, MAX_SPEED)
    new_theta = theta + new_speed * DT
    return ad.stack([new_theta, new_speed], axis=1), cost


def step_fused(state, torque):
    """Same as step_ops, with two hand-differentiated primitives instead of ~20 small ops (Part 2,
    pendulum_dynamics and pendulum_cost): same values and gradients, tested equal in tests/test_pendulum_bptt.py.
    Forward (semi-implicit Euler), u = clip(τ, ±2):  θ̇' = clip(θ̇ + (15 sin θ + 3u) dt, ±8),  θ' = θ + θ̇' dt.
    Backward, given g = (gθ', gθ̇') for the next state and g_c for the cost:
        a   = (gθ̇' + gθ' dt) · [θ̇' not clipped]      the gradient reaching the unclipped θ̇'
        gθ  = gθ' + a · 15 cos θ · dt + 2 wrap(θ) g_c,     gθ̇ = a + 0.2 θ̇ g_c
        gτ  = (a · 3 dt + 0.002 u g_c) · [τ not clipped]"""
    return pendulum_dynamics(state, torque), pendulum_cost(state, torque)


@ad.primitive
def observation(state):
    """Gymnasium's observation [cos θ, sin θ, θ̇] of a (B, 2) state, one op.
    Backward: gθ = −g_cos sin θ + g_sin cos θ,  gθ̇ = g_θ̇."""
    theta = state[:, 0]
    obs = np.empty((state.shape[0], 3), dtype=state.dtype)
    cos, sin = np.cos(theta, out=obs[:, 0]), np.sin(theta, out=obs[:, 1])   # views the backward reuses
    obs[:, 2] = state[:, 1]

    def vjp(g):
        grad_state = np.empty_like(state)
        np.subtract(g[:, 1] * cos, g[:, 0] * sin, out=grad_state[:, 0])
        grad_state[:, 1] = g[:, 2]
        return (grad_state,)
    return obs, vjp


def reset_states(rng, n):
    """n start states from Pendulum-v1's reset distribution: θ ~ U(−π, π), θ̇ ~ U(−1, 1)."""
    return np.stack([rng.uniform(-np.pi, np.pi, n), rng.uniform(-1.0, 1.0, n)], axis=1)


# The original's pendulum (Gym.jl's Pendulum-v0: the torque unclipped): see Part 2, original_step


# ----------------------------------------------------------------------------
# 3. Model: an odd MLP on the observation, torque squashed into [−2, 2]
#
#   u(o) = 2 tanh( f(o) − f(mirror(o)) ),   mirror([cos θ, sin θ, θ̇]) = [cos θ, −sin θ, −θ̇]
#
# The pendulum is mirror-symmetric ((θ, θ̇, u) → (−θ, −θ̇, −u)), and so is this policy:
# u(mirror(o)) = −u(o) by construction. Without it, the first thing BPTT learns is "always push one
# way at full torque" (the pendulum hangs a little to one side, which lowers θ²), the tanh saturates,
# and the gradient dies there. The 2·tanh squash keeps the torque inside the clip, so the clip's zero
# gradient is never reached.
# ----------------------------------------------------------------------------
MIRROR = np.array([1.0, -1.0, -1.0])
TIE_BREAK = 0.01   # ε: an odd policy outputs 0 at rest hanging straight down (symmetric); ε picks a direction


@ad.primitive
def mirror_pair(obs):
    """(B, 3) observations → (2B, 3): the observations, then their mirror images."""
    batch = obs.shape[0]
    return np.concatenate([obs, obs * MIRROR]), lambda g: (g[:batch] + g[batch:] * MIRROR,)


@ad.primitive
def odd_torque(z):
    """(2B, 1) network outputs for [o; mirror(o)] → torque 2 tanh(z_o − z_mirror + ε), (B, 1)."""
    batch = z.shape[0] // 2
    torque = MAX_TORQUE * np.tanh(z[:batch] - z[batch:] + TIE_BREAK)

    def vjp(g):
        dz = g * (MAX_TORQUE - torque * torque / MAX_TORQUE)   # d/dx 2 tanh x = 2 (1 − tanh² x)
        return (np.concatenate([dz, -dz]),)
    return torque, vjp


def make_policy(rng, hidden=64):
    """The network f: 3 → hidden → hidden → 1, tanh hidden layers, linear output
    (the odd policy squashes f(o) − f(mirror(o)); the plain one f(o))."""
    return ad.nn.MLP((3, hidden, hidden, 1), rng, activation="tanh", out_activation=None)


def policy_torque(net, obs, kind="odd"):
    """Torque (B, 1) in [−2, 2] for observations obs (B, 3), a Tensor."""
    if kind == "odd":
        return odd_torque(net(mirror_pair(obs)))
    return MAX_TORQUE * ad.tanh(net(obs))


def act(net, obs, kind="odd"):
    """NumPy in, NumPy out, no graph: torques (B,) for observations (B, 3)."""
    with ad.no_grad():
        return policy_torque(net, ad.Tensor(np.asarray(obs, dtype=np.float64)), kind).data[:, 0]


# ----------------------------------------------------------------------------
# 4. Loss: one window of the simulated episode, differentiated end to end
# ----------------------------------------------------------------------------
def window_loss(net, state, window, kind="odd"):
    """Run the twin for `window` steps from `state` (B, 2), the policy in the loop, and return
    (loss, end state) with

        loss = 1/(B·window) Σ_b Σ_{t<window} cost(state_t^b, u_t^b),   u_t = policy(obs(state_t)).

    The graph is a recurrent net whose hidden state is the pendulum's state. Backward through it is
    backpropagation through time: each torque's gradient sums its effect on every later cost in the
    window, through the physics."""
    costs = []
    for _ in range(window):
        torque = policy_torque(net, observation(state), kind)
        state, cost = step_fused(state, torque)
        costs.append(cost)
    loss = ad.stack(costs).sum() / (state.shape[0] * window)
    return loss, state


# ----------------------------------------------------------------------------
# 5. Update: one truncated-BPTT step (forward through a window, backward, clip, Adam)
# ----------------------------------------------------------------------------
def bptt_update(net, optimizer, state, steps, kind, max_grad_norm):
    """One update from `state` (B, 2): returns (loss, end state as NumPy, gradient norm before clipping).
    The end state carries into the next window, but as data: the gradient is cut there."""
    loss, end = window_loss(net, ad.Tensor(state), steps, kind)
    optimizer.zero_grad()
    loss.backward()
    grad_norm = ad.optim.clip_grad_norm(optimizer.params, max_grad_norm)
    optimizer.step()
    return loss, end.data, grad_norm


def adam_schedule(lr, done, total):
    """Constant step size, then a linear decay to 5% over the last quarter of the steps."""
    return lr * min(1.0, 0.05 + 0.95 * (1.0 - done / total) / 0.25)


# ----------------------------------------------------------------------------
# 6. Training: truncated BPTT through the twin, in two phases
# ----------------------------------------------------------------------------
def train_bptt(seed, sim_steps, batch, window, lr, hidden=64, kind="odd", episode_length=EPISODE_STEPS,
               max_grad_norm=100.0, net=None, steps_before=0, curve_at=(), curve_policy_eval=None, label="bptt"):
    """Train on `batch` simulated episodes side by side, one update after every `window` steps, until
    `sim_steps` simulated steps (every step of every trajectory counts: an update costs batch × window).
    Within an episode (`episode_length` steps) the state carries from window to window, so the policy also
    learns from the later, upright part of the swing-up. net, steps_before: continue a policy (phase 2);
    curve_at, curve_policy_eval: the learning curve's checkpoints (Part 2, LearningCurve).
    Returns (net, curve [(total steps, mean return)], info)."""
    rng = np.random.default_rng(seed)
    net = net if net is not None else make_policy(rng, hidden)
    optimizer = ad.optim.Adam(net.parameters(), lr=lr)
    grad_norms, done, last_good = [], 0, None
    curve = LearningCurve(curve_at, curve_policy_eval, offset=steps_before)   # Part 2: the curve's checkpoints
    state, t_episode = reset_states(rng, batch), 0
    progress = ad.runs.Progress(sim_steps, label, every=5.0)
    with np.errstate(over="ignore", invalid="ignore"):     # a divergence: check_update (Part 2)
        while done < sim_steps:
            curve.record_if_due(done, lambda obs: act(net, obs, kind))
            optimizer.lr = adam_schedule(lr, done, sim_steps)
            steps = min(window, episode_length - t_episode)
            before = [p.data.copy() for p in net.parameters()]
            loss, state, grad_norm = bptt_update(net, optimizer, state, steps, kind, max_grad_norm)
            last_good = check_update(net, before, last_good, loss, f"{label}, update {len(grad_norms) + 1} "
                                                                   f"(step {done:,})")
            grad_norms.append(grad_norm)
            done, t_episode = done + batch * steps, t_episode + steps
            if t_episode >= episode_length:
                state, t_episode = reset_states(rng, batch), 0
            progress.update(min(done, sim_steps), last_window_loss=loss.item())
    curve.finish(done, lambda obs: act(net, obs, kind))
    return net, curve.points, training_info(done, grad_norms, max_grad_norm)   # the counts: Part 2


def train_two_phases(seed, phase_1, phase_2, hidden=64, kind="odd", curve_at=(), curve_policy_eval=None,
                     label="bptt"):
    """Phase 1 learns the swing-up with short windows; phase 2 continues the same policy with longer
    windows and a larger batch, so that each gradient sees further ahead. Why two: 25-step windows learn
    the swing-up every time but are myopic; 100-200-step windows from the start rarely learn it, and once a
    policy swings up they improve it for a while and then collapse (one swing falling just short of the
    top is a cliff in the return that the gradient cannot see; Suh et al. 2022 analyse the effect).
    phase_1, phase_2: dicts of train_bptt's sim_steps, batch, window, lr (phase_2["sim_steps"] = 0 skips it).
    Returns (net, curve over both phases, info with both phases' counts)."""
    net, curve_1, info_1 = train_bptt(seed, hidden=hidden, kind=kind, curve_at=curve_at,
                                      curve_policy_eval=curve_policy_eval, label=f"{label} phase 1", **phase_1)
    curve_2, info_2 = [], {"sim_steps": 0, "updates": 0}
    if phase_2["sim_steps"]:
        # phase 2 draws its start states from its own stream, (seed, 2), independent of phase 1's
        net, curve_2, info_2 = train_bptt((seed, 2), kind=kind, net=net, steps_before=info_1["sim_steps"],
                                          curve_at=curve_at, curve_policy_eval=curve_policy_eval,
                                          label=f"{label} phase 2", **phase_2)
    return net, curve_1 + curve_2, both_phases_info(info_1, info_2)


# ----------------------------------------------------------------------------
# 7. Baseline: DDPG (Lillicrap et al., 2016) on the real environment
#
#   critic  Q(o, a) ← r + γ Q'(o', μ'(o'))          (squared TD error, a replay buffer)
#   actor   μ(o)    ← ascend Q(o, μ(o))              (the critic's gradient in a)
#   targets θ' ← (1 − τ) θ' + τ θ;  exploration μ(o) + N(0, σ²)
#
# It learns from Gymnasium transitions only: no model, no gradient through the physics. Settings
# follow RL Zoo's DDPG/TD3 for Pendulum (γ = 0.98, σ = 0.1 of the action range is 0.2 here, one
# gradient step per environment step), with smaller networks (64, 64) to fit the one-minute budget.
# Compute matching (--full gives DDPG the network passes of one BPTT seed): Part 2, ddpg_steps_matching.
# ----------------------------------------------------------------------------
def q_value(params, obs, action):
    """The critic Q(o, a) with parameters `params`; the action is scaled to [−1, 1] as its input."""
    return ad.mlp(ad.concatenate([obs, action], axis=1), *params, activation="relu")


def ddpg_update(actor, critic, optimizers, targets, batch, gamma, tau):
    """One DDPG step on a replay batch (o, a, r, o'): the critic's TD step, the actor's step up the
    critic, then the target networks' soft update. Returns the critic's loss."""
    (actor_opt, critic_opt), (actor_target, critic_target), (o, a, r, o2) = optimizers, targets, batch
    with ad.no_grad():
        a2 = ad.mlp(o2, *actor_target, activation="relu", out_activation="tanh")
        target = r + gamma * q_value(critic_target, o2, a2)
    critic_loss = ad.mean((q_value(critic.parameters(), o, a) - target) ** 2)
    critic_opt.zero_grad()
    critic_loss.backward()
    critic_opt.step()
    actor_loss = -ad.mean(q_value(critic.parameters(), o, actor(o)))
    actor_opt.zero_grad()
    actor_loss.backward()
    actor_opt.step()                                 # the critic's grads from this pass are never applied
    for target_params, live in ((actor_target, actor.parameters()), (critic_target, critic.parameters())):
        for target_p, p in zip(target_params, live):   # in place: the lists hold the arrays
            target_p *= 1.0 - tau
            target_p += tau * p.data
    return critic_loss


def train_ddpg(seed, env_steps, hidden=64, batch=128, gamma=0.98, tau=0.005, lr=1e-3, noise=0.2, warmup=1000,
               curve_at=(), curve_policy_eval=None, label="ddpg"):
    """DDPG for `env_steps` Gymnasium steps (uniform random actions for the first `warmup`).
    Returns (policy, actor, curve [(steps, mean return)], info)."""
    import gymnasium as gym
    rng = np.random.default_rng(seed)
    actor = ad.nn.MLP((3, hidden, hidden, 1), rng, activation="relu", out_activation="tanh")
    critic = ad.nn.MLP((4, hidden, hidden, 1), rng, activation="relu")
    targets = ([p.data.copy() for p in actor.parameters()], [p.data.copy() for p in critic.parameters()])
    optimizers = (ad.optim.Adam(actor.parameters(), lr=lr), ad.optim.Adam(critic.parameters(), lr=lr))

    def policy(obs):
        with ad.no_grad():
            return MAX_TORQUE * actor(ad.Tensor(np.asarray(obs, dtype=np.float64))).data[:, 0]

    buffer = {k: np.zeros((env_steps, n)) for k, n in (("obs", 3), ("action", 1), ("reward", 1), ("next_obs", 3))}
    env = gym.make("Pendulum-v1")
    obs = env.reset(seed=DDPG_SEED_BASE + seed)[0]
    curve, episode_return, episode_returns = LearningCurve(curve_at, curve_policy_eval), 0.0, []
    progress = ad.runs.Progress(env_steps, label, every=5.0)
    for t in range(env_steps):
        curve.record_if_due(t, policy)
        if t < warmup:
            action = rng.uniform(-MAX_TORQUE, MAX_TORQUE)
        else:
            action = float(np.clip(policy(obs[None])[0] + noise * rng.normal(), -MAX_TORQUE, MAX_TORQUE))
        next_obs, reward, terminated, truncated, _ = env.step(np.array([action], dtype=np.float32))
        # Pendulum never terminates; the 200-step truncation is not a real end, so always bootstrap
        for key, value in (("obs", obs), ("action", action / MAX_TORQUE), ("reward", reward), ("next_obs", next_obs)):
            buffer[key][t] = value
        episode_return, obs = episode_return + reward, next_obs
        if terminated or truncated:
            episode_returns.append(episode_return)
            episode_return, obs = 0.0, env.reset()[0]
        if t + 1 < warmup:
            continue
        index = rng.integers(0, t + 1, batch)
        sample = tuple(ad.Tensor(buffer[k][index]) for k in ("obs", "action", "reward", "next_obs"))
        critic_loss = ad.runs.check_finite("DDPG critic loss", ddpg_update(actor, critic, optimizers, targets,
                                                                           sample, gamma, tau), f"step {t + 1}")
        progress.update(t + 1, critic_loss=critic_loss.item(), last_return=episode_returns[-1] if episode_returns else 0.0)
    curve.finish(env_steps, policy)
    env.close()
    return policy, actor, curve.points, {"env_steps": env_steps, "training_episode_returns": episode_returns}


# ----------------------------------------------------------------------------
# 8. Measurement: on gymnasium.make("Pendulum-v1"), from fixed reset seeds, deterministic policies
# ----------------------------------------------------------------------------
def evaluate(policy, episodes=100, seed_base=EVAL_SEED_BASE):
    """Returns of `episodes` Gymnasium episodes from reset seeds seed_base + k, played in lockstep (Part 2,
    run_gymnasium), with their mean, spread, worst and best."""
    returns, _ = run_gymnasium(policy, seeds=seed_base + np.arange(episodes))
    return {"mean": float(returns.mean()), "std": float(returns.std()), "worst": float(returns.min()),
            "best": float(returns.max()), "episodes": episodes, "returns": returns}


# The reference: a near-optimal controller from finite-horizon value iteration on an (angle, speed) grid
#
#   V_T = 0,   V_t(s) = max_u [ −cost(s, u) + V_{t+1}(step(s, u)) ],   t = T−1, ..., 0   (T = 200 steps)
#
# V between grid points is bilinear (periodic in θ; θ̇ spans the whole clipped range ±8). The controller
# then acts on the exact state, u_t = argmax_u [ −cost(s, u) + V_{t+1}(step(s, u)) ] over 41 torques, and
# is played on Gymnasium like any policy: its measured return is a lower bound on the optimum, and the
# grid is fine enough when refining it no longer moves that return (--vi-convergence).
# The grid, the backups and the controller: Part 2, value_iteration and optimal_controller.


def gap_to_optimum(optimum, result):
    """The paired gap on the same starts: mean and standard error of (optimum − policy) per episode."""
    return ad.runs.paired_difference(optimum["returns"], result["returns"])


# ----------------------------------------------------------------------------
# 9. main: train BPTT, then the baseline, then measure and report
# ----------------------------------------------------------------------------
def main(argv=None):
    started, cpu_started = time.perf_counter(), time.process_time()
    args = ad.runs.command_line(__doc__, "pendulum_bptt", SETTINGS, FULL, HELP, types=TYPES, argv=argv,
                                add_arguments=add_play_flag)
    if args.play:
        return play_policy_file(args, started)
    out = ad.runs.prepare_out(args.out)
    curve_eval = curve_evaluator(args.curve_episodes)
    # 6. BPTT through the twin, each seed measured on both evaluation sets
    bptt_runs = [resumable(out, f"bptt_seed_{args.seed + i}", args,
                           lambda: train_and_evaluate_bptt(args, args.seed + i, curve_eval, out)) for i in range(args.seeds)]
    save_policy(os.path.join(out, "params.npz"), bptt_runs[0]["net"], args.policy, seed=bptt_runs[0]["seed"])
    # 7. DDPG on Gymnasium: RL Zoo's 20,000 steps, or (0) the network passes of one BPTT seed
    ddpg_steps = args.ddpg_steps or ddpg_steps_matching(bptt_runs[0]["info"]["network_passes"])
    ddpg_runs = [resumable(out, f"ddpg_seed_{args.seed + i}", args,
                           lambda: train_and_evaluate_ddpg(args, args.seed + i, ddpg_steps, curve_eval))
                 for i in range(args.ddpg_seeds)]
    # 8. The references: the optimum on the same starts, doing nothing, the original's own setting
    optimum = measure_optimum(args)
    zero_torque = evaluate_sets(lambda: lambda obs: np.zeros(len(obs)), args)
    original = reproduce_original(args)
    generalisation = measure_generalisation(bptt_runs[0]["policy"], args.grid)
    # report: metrics.json, the figures, the printed table (Part 2)
    return report(out, args, (started, cpu_started), bptt_runs, ddpg_runs, optimum, original, zero_torque,
                  generalisation)


# ============================== Part 2: running the experiment ==============================

# ----------------------------------------------------------------------------
# The twin's fast path (section 2, step_fused): the step and its cost as two primitives with hand-written
# backward passes, the equations in step_fused's docstring
# ----------------------------------------------------------------------------
def _torque_vector(torque):
    """Accept the torque as (B,) or as the policy's (B, 1) column."""
    return torque.reshape((-1,)) if torque.ndim == 2 else torque


@ad.primitive
def pendulum_dynamics(state, torque):
    """next_state = f(state, torque) as one op.

    Forward (semi-implicit Euler):  u = clip(τ, ±2)
        θ̇' = clip(θ̇ + (15 sin θ + 3u) dt, ±8),   θ' = θ + θ̇' dt
    Backward, given g = (gθ', gθ̇'):
        a   = (gθ̇' + gθ' dt) · [θ̇' not clipped]      gradient reaching the unclipped θ̇'
        gθ  = gθ' + a · 15 cos θ · dt,   gθ̇ = a,   gτ = a · 3 dt · [τ not clipped]
    (Written with in-place NumPy calls: this op runs 200 times per episode,
    and at batch 64 the number of NumPy calls, not the arithmetic, is the cost.)"""
    theta, speed = state[:, 0], state[:, 1]
    u = _torque_vector(torque)
    u_clipped = np.minimum(np.maximum(u, -MAX_TORQUE), MAX_TORQUE)
    raw_speed = np.sin(theta)                    # the same operations in the same order as
    raw_speed *= GRAVITY_TERM                    # Gymnasium: thdot + (15 sin th + 3 u) dt
    raw_speed += TORQUE_TERM * u_clipped
    raw_speed *= DT
    raw_speed += speed
    next_state = np.empty_like(state)
    new_speed = next_state[:, 1]
    np.minimum(np.maximum(raw_speed, -MAX_SPEED), MAX_SPEED, out=new_speed)
    np.multiply(new_speed, DT, out=next_state[:, 0])
    next_state[:, 0] += theta

    def vjp(g):
        a = g[:, 0] * DT
        a += g[:, 1]
        a *= new_speed == raw_speed              # zero where the speed clip was active
        grad_state = np.empty_like(g)
        grad_theta = np.cos(theta)
        grad_theta *= GRAVITY_TERM * DT
        grad_theta *= a
        np.add(g[:, 0], grad_theta, out=grad_state[:, 0])
        grad_state[:, 1] = a
        grad_torque = a * (TORQUE_TERM * DT)
        grad_torque *= u_clipped == u            # zero where the torque clip was active
        return grad_state, grad_torque.reshape(np.shape(torque))
    return next_state, vjp


@ad.primitive
def pendulum_cost(state, torque):
    """cost = angle_normalize(θ)² + 0.1 θ̇² + 0.001 clip(τ, ±2)² as one op.
    Backward: gθ = 2 wrap(θ) g,  gθ̇ = 0.2 θ̇ g,  gτ = 0.002 u g · [τ not clipped]."""
    theta, speed = state[:, 0], state[:, 1]
    u = _torque_vector(torque)
    u_clipped = np.minimum(np.maximum(u, -MAX_TORQUE), MAX_TORQUE)
    wrapped = angle_normalize(theta)
    cost = wrapped * wrapped
    cost += 0.1 * (speed * speed)
    cost += 0.001 * (u_clipped * u_clipped)

    def vjp(g):
        grad_state = np.empty_like(state)
        np.multiply(g, 2.0 * wrapped, out=grad_state[:, 0])
        np.multiply(g, 0.2 * speed, out=grad_state[:, 1])
        grad_torque = g * (0.002 * u_clipped)
        grad_torque *= u_clipped == u
        return grad_state, grad_torque.reshape(np.shape(torque))
    return cost, vjp


def check_update(net, before, last_good, loss, when):
    """A diverged update stops training. `before` holds the parameters this update started from,
    `last_good` those of the latest update whose loss was finite. A non-finite loss puts back `last_good`,
    non-finite parameters after the step put back `before`, and Diverged carries the net to be saved.
    Returns the new `last_good`."""
    loss_finite = np.isfinite(loss.item())
    if loss_finite and all(np.all(np.isfinite(p.data)) for p in net.parameters()):
        return before
    for p, old in zip(net.parameters(), before if loss_finite else (last_good or before)):
        p.data = old
    error = ad.runs.Diverged(f"BPTT {'parameters' if loss_finite else 'loss'} not finite at {when} "
                             f"(training diverged; try a smaller learning rate)")
    error.net = net
    raise error


def training_info(done, grad_norms, max_grad_norm):
    """train_bptt's counts: steps, updates, and how often the gradient norm was clipped."""
    return {"sim_steps": done, "updates": len(grad_norms), "episodes_simulated": done / EPISODE_STEPS,
            "max_grad_norm_seen": float(np.max(grad_norms, initial=0.0)),
            "clipped_updates": int(np.sum(np.array(grad_norms) > max_grad_norm))}


def both_phases_info(info_1, info_2):
    """train_two_phases' counts: both phases' totals, and each phase's own."""
    total = info_1["sim_steps"] + info_2["sim_steps"]
    return {"sim_steps": total, "updates": info_1["updates"] + info_2["updates"],
            "episodes_simulated": total / EPISODE_STEPS, "phase_1": info_1, "phase_2": info_2}


class LearningCurve:
    """The learning curve's bookkeeping: record_if_due(done, policy) evaluates the policy the first time the
    running total `done` reaches each checkpoint of `at` (totals counted from `offset`), finish(done, policy)
    once at the end. points: [(total steps, mean return)]. Without an evaluate function it records nothing."""

    def __init__(self, at, evaluate, offset=0):
        self.points, self.evaluate, self.offset = [], evaluate, offset
        self.pending = sorted(c - offset for c in at if c >= offset)

    def record_if_due(self, done, policy):
        if self.pending and done >= self.pending[0]:
            self.points.append((self.offset + done, self.evaluate(policy)))
            self.pending = [c for c in self.pending if c > done]

    def finish(self, done, policy):
        if self.evaluate is not None:
            self.points.append((self.offset + done, self.evaluate(policy)))


def curve_evaluator(episodes):
    """Mean return on fixed Gymnasium episodes whose reset seeds are disjoint from both evaluation sets."""
    def curve_eval(policy):
        return float(run_gymnasium(policy, seeds=CURVE_SEED_BASE + np.arange(episodes))[0].mean())
    return curve_eval


def log_checkpoints(total):
    """Learning-curve checkpoints: 0, then 10 points spaced evenly on a log axis up to `total`."""
    return sorted({0} | {int(s) for s in np.geomspace(1000, total, 10)})


def summary(result):
    return {k: v for k, v in result.items() if k != "returns"}


def evaluate_sets(make_policy, args):
    """Returns on both evaluation sets: {"evaluation": the 100 seen in development, "fresh": the fresh set}.
    make_policy() gives a policy for one set of episodes (the optimal controller counts steps)."""
    return {"evaluation": evaluate(make_policy(), args.eval_episodes, EVAL_SEED_BASE),
            "fresh": evaluate(make_policy(), args.fresh_episodes, FRESH_SEED_BASE)}


# ----------------------------------------------------------------------------
# Playing Gymnasium episodes in lockstep (from reset seeds, or from chosen start states for the map)
# ----------------------------------------------------------------------------
def gymnasium_obs(state):
    """The float32 observation Gymnasium returns for a state [θ, θ̇]."""
    return np.array([np.cos(state[0]), np.sin(state[0]), state[1]], dtype=np.float32)


def run_gymnasium(policy, seeds=None, starts=None):
    """Play one Pendulum-v1 episode per reset seed (or per start state [θ, θ̇], set through
    env.unwrapped.state), all in lockstep; policy maps a (B, 3) batch of observations to (B,) torques.
    Returns (returns (B,), angles (B, 201): θ wrapped to [−π, π) along the way)."""
    count = len(seeds) if seeds is not None else len(starts)
    angles = np.empty((count, EPISODE_STEPS + 1))

    def set_start(env, i):
        if starts is not None:
            env.unwrapped.state = np.array(starts[i], dtype=np.float64)
        return gymnasium_obs(env.unwrapped.state)

    def watch(t, obs, running):
        angles[:, t] = np.arctan2(obs[:, 1], obs[:, 0])

    played = ad.runs.play_episodes("Pendulum-v1", lambda obs: np.asarray(policy(obs), dtype=np.float32).reshape(-1, 1),
                                   seeds if seeds is not None else np.zeros(count, dtype=int),
                                   set_start=set_start, watch=watch)
    final = played["last_obs"]
    angles[:, -1] = np.arctan2(final[:, 1], final[:, 0])
    return played["returns"], angles


# ----------------------------------------------------------------------------
# Compute matching: BPTT and DDPG measured in network passes
#
# Counted the same way for both: passes of one sample through a 64-64 MLP, a backward pass
# counting as two forward ones. BPTT, per simulated step: f on o and on mirror(o), forward and backward (6;
# a plain policy 3). DDPG, per replayed sample of a gradient step: target actor and target critic forward
# (2), critic forward and backward for the TD loss (3), actor and critic forward and backward for the
# actor's loss (6); plus one actor forward to act at each step after the warm-up.
# ----------------------------------------------------------------------------
BPTT_PASSES_PER_STEP = {"odd": 6, "plain": 3}
DDPG_PASSES_PER_SAMPLE = 11


def ddpg_passes(env_steps, batch=128, warmup=1000):
    gradient_steps = max(0, env_steps - warmup + 1)
    return gradient_steps * batch * DDPG_PASSES_PER_SAMPLE + max(0, env_steps - warmup)


def ddpg_steps_matching(passes, batch=128, warmup=1000):
    """The fewest DDPG environment steps whose network passes reach `passes` (e.g. one BPTT seed's)."""
    per_step = batch * DDPG_PASSES_PER_SAMPLE + 1
    return warmup - 1 + -(-(passes + 1) // per_step)


def train_and_evaluate_bptt(args, seed, curve_eval, out):
    """Both phases for one seed, then both evaluation sets. A divergence saves the last finite parameters."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    phase_1 = dict(sim_steps=args.sim_steps, batch=args.batch, window=args.window, lr=args.lr)
    phase_2 = dict(sim_steps=args.long_sim_steps, batch=args.long_batch, window=args.long_window, lr=args.long_lr)
    try:
        net, curve, info = train_two_phases(seed, phase_1, phase_2, args.hidden, args.policy,
                                            curve_at=log_checkpoints(args.sim_steps + args.long_sim_steps),
                                            curve_policy_eval=curve_eval, label=f"bptt seed {seed}")
    except ad.runs.Diverged as error:
        path = os.path.join(out, "params_last_finite.npz")
        save_policy(path, error.net, args.policy, seed=seed)
        raise ad.runs.Diverged(f"{error}; the last finite parameters are in {path}") from None
    info.update(train_seconds=time.perf_counter() - t0, train_cpu_seconds=time.process_time() - cpu0,
                network_passes=info["sim_steps"] * BPTT_PASSES_PER_STEP[args.policy])
    policy = lambda obs: act(net, obs, args.policy)                                    # noqa: E731
    results = evaluate_sets(lambda: policy, args)
    print(f"bptt seed {seed}: {results['evaluation']['mean']:.1f} on the evaluation set, "
          f"{results['fresh']['mean']:.1f} on the fresh set ({info['sim_steps']:,} simulated steps, "
          f"{info['train_seconds']:.1f}s)")
    return dict(seed=seed, net=net, policy=policy, curve=curve, info=info, results=results)


def train_and_evaluate_ddpg(args, seed, env_steps, curve_eval):
    t0, cpu0 = time.perf_counter(), time.process_time()
    policy, _, curve, info = train_ddpg(seed, env_steps, curve_at=log_checkpoints(env_steps),
                                        curve_policy_eval=curve_eval, label=f"ddpg seed {seed}")
    info.update(train_seconds=time.perf_counter() - t0, train_cpu_seconds=time.process_time() - cpu0,
                network_passes=ddpg_passes(env_steps))
    results = evaluate_sets(lambda: policy, args)
    print(f"ddpg seed {seed}: {results['evaluation']['mean']:.1f} on the evaluation set, "
          f"{results['fresh']['mean']:.1f} on the fresh set ({env_steps:,} Gymnasium steps, "
          f"{info['train_seconds']:.1f}s)")
    return dict(seed=seed, curve=curve, info=info, results=results)


def resumable(out, name, args, compute):
    """compute() once per setting: its result (a run dict) is kept in out/parts/ as soon as it is done, so a
    long run that is stopped resumes where it was by running the same command again. A part is reused only
    if the settings and this file's text are the same (an edited script trains again)."""
    with open(os.path.abspath(__file__), "rb") as f:
        script = hashlib.sha1(f.read()).hexdigest()
    settings = {key: getattr(args, key) for key in ["seed", *SETTINGS]} | {"script_sha1": script}
    path = os.path.join(out, "parts", name)
    if os.path.exists(path + ".json"):
        with open(path + ".json") as f:
            stored = json.load(f)
        if stored["settings"] == settings:
            run = stored["run"]
            for result in run["results"].values():
                result["returns"] = np.array(result["returns"])
            if os.path.exists(path + ".npz"):
                net, kind = load_policy(path + ".npz")
                run.update(net=net, policy=lambda obs: act(net, obs, kind))
            print(f"{name}: resumed from {path}.json")
            return run
    run = compute()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if "net" in run:
        save_policy(path + ".npz", run["net"], args.policy, seed=run["seed"])
    ad.runs.write_json(path + ".json", {"settings": settings,
                                        "run": {k: v for k, v in run.items() if k not in ("net", "policy")}})
    return run


# ----------------------------------------------------------------------------
# The reference's machinery: value iteration on an (angle, speed) grid (the idea is in section 8)
# ----------------------------------------------------------------------------
def step_numpy(state, torque):
    """One step of the batch, plain NumPy: state (B, 2) = [θ, θ̇], torque (B,).
    Returns next_state (B, 2) and cost (B,), exactly as Gymnasium computes them."""
    theta, speed = state[:, 0], state[:, 1]
    u = np.minimum(np.maximum(torque, -MAX_TORQUE), MAX_TORQUE)
    cost = angle_normalize(theta) ** 2 + 0.1 * speed ** 2 + 0.001 * u ** 2
    new_speed = speed + (GRAVITY_TERM * np.sin(theta) + TORQUE_TERM * u) * DT
    new_speed = np.minimum(np.maximum(new_speed, -MAX_SPEED), MAX_SPEED)
    new_theta = theta + new_speed * DT
    return np.stack([new_theta, new_speed], axis=1), cost


VI_TORQUES = np.linspace(-MAX_TORQUE, MAX_TORQUE, 11)      # the backups' actions
GREEDY_TORQUES = np.linspace(-MAX_TORQUE, MAX_TORQUE, 41)  # the controller's actions


def grid_neighbours(states, n_theta, n_speed):
    """For states (N, 2): flat indices (4, N) of the surrounding grid points and their bilinear weights."""
    x = (angle_normalize(states[:, 0]) + np.pi) * (n_theta / (2 * np.pi))
    i0 = np.floor(x).astype(np.int64)
    fx, i0 = x - i0, i0 % n_theta
    i1 = (i0 + 1) % n_theta
    y = (states[:, 1] + MAX_SPEED) * ((n_speed - 1) / (2 * MAX_SPEED))
    j0 = np.clip(np.floor(y).astype(np.int64), 0, n_speed - 2)
    fy = y - j0
    index = np.stack([i0 * n_speed + j0, i0 * n_speed + j0 + 1, i1 * n_speed + j0, i1 * n_speed + j0 + 1])
    weight = np.stack([(1 - fx) * (1 - fy), (1 - fx) * fy, fx * (1 - fy), fx * fy])
    return index.astype(np.int32), weight


def value_iteration(n_theta, n_speed, horizon=EPISODE_STEPS):
    """V_t on the grid for t = 0..horizon, (horizon + 1, n_theta · n_speed) float32. Every (state, torque)
    pair's successor and cost are computed once (the dynamics do not change with t); a backup is then a
    gather, a weighted sum and a max."""
    theta, speed, torque = np.meshgrid(-np.pi + 2 * np.pi * np.arange(n_theta) / n_theta,
                                       np.linspace(-MAX_SPEED, MAX_SPEED, n_speed), VI_TORQUES, indexing="ij")
    successors, cost = step_numpy(np.stack([theta.ravel(), speed.ravel()], axis=1), torque.ravel())
    index, weight = grid_neighbours(successors, n_theta, n_speed)
    values = np.zeros((horizon + 1, n_theta * n_speed), dtype=np.float32)
    for t in range(horizon - 1, -1, -1):
        q = (weight * values[t + 1][index]).sum(axis=0) - cost
        values[t] = q.reshape(-1, len(VI_TORQUES)).max(axis=1)
    return values


def optimal_controller(values, n_theta, n_speed):
    """A fresh controller for one set of episodes played in lockstep (it counts the steps: at step t it
    looks one step ahead onto V_{t+1})."""
    clock = [0]

    def policy(obs):
        obs = np.asarray(obs, dtype=np.float64)
        state = np.stack([np.arctan2(obs[:, 1], obs[:, 0]), obs[:, 2]], axis=1)
        successors, cost = step_numpy(np.repeat(state, len(GREEDY_TORQUES), axis=0),
                                      np.tile(GREEDY_TORQUES, len(obs)))
        index, weight = grid_neighbours(successors, n_theta, n_speed)
        q = (weight * values[clock[0] + 1][index]).sum(axis=0) - cost
        clock[0] += 1
        return GREEDY_TORQUES[q.reshape(len(obs), -1).argmax(axis=1)]
    return policy


def measure_optimum(args):
    """Value iteration on the chosen grid, its controller on both sets and the curve episodes; with
    --vi-convergence, also on grids of 1/2 and 1/3 the points per axis, to show the figure has settled."""
    grids = [(args.vi_angles, args.vi_speeds)]
    if args.vi_convergence:
        grids = [(args.vi_angles // k | 1, args.vi_speeds // k | 1) for k in (3, 2)] + grids
    found = []
    for n_theta, n_speed in grids:
        t0 = time.perf_counter()
        values = value_iteration(n_theta, n_speed)
        seconds = time.perf_counter() - t0
        results = evaluate_sets(lambda: optimal_controller(values, n_theta, n_speed), args)
        found.append(dict(grid=[n_theta, n_speed], value_iteration_seconds=round(seconds, 2),
                          **{k: summary(v) for k, v in results.items()}))
        print(f"optimum, {n_theta} x {n_speed} grid: {results['evaluation']['mean']:.2f} on the evaluation set, "
              f"{results['fresh']['mean']:.2f} on the fresh set (value iteration {seconds:.1f}s)")
    curve_mean = float(run_gymnasium(optimal_controller(values, n_theta, n_speed),
                                     seeds=CURVE_SEED_BASE + np.arange(args.curve_episodes))[0].mean())
    return dict(results=results, grid=[n_theta, n_speed], curve_episodes_mean=curve_mean, convergence=found,
                backup_torques=len(VI_TORQUES), controller_torques=len(GREEDY_TORQUES))


def gaps(results, optimum):
    """Each set's summary with the paired gap to the optimum on the same starts."""
    return {k: dict(summary(v), gap_to_optimum=gap_to_optimum(optimum["results"][k], v)) for k, v in results.items()}


def seed_averaged_gap(runs, optimum, which="fresh"):
    """The gap of a method averaged over its seeds, per start, then its mean and standard error over starts."""
    if not runs:
        return None
    per_start = np.mean([optimum["results"][which]["returns"] - r["results"][which]["returns"] for r in runs], axis=0)
    mean, se = ad.runs.mean_and_se(per_start)
    per_seed = [float(np.mean(optimum["results"][which]["returns"] - r["results"][which]["returns"])) for r in runs]
    return {"mean": mean, "se": se, "episodes": int(per_start.size), "seeds": len(runs),
            "best_seed": min(per_seed), "worst_seed": max(per_seed),
            "seeds_within_3": int(np.sum(np.array(per_seed) <= 3.0))}


# ----------------------------------------------------------------------------
# The original's setting re-created: Flux's model-zoo pendulum (blog era) on Gym.jl's Pendulum-v0
#
# Network Dense(3,24,relu) → Dense(24,48,relu) → Dense(48,1), Glorot-uniform weights, zero biases, a linear
# (unbounded) torque; loss Flux.mse(r, 0) = cost² per step, summed over windows of 4 steps, ADAM(0.03) after
# each window; ONE training episode of 1,000 steps (250 updates), the state carried from window to window.
# That is "Flux's schedule". Evaluated, as the leaderboard was, as a mean over 100 episodes of 200 steps.
# ----------------------------------------------------------------------------
ORIGINAL = {"sizes": (3, 24, 48, 1), "window": 4, "lr": 0.03, "episode_steps": 1000}
LEADERBOARD_BEST = -123.11     # best 100-episode mean on the old Gym leaderboard for Pendulum-v0 (D4PG)


def original_step(state, torque):
    """One step of the original's pendulum (Gym.jl's Pendulum-v0, which Flux's example trained on), with
    the engine's ops: the same equations as Gymnasium's, but the torque is NOT clipped (Gym.jl clamps it
    only for drawing), in the dynamics and in the cost, and θ moves with the speed before its ±8 clip.
    state: Tensor (B, 2); torque: Tensor (B,) or (B, 1). Returns (next_state, cost of the pre-step state)."""
    theta, speed, u = state[:, 0], state[:, 1], _torque_vector(torque)
    wrapped = theta + ad.Tensor(angle_normalize(theta.data) - theta.data)
    cost = wrapped * wrapped + 0.1 * (speed * speed) + 0.001 * (u * u)
    raw_speed = speed + (GRAVITY_TERM * ad.sin(theta) + TORQUE_TERM * u) * DT
    new_theta = theta + raw_speed * DT
    return ad.stack([new_theta, ad.clip(raw_speed, -MAX_SPEED, MAX_SPEED)], axis=1), cost


def train_original(seed, step):
    """One 1,000-step episode of the original's BPTT through `step` (original_step or Gymnasium's step_ops)."""
    rng = np.random.default_rng((seed, 17))
    net = ad.nn.MLP(ORIGINAL["sizes"], rng, activation="relu", out_activation=None, init="glorot")
    optimizer = ad.optim.Adam(net.parameters(), lr=ORIGINAL["lr"])
    state = reset_states(rng, 1)
    for _ in range(ORIGINAL["episode_steps"] // ORIGINAL["window"]):
        state_t, loss = ad.Tensor(state), 0.0
        for _ in range(ORIGINAL["window"]):
            state_t, cost = step(state_t, net(observation(state_t)))
            loss = loss + (cost * cost).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        state = state_t.data
    return net


def play_original(net, starts):
    """200-step episodes of the original's pendulum from `starts` (B, 2): returns (B,) and the peak |u|."""
    state, total, peak = ad.Tensor(starts), np.zeros(len(starts)), 0.0
    with ad.no_grad():
        for _ in range(EPISODE_STEPS):
            torque = net(observation(state))
            state, cost = original_step(state, torque)
            total, peak = total - cost.data, max(peak, float(np.max(np.abs(torque.data))))
    return total, peak


def original_policy(net):
    """The original's network as a Gymnasium policy: observations (B, 3) → torques (B,), unbounded."""
    def policy(obs):
        with ad.no_grad():
            return net(ad.Tensor(np.asarray(obs, dtype=np.float64))).data[:, 0]
    return policy


def gymnasium_starts(seeds):
    """The start states [θ, θ̇] Gymnasium's reset gives for these seeds."""
    return ad.runs.reset_states("Pendulum-v1", seeds)


def reproduce_original(args):
    """Each seed: trained on the original's pendulum and scored there, the same policy on Gymnasium (which
    clips its torque to ±2), and the same recipe trained on Gymnasium's clipped dynamics (step_ops)."""
    starts = gymnasium_starts(EVAL_SEED_BASE + np.arange(args.eval_episodes))
    rows = []
    for seed in range(args.seed, args.seed + args.original_seeds):
        net = train_original(seed, original_step)
        on_original, peak = play_original(net, starts)
        on_gymnasium = evaluate(original_policy(net), args.eval_episodes)
        trained_clipped = evaluate(original_policy(train_original(seed, step_ops)), args.eval_episodes)
        rows.append(dict(seed=seed, on_original_pendulum=float(on_original.mean()), peak_abs_torque=peak,
                         same_policy_on_gymnasium=on_gymnasium["mean"],
                         trained_on_clipped_twin_on_gymnasium=trained_clipped["mean"]))
        print(f"original's setting, seed {seed}: {rows[-1]['on_original_pendulum']:.1f} on its own pendulum "
              f"(peak |u| {peak:.1f}), {on_gymnasium['mean']:.1f} on Gymnasium")
    if not rows:
        return None
    column = lambda key: np.array([r[key] for r in rows])                            # noqa: E731
    return {"per_seed": rows, "episodes": args.eval_episodes, "leaderboard_best": LEADERBOARD_BEST,
            "median_on_original_pendulum": float(np.median(column("on_original_pendulum"))),
            "seeds_beating_leaderboard": int(np.sum(column("on_original_pendulum") >= LEADERBOARD_BEST)),
            "median_same_policy_on_gymnasium": float(np.median(column("same_policy_on_gymnasium"))),
            "median_trained_on_clipped_twin": float(np.median(column("trained_on_clipped_twin_on_gymnasium"))),
            "peak_abs_torque_range": [float(column("peak_abs_torque").min()), float(column("peak_abs_torque").max())]}


def steps_to_upright(angles, tolerance=0.3):
    """First step after which |θ| < tolerance for the rest of the episode (nan if never)."""
    upright = np.abs(angles) < tolerance
    stays = np.flip(np.logical_and.accumulate(np.flip(upright, axis=1), axis=1), axis=1)
    first = np.argmax(stays, axis=1).astype(float)
    first[~stays[:, -1]] = np.nan
    return first


def measure_generalisation(policy, grid):
    """Every start on a grid of angle × speed, played on Gymnasium: returns and steps to upright."""
    # about half as many speeds as angles, an odd number so that θ̇ = 0 is on the grid
    thetas, speeds = np.linspace(-np.pi, np.pi, grid), np.linspace(-2.0, 2.0, (grid + 1) // 2 | 1)
    starts = np.array([(th, sp) for th in thetas for sp in speeds])
    returns, angles = run_gymnasium(policy, starts=starts)
    upright = steps_to_upright(angles)
    hanging = np.abs(np.abs(starts[:, 0]) - np.pi) < 1e-12
    in_reset_range = np.abs(starts[:, 1]) <= 1.0
    shape = (len(thetas), len(speeds))
    return {
        "grid_theta": thetas, "grid_speed": speeds, "returns": returns.reshape(shape),
        "mean_return": float(returns.mean()), "worst_return": float(returns.min()),
        "mean_return_reset_range": float(returns[in_reset_range].mean()),
        "hanging_down_mean_return": float(returns[hanging].mean()),
        "hanging_down_worst_return": float(returns[hanging].min()),
        "never_upright_fraction": float(np.mean(np.isnan(upright))),
        "median_steps_to_upright": float(np.nanmedian(upright)) if not np.all(np.isnan(upright)) else None,
        "_upright_map": np.where(np.isnan(upright), EPISODE_STEPS, upright).reshape(shape),
    }


def first_reaching(curve, level):
    """The first checkpoint (steps) of a [(steps, mean return)] curve whose mean is ≥ level, or None."""
    return ad.runs.first_reaching([s for s, _ in curve], [m for _, m in curve], level)


def run_record(r, optimum, extra):
    info = r["info"]
    return dict(seed=r["seed"], **gaps(r["results"], optimum), **extra,
                train_seconds=round(info["train_seconds"], 2), train_cpu_seconds=round(info["train_cpu_seconds"], 2),
                network_passes=info["network_passes"], steps_to_mean_minus_200=first_reaching(r["curve"], -200),
                steps_to_mean_minus_150=first_reaching(r["curve"], -150), curve=r["curve"])


def collect_metrics(args, bptt_runs, ddpg_runs, optimum, original, zero_torque, generalisation):
    bptt_fresh = [r["results"]["fresh"]["mean"] for r in bptt_runs]
    bptt = [run_record(r, optimum, dict(simulated_steps=r["info"]["sim_steps"], updates=r["info"]["updates"],
                                        episodes_simulated=r["info"]["episodes_simulated"],
                                        gymnasium_steps_in_training=0,
                                        phases={k: r["info"][k] for k in ("phase_1", "phase_2")})) for r in bptt_runs]
    ddpg = [run_record(r, optimum, dict(gymnasium_steps=r["info"]["env_steps"])) for r in ddpg_runs]
    paired = None
    if ddpg_runs:
        per_method = [np.mean([r["results"]["fresh"]["returns"] for r in runs], axis=0) for runs in (bptt_runs, ddpg_runs)]
        paired = ad.runs.paired_difference(*per_method)
    return {
        "sets": {"evaluation": {"reset_seeds": f"{EVAL_SEED_BASE}..{EVAL_SEED_BASE + args.eval_episodes - 1}",
                                "role": "seen during development: the method was chosen while looking at it"},
                 "fresh": {"reset_seeds": f"{FRESH_SEED_BASE}..{FRESH_SEED_BASE + args.fresh_episodes - 1}",
                           "role": "first played by BPTT and DDPG after every setting was fixed"},
                 "env": "gymnasium.make('Pendulum-v1')", "deterministic": True},
        "headline": {"bptt_gap_to_optimum_fresh": seed_averaged_gap(bptt_runs, optimum),
                     "ddpg_gap_to_optimum_fresh": seed_averaged_gap(ddpg_runs, optimum),
                     "bptt_gap_to_optimum_evaluation": seed_averaged_gap(bptt_runs, optimum, "evaluation"),
                     "ddpg_gap_to_optimum_evaluation": seed_averaged_gap(ddpg_runs, optimum, "evaluation"),
                     "bptt_minus_ddpg_fresh": paired},
        "optimum": {k: v for k, v in optimum.items() if k != "results"} | {
            k: summary(v) for k, v in optimum["results"].items()},
        "bptt": {"per_seed": bptt, "mean_over_seeds_fresh": float(np.mean(bptt_fresh)),
                 "worst_seed_fresh": float(np.min(bptt_fresh)),
                 "setup": dict(hidden=args.hidden, policy=args.policy,
                               phase_1=dict(sim_steps=args.sim_steps, batch=args.batch, window=args.window, lr=args.lr),
                               phase_2=dict(sim_steps=args.long_sim_steps, batch=args.long_batch,
                                            window=args.long_window, lr=args.long_lr))},
        "ddpg": {"per_seed": ddpg, "compute_matched_to_bptt": args.ddpg_steps == 0},
        "original_recreated": original,
        "zero_torque": gaps(zero_torque, optimum),
        "generalisation": {k: v for k, v in generalisation.items() if not k.startswith("_")},
    }


def gap_text(gap):
    return f"{gap['mean']:.1f} ± {gap['se']:.1f}"


def report(out, args, clocks, bptt_runs, ddpg_runs, optimum, original, zero_torque, generalisation):
    """metrics.json (with the CPU time), the figures and the printed table; returns the metrics."""
    started, cpu_started = clocks
    metrics = collect_metrics(args, bptt_runs, ddpg_runs, optimum, original, zero_torque, generalisation)
    metrics["cpu_seconds"] = round(time.process_time() - cpu_started, 1)
    save_figures(out, args, bptt_runs, ddpg_runs, optimum, original, generalisation)
    ad.runs.write_metrics(out, metrics, args, started)
    print_report(metrics)
    print(f"wall time {time.perf_counter() - started:.1f}s; outputs in {out}/")
    return metrics


def print_report(metrics):
    rows = [["optimum (value iteration)", metrics["optimum"]["evaluation"]["mean"], "0",
             metrics["optimum"]["fresh"]["mean"], "0", ""]]
    for name, key, unit in (("BPTT", "bptt", "simulated_steps"), ("DDPG", "ddpg", "gymnasium_steps")):
        rows += [[f"{name} seed {r['seed']}", r["evaluation"]["mean"], gap_text(r["evaluation"]["gap_to_optimum"]),
                  r["fresh"]["mean"], gap_text(r["fresh"]["gap_to_optimum"]),
                  f"{r[unit]:,} {unit.replace('_', ' ')}, {r['network_passes'] / 1e6:.1f} M passes, "
                  f"{r['train_cpu_seconds']:.0f} cpu-s"] for r in metrics[key]["per_seed"]]
    z = metrics["zero_torque"]
    rows.append(["zero torque", z["evaluation"]["mean"], gap_text(z["evaluation"]["gap_to_optimum"]),
                 z["fresh"]["mean"], gap_text(z["fresh"]["gap_to_optimum"]), ""])
    sets = metrics["sets"]
    ad.runs.print_table(["Pendulum-v1 on Gymnasium", "evaluation set", "gap to optimum", "fresh set",
                         "gap to optimum", "training"], [[c if isinstance(c, str) else f"{c:.1f}" for c in row]
                                                         for row in rows],
                        title=f"Mean return; evaluation set = reset seeds {sets['evaluation']['reset_seeds']} (seen "
                              f"in development), fresh set = {sets['fresh']['reset_seeds']} (no choice made on it)")
    original = metrics["original_recreated"]
    if original:
        ad.runs.print_table(["seed", "on the original's pendulum", "peak |u|", "same policy on Gymnasium",
                             "trained on Gymnasium's dynamics"],
                            [[r["seed"], f"{r['on_original_pendulum']:.1f}", f"{r['peak_abs_torque']:.1f}",
                              f"{r['same_policy_on_gymnasium']:.1f}", f"{r['trained_on_clipped_twin_on_gymnasium']:.1f}"]
                             for r in original["per_seed"]],
                            title=f"The original's setting re-created (one 1,000-step episode, {original['episodes']} "
                                  f"evaluation episodes of 200 steps; leaderboard best {LEADERBOARD_BEST})")
        print(f"median {original['median_on_original_pendulum']:.1f} on the original's pendulum, "
              f"{original['seeds_beating_leaderboard']} of {len(original['per_seed'])} seeds at or above "
              f"{LEADERBOARD_BEST}; the same policies on Gymnasium: median {original['median_same_policy_on_gymnasium']:.1f}")
    print_headline(metrics)


def print_headline(metrics):
    h, g = metrics["headline"], metrics["generalisation"]
    print(f"generalisation grid ({g['returns'].size} starts, θ in [−π, π], θ̇ in [−2, 2]): mean "
          f"{g['mean_return']:.1f}, worst {g['worst_return']:.1f}; never upright {100 * g['never_upright_fraction']:.1f}%")
    for name, key in (("BPTT", "bptt_gap_to_optimum_fresh"), ("DDPG", "ddpg_gap_to_optimum_fresh")):
        if h[key]:
            print(f"{name} is {gap_text(h[key])} below the optimum on the fresh set ({h[key]['episodes']} starts, "
                  f"paired, {h[key]['seeds']} seed(s): {h[key]['best_seed']:.1f} to {h[key]['worst_seed']:.1f}; "
                  f"{h[key]['seeds_within_3']} within 3)")
    if h["bptt_minus_ddpg_fresh"]:
        print(f"BPTT minus DDPG on the fresh set: {gap_text(h['bptt_minus_ddpg_fresh'])} (paired)")


def save_figures(out, args, bptt_runs, ddpg_runs, optimum, original, generalisation):
    bptt_passes, ddpg_passes_at = BPTT_PASSES_PER_STEP[args.policy], ddpg_passes
    plot_learning_curves(os.path.join(out, "learning_curve.png"),
                         [(r["curve"], lambda s: s * bptt_passes) for r in bptt_runs],
                         [(r["curve"], ddpg_passes_at) for r in ddpg_runs], optimum["curve_episodes_mean"],
                         original, phase_two_at=args.sim_steps if args.long_sim_steps else None,
                         phase_two_window=args.long_window, curve_episodes=args.curve_episodes)
    g = generalisation
    plot_generalisation(os.path.join(out, "generalisation.png"), g["grid_theta"], g["grid_speed"], g["returns"],
                        g["_upright_map"])
    save_swing_up_gif(os.path.join(out, "swing_up.gif"), bptt_runs[0]["policy"])


# ----------------------------------------------------------------------------
# The command line: each setting's type and range (SETTINGS and HELP are in section 1)
# ----------------------------------------------------------------------------
POLICY_KINDS = ("odd", "plain")


def policy_kind(text):
    if text not in POLICY_KINDS:
        raise ValueError(text)
    return text


policy_kind.__name__ = "policy kind (odd or plain)"
TYPES = {
    "seeds": ad.runs.whole(1, 1000), "sim_steps": ad.runs.whole(1, 10**9), "batch": ad.runs.whole(1, 100_000),
    "window": ad.runs.whole(1, 100_000), "lr": ad.runs.positive_float, "long_sim_steps": ad.runs.whole(0, 10**9),
    "long_batch": ad.runs.whole(1, 100_000), "long_window": ad.runs.whole(1, 100_000),
    "long_lr": ad.runs.positive_float, "hidden": ad.runs.whole(1, 4096), "policy": policy_kind,
    "ddpg_steps": ad.runs.whole(0, 10**7), "ddpg_seeds": ad.runs.whole(0, 1000),
    "eval_episodes": ad.runs.whole(1, 100_000), "fresh_episodes": ad.runs.whole(1, 100_000),
    "curve_episodes": ad.runs.whole(1, 10_000), "grid": ad.runs.whole(3, 1001),
    "vi_angles": ad.runs.whole(8, 2001), "vi_speeds": ad.runs.whole(3, 2001), "original_seeds": ad.runs.whole(0, 1000),
}


def add_play_flag(parser):
    parser.add_argument("--play", metavar="PARAMS", default=None,
                        help="instead of training: play a saved params.npz on both evaluation sets (writes play.json)")


def play_policy_file(args, started):
    """--play: the file is checked first (one-line errors), then the output folder, then the episodes."""
    policy = policy_from_file(args.play)
    out = ad.runs.prepare_out(args.out)
    results = evaluate_sets(lambda: lambda obs: policy(obs)[:, 0], args)
    for name, result in results.items():
        mean, se = ad.runs.mean_and_se(result["returns"])
        print(f"{args.play} on the {name} set ({result['episodes']} episodes): mean {mean:.1f} ± {se:.1f}")
    ad.runs.write_metrics(out, {k: summary(v) for k, v in results.items()}, args, started, name="play.json")
    return results


# ----------------------------------------------------------------------------
# Saving and loading the policy
# ----------------------------------------------------------------------------
def save_policy(path, net, kind, **extra):
    ad.nn.save_parameters(path, net.named_parameters(), policy_kind=np.array(kind), **extra)


def load_policy(path):
    """(net, kind) from a params.npz written by save_policy; anything else is a one-line BadInput."""
    arrays = ad.runs.load_arrays(path, expected={"W1": (3, None)}, what="pendulum_bptt policy file")
    kind = arrays.get("policy_kind")
    if kind is None or kind.dtype.kind != "U" or kind.shape != () or str(kind) not in POLICY_KINDS:
        raise ad.runs.BadInput(f"{path}: not a pendulum_bptt policy file (no valid 'policy_kind'; "
                               f"has {sorted(arrays)[:8]})")
    hidden = arrays["W1"].shape[1]
    net = make_policy(0, hidden)
    for name, p in net.named_parameters().items():
        if name not in arrays:
            raise ad.runs.BadInput(f"{path}: missing parameter {name!r}, not a pendulum_bptt policy file")
        p.data = ad.runs.check_array(arrays[name], f"{path}: parameter {name!r}", p.shape).astype(np.float64)
    return net, str(kind)


def policy_from_file(path):
    """A function mapping a Gymnasium Pendulum-v1 observation [cos θ, sin θ, θ̇] (shape (3,), or a batch
    (B, 3)) to a Gymnasium action: float32 torque of shape (1,) (or (B, 1)) in [−2, 2]. Deterministic."""
    net, kind = load_policy(path)

    def policy(obs):
        obs = np.asarray(obs, dtype=np.float64)
        if obs.shape[-1:] != (3,) or obs.ndim > 2:
            raise ValueError(f"policy: expected an observation of shape (3,) or (B, 3), got {obs.shape}")
        if not np.all(np.isfinite(obs)):
            raise ValueError("policy: the observation contains nan or inf")
        torque = act(net, obs.reshape(-1, 3), kind)
        return torque.astype(np.float32).reshape(obs.shape[:-1] + (1,))
    return policy


# ----------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------
def plot_learning_curves(path, bptt_curves, ddpg_curves, optimum_mean, original, phase_two_at=None,
                         phase_two_window=50, curve_episodes=20):
    """Two panels: mean return against the experience used for training (simulated steps for BPTT,
    Gymnasium steps for DDPG) and against compute (network passes); the optimum as a line in both.
    bptt_curves, ddpg_curves: [(curve [(steps, mean)], steps → passes)]."""
    plt = ad.runs.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for panel, ax in enumerate(axes):
        for curves, color, name in ((bptt_curves, "tab:blue", "BPTT through the twin"),
                                    (ddpg_curves, "tab:orange", "DDPG on Gymnasium")):
            for i, (curve, passes) in enumerate(curves):
                steps, returns = np.array(curve[1:]).T                  # from the first checkpoint (log axis: no 0)
                label = (f"{name} ({len(curves)} seeds)" if len(curves) > 1 else f"{name} (1 seed)") if i == 0 else None
                ax.plot(steps if panel == 0 else [passes(s) for s in steps], returns, color=color,
                        alpha=0.85 if i == 0 else 0.4, label=label)
        ax.axhline(optimum_mean, color="black", linestyle="--", linewidth=1,
                   label=f"optimum (value iteration): {optimum_mean:.1f}")
        ax.set_xscale("log")
        ax.set_ylim(-1700, 0)
        ax.set_ylabel(f"mean return, {curve_episodes} Gymnasium episodes")
    if phase_two_at:
        axes[0].axvline(phase_two_at, color="tab:blue", linestyle=":", linewidth=1)
        axes[0].text(phase_two_at * 1.1, -330, f"BPTT phase 2:\n{phase_two_window}-step windows", color="tab:blue",
                     fontsize=8)
    axes[0].scatter([20000], [-152.1], marker="D", color="gray", zorder=5,
                    label="RL Zoo DDPG (published): −152 after 20,000 steps (100 episodes)")
    if original:
        axes[0].scatter([ORIGINAL["episode_steps"]], [original["median_same_policy_on_gymnasium"]], marker="x", s=60,
                        color="tab:red", zorder=5, label="the original's recipe, one 1,000-step episode (median seed)")
    axes[0].set_xlabel("environment steps used for training (simulated for BPTT, Gymnasium for DDPG; 200 = one episode)")
    axes[0].set_title("Sample efficiency")
    axes[1].set_xlabel("network passes in training (one sample through a 64-64 MLP; backward = 2)")
    axes[1].set_title("Compute")
    for ax in axes:
        ax.legend(loc="lower right", fontsize=7)
    fig.suptitle("Pendulum-v1: BPTT through a differentiable twin vs DDPG", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_generalisation(path, thetas, speeds, returns, upright_steps):
    plt = ad.runs.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    extent = [thetas[0], thetas[-1], speeds[0], speeds[-1]]
    panels = [(returns, "return of the episode", "viridis", None),
              (upright_steps, "steps until upright for good (|θ| < 0.3)", "magma_r", (0, EPISODE_STEPS))]
    for ax, (values, title, cmap, limits) in zip(axes, panels):
        image = ax.imshow(values.T, origin="lower", aspect="auto", extent=extent, cmap=cmap,
                          vmin=None if limits is None else limits[0], vmax=None if limits is None else limits[1])
        fig.colorbar(image, ax=ax)
        ax.add_patch(plt.Rectangle((-np.pi, -1), 2 * np.pi, 2, fill=False, edgecolor="white", linestyle="--"))
        ax.set_xlabel("initial angle θ (0 upright, ±π hanging down)")
        ax.set_ylabel("initial speed θ̇")
        ax.set_title(title, fontsize=10)
    fig.suptitle("Generalisation on Gymnasium Pendulum-v1 (dashed: the reset range)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_swing_up_gif(path, policy, start=(np.pi, 0.0), frames=120):
    """Play one Gymnasium episode from `start` and draw its first `frames` steps."""
    import gymnasium as gym
    plt = ad.runs.pyplot()
    env = gym.make("Pendulum-v1")
    env.reset(seed=0)
    env.unwrapped.state = np.array(start, dtype=np.float64)
    obs, total, images = gymnasium_obs(env.unwrapped.state), 0.0, []
    fig, ax = plt.subplots(figsize=(2.6, 2.6))
    ax.set_xlim(-1.25, 1.25)
    ax.set_ylim(-1.25, 1.25)
    ax.set_aspect("equal")
    ax.axis("off")
    rod, = ax.plot([], [], color="tab:red", linewidth=6, solid_capstyle="round")
    ax.plot([0], [0], "ko", markersize=4)
    bar, = ax.plot([], [], color="tab:blue", linewidth=5)
    ax.text(-1.2, -1.02, "torque", fontsize=6, color="tab:blue")
    label = ax.text(-1.2, 1.1, "", fontsize=7)
    for t in range(frames):
        torque = float(policy(obs[None])[0])
        theta = float(env.unwrapped.state[0])
        rod.set_data([0, -np.sin(theta)], [0, np.cos(theta)])   # θ = 0 points up, counter-clockwise positive
        bar.set_data([0, torque / MAX_TORQUE], [-1.15, -1.15])
        label.set_text(f"t={t * DT:.2f}s  return {total:.0f}")
        images.append(ad.runs.figure_to_array(fig))
        obs, reward, *_ = env.step(np.array([torque], dtype=np.float32))
        total += reward
    plt.close(fig)
    env.close()
    ad.runs.save_gif(path, images, fps=20)



if __name__ == "__main__":
    ad.runs.run(main)
