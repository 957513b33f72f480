"""Pendulum-v1 swing-up learned by backpropagation through time through a differentiable twin, vs DDPG.

The idea (Innes, Joy & Karmali, "Differentiable programming vs RL", FluxML 2019): when the
environment is a differentiable program, the pendulum's state [θ, θ̇] is the hidden state of a
recurrent net,  state_{t+1} = step(state_t, policy(obs(state_t))),  and the summed cost of an
episode is differentiated with respect to the policy's weights by backpropagation through time,
exactly as for an RNN. A late cost reaches the torque that caused it through the physics; there
is no value function and no exploration noise.

What is in this file, top to bottom
  - the twin of Gymnasium's Pendulum-v1 (g = 10, m = l = 1, dt = 0.05, |θ̇| ≤ 8, |u| ≤ 2,
    semi-implicit Euler, cost of the pre-step state and the clipped torque), batched, three ways:
    step_numpy (bitwise equal to Gymnasium), step_ops (the engine's elementary ops) and
    step_fused (two primitives with hand-written VJPs: the fast one), plus observation(state);
  - the policy: u(o) = 2 tanh(f(o) − f(mirror o)), f an MLP 3→64→64→1 (tanh) on [cos θ, sin θ, θ̇];
  - training by truncated BPTT in two phases (short windows, then longer ones);
  - evaluation on gymnasium.make("Pendulum-v1"), DDPG on the real env as the RL baseline,
    policy_from_file(path), the figures, and main(): runs, generalisation map, metrics.

Choices, each measured (mean returns over 1,000 random starts unless said otherwise)
  - Truncated BPTT: episodes side by side, an Adam step after every `window` steps, the state
    carried from window to window, the gradient cut between windows. Full-horizon BPTT (200-step
    windows) never learned the swing-up reliably (-590 to -1,260 for 3 seeds; -900 after 3.8 M
    steps with a plain MLP), nor did 100-step windows (-170 to -1,240, 6 runs). Once a policy swings
    up, 100-200-step windows improve it for a while and then collapse: a small change makes one
    swing fall just short of the top, a cliff in the return that the gradient cannot see (Suh et
    al. 2022 analyse the effect). 25-step windows are reliable but myopic: they learn the swing-up
    every time and stop near -146 (10 of 10 seeds between -145 and -148).
  - Hence two phases. Phase 1 learns the swing-up: 8 episodes, 25-step windows, Adam 0.01, 320,000
    steps. (In each phase Adam's step size decays linearly to 5% over the last quarter, and the
    gradient norm is clipped at 100, which rarely acts.) Phase 2 continues the same policy with 50-step windows (2.5 s, long enough to see most of
    a swing pay off), 64 episodes per batch to average over more starts, Adam 0.001, 4 M steps: it
    gains 4-6 points on every seed (seeds 0-4 on the starts of reset seeds 0-999: -145.7 to
    -147.1 after phase 1, -140.7 to -142.5 after phase 2; seeds 5-9 end at -140.1 to -142.2).
    Measured alternatives: 50-step windows from the start (-148 to -153), phase 2 at 100-step
    windows (collapsed or no better), a learned value function at the window's end as in SHAC
    (Xu et al. 2022; no better, one seed at -172), and oversampling hanging-down starts (worse,
    one seed).
  - What is left is mostly a discrete choice: from hanging down at rest, a swing-up takes two or
    three swings, and which one a policy finds decides about 100 of that episode's return (the
    hanging starts of the evaluation range from -300 to -470 across seeds). Gradients cannot see
    across that choice; a one-step lookahead on the twin still gains about 2 points.
  - An odd policy: the pendulum is mirror-symmetric, and u(mirror o) = −u(o) by construction (up to
    ε = 0.01 that breaks the tie when hanging straight down at rest). A plain MLP first learns
    "always push one way" (the pendulum then hangs off-centre, which lowers θ²), its tanh
    saturates and the gradient dies there: stuck near -866 in the 4 settings tried.
  - The 2·tanh squash keeps the torque inside Gymnasium's ±2 clip, where the clip's gradient is 1.

Counting experience honestly
  Every simulated step of every trajectory counts. Phase 1 costs 8 × 25 = 200 simulated steps per
  update, phase 2 64 × 50 = 3,200; a seed trains on 4.32 M simulated steps in all (21,600
  episode-equivalents of 200 steps), about 20 s of one core. BPTT never touches Gymnasium in
  training. DDPG learns from 20,000 Gymnasium steps (100 episodes). The learning curve puts both on
  one axis: steps of the simulator or of the environment used for training.

Results (python pendulum_bptt.py --full, 3.6 min; the default run trains seed 0 and DDPG seed 0
only, 42 s; 100 Gymnasium episodes, reset seeds 1,000,000-1,000,099, fixed before any result and
never used in training; the 1,000-episode column is reset seeds 1,000,000-1,000,999, which
include those 100; deterministic policies)
                                        mean    std   worst   1,000 episodes   training
  BPTT seed 0                         -147.4   81.9  -440.8   -143.9           4.32 M sim. steps
  BPTT seed 1                         -147.5   79.2  -369.2   -144.6             "
  BPTT seed 2                         -148.8   83.5  -446.4   -145.0             "
  BPTT seed 3                         -147.0   78.1  -346.8   -144.1             "
  BPTT seed 4                         -148.8   81.8  -383.3   -145.7             "
  BPTT, ONE trajectory, 200 steps    -1377.5  508.3 -1969.6                      200 (Flux's schedule)
  BPTT, ONE trajectory, 1,000 steps  -1381.4  509.7 -1969.2                      1,000
  zero torque                        -1205.0  355.7 -1959.8
  DDPG seed 0                         -152.1   84.8  -367.8   -148.0           20,000 Gymnasium steps
  DDPG seed 1                         -155.7   83.0  -373.0   -151.5             "
  DDPG seed 2                         -150.9   83.1  -358.6   -147.3             "
  DDPG seed 3                         -152.1   81.9  -350.6   -149.3             "
  DDPG seed 4                         -152.4   84.4  -366.7   -148.5             "
  (published context, not run here: RL Zoo DDPG -152.1 ± 94.3, TD3 -151.9, SAC -157.0 after 20k
  steps, 750 episodes each; best known 100-episode figure on the old leaderboard about -123.)
  The bar, mean ≥ -150 on the 100 episodes, holds for all 5 seeds (worst seed -148.8; seeds 5-9,
  measured once: -145.5 to -149.2). The margin is small: these 100 starts are harder than average
  (three of them hang almost straight down), so the same policies score 3-4 points better on 1,000.
  Phase 1 alone gave -152.0 to -156.1 here (-153.6 to -155.0 with 32 hidden units, the previous
  version of this file). BPTT beats DDPG on both sets, by 2-8 points per seed.
  The method was settled while looking at these 100 episodes as well as at 1,000 others (reset
  seeds 0-999, the figures under "Choices"); the choices above are the better ones there too.
  Sample efficiency: on the 20 learning-curve episodes BPTT first reaches -150 after 41,000-265,000
  simulated steps, DDPG after 3,800-10,300 Gymnasium steps: BPTT needs 4-36x more experience
  (per seed; coarse, the curve's checkpoints are 2.5x apart) and about the same compute (20 s of
  one core per seed for each).
  Generalisation (61 x 31 starts, θ in [-π, π], θ̇ in [-2, 2], on Gymnasium): every start ends
  upright; mean -142.7, median 26 steps to upright for good; hanging down (θ = ±π, any θ̇ on the
  grid) -298.7 on average. The worst, -577.2, is hanging down exactly at rest, where only the
  tie-break ε gets the swing going.

The blog's "one episode": in the Flux pendulum (Gym.jl) the dynamics used the unclipped torque, so
the network could lift the pendulum straight up, which is probably why 4-step windows sufficed
there (an inference; not tested here). With Gymnasium's ±2 clip a swing-up must pump energy over
several swings; the same schedule (one trajectory, 4-step windows, Adam 0.03, this file's policy)
saturates the torque and does worse than doing nothing (table above).

Run:  python pendulum_bptt.py            # 42 s: BPTT seed 0 (both phases), DDPG seed 0, the map
      python pendulum_bptt.py --full     # 5 + 5 seeds, 1,000-episode evaluations, finer map
Outputs in runs/pendulum_bptt/: metrics.json, params.npz, learning_curve.png,
generalisation.png, swing_up.gif.  pendulum_bptt.policy_from_file("runs/pendulum_bptt/params.npz")
returns a function from a Gymnasium observation to a Gymnasium action.
"""

