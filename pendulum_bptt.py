"""Pendulum-v1 swing-up learned by backpropagation through time through a differentiable twin, vs DDPG.

The idea (Innes, Joy & Karmali, "Differentiable programming vs RL", FluxML 2019): when the environment is a
differentiable program, the pendulum's state [θ, θ̇] is the hidden state of a recurrent net,

    state_{t+1} = step(state_t, policy(obs(state_t))),     loss = Σ_t cost(state_t, u_t),

and the summed cost of an episode is differentiated with respect to the policy's weights by backpropagation
through time (BPTT), exactly as for an RNN. A late cost reaches the torque that caused it through the physics:
no value function, no exploration noise.

What is here: a twin of Gymnasium's Pendulum-v1 (bitwise equal to its step; a fused version with hand-written
VJPs), a mirror-symmetric policy u = 2 tanh(f(o) − f(mirror o)), truncated BPTT in two phases (short windows
learn the swing-up, longer ones then refine it), DDPG on the real environment as the RL baseline, and the
measurements: returns on gymnasium.make("Pendulum-v1") from fixed starts, paired with the same starts played
by a near-optimal controller (value iteration on an (angle, speed) grid).

The claim tested: the original (Flux's pendulum) says BPTT beats the RL leaderboard "in a single episode of
training". Here: how far below the optimum BPTT and DDPG end, on starts no choice was made on, and whether one
episode suffices on Gymnasium's pendulum, whose torque is clipped to ±2.

Run:  python pendulum_bptt.py            # the lesson run: BPTT seed 0 (both phases), DDPG seed 0, the map
      python pendulum_bptt.py --full     # 5 + 5 seeds, a finer map (outputs in runs/pendulum_bptt_full/)
      python pendulum_bptt.py --help     # every setting, with the value each mode uses
Outputs in runs/pendulum_bptt/: metrics.json, params.npz, learning_curve.png, generalisation.png,
swing_up.gif. pendulum_bptt.policy_from_file("runs/pendulum_bptt/params.npz") returns a function from a
Gymnasium observation to a Gymnasium action.

Results: see README.md#pendulum_bpttpy.
"""

import os
import time

import autodiff as ad   # first: it makes BLAS single-threaded before NumPy loads (small matrices, 2 cores)
import numpy as np

# ----------------------------------------------------------------------------
# 1. Settings: the lesson run's values; --full changes only seeds, evaluation size and map
# ----------------------------------------------------------------------------
SETTINGS = {
    "seeds": 1, "sim_steps": 320_000, "batch": 8, "window": 25, "lr": 0.01,
    "long_sim_steps": 4_000_000, "long_batch": 64, "long_window": 50, "long_lr": 0.001,
    "hidden": 64, "policy": "odd", "ddpg_steps": 20_000, "ddpg_seeds": 1,
    "eval_episodes": 100, "curve_episodes": 20, "large_eval": 0, "grid": 25,
}
FULL = {"seeds": 5, "ddpg_seeds": 5, "large_eval": 1000, "grid": 61}
HELP = {
    "seeds": "BPTT training seeds: seed, seed+1, ...",
    "sim_steps": "phase 1: simulated steps of training per BPTT seed (200 = one episode)",
    "batch": "phase 1: episodes side by side", "window": "phase 1: BPTT window (steps)",
    "lr": "phase 1: Adam step size",
    "long_sim_steps": "phase 2: simulated steps with longer windows (0: skip phase 2)",
    "long_batch": "phase 2: episodes side by side", "long_window": "phase 2: BPTT window (steps)",
    "long_lr": "phase 2: Adam step size", "hidden": "hidden units per layer of the policy",
    "policy": "odd (mirror-symmetric) or plain MLP", "ddpg_steps": "Gymnasium steps for DDPG",
    "ddpg_seeds": "DDPG training seeds", "eval_episodes": "final Gymnasium episodes",
    "curve_episodes": "Gymnasium episodes per learning-curve point",
    "large_eval": "also evaluate on this many Gymnasium episodes",
    "grid": "generalisation map resolution in θ (at least 3)",
}
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
    "ddpg_steps": ad.runs.whole(1, 10**7), "ddpg_seeds": ad.runs.whole(0, 1000),
    "eval_episodes": ad.runs.whole(1, 100_000), "curve_episodes": ad.runs.whole(1, 10_000),
    "large_eval": ad.runs.whole(0, 100_000), "grid": ad.runs.whole(3, 1001),
}
# Gymnasium reset seeds of each set of starts, disjoint: the evaluation's are never used in training
EVAL_SEED_BASE = 1_000_000    # final evaluation: reset seeds 1,000,000 + k
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


# ----------------------------------------------------------------------------
# The same step as a differentiable function, written two ways (step_fused is the fast one)
# ----------------------------------------------------------------------------
def _torque_vector(torque):
    """Accept the torque as (B,) or as the policy's (B, 1) column."""
    return torque.reshape((-1,)) if torque.ndim == 2 else torque


def step_ops(state, torque):
    """One step with the engine's elementary ops (a graph of ~20 nodes).

    state: Tensor (B, 2) = [θ, θ̇];  torque: Tensor (B,) or (B, 1).
    Returns (next_state (B, 2), cost (B,)): the cost is that of the pre-step
    state and the clipped torque, as in Gymnasium."""
    theta, speed = state[:, 0], state[:, 1]
    u = ad.clip(_torque_vector(torque), -MAX_TORQUE, MAX_TORQUE)
    # angle_normalize shifts θ by a multiple of 2π: a constant, so its slope is 1
    wrapped = theta + ad.Tensor(angle_normalize(theta.data) - theta.data)
    cost = wrapped * wrapped + 0.1 * (speed * speed) + 0.001 * (u * u)
    new_speed = ad.clip(speed + (GRAVITY_TERM * ad.sin(theta) + TORQUE_TERM * u) * DT, -MAX_SPEED, MAX_SPEED)
    new_theta = theta + new_speed * DT
    return ad.stack([new_theta, new_speed], axis=1), cost


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


def step_fused(state, torque):
    """The same step as `step_ops` with two hand-differentiated primitives
    (dynamics and cost) instead of ~20 small ops. Same arguments, same values,
    same gradients (tests/test_pendulum_bptt.py checks all three)."""
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