import os
import time

if __name__ == "__main__":
    # The matrices here are small (64-wide MLPs): BLAS threads only add overhead, ~10x on
    # 2 busy cores. Only when run as a script, and only if the user has not chosen otherwise.
    for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, "1")

import numpy as np

import autodiff as ad

# ----------------------------------------------------------------------------
# Gymnasium's Pendulum-v1, constant for constant
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
# The same step as a differentiable function, written two ways
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
# The policy: an odd MLP on the observation, torque squashed into [−2, 2]
#
#   u(o) = 2 tanh( f(o) − f(mirror(o)) ),   mirror([cos θ, sin θ, θ̇]) = [cos θ, −sin θ, −θ̇]
#
# The pendulum is mirror-symmetric ((θ, θ̇, u) → (−θ, −θ̇, −u)), and so is this policy:
# u(mirror(o)) = −u(o) by construction. Without it, the first thing BPTT learns
# is "always push one way at full torque" (the pendulum hangs a little to one
# side, which lowers θ²), the tanh saturates, and the gradient dies there; an
# odd policy cannot push one way everywhere. The 2·tanh squash keeps the torque
# inside the clip, so the clip's zero gradient is never reached.
# ----------------------------------------------------------------------------
MIRROR = np.array([1.0, -1.0, -1.0])
TIE_BREAK = 0.01   # ε: at an exactly symmetric state (hanging straight down at rest) an odd policy
                   # would output 0 and wait for rounding errors to grow; ε picks a direction
POLICY_KINDS = ("odd", "plain")


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
# The loss: one window of the simulated episode, differentiated end to end
# ----------------------------------------------------------------------------
def window_loss(net, state, window, kind="odd"):
    """Run the twin for `window` steps from `state` (B, 2), the policy in the
    loop, and return (mean over the batch of the summed cost / window, end state).

    The graph is a recurrent net whose hidden state is the pendulum's state:
    state_{t+1} = step(state_t, policy(obs(state_t))). Backward through it is
    backpropagation through time; each torque's gradient sums its effect on
    every later cost in the window, through the physics."""
    costs = []
    for _ in range(window):
        torque = policy_torque(net, observation(state), kind)
        state, cost = step_fused(state, torque)
        costs.append(cost)
    loss = ad.stack(costs).sum() / (state.shape[0] * window)
    return loss, state


# ----------------------------------------------------------------------------
# Training by truncated BPTT through the twin
# ----------------------------------------------------------------------------
def train_bptt(seed, sim_steps, batch, window, lr, hidden=64, kind="odd", episode_length=EPISODE_STEPS,
               max_grad_norm=100.0, net=None, steps_before=0, curve_at=(), curve_policy_eval=None, label="bptt"):
    """Train a policy on `batch` simulated episodes at a time, updating it after
    every `window` steps (truncated BPTT), until `sim_steps` simulated steps.

    An episode is `episode_length` steps of one trajectory from a reset state.
    Within it, the state is carried from window to window (so the policy also
    learns from the later, upright part of the swing-up), but the gradient is
    cut at window boundaries. Every simulated step of every trajectory counts
    toward `sim_steps`: one update costs batch × window steps, and training
    stops after the update that reaches `sim_steps` (info["sim_steps"] is the
    exact count). Adam's step size is constant, then decays linearly to 5% over
    the last quarter; the gradient norm is clipped at `max_grad_norm`.

    net: continue training this policy (phase 2) instead of a new one; its
    training steps are then counted from `steps_before` on the learning curve.
    curve_policy_eval(policy) → mean return, called when the running total of
    steps first reaches each of `curve_at`.
    Returns (net, curve [(total steps, mean return)], info)."""
    rng = np.random.default_rng(seed)
    net = net if net is not None else make_policy(rng, hidden)
    params = net.parameters()
    optimizer = ad.optim.Adam(params, lr=lr)
    curve, grad_norms = [], []
    checkpoints = sorted(c - steps_before for c in curve_at if c >= steps_before)
    done = 0
    state, t_episode = reset_states(rng, batch), 0
    progress = ad.runs.Progress(sim_steps, label, every=5.0)
    while done < sim_steps:
        if checkpoints and done >= checkpoints[0]:
            curve.append((steps_before + done, curve_policy_eval(lambda obs: act(net, obs, kind))))
            checkpoints = [c for c in checkpoints if c > done]
        # constant step size, then a linear decay to 5% over the last quarter
        optimizer.lr = lr * min(1.0, 0.05 + 0.95 * (1.0 - done / sim_steps) / 0.25)
        steps = min(window, episode_length - t_episode)
        loss, end = window_loss(net, ad.Tensor(state), steps, kind)
        optimizer.zero_grad()
        loss.backward()
        grad_norms.append(ad.optim.clip_grad_norm(params, max_grad_norm))
        optimizer.step()
        done += batch * steps
        state, t_episode = end.data, t_episode + steps
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
    """Phase 1 learns the swing-up with short windows; phase 2 continues the
    same policy with longer windows and a larger batch, so that each gradient
    sees further ahead (see "Choices" in the docstring).

    phase_1, phase_2: dicts of train_bptt's sim_steps, batch, window, lr
    (phase_2["sim_steps"] = 0 skips phase 2).
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
# Evaluation on the real environment: gymnasium.make("Pendulum-v1")
# ----------------------------------------------------------------------------
EVAL_SEED_BASE = 1_000_000    # final evaluation: reset seeds 1,000,000 + k
CURVE_SEED_BASE = 2_000_000   # learning-curve checks: reset seeds 2,000,000 + k
DDPG_SEED_BASE = 3_000_000    # DDPG's training environment (BPTT never touches Gymnasium in training)


def gymnasium_obs(state):
    """The float32 observation Gymnasium returns for a state [θ, θ̇]."""
    return np.array([np.cos(state[0]), np.sin(state[0]), state[1]], dtype=np.float32)


def run_gymnasium(policy, seeds=None, starts=None):
    """Play one Pendulum-v1 episode per reset seed (or per start state [θ, θ̇],
    set through env.unwrapped.state) with all environments in lockstep, the
    policy mapping a (B, 3) batch of observations to (B,) torques.

    Returns (returns (B,), angles (B, 201): θ wrapped to [−π, π) along the way)."""
    import gymnasium as gym
    count = len(seeds) if seeds is not None else len(starts)
    envs = [gym.make("Pendulum-v1") for _ in range(count)]
    obs = np.empty((count, 3), dtype=np.float32)
    for i, env in enumerate(envs):
        if seeds is not None:
            obs[i] = env.reset(seed=int(seeds[i]))[0]
        else:
            env.reset(seed=0)
            env.unwrapped.state = np.array(starts[i], dtype=np.float64)
            obs[i] = gymnasium_obs(env.unwrapped.state)
    returns = np.zeros(count)
    angles = np.empty((count, EPISODE_STEPS + 1))
    for t in range(EPISODE_STEPS):
        angles[:, t] = np.arctan2(obs[:, 1], obs[:, 0])
        torques = np.asarray(policy(obs), dtype=np.float32).reshape(count)
        for i, env in enumerate(envs):
            obs[i], reward, *_ = env.step(torques[i:i + 1])      # Pendulum never terminates
            returns[i] += reward
    angles[:, -1] = np.arctan2(obs[:, 1], obs[:, 0])
    for env in envs:
        env.close()
    return returns, angles


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
# The RL baseline: DDPG (Lillicrap et al., 2016) on the real environment
#
#   critic  Q(o, a) ← r + γ Q'(o', μ'(o'))          (squared TD error, a replay buffer)
#   actor   μ(o)    ← ascend Q(o, μ(o))              (the critic's gradient in a)
#   targets θ' ← (1 − τ) θ' + τ θ;  exploration μ(o) + N(0, σ²)
#
# It learns from Gymnasium transitions only: no model, no gradient through the
# physics. Settings follow RL Zoo's DDPG/TD3 for Pendulum (γ = 0.98, σ = 0.1 of the
# action range is 0.2 here, one gradient step per environment step), with
# smaller networks (64, 64) to fit the one-minute budget.
# ----------------------------------------------------------------------------
def train_ddpg(seed, env_steps, hidden=64, batch=128, gamma=0.98, tau=0.005, lr=1e-3, noise=0.2, warmup=1000,
               curve_at=(), curve_policy_eval=None, label="ddpg"):
    import gymnasium as gym
    rng = np.random.default_rng(seed)
    actor = ad.nn.MLP((3, hidden, hidden, 1), rng, activation="relu", out_activation="tanh")
    critic = ad.nn.MLP((4, hidden, hidden, 1), rng, activation="relu")
    actor_target = [p.data.copy() for p in actor.parameters()]
    critic_target = [p.data.copy() for p in critic.parameters()]
    actor_opt, critic_opt = ad.optim.Adam(actor.parameters(), lr=lr), ad.optim.Adam(critic.parameters(), lr=lr)

    def q_value(params, obs, action):                    # action scaled to [−1, 1] as the critic's input
        return ad.mlp(ad.concatenate([obs, action], axis=1), *params, activation="relu")

    def policy(obs):
        with ad.no_grad():
            return MAX_TORQUE * actor(ad.Tensor(np.asarray(obs, dtype=np.float64))).data[:, 0]

    buffer = {"obs": np.zeros((env_steps, 3)), "action": np.zeros((env_steps, 1)),
              "reward": np.zeros((env_steps, 1)), "next_obs": np.zeros((env_steps, 3))}
    env = gym.make("Pendulum-v1")
    obs = env.reset(seed=DDPG_SEED_BASE + seed)[0]
    curve, checkpoints = [], sorted(curve_at)
    progress = ad.runs.Progress(env_steps, label, every=5.0)
    episode_return, episode_returns = 0.0, []
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
        buffer["obs"][t], buffer["action"][t], buffer["reward"][t], buffer["next_obs"][t] = (
            obs, action / MAX_TORQUE, reward, next_obs)
        episode_return += reward
        obs = next_obs
        if terminated or truncated:
            episode_returns.append(episode_return)
            episode_return, obs = 0.0, env.reset()[0]
        if t + 1 < warmup:
            continue
        index = rng.integers(0, t + 1, batch)
        o, a, r, o2 = (ad.Tensor(buffer[k][index]) for k in ("obs", "action", "reward", "next_obs"))
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
        for targets, live in ((actor_target, actor.parameters()), (critic_target, critic.parameters())):
            for target, p in zip(targets, live):            # in place: the lists hold the arrays
                target *= 1.0 - tau
                target += tau * p.data
        progress.update(t + 1, critic_loss=critic_loss.item(),
                        last_return=episode_returns[-1] if episode_returns else 0.0)
    if curve_policy_eval is not None:
        curve.append((env_steps, curve_policy_eval(policy)))
    env.close()
    return policy, actor, curve, {"env_steps": env_steps, "training_episode_returns": episode_returns}


# ----------------------------------------------------------------------------
# Saving and loading the policy
# ----------------------------------------------------------------------------
def save_policy(path, net, kind, **extra):
    ad.nn.save_parameters(path, net.named_parameters(), policy_kind=np.array(kind), **extra)


def load_policy(path):
    """(net, kind) from a params.npz written by save_policy, or a one-line error."""
    arrays = ad.nn.load_arrays(path)
    if "policy_kind" not in arrays or str(arrays["policy_kind"]) not in POLICY_KINDS:
        raise ValueError(f"{path}: not a pendulum_bptt policy file (no valid 'policy_kind'; has {sorted(arrays)})")
    if "W1" not in arrays or arrays["W1"].ndim != 2 or arrays["W1"].shape[0] != 3:
        raise ValueError(f"{path}: 'W1' must have shape (3, hidden)")
    net = make_policy(0, arrays["W1"].shape[1])
    ad.nn.load_parameters(path, net.named_parameters())      # checks every name, shape, and finiteness
    return net, str(arrays["policy_kind"])


def policy_from_file(path):
    """A function mapping a Gymnasium Pendulum-v1 observation [cos θ, sin θ, θ̇]
    (shape (3,), or a batch (B, 3)) to a Gymnasium action: float32 torque of
    shape (1,) (or (B, 1)) in [−2, 2]. Deterministic."""
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


# ----------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------
def summary(result):
    return {k: v for k, v in result.items() if k != "returns"}


def first_reaching(curve, threshold):
    """The first checkpoint (steps) whose mean return is ≥ threshold, or None."""
    return next((steps for steps, mean in curve if mean >= threshold), None)


def main(argv=None):
    started, cpu_started = time.perf_counter(), time.process_time()
    parser = ad.runs.parser(__doc__, "pendulum_bptt")
    parser.add_argument("--seeds", type=ad.runs.positive_int, default=None,
                        help="BPTT training seeds: seed, seed+1, ... (default 1, or 5 with --full)")
    parser.add_argument("--sim-steps", type=ad.runs.positive_int, default=320_000,
                        help="phase 1: simulated steps of training per BPTT seed (200 = one episode)")
    parser.add_argument("--batch", type=ad.runs.positive_int, default=8, help="phase 1: episodes side by side")
    parser.add_argument("--window", type=ad.runs.positive_int, default=25, help="phase 1: BPTT window (steps)")
    parser.add_argument("--lr", type=ad.runs.positive_float, default=0.01, help="phase 1: Adam step size")
    parser.add_argument("--long-sim-steps", type=ad.runs.nonnegative_int, default=4_000_000,
                        help="phase 2: simulated steps with longer windows (0: skip phase 2)")
    parser.add_argument("--long-batch", type=ad.runs.positive_int, default=64, help="phase 2: episodes side by side")
    parser.add_argument("--long-window", type=ad.runs.positive_int, default=50, help="phase 2: BPTT window (steps)")
    parser.add_argument("--long-lr", type=ad.runs.positive_float, default=0.001, help="phase 2: Adam step size")
    parser.add_argument("--hidden", type=ad.runs.positive_int, default=64, help="hidden units per layer of the policy")
    parser.add_argument("--policy", choices=POLICY_KINDS, default="odd", help="odd (mirror-symmetric) or plain MLP")
    parser.add_argument("--ddpg-steps", type=ad.runs.positive_int, default=20_000, help="Gymnasium steps for DDPG")
    parser.add_argument("--ddpg-seeds", type=ad.runs.nonnegative_int, default=None,
                        help="DDPG training seeds (default 1, or 5 with --full)")
    parser.add_argument("--eval-episodes", type=ad.runs.positive_int, default=100, help="final Gymnasium episodes")
    parser.add_argument("--curve-episodes", type=ad.runs.positive_int, default=20,
                        help="Gymnasium episodes per learning-curve point")
    parser.add_argument("--large-eval", type=ad.runs.nonnegative_int, default=None,
                        help="also evaluate on this many Gymnasium episodes (default 0, or 1000 with --full)")
    parser.add_argument("--grid", type=ad.runs.positive_int, default=None,
                        help="generalisation map resolution in θ (default 25, or 61 with --full)")
    args = parser.parse_args(argv)
    seeds = args.seeds or (5 if args.full else 1)
    ddpg_seeds = args.ddpg_seeds if args.ddpg_seeds is not None else (5 if args.full else 1)
    grid = args.grid or (61 if args.full else 25)
    if grid < 3:
        parser.error(f"--grid {grid}: at least 3 angles, so that the map has more than one speed")
    large_eval = args.large_eval if args.large_eval is not None else (1000 if args.full else 0)
    out = ad.runs.prepare_out(args.out)

    def curve_eval(policy):   # fixed Gymnasium episodes, seeds disjoint from the final evaluation's
        return float(run_gymnasium(policy, seeds=CURVE_SEED_BASE + np.arange(args.curve_episodes))[0].mean())

    def log_checkpoints(total):
        return sorted({0} | {int(s) for s in np.geomspace(1000, total, 10)})

    # 1. BPTT through the twin, several seeds; each evaluated on 100 Gymnasium episodes
    bptt_runs = []
    for i in range(seeds):
        seed = args.seed + i
        t0 = time.perf_counter()
        phase_1 = dict(sim_steps=args.sim_steps, batch=args.batch, window=args.window, lr=args.lr)
        phase_2 = dict(sim_steps=args.long_sim_steps, batch=args.long_batch, window=args.long_window, lr=args.long_lr)
        curve_at = log_checkpoints(args.sim_steps + args.long_sim_steps)
        net, curve, info = train_two_phases(seed, phase_1, phase_2, args.hidden, args.policy, curve_at=curve_at,
                                            curve_policy_eval=curve_eval, label=f"bptt seed {seed}")
        train_time = time.perf_counter() - t0
        result = evaluate(lambda obs: act(net, obs, args.policy), args.eval_episodes)
        if large_eval:
            result["large"] = summary(evaluate(lambda obs: act(net, obs, args.policy), large_eval))
        bptt_runs.append(dict(seed=seed, net=net, curve=curve, info=info, train_s=train_time, result=result))
        print(f"bptt seed {seed}: mean {result['mean']:.1f}  std {result['std']:.1f}  worst {result['worst']:.1f}  "
              f"({info['sim_steps']} simulated steps, {train_time:.1f}s)")
    main_run = bptt_runs[0]
    save_policy(os.path.join(out, "params.npz"), main_run["net"], args.policy, seed=main_run["seed"])

    # 2. The blog's schedule: ONE trajectory, 4-step windows, Adam 0.03 (200 steps, and Flux's 1000)
    one_episode = {}
    for steps in (EPISODE_STEPS, 1000):
        net, _, info = train_bptt(args.seed, sim_steps=steps, batch=1, window=4, lr=0.03, hidden=args.hidden,
                                  kind=args.policy, episode_length=steps, label=f"one trajectory of {steps} steps")
        one_episode[steps] = evaluate(lambda obs: act(net, obs, args.policy), args.eval_episodes)

    zero_torque = evaluate(lambda obs: np.zeros(len(obs)), args.eval_episodes)       # a reference point

    # 3. The RL baseline on the real environment
    ddpg_runs = []
    for i in range(ddpg_seeds):
        seed = args.seed + i
        t0 = time.perf_counter()
        policy, _, curve, info = train_ddpg(seed, args.ddpg_steps, curve_at=log_checkpoints(args.ddpg_steps),
                                            curve_policy_eval=curve_eval, label=f"ddpg seed {seed}")
        train_time = time.perf_counter() - t0
        result = evaluate(policy, args.eval_episodes)
        if large_eval:
            result["large"] = summary(evaluate(policy, large_eval))
        ddpg_runs.append(dict(seed=seed, curve=curve, info=info, train_s=train_time, result=result))
        print(f"ddpg seed {seed}: mean {result['mean']:.1f}  std {result['std']:.1f}  worst {result['worst']:.1f}  "
              f"({args.ddpg_steps} Gymnasium steps, {train_time:.1f}s)")

    # 4. Generalisation: every start on a grid of angle x speed, on Gymnasium
    main_policy = lambda obs: act(main_run["net"], obs, args.policy)                      # noqa: E731
    # about half as many speeds as angles, an odd number so that θ̇ = 0 is on the grid
    thetas, speeds = np.linspace(-np.pi, np.pi, grid), np.linspace(-2.0, 2.0, (grid + 1) // 2 | 1)
    starts = np.array([(th, sp) for th in thetas for sp in speeds])
    grid_returns, grid_angles = run_gymnasium(main_policy, starts=starts)
    grid_upright = steps_to_upright(grid_angles)
    shape = (len(thetas), len(speeds))
    hanging = np.abs(np.abs(starts[:, 0]) - np.pi) < 1e-12
    in_reset_range = np.abs(starts[:, 1]) <= 1.0

    # 5. Figures and metrics
    plot_learning_curves(os.path.join(out, "learning_curve.png"), [r["curve"] for r in bptt_runs],
                         [r["curve"] for r in ddpg_runs],
                         [("one trajectory, 200 steps", EPISODE_STEPS, one_episode[EPISODE_STEPS]["mean"]),
                          ("one trajectory, 1000 steps", 1000, one_episode[1000]["mean"])],
                         phase_two_at=args.sim_steps if args.long_sim_steps else None,
                         phase_two_window=args.long_window, curve_episodes=args.curve_episodes)
    plot_generalisation(os.path.join(out, "generalisation.png"), thetas, speeds, grid_returns.reshape(shape),
                        np.where(np.isnan(grid_upright), EPISODE_STEPS, grid_upright).reshape(shape))
    save_swing_up_gif(os.path.join(out, "swing_up.gif"), main_policy)

    bptt_means = [r["result"]["mean"] for r in bptt_runs]
    metrics = {
        "bptt": {
            "per_seed": [dict(seed=r["seed"], **summary(r["result"]), train_seconds=round(r["train_s"], 2),
                              simulated_steps=r["info"]["sim_steps"],
                              episodes_simulated=r["info"]["episodes_simulated"],
                              updates=r["info"]["updates"], gymnasium_steps_in_training=0,
                              phases={k: r["info"][k] for k in ("phase_1", "phase_2")},
                              steps_to_mean_minus_200=first_reaching(r["curve"], -200),
                              steps_to_mean_minus_150=first_reaching(r["curve"], -150),
                              curve=r["curve"]) for r in bptt_runs],
            "mean_over_seeds": float(np.mean(bptt_means)), "worst_seed_mean": float(np.min(bptt_means)),
            "all_seeds_at_least_minus_150": bool(np.min(bptt_means) >= -150),
            "setup": dict(hidden=args.hidden, policy=args.policy,
                          phase_1=dict(sim_steps=args.sim_steps, batch=args.batch, window=args.window, lr=args.lr),
                          phase_2=dict(sim_steps=args.long_sim_steps, batch=args.long_batch,
                                       window=args.long_window, lr=args.long_lr)),
        },
        "one_trajectory_flux_schedule": {str(k): summary(v) for k, v in one_episode.items()},
        "zero_torque": summary(zero_torque),
        "ddpg": {
            "per_seed": [dict(seed=r["seed"], **summary(r["result"]), train_seconds=round(r["train_s"], 2),
                              gymnasium_steps=r["info"]["env_steps"],
                              steps_to_mean_minus_200=first_reaching(r["curve"], -200),
                              steps_to_mean_minus_150=first_reaching(r["curve"], -150),
                              curve=r["curve"]) for r in ddpg_runs],
        },
        "generalisation": {
            "grid_theta": thetas, "grid_speed": speeds, "returns": grid_returns.reshape(shape),
            "mean_return": float(grid_returns.mean()), "worst_return": float(grid_returns.min()),
            "mean_return_reset_range": float(grid_returns[in_reset_range].mean()),
            "hanging_down_mean_return": float(grid_returns[hanging].mean()),
            "hanging_down_worst_return": float(grid_returns[hanging].min()),
            "never_upright_fraction": float(np.mean(np.isnan(grid_upright))),
            "median_steps_to_upright": (float(np.nanmedian(grid_upright)) if not np.all(np.isnan(grid_upright))
                                        else None),
        },
        "cpu_seconds": round(time.process_time() - cpu_started, 1),
        "evaluation": {"env": "gymnasium.make('Pendulum-v1')", "episodes": args.eval_episodes,
                       "reset_seeds": f"{EVAL_SEED_BASE}..{EVAL_SEED_BASE + args.eval_episodes - 1}",
                       "deterministic": True},
    }
    ad.runs.write_metrics(out, metrics, args, started)

    def row(name, res, training=""):
        print(f"{name:52s} {res['mean']:8.1f} {res['std']:7.1f} {res['worst']:8.1f}  {training}")

    print(f"\n{'Pendulum-v1, ' + str(args.eval_episodes) + ' Gymnasium episodes':52s} "
          f"{'mean':>8s} {'std':>7s} {'worst':>8s}  training")
    for r in bptt_runs:
        info = r["info"]
        row(f"BPTT seed {r['seed']}", r["result"], f"{info['sim_steps']:,} simulated steps "
            f"({info['episodes_simulated']:.0f} episodes), {r['train_s']:.1f}s")
    for steps, res in one_episode.items():
        row(f"BPTT, one trajectory of {steps} steps (4-step windows)", res, f"{steps:,} simulated steps")
    row("zero torque (reference)", zero_torque)
    for r in ddpg_runs:
        row(f"DDPG seed {r['seed']}", r["result"], f"{args.ddpg_steps:,} Gymnasium steps "
            f"({args.ddpg_steps / EPISODE_STEPS:.0f} episodes), {r['train_s']:.1f}s")
    if large_eval:
        for name, runs in (("BPTT", bptt_runs), ("DDPG", ddpg_runs)):
            for r in runs:
                row(f"{name} seed {r['seed']}, {large_eval} episodes", r["result"]["large"])
    g = metrics["generalisation"]
    print(f"generalisation grid ({len(starts)} starts, θ in [−π, π], θ̇ in [−2, 2]): "
          f"mean {g['mean_return']:.1f}, worst {g['worst_return']:.1f}; "
          f"hanging down: mean {g['hanging_down_mean_return']:.1f}, "
          f"worst {g['hanging_down_worst_return']:.1f}; never upright {100 * g['never_upright_fraction']:.1f}%")
    print(f"BPTT over {seeds} seed(s): mean of means {np.mean(bptt_means):.1f}, worst seed {np.min(bptt_means):.1f} "
          f"(bar: >= -150)")
    print(f"wall time {time.perf_counter() - started:.1f}s; outputs in {out}/")
    return metrics


if __name__ == "__main__":
    main()