# ----------------------------------------------------------------------------
# 3. Model: an odd MLP on the observation, torque squashed into [−2, 2]
#
#   u(o) = 2 tanh( f(o) − f(mirror(o)) ),   mirror([cos θ, sin θ, θ̇]) = [cos θ, −sin θ, −θ̇]
#
# The pendulum is mirror-symmetric ((θ, θ̇, u) → (−θ, −θ̇, −u)), and so is this policy:
# u(mirror(o)) = −u(o) by construction. Without it, the first thing BPTT learns is "always push one
# way at full torque" (the pendulum hangs a little to one side, which lowers θ²), the tanh saturates,
# and the gradient dies there (a plain MLP stayed near −866 in the 4 settings tried). The 2·tanh
# squash keeps the torque inside the clip, so the clip's zero gradient is never reached.
# ----------------------------------------------------------------------------
MIRROR = np.array([1.0, -1.0, -1.0])
TIE_BREAK = 0.01   # ε: at an exactly symmetric state (hanging straight down at rest) an odd policy
                   # would output 0 and wait for rounding errors to grow; ε picks a direction


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
    `sim_steps` simulated steps (every step of every trajectory counts; one update costs batch × window).

    Within an episode (`episode_length` steps from a reset state) the state carries from window to window,
    so the policy also learns from the later, upright part of the swing-up. Adam follows adam_schedule; the
    gradient norm is clipped at `max_grad_norm` (rarely acts). net: continue this policy (phase 2), its
    steps counted from `steps_before` on the curve. curve_policy_eval(policy) → mean return, called when the
    running total first reaches each of `curve_at`. Returns (net, curve [(total steps, mean return)], info)."""
    rng = np.random.default_rng(seed)
    net = net if net is not None else make_policy(rng, hidden)
    optimizer = ad.optim.Adam(net.parameters(), lr=lr)
    curve, grad_norms, done = [], [], 0
    checkpoints = sorted(c - steps_before for c in curve_at if c >= steps_before)
    state, t_episode = reset_states(rng, batch), 0
    progress = ad.runs.Progress(sim_steps, label, every=5.0)
    while done < sim_steps:
        if checkpoints and done >= checkpoints[0]:
            curve.append((steps_before + done, curve_policy_eval(lambda obs: act(net, obs, kind))))
            checkpoints = [c for c in checkpoints if c > done]
        optimizer.lr = adam_schedule(lr, done, sim_steps)
        steps = min(window, episode_length - t_episode)
        loss, state, grad_norm = bptt_update(net, optimizer, state, steps, kind, max_grad_norm)
        grad_norms.append(grad_norm)
        done, t_episode = done + batch * steps, t_episode + steps
        if t_episode >= episode_length:
            state, t_episode = reset_states(rng, batch), 0
        progress.update(min(done, sim_steps), last_window_loss=loss.item())
    if curve_policy_eval is not None:
        curve.append((steps_before + done, curve_policy_eval(lambda obs: act(net, obs, kind))))
    info = {"sim_steps": done, "updates": len(grad_norms), "episodes_simulated": done / EPISODE_STEPS,
            "max_grad_norm_seen": float(np.max(grad_norms, initial=0.0)),
            "clipped_updates": int(np.sum(np.array(grad_norms) > max_grad_norm))}
    return net, curve, info


def train_two_phases(seed, phase_1, phase_2, hidden=64, kind="odd", curve_at=(), curve_policy_eval=None,
                     label="bptt"):
    """Phase 1 learns the swing-up with short windows; phase 2 continues the same policy with longer
    windows and a larger batch, so that each gradient sees further ahead.

    Why two: 25-step windows learn the swing-up every time but are myopic; 100-200-step windows from the
    start rarely learn it, and once a policy swings up they improve it for a while and then collapse (one
    swing falling just short of the top is a cliff in the return that the gradient cannot see; Suh et al.
    2022 analyse the effect). 50-step windows (2.5 s) see most of a swing pay off.
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
    total = info_1["sim_steps"] + info_2["sim_steps"]
    info = {"sim_steps": total, "updates": info_1["updates"] + info_2["updates"],
            "episodes_simulated": total / EPISODE_STEPS, "phase_1": info_1, "phase_2": info_2}
    return net, curve_1 + curve_2, info


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
    curve, checkpoints, episode_return, episode_returns = [], sorted(curve_at), 0.0, []
    progress = ad.runs.Progress(env_steps, label, every=5.0)
    for t in range(env_steps):
        if checkpoints and t >= checkpoints[0]:
            curve.append((t, curve_policy_eval(policy)))
            checkpoints = [c for c in checkpoints if c > t]
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
        critic_loss = ddpg_update(actor, critic, optimizers, targets, sample, gamma, tau)
        progress.update(t + 1, critic_loss=critic_loss.item(), last_return=episode_returns[-1] if episode_returns else 0.0)
    if curve_policy_eval is not None:
        curve.append((env_steps, curve_policy_eval(policy)))
    env.close()
    return policy, actor, curve, {"env_steps": env_steps, "training_episode_returns": episode_returns}


# ----------------------------------------------------------------------------
# 8. Measurement: on gymnasium.make("Pendulum-v1"), from fixed reset seeds, deterministic policies
# ----------------------------------------------------------------------------
def gymnasium_obs(state):
    """The float32 observation Gymnasium returns for a state [θ, θ̇]."""
    return np.array([np.cos(state[0]), np.sin(state[0]), state[1]], dtype=np.float32)


def run_gymnasium(policy, seeds=None, starts=None):
    """Play one Pendulum-v1 episode per reset seed (or per start state [θ, θ̇], set through
    env.unwrapped.state), all in lockstep; policy maps a (B, 3) batch of observations to (B,) torques.
    Returns (returns (B,), angles (B, 201): θ wrapped to [−π, π) along the way)."""
    count = len(seeds) if seeds is not None else len(starts)
    envs, angles = [], np.empty((count, EPISODE_STEPS + 1))

    def set_start(env, i):
        envs.append(env)
        if starts is not None:
            env.unwrapped.state = np.array(starts[i], dtype=np.float64)
        return gymnasium_obs(env.unwrapped.state)

    def watch(t, obs, running):
        angles[:, t] = np.arctan2(obs[:, 1], obs[:, 0])

    played = ad.runs.play_episodes("Pendulum-v1", lambda obs: np.asarray(policy(obs), dtype=np.float32).reshape(-1, 1),
                                   seeds if seeds is not None else np.zeros(count, dtype=int),
                                   set_start=set_start, watch=watch)
    final = np.array([gymnasium_obs(env.unwrapped.state) for env in envs])
    angles[:, -1] = np.arctan2(final[:, 1], final[:, 0])
    return played["returns"], angles


def evaluate(policy, episodes=100, seed_base=EVAL_SEED_BASE):
    returns, _ = run_gymnasium(policy, seeds=seed_base + np.arange(episodes))
    return {"mean": float(returns.mean()), "std": float(returns.std()), "worst": float(returns.min()),
            "best": float(returns.max()), "episodes": episodes, "returns": returns}


def steps_to_upright(angles, tolerance=0.3):
    """First step after which |θ| < tolerance for the rest of the episode (nan if never)."""
    upright = np.abs(angles) < tolerance
    stays = np.flip(np.logical_and.accumulate(np.flip(upright, axis=1), axis=1), axis=1)
    first = np.argmax(stays, axis=1).astype(float)
    first[~stays[:, -1]] = np.nan
    return first


# ----------------------------------------------------------------------------
# 9. main: train BPTT, then the baseline, then measure and report
# ----------------------------------------------------------------------------
def main(argv=None):
    started, cpu_started = time.perf_counter(), time.process_time()
    args = ad.runs.command_line(__doc__, "pendulum_bptt", SETTINGS, FULL, HELP, types=TYPES, argv=argv)
    out = ad.runs.prepare_out(args.out)
    curve_eval = curve_evaluator(args.curve_episodes)
    bptt_runs = [train_and_evaluate_bptt(args, args.seed + i, curve_eval) for i in range(args.seeds)]
    save_policy(os.path.join(out, "params.npz"), bptt_runs[0]["net"], args.policy, seed=bptt_runs[0]["seed"])
    one_episode = one_trajectory_runs(args)
    zero_torque = evaluate(lambda obs: np.zeros(len(obs)), args.eval_episodes)      # a reference point
    ddpg_runs = [train_and_evaluate_ddpg(args, args.seed + i, curve_eval) for i in range(args.ddpg_seeds)]
    main_policy = bptt_runs[0]["policy"]
    generalisation = measure_generalisation(main_policy, args.grid)
    save_figures(out, args, bptt_runs, ddpg_runs, one_episode, generalisation, main_policy)
    metrics = collect_metrics(args, bptt_runs, ddpg_runs, one_episode, zero_torque, generalisation)
    metrics["cpu_seconds"] = round(time.process_time() - cpu_started, 1)
    metrics["evaluation"] = {"env": "gymnasium.make('Pendulum-v1')", "episodes": args.eval_episodes,
                             "reset_seeds": f"{EVAL_SEED_BASE}..{EVAL_SEED_BASE + args.eval_episodes - 1}",
                             "deterministic": True}
    ad.runs.write_metrics(out, metrics, args, started)
    print_report(args, bptt_runs, ddpg_runs, one_episode, zero_torque, metrics)
    print(f"wall time {time.perf_counter() - started:.1f}s; outputs in {out}/")
    return metrics


# ============================== Part 2: running the experiment ==============================

def curve_evaluator(episodes):
    """Mean return on fixed Gymnasium episodes whose reset seeds are disjoint from the final evaluation's."""
    def curve_eval(policy):
        return float(run_gymnasium(policy, seeds=CURVE_SEED_BASE + np.arange(episodes))[0].mean())
    return curve_eval


def log_checkpoints(total):
    """Learning-curve checkpoints: 0, then 10 points spaced evenly on a log axis up to `total`."""
    return sorted({0} | {int(s) for s in np.geomspace(1000, total, 10)})


def summary(result):
    return {k: v for k, v in result.items() if k != "returns"}


def train_and_evaluate_bptt(args, seed, curve_eval):
    """Both phases for one seed, then the evaluation (and the large one, if asked)."""
    t0 = time.perf_counter()
    phase_1 = dict(sim_steps=args.sim_steps, batch=args.batch, window=args.window, lr=args.lr)
    phase_2 = dict(sim_steps=args.long_sim_steps, batch=args.long_batch, window=args.long_window, lr=args.long_lr)
    net, curve, info = train_two_phases(seed, phase_1, phase_2, args.hidden, args.policy,
                                        curve_at=log_checkpoints(args.sim_steps + args.long_sim_steps),
                                        curve_policy_eval=curve_eval, label=f"bptt seed {seed}")
    train_time = time.perf_counter() - t0
    policy = lambda obs: act(net, obs, args.policy)                                    # noqa: E731
    result = evaluate(policy, args.eval_episodes)
    if args.large_eval:
        result["large"] = summary(evaluate(policy, args.large_eval))
    print(f"bptt seed {seed}: mean {result['mean']:.1f}  std {result['std']:.1f}  worst {result['worst']:.1f}  "
          f"({info['sim_steps']} simulated steps, {train_time:.1f}s)")
    return dict(seed=seed, net=net, policy=policy, curve=curve, info=info, train_s=train_time, result=result)


def one_trajectory_runs(args):
    """BPTT on ONE trajectory with the original's schedule (4-step windows, Adam 0.03), on this file's
    twin and policy: 200 steps, and the original's 1,000-step episode."""
    one_episode = {}
    for steps in (EPISODE_STEPS, 1000):
        net, _, info = train_bptt(args.seed, sim_steps=steps, batch=1, window=4, lr=0.03, hidden=args.hidden,
                                  kind=args.policy, episode_length=steps, label=f"one trajectory of {steps} steps")
        one_episode[steps] = evaluate(lambda obs: act(net, obs, args.policy), args.eval_episodes)
    return one_episode


def train_and_evaluate_ddpg(args, seed, curve_eval):
    t0 = time.perf_counter()
    policy, _, curve, info = train_ddpg(seed, args.ddpg_steps, curve_at=log_checkpoints(args.ddpg_steps),
                                        curve_policy_eval=curve_eval, label=f"ddpg seed {seed}")
    train_time = time.perf_counter() - t0
    result = evaluate(policy, args.eval_episodes)
    if args.large_eval:
        result["large"] = summary(evaluate(policy, args.large_eval))
    print(f"ddpg seed {seed}: mean {result['mean']:.1f}  std {result['std']:.1f}  worst {result['worst']:.1f}  "
          f"({args.ddpg_steps} Gymnasium steps, {train_time:.1f}s)")
    return dict(seed=seed, curve=curve, info=info, train_s=train_time, result=result)


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


def save_figures(out, args, bptt_runs, ddpg_runs, one_episode, generalisation, main_policy):
    plot_learning_curves(os.path.join(out, "learning_curve.png"), [r["curve"] for r in bptt_runs],
                         [r["curve"] for r in ddpg_runs],
                         [("one trajectory, 200 steps", EPISODE_STEPS, one_episode[EPISODE_STEPS]["mean"]),
                          ("one trajectory, 1000 steps", 1000, one_episode[1000]["mean"])],
                         phase_two_at=args.sim_steps if args.long_sim_steps else None,
                         phase_two_window=args.long_window, curve_episodes=args.curve_episodes)
    g = generalisation
    plot_generalisation(os.path.join(out, "generalisation.png"), g["grid_theta"], g["grid_speed"], g["returns"],
                        g["_upright_map"])
    save_swing_up_gif(os.path.join(out, "swing_up.gif"), main_policy)


def bptt_record(r):
    return dict(seed=r["seed"], **summary(r["result"]), train_seconds=round(r["train_s"], 2),
                simulated_steps=r["info"]["sim_steps"], episodes_simulated=r["info"]["episodes_simulated"],
                updates=r["info"]["updates"], gymnasium_steps_in_training=0,
                phases={k: r["info"][k] for k in ("phase_1", "phase_2")},
                steps_to_mean_minus_200=first_reaching(r["curve"], -200),
                steps_to_mean_minus_150=first_reaching(r["curve"], -150), curve=r["curve"])


def ddpg_record(r):
    return dict(seed=r["seed"], **summary(r["result"]), train_seconds=round(r["train_s"], 2),
                gymnasium_steps=r["info"]["env_steps"], steps_to_mean_minus_200=first_reaching(r["curve"], -200),
                steps_to_mean_minus_150=first_reaching(r["curve"], -150), curve=r["curve"])


def first_reaching(curve, level):
    """The first checkpoint (steps) of a [(steps, mean return)] curve whose mean is ≥ level, or None."""
    return ad.runs.first_reaching([s for s, _ in curve], [m for _, m in curve], level)


def collect_metrics(args, bptt_runs, ddpg_runs, one_episode, zero_torque, generalisation):
    bptt_means = [r["result"]["mean"] for r in bptt_runs]
    return {
        "bptt": {
            "per_seed": [bptt_record(r) for r in bptt_runs],
            "mean_over_seeds": float(np.mean(bptt_means)), "worst_seed_mean": float(np.min(bptt_means)),
            "all_seeds_at_least_minus_150": bool(np.min(bptt_means) >= -150),
            "setup": dict(hidden=args.hidden, policy=args.policy,
                          phase_1=dict(sim_steps=args.sim_steps, batch=args.batch, window=args.window, lr=args.lr),
                          phase_2=dict(sim_steps=args.long_sim_steps, batch=args.long_batch,
                                       window=args.long_window, lr=args.long_lr)),
        },
        "one_trajectory_flux_schedule": {str(k): summary(v) for k, v in one_episode.items()},
        "zero_torque": summary(zero_torque),
        "ddpg": {"per_seed": [ddpg_record(r) for r in ddpg_runs]},
        "generalisation": {k: v for k, v in generalisation.items() if not k.startswith("_")},
    }


def print_report(args, bptt_runs, ddpg_runs, one_episode, zero_torque, metrics):
    header = [f"Pendulum-v1, {args.eval_episodes} Gymnasium episodes", "mean", "std", "worst", "training"]
    rows = [[f"BPTT seed {r['seed']}", *stats(r["result"]), f"{r['info']['sim_steps']:,} simulated steps "
             f"({r['info']['episodes_simulated']:.0f} episodes), {r['train_s']:.1f}s"] for r in bptt_runs]
    rows += [[f"BPTT, one trajectory of {steps} steps (4-step windows)", *stats(res), f"{steps:,} simulated steps"]
             for steps, res in one_episode.items()]
    rows += [["zero torque (reference)", *stats(zero_torque), ""]]
    rows += [[f"DDPG seed {r['seed']}", *stats(r["result"]), f"{args.ddpg_steps:,} Gymnasium steps "
              f"({args.ddpg_steps / EPISODE_STEPS:.0f} episodes), {r['train_s']:.1f}s"] for r in ddpg_runs]
    if args.large_eval:
        rows += [[f"{name} seed {r['seed']}, {args.large_eval} episodes", *stats(r["result"]["large"]), ""]
                 for name, runs in (("BPTT", bptt_runs), ("DDPG", ddpg_runs)) for r in runs]
    ad.runs.print_table(header, rows)
    g, means = metrics["generalisation"], [r["result"]["mean"] for r in bptt_runs]
    print(f"generalisation grid ({g['returns'].size} starts, θ in [−π, π], θ̇ in [−2, 2]): "
          f"mean {g['mean_return']:.1f}, worst {g['worst_return']:.1f}; "
          f"hanging down: mean {g['hanging_down_mean_return']:.1f}, "
          f"worst {g['hanging_down_worst_return']:.1f}; never upright {100 * g['never_upright_fraction']:.1f}%")
    print(f"BPTT over {len(means)} seed(s): mean of means {np.mean(means):.1f}, worst seed {np.min(means):.1f} "
          f"(bar: >= -150)")


def stats(result):
    return [f"{result['mean']:.1f}", f"{result['std']:.1f}", f"{result['worst']:.1f}"]


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
def plot_learning_curves(path, bptt_curves, ddpg_curves, one_episode_points, phase_two_at=None, phase_two_window=50,
                         curve_episodes=20):
    plt = ad.runs.pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, curve in enumerate(bptt_curves):
        steps, returns = zip(*curve[1:])                  # from the first checkpoint (log axis: no 0)
        ax.plot(steps, returns, color="tab:blue", alpha=0.85 if i == 0 else 0.4,
                label="BPTT through the twin (each seed)" if i == 0 else None)
    for i, curve in enumerate(ddpg_curves):
        steps, returns = zip(*curve[1:])
        ax.plot(steps, returns, color="tab:orange", alpha=0.85 if i == 0 else 0.4,
                label="DDPG on Gymnasium (each seed)" if i == 0 else None)
    for i, (name, steps, mean) in enumerate(one_episode_points):
        ax.scatter([steps], [mean], marker="x", s=60, color="tab:red", zorder=5,
                   label="BPTT, one trajectory, Flux's schedule" if i == 0 else None)
        ax.annotate(name, (steps, mean), textcoords="offset points", xytext=(-20, 10 + 14 * i), fontsize=8,
                    color="tab:red")
    ax.axhline(-150, color="gray", linestyle="--", linewidth=1)
    if phase_two_at:
        ax.axvline(phase_two_at, color="tab:blue", linestyle=":", linewidth=1)
        ax.text(phase_two_at * 1.1, -330, f"BPTT phase 2:\n{phase_two_window}-step windows", color="tab:blue", fontsize=8)
    ax.text(150, -140, "−150", color="gray", fontsize=8)
    ax.scatter([20000], [-152.1], marker="D", color="gray", zorder=5)
    ax.annotate("published context: RL Zoo DDPG\n−152 after 20k steps (750 episodes)", (20000, -152.1),
                textcoords="offset points", xytext=(-150, -60), fontsize=8, color="gray",
                arrowprops=dict(arrowstyle="-", color="gray"))
    ax.set_xscale("log")
    ax.set_xlabel("simulated environment steps used for training (200 = one episode)")
    ax.set_ylabel(f"mean return, {curve_episodes} Gymnasium episodes")
    ax.set_ylim(-1700, 0)
    ax.set_title("Pendulum-v1: BPTT through a differentiable twin vs DDPG")
    ax.legend(loc="lower right", fontsize=8)
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
