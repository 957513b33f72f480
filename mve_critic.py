"""Model value expansion through stiff contact: horizon H, smoothing rho, and value-gradient critics, measured.

With a differentiable model you choose how far to trust it: unroll the model H steps, bootstrap with a learned
critic, and differentiate the whole thing (the policy noise eps is reparameterised, so it is fixed):

    J_H(theta) = E[ sum_{t<H} gamma^t r_t + gamma^H V_hat(x_H) ],    u_t = u_max tanh(mu_theta(o_t) + sigma eps_t)

H = 0 is DDPG / SVG(0): low variance, biased by the critic. H = T is BPTT: unbiased, but each contact step
multiplies the gradient by a Jacobian of size ~ dt k = 20, so its variance explodes, and heavy tails make a
finite sample look biased too (Suh et al., "Do differentiable simulators give better policy gradients?", ICML
2022). Smoothing the contact force, k max(d, 0) -> k rho softplus(d / rho), tames the variance at the price of
model bias. Accurate values need not have accurate gradients, so a critic can learn the value *gradient* from
the Bellman gradient equation (DHP / VGL(lambda); Werbos, Fairbank):

    grad V(x) = r_x + pi_x^T r_u + gamma (f_x + f_u pi_x)^T grad V(x')

The toy, after Suh et al.'s pusher and box: 1-D pusher p and box b, penalty contact k = 1000, T = 128 steps,
reward -(b - 1)^2 - 0.01 (u/u_max)^2, every evaluation on the hard system. Claims tested (which held: README.md):
(1) the gradient's bias falls and its variance rises with H, and smoothing cuts BPTT's variance;
(2) annealing H and rho together (long and smooth early, short and hard late) beats the best fixed setting;
(3) a TD(lambda) value critic can have accurate values but inaccurate gradients; a VGL(lambda) critic learns them.

Run (results: README.md#mve_criticpy):
    python mve_critic.py                # the lesson run: small versions of all three experiments
    python mve_critic.py --full         # the full experiments (see README.md for the times)
    python mve_critic.py --exp 2 --seeds 3     # one experiment, with more seeds
"""

import argparse
import collections
import json
import math
import os
import time

import autodiff as ad            # before numpy: it makes BLAS single-threaded (small matrices, shared cores)
import numpy as np
from autodiff import Tensor

# ----------------------------------------------------------------------------
# 1. Settings: the physics, the training constants and the run's sizes (their --help text: Part 2, HELP)
# ----------------------------------------------------------------------------
DT = 0.02                         # seconds per step, semi-implicit Euler
MASS_PUSHER, MASS_BOX = 1.0, 1.0
DRAG_PUSHER, DRAG_BOX = 1.0, 2.0
STIFFNESS = 1000.0                # penalty stiffness k; stable while k dt^2 (1/m_p + 1/m_b) < 4, i.e. k < 5000
U_MAX = 5.0                       # |u| <= u_max, by the tanh squashing
TARGET = 1.0                      # where the box should end up
ACTION_COST = 0.01
T = 128                           # episode length
GAMMA = 0.99
SIGMA = 0.3                       # policy noise, before the tanh
LAMBDA = 0.95                     # TD(lambda) / VGL(lambda) of the critics
RHO_MAX = 0.01                    # where the rho anneal starts; rho-conditioned critics see rho / RHO_MAX

N_ENVS = 64                       # parallel environments in training
WINDOW = 32                       # steps per training window (SHAC's steps_num)
ACTOR_LR, CRITIC_LR, ADAM_BETAS = 2e-3, 1e-3, (0.7, 0.95)
GRAD_CLIP = 1.0
TARGET_KEEP = 0.2                 # target <- 0.2 target + 0.8 online, after every critic update
CRITIC_EPOCHS, CRITIC_MINIBATCHES = 8, 4
SCORE_LAST = 5                    # a run's score: the mean of its last 5 evaluations (of 25), not one point

THETA_INIT = np.array([0.0, 0.0, 0.0, 0.0, 0.5])     # linear policy: constant push, contact chatters
THETA_GOOD = np.array([3.0, -0.5, 3.0, -0.5, 0.5])   # linear policy: pushes and settles near the target
EVAL_SEED = 2024                                     # the 128 fixed initial states of every evaluation

SETTINGS = {                      # the lesson run: small versions of the three experiments
    "exp": "all",
    # Exp 1: the gradient estimator at fixed linear policies
    "snapshots": ("init",), "rhos": (0.0, 0.003, 0.01, 0.03), "horizons": (0, 1, 4, 16, 64, T), "episodes": 512,
    "truth_episodes": 8192, "critic_iterations": 40, "stiffness_sweep": (), "sweep_episodes": 512, "ratio_episodes": 2048,
    # Exp 2: training an MLP policy
    "seeds": 1, "env_steps": 160_000, "arms": ("H8", "H32", "BPTT", "BPTT_rho0.01", "anneal_H"),
    "actor_lr": ACTOR_LR, "diagnose": False, "resume": False,
    # Exp 3: value critic against value-gradient critic
    "fidelity_iterations": 60, "held_out": 64, "reference_rollouts": 64, "exp3_arms": ("Q_H8", "G_H8_lam0.95"),
}
FULL = {                          # what --full changes
    "snapshots": ("init", "good"), "horizons": (0, 1, 2, 4, 8, 16, 32, 64, T), "episodes": 2048, "truth_episodes": 40960,
    "critic_iterations": 100, "stiffness_sweep": (300.0, 1000.0, 3000.0), "sweep_episodes": 2048, "ratio_episodes": 8192,
    "seeds": 5, "env_steps": 400_000, "diagnose": True,
    "arms": ("H0_ddpg", "H4", "H8", "H16", "H32", "BPTT", "BPTT_rho0.01", "H8_rho0.01", "anneal_both", "anneal_H",
             "anneal_rho_H32", "anneal_rho_BPTT", "anneal_both_G", "anneal_H_prefit", "anneal_H_reset_adam",
             "anneal_both_prefit", "anneal_both_G_prefit"),
    "fidelity_iterations": 150, "held_out": 256, "reference_rollouts": 256,
    "exp3_arms": ("Q_H4", "G_H4_lam0.95", "G_H4_lam0", "Q_H16", "G_H16_lam0.95", "G_H16_lam0"),
}


# ----------------------------------------------------------------------------
# 2. Environment: pusher and box with a contact force of smoothing width rho (the stiffness is the lesson)
#   x = (p, v, b, w);  d = p - b (penetration);  lam = k s_rho(d)
#   s_rho(d) = rho log(1 + e^{d/rho}) = E_{n ~ Logistic(0, rho)} max(d + n, 0);   s_0(d) = max(d, 0)
#   v' = v + dt (u - lam - c_p v) / m_p;   w' = w + dt (lam - c_b w) / m_b;   p' = p + dt v';   b' = b + dt w'
#   step_numpy, act_numpy, rollout_numpy (Part 2): the same step, action and rollout without a graph
# ----------------------------------------------------------------------------
def soft_penetration(d, rho):
    """s_rho(d) and its slope s_rho'(d) = sigmoid(d/rho) = P(contact under the noise).
    rho is a scalar or one value per environment; rho = 0 is the hard max(d, 0)."""
    rho = np.asarray(rho, dtype=np.float64)
    smooth_rows = rho > 0
    hard, hard_slope = np.maximum(d, 0.0), (d > 0).astype(np.float64)
    if not np.any(smooth_rows):
        return hard, hard_slope
    width = np.where(smooth_rows, rho, 1.0)          # rows with rho = 0 divide by 1, then take the hard values
    z = d / width
    return (np.where(smooth_rows, width * np.logaddexp(0.0, z), hard),
            np.where(smooth_rows, ad.stable_sigmoid(z), hard_slope))


@ad.primitive
def contact_step(x, a, rho, stiffness=STIFFNESS):
    """One step of the batch as one op: x (N, 4), pre-squash action a (N,), rho scalar or (N,).
    Returns (N, 5): the next state and, in column 4, the reward of (x, u), u = u_max tanh(a).

    Backward, given g = (g_p', g_v', g_b', g_w', g_r):
        G_v = g_v' + dt g_p',  G_w = g_w' + dt g_b'          (p' = p + dt v', so v' also reaches p')
        g_d = dt k s'(d) (G_w / m_b - G_v / m_p)             (the force pushes the box, brakes the pusher)
        g_p = g_p' + g_d,  g_b = g_b' - g_d - 2 (b - b*) g_r,  g_v = G_v (1 - dt c_p / m_p),  g_w = G_w (1 - dt c_b / m_b)
        g_a = (G_v dt u_max / m_p - 0.02 tanh(a) g_r) (1 - tanh(a)^2)"""
    p, v, b, w = x[:, 0], x[:, 1], x[:, 2], x[:, 3]
    squashed = np.tanh(a)
    penetration, slope = soft_penetration(p - b, rho)
    force = stiffness * penetration
    out = np.empty((x.shape[0], 5), dtype=np.float64)
    v_new = v + DT * (U_MAX * squashed - force - DRAG_PUSHER * v) / MASS_PUSHER
    w_new = w + DT * (force - DRAG_BOX * w) / MASS_BOX
    out[:, 0], out[:, 1] = p + DT * v_new, v_new
    out[:, 2], out[:, 3] = b + DT * w_new, w_new
    out[:, 4] = -(b - TARGET) ** 2 - ACTION_COST * squashed ** 2

    def vjp(g):
        g_v = g[:, 1] + DT * g[:, 0]
        g_w = g[:, 3] + DT * g[:, 2]
        g_d = DT * stiffness * slope * (g_w / MASS_BOX - g_v / MASS_PUSHER)
        gx = np.empty_like(x)
        gx[:, 0] = g[:, 0] + g_d
        gx[:, 1] = g_v * (1.0 - DT * DRAG_PUSHER / MASS_PUSHER)
        gx[:, 2] = g[:, 2] - g_d - 2.0 * (b - TARGET) * g[:, 4]
        gx[:, 3] = g_w * (1.0 - DT * DRAG_BOX / MASS_BOX)
        ga = (g_v * DT * U_MAX / MASS_PUSHER - 2.0 * ACTION_COST * squashed * g[:, 4]) * (1.0 - squashed ** 2)
        return gx, ga, None
    return out, vjp


def initial_states(rng, n):
    """Pusher at rest in [-0.3, 0], box at rest in [0.3, 0.5]."""
    x = np.zeros((n, 4))
    x[:, 0] = rng.uniform(-0.3, 0.0, n)
    x[:, 2] = rng.uniform(0.3, 0.5, n)
    return x


# observation o = (b - p, v, b* - b, w) = x @ OBS_MATRIX + OBS_OFFSET
OBS_MATRIX = np.array([[-1.0, 0, 0, 0], [0, 1, 0, 0], [1, 0, -1, 0], [0, 0, 0, 1]])
OBS_OFFSET = np.array([0.0, 0.0, TARGET, 0.0])


def observe(x):
    if isinstance(x, Tensor):
        return ad.linear(x, OBS_MATRIX, OBS_OFFSET)
    return x @ OBS_MATRIX + OBS_OFFSET


# ----------------------------------------------------------------------------
# 3. Model: the policy u = u_max tanh(mu_theta(o) + sigma eps) and two critics (MLPs 64-64, target copies)
#   linear (Exp 1): mu = theta[:4] . o + theta[4], theta either (5,) or one row per episode (N, 5) (section 8)
#   MLP (Exp 2, 3): 4-32-32-1, tanh, output bias 0.5 (start by pushing).
#   value critic      Q(o, u/u_max, tau [, rho/rho_max]) -> 1,     V_hat(x) = Q(x, pi(x) + sigma eps')
#   gradient critic   G(o, tau [, rho/rho_max]) -> 4  ~  grad_x V(x)
#   tau = (T - t) / T: the value of a finite episode depends on the time left; at tau = 0 both are 0.
# ----------------------------------------------------------------------------
@ad.primitive
def linear_policy(theta, o):
    mu = np.sum(theta[..., :4] * o, axis=-1) + theta[..., 4]

    def vjp(g):
        g_theta = np.concatenate([g[..., None] * o, g[..., None]], axis=-1)  # summed back to theta's shape
        return g_theta, g[..., None] * theta[..., :4]
    return mu, vjp


def make_mlp_policy(rng):
    policy = ad.nn.MLP((4, 32, 32, 1), rng, activation="tanh")
    policy.layers[-1][1].data[:] = 0.5
    return policy


def policy_parameters(policy):
    return [p for layer in policy.layers for p in layer] if isinstance(policy, ad.nn.MLP) else [policy]


def policy_mean(policy, o, frozen=False):
    """mu_theta(o); frozen=True uses theta as a constant (gradients reach o only)."""
    if isinstance(policy, ad.nn.MLP):
        params = [p.data if frozen else p for p in policy_parameters(policy)]
        mu = ad.mlp(o, *params, activation="tanh")
        return ad.reshape(mu, mu.shape[:-1])
    return linear_policy(policy.data if frozen else policy, o)


class Critic:
    def __init__(self, kind, rng, rho_conditioned=False, lam=LAMBDA):
        self.kind, self.rho_conditioned, self.lam = kind, rho_conditioned, lam
        n_in = 4 + (kind == "Q") + 1 + rho_conditioned     # o, u (Q only), tau, rho / RHO_MAX (if conditioned)
        self.net = ad.nn.MLP((n_in, 64, 64, 1 if kind == "Q" else 4), rng, activation="tanh")
        self.params = policy_parameters(self.net)
        self.target = [p.data.copy() for p in self.params]
        self.scale = None           # running RMS of the targets, per output: the net predicts target / scale
        self.optimizer = ad.optim.Adam(self.params, lr=CRITIC_LR, betas=ADAM_BETAS)

    def features(self, x, t, rho, u=None):
        """Inputs for states x (..., 4) at times t (broadcastable to x's leading shape), u = tanh(a)."""
        o = observe(x)
        shape = o.shape[:-1]
        columns = [o]
        if self.kind == "Q":
            columns.append(ad.reshape(u, shape + (1,)) if isinstance(u, Tensor) else Tensor(np.reshape(u, shape + (1,))))
        extra = [np.broadcast_to((T - np.asarray(t, dtype=float)) / T, shape)]
        if self.rho_conditioned:
            extra.append(np.broadcast_to(np.asarray(rho, dtype=float) / RHO_MAX, shape))
        columns.append(Tensor(np.stack(extra, axis=-1)))
        return ad.concatenate(columns, axis=-1)

    def __call__(self, features, target=False):
        """Q: (...,) values, G: (..., 4) gradients, as a Tensor (the target net's parameters are constants)."""
        params = self.target if target else self.params
        out = ad.mlp(features, *params, activation="tanh") * (self.scale if self.scale is not None else 1.0)
        return ad.reshape(out, out.shape[:-1]) if self.kind == "Q" else out

    def values(self, x, t, rho, u=None, target=True):
        """NumPy evaluation, zero where t >= T."""
        with ad.no_grad():
            out = self(self.features(x, t, rho, u), target=target).data
        alive = np.asarray(t) < T
        return out * (alive if self.kind == "Q" else np.asarray(alive)[..., None])


def bootstrap_value(critic, policy, x, t, rho, eps_boot):
    """V_hat(x) at time t as a Tensor that carries d/dx (never d/dtheta: the policy inside is frozen).
    Q: Q_target(x, u_max tanh(mu_{sg theta}(o) + sigma eps'));   G: sg(G_target(x)) . x, whose gradient is G."""
    if critic is None or t >= T:
        return None
    if critic.kind == "G":
        return ad.sum(Tensor(critic.values(x.data, t, rho)) * x, axis=-1)
    u = ad.tanh(policy_mean(policy, observe(x), frozen=True) + SIGMA * eps_boot)
    return critic(critic.features(x, t, rho, u), target=True)


# ----------------------------------------------------------------------------
# 4. Loss: the windowed MVE actor objective and the critics' targets
#   actor, H >= 1:  sum_{t<W} gamma^t r_t + sum_{j=1}^{W/H} gamma^{jH} V_hat(x_{jH}), the rollout continuing from
#            stopgrad(x_{jH}) after each boundary (V_hat sees the non-stopped state). If V_hat = V^pi its
#            gradient is unbiased for every H: all of the bias comes from the critic. H = W = T, no critic: BPTT.
#   actor, H = 0:  sum_t gamma^t Q(sg x_t, mu_theta(sg o_t) + sigma eps_t)       (DDPG / SVG(0), online critic)
#   Q critic, TD(lambda):  y_t = r_t + gamma [(1 - lam) Q_target(x_{t+1}, u_{t+1}) + lam y_{t+1}]
#   G critic, VGL(lambda), the Bellman gradient equation with eps fixed (A_t = f_x + f_u pi_x, closed loop):
#       g_t = grad^cl r_t + gamma A_t^T [(1 - lam) G_target(x_{t+1}) + lam g_{t+1}],   g_W = G_target(x_W)
#   lam = 0 is DHP; lam = 1 is the pathwise Monte Carlo gradient. Both critics regress on their targets (MSE).
# ----------------------------------------------------------------------------
# What a window leaves for the critics: x0, t0, noise eps (W, N), rho; states (W+1, N, 4), actions a, rewards r
Rollout = collections.namedtuple("Rollout", "x0 eps t0 rho states actions rewards")


def mve_objective(policy, x0, eps, t0, rho, horizon, critic=None, rng=None, stiffness=STIFFNESS):
    """Per-environment objective (N,) as a Tensor, and the Rollout. eps (W, N) is the policy noise."""
    W, N = eps.shape
    if horizon == 0:
        states, actions, rewards = rollout_numpy(policy, x0, eps, rho, stiffness)
        times = t0 + np.arange(W)[:, None]
        a = policy_mean(policy, Tensor(observe(states[:W]))) + SIGMA * eps
        q = critic(critic.features(states[:W], times, rho, ad.tanh(a)))
        discount = (GAMMA ** np.arange(W))[:, None] * (times < T)
        return ad.sum(q * discount, axis=0), Rollout(x0, eps, t0, rho, states, actions, rewards)
    if W % horizon:
        raise ValueError(f"horizon {horizon} must divide the window {W}")
    states, actions, rewards = np.empty((W + 1, N, 4)), np.empty((W, N)), np.empty((W, N))
    segments = W // horizon          # only a Q critic's bootstrap draws noise eps' (one per segment)
    eps_boot = rng.normal(size=(segments, N)) if critic is not None and critic.kind == "Q" else [None] * segments
    x = Tensor(x0)
    states[0] = x0
    objective = Tensor(np.zeros(N))
    for j in range(segments):        # each segment: H steps, V_hat at its end, then a stop-gradient
        for t in range(j * horizon, (j + 1) * horizon):
            a = policy_mean(policy, observe(x)) + SIGMA * eps[t]
            out = contact_step(x, a, rho, stiffness=stiffness)
            objective = objective + GAMMA ** t * out[:, 4]
            x = out[:, :4]
            states[t + 1], actions[t], rewards[t] = x.data, a.data, out.data[:, 4]
        value = bootstrap_value(critic, policy, x, t0 + (j + 1) * horizon, rho, eps_boot[j])
        if value is not None:
            objective = objective + GAMMA ** ((j + 1) * horizon) * value
        x = ad.stop_gradient(x)
    return objective, Rollout(x0, eps, t0, rho, states, actions, rewards)


def td_lambda_targets(critic, policy, rollout, rng):
    W = len(rollout.rewards)
    times = rollout.t0 + np.arange(1, W + 1)[:, None]                   # times of x_1 .. x_W
    last_action = act_numpy(policy, rollout.states[W], rng.normal(size=rollout.rewards.shape[1]))
    next_actions = np.concatenate([rollout.actions[1:], last_action[None]])
    q_next = critic.values(rollout.states[1:], times, rollout.rho, np.tanh(next_actions))
    targets = np.empty_like(rollout.rewards)
    ahead = q_next[W - 1]
    for t in reversed(range(W)):
        targets[t] = rollout.rewards[t] + GAMMA * ahead
        if t > 0:
            ahead = (1.0 - critic.lam) * q_next[t - 1] + critic.lam * targets[t]
    return targets


def vgl_targets(critic, policy, rollout, stiffness=STIFFNESS):
    """All VGL(lambda) targets g_0 .. g_{W-1} from ONE backward pass. Replay the window with the stored x_0
    and eps (theta constant), feeding each next step x~_{t+1} = scale_gradient(y_{t+1}, gamma lam) where
    y_{t+1} = f(x~_t, u_t), and add gamma (1 - lam) sg(G(y_t)) . y_t (t < W) and gamma sg(G(y_W)) . y_W
    to sum_t r_t. The adjoint arriving at x~_t is then exactly g_t (it is gamma lam g_{t+1} + gamma (1 - lam) G
    after y_{t+1}, pulled back through A_t, plus grad^cl r_t)."""
    W = len(rollout.rewards)
    lam, rho = critic.lam, rollout.rho
    x = Tensor(rollout.x0, requires_grad=True)
    replayed, total = [], 0.0
    for t in range(W):
        replayed.append(x)
        a = policy_mean(policy, observe(x), frozen=True) + SIGMA * rollout.eps[t]
        out = contact_step(x, a, rho, stiffness=stiffness)
        y = out[:, :4]
        weight = GAMMA if t + 1 == W else GAMMA * (1.0 - lam)
        total = total + ad.sum(out[:, 4])
        if weight and rollout.t0 + t + 1 < T:
            total = total + ad.sum(Tensor(weight * critic.values(y.data, rollout.t0 + t + 1, rho)) * y)
        x = ad.scale_gradient(y, GAMMA * lam)
    total.backward()
    return np.stack([xt.grad for xt in replayed])


# ----------------------------------------------------------------------------
# 5. Update: one actor step (backward, clip the norm at 1, Adam) and one critic regression
# ----------------------------------------------------------------------------
def actor_gradient(optimizer, objective, window):
    """Backpropagate the actor loss -mean(objective) / window into the policy's .grad."""
    optimizer.zero_grad()
    loss = -ad.mean(objective) / window
    loss.backward()
    return loss


def actor_step(optimizer, params, lr):
    """Clip the gradient norm at GRAD_CLIP, then one Adam step; returns the pre-clip norm (clipping hides it)."""
    norm = ad.optim.clip_grad_norm(params, GRAD_CLIP)
    optimizer.lr = lr
    optimizer.step()
    return norm


def fit_regression(critic, features, targets, rng, epochs=CRITIC_EPOCHS, minibatches=CRITIC_MINIBATCHES):
    """Regress the online net on (features, targets) with Adam; then move the target net."""
    features = features.reshape(-1, features.shape[-1])
    targets = targets.reshape(len(features), -1)
    rms = np.sqrt(np.mean(targets ** 2, axis=0)) + 1e-6
    critic.scale = rms if critic.scale is None else np.sqrt(0.9 * critic.scale ** 2 + 0.1 * rms ** 2)
    scaled = targets / critic.scale
    for _ in range(epochs):
        for rows in np.array_split(rng.permutation(len(features)), minibatches):
            error = ad.mlp(Tensor(features[rows]), *critic.params, activation="tanh") - scaled[rows]
            loss = ad.mean(error * error)
            critic.optimizer.zero_grad()
            loss.backward()
            critic.optimizer.step()
    for i, p in enumerate(critic.params):
        critic.target[i] = TARGET_KEEP * critic.target[i] + (1.0 - TARGET_KEEP) * p.data
    return float(loss.data)


def fit_critic(critic, policy, rollout, rng, stiffness=STIFFNESS):
    """Targets from this window (with the policy that collected it), then one round of regression."""
    W = len(rollout.rewards)
    times = rollout.t0 + np.arange(W)[:, None]
    if critic.kind == "Q":
        targets = td_lambda_targets(critic, policy, rollout, rng)
        features = critic.features(rollout.states[:W], times, rollout.rho, np.tanh(rollout.actions)).data
    else:
        targets = vgl_targets(critic, policy, rollout, stiffness)
        features = critic.features(rollout.states[:W], times, rollout.rho).data
    return fit_regression(critic, features, targets, rng)


# ----------------------------------------------------------------------------
# 6. Training: SHAC-style windows of 32 steps in 64 environments, actor then critic, evaluated on hard contact
#   critics fitted to a FIXED policy (Exp 1 and 3, the refit at a switch of H): Part 2, train_critics_for_policy
# ----------------------------------------------------------------------------
def schedule(method, i, iterations):
    """(H_i, rho_i). Anneal: over the first 70% of iterations, s = i / (0.7 I), rho = 0.01 (1 - s)^2 and
    H = 2^round(5 - 3 s): 32 -> 4 while the smoothing goes to zero; then (4, 0). (A control arm may stop the
    smoothing at rho_end > 0: rho = rho_end + (0.01 - rho_end)(1 - s)^2.)"""
    s = min(1.0, i / (0.7 * iterations))
    horizon = 2 ** int(round(5 - 3 * s)) if method["horizon"] == "anneal" else method["horizon"]
    end = method.get("rho_end", 0.0)
    return horizon, (end + (RHO_MAX - end) * (1.0 - s) ** 2 if method["rho"] == "anneal" else method["rho"])


def train(method, seed, env_steps, eval_points=25, lr=ACTOR_LR, diagnose=False):
    """Train an MLP policy with one method; returns its learning curves (evaluated on the hard system)."""
    rng = np.random.default_rng(seed)
    policy = make_mlp_policy(rng)
    params = policy_parameters(policy)
    anneal = method["rho"] == "anneal"
    critic = (Critic(method["critic"], rng, rho_conditioned=anneal, lam=method.get("critic_lambda", LAMBDA))
              if method["critic"] else None)
    optimizer = ad.optim.Adam(params, lr=lr, betas=ADAM_BETAS)
    window = T if method["horizon"] == T else WINDOW          # BPTT differentiates whole episodes
    iterations = max(1, env_steps // (N_ENVS * window))
    eval_every = max(1, iterations // eval_points)
    log = TrainingLog(policy, window)
    switch = SwitchOfH(method, seed, diagnose, critic, policy, params, lr, window, log)
    t, x, env_rho = 0, None, None
    for i in range(iterations):
        started = time.perf_counter()
        horizon, rho = schedule(method, i, iterations)
        if t == 0:              # synchronised resets every T steps; annealing draws each env's rho in [0, rho_i]
            x = initial_states(rng, N_ENVS)
            env_rho = rho * rng.uniform(size=N_ENVS) if anneal and method.get("rho_spread", True) else rho
        if switch.happens(i, iterations):  # a switch of H: remedies, --diagnose (Part 2, SwitchOfH)
            started, optimizer = switch(i, horizon, env_rho, optimizer, rng, started)
        eps = rng.normal(size=(window, N_ENVS))
        objective, rollout = mve_objective(policy, x, eps, t, env_rho, horizon, critic, rng)
        loss = actor_gradient(optimizer, objective, window)
        ad.runs.check_finite("actor loss", loss, f"iteration {i}")
        if critic is not None:  # before the actor moves: the targets use the policy that collected the data
            fit_critic(critic, policy, rollout, rng)
        log.norms.append(actor_step(optimizer, params, lr * (1.0 - i / iterations)))
        ad.runs.check_finite("policy parameters", np.concatenate([p.data.ravel() for p in params]), f"iteration {i}")
        x, t = rollout.states[-1], (t + window) % T
        log.pause(time.perf_counter() - started)
        if (i + 1) % eval_every == 0 or i + 1 == iterations:
            log.record((i + 1) * N_ENVS * window + switch.extra_steps)
    return dict(log.summary(), iterations=iterations, window=window, switch_diagnostics=switch.diagnostics,
                extra_env_steps=switch.extra_steps, policy=policy, critic=critic)


# ----------------------------------------------------------------------------
# 7. Baseline: the arms compared, from H = 0 (DDPG-like) and H = T (BPTT, no critic) to the annealed schedules
#   Every arm trains the same MLP policy with the same env-step budget; only H, rho and the critic differ.
# ----------------------------------------------------------------------------
METHODS = {
    "H0_ddpg": dict(label="H=0 (DDPG-like), Q", horizon=0, rho=0.0, critic="Q"),
    **{f"H{h}": dict(label=f"H={h}, Q", horizon=h, rho=0.0, critic="Q") for h in (4, 8, 16, 32)},
    "BPTT": dict(label="BPTT (H=T)", horizon=T, rho=0.0, critic=None),
    "BPTT_rho0.01": dict(label="BPTT on rho=0.01", horizon=T, rho=0.01, critic=None),
    "H8_rho0.01": dict(label="H=8 on rho=0.01, Q", horizon=8, rho=0.01, critic="Q"),
    # the two schedules
    "anneal_both": dict(label="anneal H 32->4 and rho 0.01->0, Q", horizon="anneal", rho="anneal", critic="Q"),
    "anneal_H": dict(label="anneal H 32->4 only (rho=0), Q", horizon="anneal", rho=0.0, critic="Q"),
}
# Part 2 adds the controls and the remedies for a switch of H (METHODS.update), and Exp 3's G arms (EXP3_METHODS)


# ----------------------------------------------------------------------------
# 8. Measurement: evaluation on the hard system, the true gradient, and the estimator's bias and variance
#   truth      grad J of the HARD objective J = E sum_{t<T} gamma^t r_t, central differences with
#              common random numbers (the same x_0 and eps at theta +- delta): Part 2, finite_difference_gradient
#   estimates  per-sample gradients g_n of the windowed objective (W = T): per_sample_gradients
#   bias  beta = |mean g - grad J|^2 / |grad J|^2     variance  nu = tr Cov(g) / |grad J|^2
#   mse64 = mean over batches of 64 episodes of |batch mean - grad J|^2 / |grad J|^2 (= bias + nu / 64)
# ----------------------------------------------------------------------------
def evaluate(policy, episodes=128):
    """Deterministic policy, HARD system, fixed initial states: (mean undiscounted return, mean |b_T - b*|)."""
    x = initial_states(np.random.default_rng(EVAL_SEED), episodes)
    total = np.zeros(episodes)
    for _ in range(T):
        x, r = step_numpy(x, act_numpy(policy, x), 0.0)
        total += r
    return float(total.mean()), float(np.mean(np.abs(x[:, 2] - TARGET)))


def per_sample_gradients(theta, horizon, rho, critic, episodes, rng, stiffness=STIFFNESS, chunk=1024):
    """(episodes, 5) per-sample gradients of the windowed MVE objective: theta tiled into an (N, 5) node, one
    backward, and row n of its .grad is episode n's gradient. Also the mean number of contact onsets per episode
    (how many stiff Jacobians the gradient crossed: Part 2, contact_onsets)."""
    grads, onsets = [], []
    for start in range(0, episodes, chunk):
        n = min(chunk, episodes - start)
        rows = Tensor(np.tile(theta, (n, 1)), requires_grad=True)
        x0, eps = initial_states(rng, n), rng.normal(size=(T, n))
        objective, rollout = mve_objective(rows, x0, eps, 0, rho, horizon, critic, rng, stiffness)
        ad.sum(objective).backward()
        grads.append(rows.grad)
        onsets.append(contact_onsets(rollout.states))
    return np.concatenate(grads), float(np.mean(np.concatenate(onsets)))


def gradient_statistics(grads, truth, batch=64):
    norm2 = float(truth @ truth)
    mean = grads.mean(axis=0)
    variance = float(np.sum(grads.var(axis=0, ddof=1))) / norm2
    bias = float(np.sum((mean - truth) ** 2)) / norm2
    batches = len(grads) // batch
    batch_means = grads[:batches * batch].reshape(batches, batch, -1).mean(axis=1)
    mse = float(np.mean(np.sum((batch_means - truth) ** 2, axis=1))) / norm2
    return {"bias": bias, "bias_minus_noise": bias - variance / len(grads), "variance": variance, "mse64": mse,
            "max_norm": float(np.max(np.linalg.norm(grads, axis=1)) / math.sqrt(norm2))}


# ----------------------------------------------------------------------------
# 9. main: parse the settings, check the output folder, run the experiments asked for, write the results
# ----------------------------------------------------------------------------
def main(argv=None):
    args = ad.runs.command_line(__doc__, "mve_critic", SETTINGS, FULL, HELP, types=setting_types(), argv=argv)
    out = ad.runs.prepare_out(args.out)                     # usable, or a one-line error, before any work
    cfg, started = config(args), time.perf_counter()
    rng = np.random.default_rng(args.seed)
    metrics, walls, learned, exp1, exp2 = {}, {}, {}, None, None
    print(f"mve_critic: {'full' if args.full else 'lesson'} run, experiments {args.exp}, out {out}")
    try:
        if args.exp in ("1", "all"):     # the gradient estimator's bias and variance against H and rho
            exp1 = timed(walls, "exp1", experiment_1, cfg, rng)
            metrics["exp1"] = report_exp1(exp1, out, walls["exp1"])
        if args.exp in ("2", "all"):     # training: fixed H and rho, the anneals and their controls
            exp2 = timed(walls, "exp2", experiment_2, cfg, ad.runs.prepare_out(os.path.join(out, "runs")))
            metrics["exp2"], learned["exp2"] = report_exp2(exp2, cfg, out, walls["exp2"]), exp2["runs"]
        if args.exp in ("3", "all"):     # value critic against value-gradient critic
            exp3 = timed(walls, "exp3", experiment_3, cfg, rng, exp1, ad.runs.prepare_out(os.path.join(out, "runs")),
                         exp2)
            metrics["exp3"], learned["exp3"] = report_exp3(exp3, cfg, out, walls["exp3"]), exp3["runs"]
            learned["exp3_fidelity"] = exp3["critics"]
    except ad.runs.Diverged:             # keep what finished before the run diverged
        ad.runs.write_metrics(out, metrics, args, started, name="metrics_diverged.json")
        raise
    write_outputs(out, metrics, learned, walls, args, started)
    return metrics


# ============================== Part 2: running the experiment ==============================
# ----------------------------------------------------------------------------
# The command line: list-valued settings, checked at parse time
# ----------------------------------------------------------------------------
def comma_list(convert, check, what):
    """An argparse type: a comma-separated list whose items pass `check` (empty text is the empty list)."""
    def parse(text):
        try:
            items = tuple(convert(item) for item in text.split(",") if item.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
        bad = [item for item in items if not check(item)]
        if bad:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {bad[0]!r}")
        return items
    parse.__name__ = what
    return parse


# each setting's --help text (the settings themselves are section 1)
HELP = {
    "exp": "which experiment: 1 gradient bias/variance vs H and rho, 2 training, 3 value vs gradient critic, or all",
    "snapshots": "Exp 1: linear-policy snapshots, from init (constant push) and good",
    "rhos": "Exp 1: contact smoothing widths rho (m), comma-separated",
    "horizons": "Exp 1: model horizons H (0 or a divisor of T = 128), comma-separated",
    "episodes": "Exp 1: per-sample gradients per (snapshot, rho, H) cell (>= 64: one 64-episode batch)",
    "truth_episodes": "Exp 1: episodes of the finite-difference grad J on the hard system",
    "critic_iterations": "Exp 1: policy-evaluation windows that fit the Q and G critics per (snapshot, rho)",
    "stiffness_sweep": "Exp 1: stiffnesses k (N/m, < 5000) of the H = T variance sweep, comma-separated",
    "sweep_episodes": "Exp 1: episodes per cell of the stiffness sweep",
    "ratio_episodes": "Exp 1: episodes per rho of the smoothing-ratio study at both snapshots (>= 64)",
    "seeds": "Exp 2 and 3: training seeds per arm (seed, seed + 1000, ...)",
    "env_steps": "Exp 2 and 3: environment steps per training run",
    "arms": "Exp 2: training arms, comma-separated (the names in METHODS)",
    "actor_lr": "Exp 2 and 3: the actor's Adam step size (decays linearly to 0)",
    "diagnose": "Exp 2: measure the actor's gradient error at each H where the anneal switches H",
    "resume": "Exp 2: reuse the finished runs saved in OUT/runs/ (same arm, seed and budget)",
    "fidelity_iterations": "Exp 3: policy-evaluation windows fitting the critics compared on held-out states",
    "held_out": "Exp 3: held-out states of the critic comparison",
    "reference_rollouts": "Exp 3: Monte Carlo rollouts per held-out state for the reference V and grad V",
    "exp3_arms": "Exp 3: training arms with the gradient critic, comma-separated (the names in EXP3_METHODS)",
}


def setting_types():
    """Each setting's parser: sizes are bounded so that a typo (1e11) is refused at once, not after hours."""
    whole = ad.runs.whole
    return {
        "exp": ad.runs.one_of("1", "2", "3", "all"),
        "snapshots": comma_list(str, lambda s: s in SNAPSHOTS, "snapshot names (init, good)"),
        "rhos": comma_list(float, lambda r: 0.0 <= r <= 0.1, "smoothing widths in [0, 0.1]"),
        "horizons": comma_list(int, lambda h: h == 0 or (h > 0 and T % h == 0), f"horizons (0 or divisors of {T})"),
        "stiffness_sweep": comma_list(float, lambda k: 0 < k < 5000, "stiffnesses in (0, 5000)"),
        "arms": comma_list(str, lambda a: a in METHODS, "training arms (the names in METHODS)"),
        "exp3_arms": comma_list(str, lambda a: a in EXP3_METHODS, "Exp 3 arms (the names in EXP3_METHODS)"),
        "actor_lr": ad.runs.number(exclusive_minimum=0.0),
        "episodes": whole(64, 2**20), "truth_episodes": whole(2, 2**22), "critic_iterations": whole(0, 10**5),
        "sweep_episodes": whole(64, 2**20), "ratio_episodes": whole(64, 2**20), "seeds": whole(1, 100), "env_steps": whole(1, 10**8),
        "fidelity_iterations": whole(0, 10**5), "held_out": whole(2, 2**14), "reference_rollouts": whole(2, 2**12),
    }


def config(args):
    """The settings as the experiments read them (the arms resolved to their definitions)."""
    cfg = {key: getattr(args, key) for key in SETTINGS}
    if args.exp in ("1", "all") and (T not in cfg["horizons"] or 0.0 not in cfg["rhos"] or len(cfg["rhos"]) < 2
                                     or "init" not in cfg["snapshots"] or not any(h >= 8 for h in cfg["horizons"])):
        raise ad.runs.BadInput(f"Exp 1 compares against hard contact and BPTT: --rhos needs 0 and one more value, "
                               f"--horizons needs {T} and one H >= 8, --snapshots needs init")
    cfg.update(seed=args.seed, methods={k: METHODS[k] for k in args.arms},
               exp3_methods={k: EXP3_METHODS[k] for k in args.exp3_arms})
    return cfg


def timed(walls, name, function, *args):
    started = time.perf_counter()
    result = function(*args)
    walls[name] = time.perf_counter() - started
    return result


def write_outputs(out, metrics, learned, walls, args, started):
    """params.npz (every trained policy and critic), metrics.json, and the closing lines."""
    save_learned(out, learned, args.seed)
    path = ad.runs.write_metrics(out, metrics, args, started)
    print("\nwall times: " + ", ".join(f"{k} {ad.runs.format_seconds(v)}" for k, v in walls.items())
          + f"  (total {ad.runs.format_seconds(time.perf_counter() - started)}; 2 shared cores)")
    print(f"metrics: {path}; learned policies and critics: {os.path.join(out, 'params.npz')}; figures in {out}")


def report_exp1(exp1, out, wall):
    print_exp1(exp1)
    plot_bias_variance(exp1, out, "mve_critic_bias_variance.png")
    plot_mse_map(exp1, out, "mve_critic_mse_map.png")
    print(f"Exp 1 wall time {ad.runs.format_seconds(wall)}")
    return dict(exp1, wall_seconds=wall)


def report_exp2(exp2, cfg, out, wall):
    print_exp2(exp2, cfg["methods"])
    plot_training(exp2["runs"], cfg["methods"], out, "mve_critic_training.png",
                  f"Training: {cfg['env_steps']:,} env steps per run, {cfg['seeds']} seed(s), k = {STIFFNESS:g}")
    if exp2["switches"]:
        plot_switches(exp2["switches"], cfg["methods"], out, "mve_critic_switches.png")
    print(f"Exp 2 wall time {ad.runs.format_seconds(wall)}")
    return {"summary": exp2["summary"], "claims": exp2["claims"], "switches": exp2["switches"],
            "runs": strip_runs(exp2["runs"]), "wall_seconds": wall}


def report_exp3(exp3, cfg, out, wall):
    print_exp3(exp3, cfg["exp3_methods"])
    plot_critics(exp3, out, "mve_critic_critics.png")
    print(f"Exp 3 wall time {ad.runs.format_seconds(wall)}")
    return {"fidelity": exp3["fidelity"], "bias_Q_vs_G_terminal": exp3["bias_Q_vs_G_terminal"],
            "summary": exp3["summary"], "comparisons": exp3["comparisons"],
            "runs": strip_runs(exp3["runs"]), "wall_seconds": wall}


# ----------------------------------------------------------------------------
# Without a graph: the step, the action and the rollout (evaluation, critic targets, policy evaluation)
# ----------------------------------------------------------------------------
def step_numpy(x, a, rho, stiffness=STIFFNESS):
    """contact_step without a graph: (next state, reward)."""
    out = contact_step.forward(x, a, rho, stiffness=stiffness)[0]
    return out[:, :4], out[:, 4]


def act_numpy(policy, x, eps=None):
    """Pre-squash action mu(o) + sigma eps for states x (..., 4), no graph; eps None: deterministic."""
    with ad.no_grad():
        mu = policy_mean(policy, Tensor(observe(x)), frozen=True).data
    return mu if eps is None else mu + SIGMA * eps


def rollout_numpy(policy, x0, eps, rho, stiffness=STIFFNESS):
    """mve_objective's rollout of len(eps) steps, without a graph (tested equal in tests/test_mve_critic.py).
    Returns states (W+1, N, 4), actions (W, N), rewards (W, N)."""
    steps = len(eps)
    states = np.empty((steps + 1,) + x0.shape)
    actions, rewards = np.empty(eps.shape), np.empty(eps.shape)
    states[0] = x0
    for t in range(steps):
        actions[t] = act_numpy(policy, states[t], eps[t])
        states[t + 1], rewards[t] = step_numpy(states[t], actions[t], rho, stiffness)
    return states, actions, rewards


# ----------------------------------------------------------------------------
# Policy evaluation: critics fitted to a fixed policy, the same fit_critic as in training
# ----------------------------------------------------------------------------
def train_critics_for_policy(policy, rho, iterations, rng, critics, stiffness=STIFFNESS):
    """Policy evaluation: 64 environments in windows of 32 steps; every critic is fitted on every window."""
    x, t = None, 0
    for _ in range(iterations):
        if t == 0:
            x = initial_states(rng, N_ENVS)
        eps = rng.normal(size=(WINDOW, N_ENVS))
        rollout = Rollout(x, eps, t, rho, *rollout_numpy(policy, x, eps, rho, stiffness))
        for critic in critics:
            fit_critic(critic, policy, rollout, rng, stiffness)
        x, t = rollout.states[-1], (t + WINDOW) % T


# ----------------------------------------------------------------------------
# Training plumbing: the learning-curve log, what an arm does at a switch of H, and the switch diagnostics
# ----------------------------------------------------------------------------
class TrainingLog:
    """The learning curve (evaluated on the hard system), the pre-clip gradient norms and the training clock."""

    def __init__(self, policy, window):
        self.policy, self.window, self.seconds, self.norms = policy, window, 0.0, []
        self.curve = {k: [] for k in ("env_steps", "seconds", "return", "box_error")}
        self.record(0)

    def pause(self, seconds):
        self.seconds += seconds

    def record(self, env_steps):
        ret, err = ad.runs.check_finite("evaluation return", evaluate(self.policy), f"{env_steps:,} env steps")
        for key, value in (("env_steps", env_steps), ("seconds", self.seconds), ("return", ret), ("box_error", err)):
            self.curve[key].append(value)

    def summary(self, last=SCORE_LAST):
        """The score of a run is the mean of its last `last` evaluations, not its final point (one point is noisy)."""
        norms = np.array(self.norms)
        return {"curve": self.curve, "grad_norms": self.norms, "final_return": self.curve["return"][-1],
                "final_box_error": self.curve["box_error"][-1], "score": float(np.mean(self.curve["return"][-last:])),
                "score_box_error": float(np.mean(self.curve["box_error"][-last:])),
                "median_grad_norm": float(np.median(norms)), "fraction_clipped": float(np.mean(norms > GRAD_CLIP)),
                "train_seconds": self.seconds}


PREFIT_WINDOWS = 8                # the "refit the critic at a switch" remedy: 8 windows (16k env steps) per switch
DIAGNOSED_HORIZONS = (4, 8, 16, 32)  # where the actor's gradient error is measured at a switch of H ...
REFERENCE_RHO = 0.003             # ... against BPTT on this smoothing (low variance, bias < 1e-3 |grad J|^2)
ANNEAL_H = dict(horizon="anneal", rho=0.0)      # the schedule whose switch points every arm is diagnosed at


class SwitchOfH:
    """What train does at each iteration where the anneal schedule switches H (for fixed-H arms too, as a
    control): first, with diagnose, measure the actor's gradient error at every H in DIAGNOSED_HORIZONS (off
    the training clock, on a separate random stream); then apply the arm's remedy, if it has one."""

    def __init__(self, method, seed, diagnose, critic, policy, params, lr, window, log):
        self.method, self.diagnose, self.critic, self.policy, self.params = method, diagnose, critic, policy, params
        self.lr, self.window, self.log = lr, window, log
        self.rng, self.diagnostics, self.extra_steps = np.random.default_rng([seed, 1]), [], 0

    def happens(self, i, iterations):
        return i > 0 and schedule(ANNEAL_H, i, iterations)[0] != schedule(ANNEAL_H, i - 1, iterations)[0]

    def __call__(self, i, horizon, rho, optimizer, rng, started):
        """Returns the iteration's restarted clock and the optimizer (a new one after "reset_adam")."""
        if self.diagnose and self.critic is not None and horizon != T:
            self.log.pause(time.perf_counter() - started)
            self.diagnostics.append(dict(gradient_errors(self.policy, self.critic, rho, self.rng), iteration=i,
                                         env_steps=i * N_ENVS * self.window + self.extra_steps, horizon=horizon))
            started = time.perf_counter()
        return started, self.remedy(optimizer, rho, rng)

    def remedy(self, optimizer, rho, rng):
        """The arm's remedy. "prefit": fit the critic on PREFIT_WINDOWS fresh windows of the current policy (their
        env steps are counted); "reset_adam": forget the optimizer's moments, scaled to the old horizon's gradients."""
        if self.method.get("at_switch") == "prefit" and self.critic is not None:
            train_critics_for_policy(self.policy, rho, PREFIT_WINDOWS, rng, [self.critic])
            self.extra_steps += PREFIT_WINDOWS * N_ENVS * WINDOW
        if self.method.get("at_switch") == "reset_adam":
            optimizer = ad.optim.Adam(self.params, lr=self.lr, betas=ADAM_BETAS)
        return optimizer


def gradient_errors(policy, critic, rho, rng, batches=4):
    """At the current policy: the actor's gradient at each H in DIAGNOSED_HORIZONS against BPTT's (whole
    episodes, W = T, the same starts and noise for every H), and the critic's value error at the bootstrap
    states x_{jH} against the discounted return that followed them (one rollout each, so it includes that
    return's noise). With an exact critic every H would give BPTT's gradient: the gap is the critic's doing.
    The BPTT reference runs on rho >= REFERENCE_RHO: through hard contact its variance would drown the
    comparison, and at rho = 0.003 its bias against hard contact is tiny (Exp 1 measures both)."""
    params = policy_parameters(policy)
    grads = {h: [] for h in DIAGNOSED_HORIZONS + (T,)}
    squared = {h: np.zeros(2) for h in DIAGNOSED_HORIZONS}
    for _ in range(batches):
        x0, eps, boot = initial_states(rng, N_ENVS), rng.normal(size=(T, N_ENVS)), int(rng.integers(2**31))
        for h in grads:
            policy.zero_grad()
            objective, rollout = mve_objective(policy, x0, eps, 0, np.maximum(rho, REFERENCE_RHO) if h == T else rho, h,
                                               None if h == T else critic, np.random.default_rng(boot))
            ad.mean(objective).backward()
            grads[h].append(np.concatenate([p.grad.ravel() for p in params]))
        for h in DIAGNOSED_HORIZONS:           # rollout is BPTT's: the same trajectories
            squared[h] += critic_value_error(critic, rollout, h)
    policy.zero_grad()
    reference = np.mean(grads[T], axis=0)
    noise = np.linalg.norm(np.std(grads[T], axis=0, ddof=1)) / math.sqrt(batches) / np.linalg.norm(reference)
    result = {"reference_noise": float(noise), "gradient_rel_error": {}, "gradient_cosine": {}, "critic_value_rel_error": {}}
    for h in DIAGNOSED_HORIZONS:             # keys are strings, as they come back from JSON
        g = np.mean(grads[h], axis=0)
        result["gradient_rel_error"][str(h)] = float(np.linalg.norm(g - reference) / np.linalg.norm(reference))
        result["gradient_cosine"][str(h)] = float(g @ reference / (np.linalg.norm(g) * np.linalg.norm(reference)))
        result["critic_value_rel_error"][str(h)] = float(math.sqrt(squared[h][0] / squared[h][1])) if squared[h][1] else None
    return result


def critic_value_error(critic, rollout, horizon):
    """(sum of (Q(x_t, u_t) - G_t)^2, sum of G_t^2) over the bootstrap times t = H, 2H, ... < T, where G_t is
    the discounted return from t on in the same rollout. Zeros for a gradient critic (it has no values)."""
    if critic.kind != "Q":
        return np.zeros(2)
    rewards = rollout.rewards
    returns = np.zeros_like(rewards)
    ahead = np.zeros(rewards.shape[1])
    for t in reversed(range(len(rewards))):
        ahead = rewards[t] + GAMMA * ahead
        returns[t] = ahead
    times = np.arange(horizon, T, horizon)
    q = critic.values(rollout.states[times], times[:, None], rollout.rho, np.tanh(rollout.actions[times]))
    return np.array([np.sum((q - returns[times]) ** 2), np.sum(returns[times] ** 2)])


# ----------------------------------------------------------------------------
# Experiment 1: bias and variance of the policy-gradient estimator against H, per rho
# ----------------------------------------------------------------------------
SNAPSHOTS = {"init": THETA_INIT, "good": THETA_GOOD}


def discounted_returns(theta, x0, eps, rho, stiffness):
    """sum_{t<T} gamma^t r_t of each episode under the linear policy theta (no graph)."""
    total, x = np.zeros(len(x0)), x0
    for t in range(T):
        x, r = step_numpy(x, linear_policy.forward(theta, observe(x))[0] + SIGMA * eps[t], rho, stiffness)
        total += GAMMA ** t * r
    return total


def finite_difference_gradient(theta, episodes, rng, stiffness=STIFFNESS, delta=0.01, chunk=8192):
    """grad J on the hard system and its standard error (from the spread of the per-episode differences)."""
    samples = []
    for start in range(0, episodes, chunk):
        n = min(chunk, episodes - start)
        x0, eps = initial_states(rng, n), rng.normal(size=(T, n))
        rows = np.empty((n, 5))
        for i in range(5):
            step = np.eye(5)[i] * delta
            rows[:, i] = (discounted_returns(theta + step, x0, eps, 0.0, stiffness)
                          - discounted_returns(theta - step, x0, eps, 0.0, stiffness)) / (2 * delta)
        samples.append(rows)
    samples = np.concatenate(samples)
    return samples.mean(axis=0), samples.std(axis=0) / math.sqrt(len(samples))


def contact_onsets(states):
    """Number of times per episode the gap closes (d = p - b crosses 0 upwards); states (steps, N, 4)."""
    touching = states[:, :, 0] - states[:, :, 2] > 0
    return np.sum(touching[1:] & ~touching[:-1], axis=0)


def experiment_1(cfg, rng):
    horizons, rhos = cfg["horizons"], cfg["rhos"]
    total = len(cfg["snapshots"]) * len(rhos) * (2 * len(horizons) - 2)
    progress, done = ad.runs.Progress(total, "exp1 gradient estimates"), 0
    result = {"horizons": list(horizons), "rhos": list(rhos), "episodes": cfg["episodes"], "snapshots": {}}
    for name in cfg["snapshots"]:
        theta = SNAPSHOTS[name]
        truth, truth_se = finite_difference_gradient(theta, cfg["truth_episodes"], rng)
        snap = {"theta": theta, "grad_J": truth, "grad_J_stderr": truth_se,
                "truth_noise_floor": float(np.sum(truth_se ** 2) / (truth @ truth)), "rho": {}}
        for rho in rhos:
            q, g = Critic("Q", rng), Critic("G", rng)
            train_critics_for_policy(Tensor(theta), rho, cfg["critic_iterations"], rng, [q, g])
            rows = {"Q": {}, "G": {}}
            for horizon in horizons:
                for kind, critic in (("Q", q), ("G", g)):
                    if kind == "G" and horizon in (0, T):
                        continue        # H = T needs no critic (shared with Q); H = 0 needs dQ/du, which G has not
                    grads, onsets = per_sample_gradients(theta, horizon, rho, critic, cfg["episodes"], rng)
                    rows[kind][horizon] = dict(gradient_statistics(grads, truth), contact_onsets=onsets)
                    done += 1
                    progress.update(done, snapshot=name, rho=rho, H=horizon, critic=kind)
            rows["G"][T] = rows["Q"][T]
            snap["rho"][rho] = rows
        result["snapshots"][name] = snap

    # stiffness sweep at H = T (no critic): relative variance over k x rho, theta_init
    sweep = {}
    for k in cfg["stiffness_sweep"]:
        truth, _ = finite_difference_gradient(THETA_INIT, cfg["truth_episodes"], rng, stiffness=k)
        sweep[k] = {}
        for rho in rhos:
            grads, onsets = per_sample_gradients(THETA_INIT, T, rho, None, cfg["sweep_episodes"], rng, stiffness=k)
            sweep[k][rho] = dict(gradient_statistics(grads, truth), contact_onsets=onsets)
    result["stiffness_sweep"] = sweep
    result["smoothing_ratio"] = smoothing_ratio_study(cfg["ratio_episodes"], np.random.default_rng([cfg["seed"], 2]))
    result["claims"] = exp1_claims(result)
    return result


def smoothing_ratio_study(episodes, rng, rho=0.01, batches=8):
    """How surely does smoothing cut BPTT's variance? At both snapshots, per-sample H = T gradients on hard
    contact and on rho: the ratio tr Cov(hard) / tr Cov(smooth) on nested subsets (how the estimate moves
    with the sample count), and over `batches` independent batches: their median with a distribution-free
    interval for it (order statistics 2 and 7 of 8 cover the median with probability 93%). Heavy tails make
    the plain ratio creep upwards with n while the batch median stays put; the two together are honest."""
    study = {}
    for name, theta in SNAPSHOTS.items():
        hard, _ = per_sample_gradients(theta, T, 0.0, None, episodes, rng)
        smooth, _ = per_sample_gradients(theta, T, rho, None, episodes, rng)
        ratio = lambda a, b: float(np.sum(a.var(axis=0, ddof=1)) / np.sum(b.var(axis=0, ddof=1)))  # noqa: E731
        counts = [n for n in (256, 512, 1024, 2048, 4096, 8192, 16384) if n <= episodes]
        by_batch = sorted(ratio(h, s) for h, s in zip(np.array_split(hard, batches), np.array_split(smooth, batches)))
        study[name] = {"ratio": ratio(hard, smooth), "episodes": episodes, "rho": rho,
                       "ratio_by_count": {str(n): ratio(hard[:n], smooth[:n]) for n in counts},
                       "batch_median": float(np.median(by_batch)), "batch_interval_93pct": [by_batch[1], by_batch[-2]],
                       "batch_size": episodes // batches,
                       "max_over_mean_norm_hard": float(np.max(np.linalg.norm(hard, axis=1))
                                                        / np.mean(np.linalg.norm(hard, axis=1)))}
    return study


def exp1_claims(result):
    """Exp 1's bars as numbers (theta_init, k = 1000, Q critic): what would make the picture convincing."""
    snap = result["snapshots"]["init"]["rho"]
    rhos, horizons = result["rhos"], result["horizons"]
    hard = snap[0.0]["Q"]
    moderate = 0.01 if 0.01 in rhos else rhos[1]
    positive_h = [h for h in horizons if h > 0]
    bias = [hard[h]["bias"] for h in positive_h]
    best_h = {rho: min(horizons, key=lambda h: snap[rho]["Q"][h]["mse64"]) for rho in rhos}
    return {
        "variance_ratio_at_H_T_rho0_over_rho_moderate": hard[T]["variance"] / snap[moderate]["Q"][T]["variance"],
        "rho_moderate": moderate,
        "variance_growth_rho0_from_smallest_H>=8_to_T": hard[T]["variance"] / hard[min(h for h in horizons if h >= 8)]["variance"],
        "bias_rho0_by_H": {h: hard[h]["bias"] for h in horizons},
        "bias_falls_with_H_rho0_fraction_of_steps": float(np.mean(np.diff(bias) <= 0)),
        "bias_floor_largest_rho_at_H_T": snap[rhos[-1]]["Q"][T]["bias"],
        "best_H_by_mse64": best_h,
        "contact_onsets_at_H_T": {rho: snap[rho]["Q"][T]["contact_onsets"] for rho in rhos},
    }


# ----------------------------------------------------------------------------
# Experiment 2: training on the hard system (MLP policy, 64 envs, windows of 32, same env-step budget)
# ----------------------------------------------------------------------------
METHODS.update({    # after the arms of section 7, in this order
    "anneal_rho_H32": dict(label="anneal rho only, H=32, Q", horizon=32, rho="anneal", critic="Q"),
    "anneal_rho_BPTT": dict(label="anneal rho only, BPTT", horizon=T, rho="anneal", critic=None),
    # the full horizon kept and only the smoothing annealed, with every environment at rho_i (no critic needs
    # the spread over [0, rho_i]): to 0, and stopped at 0.003, where Exp 1's error at theta_good is lowest
    "anneal_rho_BPTT_all": dict(label="anneal rho 0.01->0 in every env, BPTT", horizon=T, rho="anneal",
                                rho_spread=False, critic=None),
    "anneal_rho_BPTT_to0.003": dict(label="anneal rho 0.01->0.003 in every env, BPTT", horizon=T, rho="anneal",
                                    rho_end=0.003, rho_spread=False, critic=None),
    "anneal_both_G": dict(label="anneal H and rho, G critic VGL(0.95)", horizon="anneal", rho="anneal", critic="G"),
    # remedies for a switch of H
    "anneal_H_prefit": dict(label="anneal H only, critic refitted at each switch", horizon="anneal", rho=0.0,
                            critic="Q", at_switch="prefit"),
    "anneal_H_reset_adam": dict(label="anneal H only, Adam reset at each switch", horizon="anneal", rho=0.0,
                                critic="Q", at_switch="reset_adam"),
    # the schedule's best chance: both anneals, the critic refitted at each switch, Q or a rho-conditioned G
    "anneal_both_prefit": dict(label="anneal H and rho, Q refitted at each switch", horizon="anneal", rho="anneal",
                               critic="Q", at_switch="prefit"),
    "anneal_both_G_prefit": dict(label="anneal H and rho, G refitted at each switch", horizon="anneal", rho="anneal",
                                 critic="G", at_switch="prefit"),
})
FIXED_ARMS = ("H0_ddpg", "H4", "H8", "H16", "H32", "BPTT", "BPTT_rho0.01", "H8_rho0.01")


def training_definition(method):
    """What a training run depends on: the arm's settings without its label. Two arms with the same definition
    train identically on the same seed (e.g. Exp 3's Q_H8 is Exp 2's H8)."""
    return {k: v for k, v in method.items() if k != "label"}


def run_methods(methods, cfg, label, cache=None, trained=None):
    """Train every arm on seeds seed, seed + 1000, ... . With `cache` (a folder) each finished run is saved
    there and reused by a later call with the same arm, seed and budget: a long experiment can run in parts.
    trained: {name: (method, runs)} of an earlier experiment; an arm that trains the same way reuses its runs."""
    runs, total = {}, len(methods) * cfg["seeds"]
    progress = ad.runs.Progress(total, label, every=10.0)
    for name, method in methods.items():
        twin = next((earlier for earlier, (m, _) in (trained or {}).items()
                     if training_definition(m) == training_definition(method)), None)
        if twin is not None:             # the same arm, seeds and budget: the same runs, so not trained twice
            runs[name] = trained[twin][1]
            print(f"{label}: {name} trains exactly as {twin} did, so its runs are reused")
            continue
        runs[name] = []
        for s in range(cfg["seeds"]):
            seed = cfg["seed"] + 1000 * s
            path = cache and os.path.join(cache, f"{name}_seed{seed}_steps{cfg['env_steps']}")
            run = load_run(path, method) if path and cfg["resume"] else None
            if run is None:
                with np.errstate(over="ignore", invalid="ignore"):   # divergence is caught, and named, by check_finite
                    run = train(method, seed, cfg["env_steps"], lr=cfg["actor_lr"], diagnose=cfg["diagnose"])
                run = save_run(path, method, run) if path else run
            runs[name].append(run)
            progress.update(sum(len(v) for v in runs.values()), arm=name, score=run["score"])
    return runs


def run_arrays(run):
    """The learned parameters of a run: {policy_i, critic_i, critic_scale} as arrays."""
    if "arrays" in run:
        return run["arrays"]
    arrays = {f"policy_{i}": p.data for i, p in enumerate(policy_parameters(run["policy"]))}
    if run["critic"] is not None:
        arrays.update({f"critic_{i}": p.data for i, p in enumerate(run["critic"].params)})
        arrays["critic_scale"] = run["critic"].scale
    return arrays


def save_learned(out, learned, seed):
    """out/params.npz: every trained policy and critic of the run, as `<experiment>/<arm>/seed<N>/<array>`
    (policy_i and critic_i are the MLP's weights and biases in layer order; critic_scale the output scale)."""
    arrays = {"seed": np.int64(seed)}
    for experiment, runs in learned.items():
        if experiment == "exp3_fidelity":
            for name, critic in runs.items():
                arrays.update({f"{experiment}/{name}/critic_{i}": p.data for i, p in enumerate(critic.params)})
                arrays[f"{experiment}/{name}/critic_scale"] = critic.scale
            continue
        for arm, seeds in runs.items():
            for s, run in enumerate(seeds):
                arrays.update({f"{experiment}/{arm}/seed{seed + 1000 * s}/{k}": v for k, v in run_arrays(run).items()})
    ad.nn.save_parameters(os.path.join(out, "params.npz"), arrays)      # atomic, never pickled


def save_run(path, method, run):
    ad.runs.write_json(path + ".json", {"method": method, "run": {k: v for k, v in run.items()
                                                                  if k not in ("policy", "critic", "arrays")}})
    ad.nn.save_parameters(path + ".npz", run_arrays(run))
    return run


def load_run(path, method):
    """A cached run, or None if there is none for this exact arm definition (or it cannot be read)."""
    try:
        with open(path + ".json") as f:
            record = json.load(f)
        arrays = ad.runs.load_arrays(path + ".npz", what="cached training run")
    except (OSError, ValueError, ad.runs.BadInput):
        return None
    if record.get("method") != json.loads(json.dumps(method)):
        return None
    return dict(record["run"], arrays=arrays, cached=path)


def strip_run(run):
    """What metrics.json keeps of a run: curves and figures, not the objects or per-iteration norms."""
    return {k: v for k, v in run.items() if k not in ("grad_norms", "policy", "critic", "arrays")}


def strip_runs(runs):
    return {k: [strip_run(r) for r in v] for k, v in runs.items()}


def summarise_runs(runs):
    """Per arm: the score (mean of each run's last evaluations) as a mean over seeds with its standard error
    (ddof = 1), the per-seed scores, and the gradient-norm figures."""
    summary = {}
    for name, seeds in runs.items():
        scores, finals = [r["score"] for r in seeds], [r["final_return"] for r in seeds]
        score, score_se = ad.runs.mean_and_se(scores)
        box, box_se = ad.runs.mean_and_se([r["score_box_error"] for r in seeds])
        summary[name] = {"score_mean": score, "score_se": score_se, "scores": scores, "final_returns": finals,
                         "box_error_mean": box, "box_error_se": box_se, "seeds": len(seeds),
                         "median_pre_clip_grad_norm": float(np.median([r["median_grad_norm"] for r in seeds])),
                         "fraction_clipped": float(np.mean([r["fraction_clipped"] for r in seeds])),
                         "train_seconds_mean": float(np.mean([r["train_seconds"] for r in seeds])),
                         "extra_env_steps": seeds[0].get("extra_env_steps", 0)}
    return summary


def experiment_2(cfg, cache=None):
    runs = run_methods(cfg["methods"], cfg, "exp2 training runs", cache)
    summary = summarise_runs(runs)
    return {"runs": runs, "summary": summary, "claims": exp2_claims(runs, summary),
            "switches": switch_summary(runs)}


def exp2_claims(runs, summary):
    """Paired differences of scores (the same seeds, so the same initial policies), for the arms present."""
    scores = {k: np.array(s["scores"]) for k, s in summary.items()}
    fixed = [k for k in summary if k in FIXED_ARMS]
    best = max(fixed, key=lambda k: summary[k]["score_mean"]) if fixed else None
    pairs = [(k, best) for k in summary if k not in FIXED_ARMS and best] + [
        ("anneal_H", "H4"), ("anneal_H", "H32"), ("anneal_both", "anneal_rho_H32"), ("anneal_both_G", "anneal_both"),
        ("anneal_H_prefit", "anneal_H"), ("anneal_H_reset_adam", "anneal_H"), ("anneal_H_prefit", "H4"),
        ("anneal_H_reset_adam", "H4"), ("anneal_both_prefit", "anneal_both"), ("anneal_both_G_prefit", "anneal_both_G"),
        ("H4", "H32")]
    differences = {f"{a} - {b}": ad.runs.paired_difference(scores[a], scores[b]) for a, b in pairs
                   if a in scores and b in scores and len(scores[a]) == len(scores[b])}
    claims = {"best_fixed_arm": best, "paired_score_differences": differences}
    points = [p for seeds in runs.values() for r in seeds for p in r.get("switch_diagnostics", [])]
    if points:   # over every diagnosed policy of every arm and seed: which H's gradient points the right way?
        claims["gradient_cosine_by_H"] = {str(h): ad.runs.mean_and_se([p["gradient_cosine"][str(h)] for p in points])
                                          for h in DIAGNOSED_HORIZONS}
        claims["critic_value_error_by_H"] = {str(h): _mean_or_none([p["critic_value_rel_error"][str(h)] for p in points])
                                             for h in DIAGNOSED_HORIZONS}
        claims["diagnosed_policies"] = len(points)
    if "BPTT" in summary and len(summary) > 1:
        others = [summary[k]["median_pre_clip_grad_norm"] for k in summary if k != "BPTT"]
        claims["BPTT_median_grad_norm_over_others"] = summary["BPTT"]["median_pre_clip_grad_norm"] / np.median(others)
    return claims


def switch_summary(runs):
    """Mean over seeds of the gradient diagnostics at each switch point, per arm (arms that were diagnosed)."""
    table = {}
    for name, seeds in runs.items():
        points = [r["switch_diagnostics"] for r in seeds if r.get("switch_diagnostics")]
        if not points:
            continue
        table[name] = []
        for k in range(min(len(p) for p in points)):
            at = [p[k] for p in points]
            entry = {"env_steps": float(np.mean([a["env_steps"] for a in at])), "horizon": at[0]["horizon"],
                     "reference_noise": float(np.mean([a["reference_noise"] for a in at]))}
            for key in ("gradient_rel_error", "gradient_cosine", "critic_value_rel_error"):
                entry[key] = {h: _mean_or_none([a[key][h] for a in at]) for h in at[0][key]}
            table[name].append(entry)
    return table


def _mean_or_none(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


# ----------------------------------------------------------------------------
# Experiment 3: value critic vs value-gradient critic
#   (a) fidelity on held-out states against Monte Carlo references (same data, same updates)
#   (b) Exp 1's bias with the G terminal (in experiment 1's results)
#   (c) training with G instead of Q, critic lambda x actor H
# ----------------------------------------------------------------------------
EXP3_METHODS = {
    "Q_H8": dict(label="Q critic TD(0.95), H=8", horizon=8, rho=0.0, critic="Q"),
    "G_H8_lam0.95": dict(label="G critic VGL(0.95), H=8", horizon=8, rho=0.0, critic="G"),
    "Q_H4": dict(label="Q TD(0.95), H=4", horizon=4, rho=0.0, critic="Q"),
    "G_H4_lam0.95": dict(label="G VGL(0.95), H=4", horizon=4, rho=0.0, critic="G"),
    "G_H4_lam0": dict(label="G VGL(0), H=4", horizon=4, rho=0.0, critic="G", critic_lambda=0.0),
    "Q_H16": dict(label="Q TD(0.95), H=16", horizon=16, rho=0.0, critic="Q"),
    "G_H16_lam0.95": dict(label="G VGL(0.95), H=16", horizon=16, rho=0.0, critic="G"),
    "G_H16_lam0": dict(label="G VGL(0), H=16", horizon=16, rho=0.0, critic="G", critic_lambda=0.0),
    "F_anneal_G": dict(label="F anneal, G VGL(0.95)", horizon="anneal", rho="anneal", critic="G"),
}


def held_out_states(policy, rho, count, rng):
    """States visited by the policy (on the rho system), at uniformly random times."""
    x0 = initial_states(rng, count)
    states, _, _ = rollout_numpy(policy, x0, rng.normal(size=(T, count)), rho)
    times = rng.integers(0, T, size=count)
    return states[times, np.arange(count)], times


def monte_carlo_references(policy, rho, states, times, rollouts, rng, chunk_rows=4096):
    """V(x) and grad_x V(x) (pathwise, through the model) from `rollouts` episodes from each state to T,
    with their standard errors. States are processed in time order so a chunk runs T - min(t) steps."""
    count = len(states)
    values, grads = np.empty((count, rollouts)), np.empty((count, rollouts, 4))
    order = np.argsort(times)
    per_chunk = max(1, chunk_rows // rollouts)
    for start in range(0, count, per_chunk):
        rows = order[start:start + per_chunk]
        t0 = np.repeat(times[rows], rollouts)
        x = start_x = Tensor(np.repeat(states[rows], rollouts, axis=0), requires_grad=True)
        total = 0.0
        for s in range(T - int(t0.min())):
            a = policy_mean(policy, observe(x), frozen=True) + SIGMA * rng.normal(size=len(t0))
            out = contact_step(x, a, rho)
            total = total + out[:, 4] * (GAMMA ** s * (t0 + s < T))
            x = out[:, :4]
        ad.sum(total).backward()
        values[rows] = total.data.reshape(len(rows), rollouts)
        grads[rows] = start_x.grad.reshape(len(rows), rollouts, 4)
    se = lambda a: a.std(axis=1) / math.sqrt(rollouts)  # noqa: E731
    return values.mean(axis=1), grads.mean(axis=1), se(values), se(grads)


def value_critic_estimates(critic, policy, states, times, rho, rng, samples=16):
    """V_hat(x) = mean over eps' of Q(x, pi(x) + sigma eps') and its total derivative in x (through the policy too)."""
    x = Tensor(np.repeat(states, samples, axis=0), requires_grad=True)
    u = ad.tanh(policy_mean(policy, observe(x), frozen=True) + SIGMA * rng.normal(size=len(x)))
    q = critic(critic.features(x, np.repeat(times, samples), rho, u))
    ad.sum(q).backward()
    return q.data.reshape(-1, samples).mean(axis=1), x.grad.reshape(-1, samples, 4).mean(axis=1)


def relative_error(estimate, reference):
    return float(np.linalg.norm(estimate - reference) / np.linalg.norm(reference))


def mean_cosine(a, b):
    return float(np.mean(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)))


def critic_fidelity(cfg, rng, rho=0.01):
    policy = Tensor(THETA_GOOD)
    critics = {"Q, TD(0.95)": Critic("Q", rng), "Q, TD(0)": Critic("Q", rng, lam=0.0),
               "G, VGL(0.95)": Critic("G", rng), "G, VGL(0) = DHP": Critic("G", rng, lam=0.0)}
    train_critics_for_policy(policy, rho, cfg["fidelity_iterations"], rng, list(critics.values()))
    states, times = held_out_states(policy, rho, cfg["held_out"], rng)
    v_mc, g_mc, v_se, g_se = monte_carlo_references(policy, rho, states, times, cfg["reference_rollouts"], rng)
    table = {"reference_value_noise": float(np.linalg.norm(v_se) / np.linalg.norm(v_mc)),
             "reference_gradient_noise": float(np.linalg.norm(g_se) / np.linalg.norm(g_mc)), "critics": {}}
    points = {"v_mc": v_mc, "g_mc": g_mc}
    for name, critic in critics.items():
        if critic.kind == "Q":
            v_hat, g_hat = value_critic_estimates(critic, policy, states, times, rho, rng)
            entry = {"value_rel_error": relative_error(v_hat, v_mc)}
            points[name] = (v_hat, g_hat)
        else:
            g_hat = critic.values(states, times, rho, target=False)
            entry = {"value_rel_error": None}
            points[name] = (None, g_hat)
        per_state = np.linalg.norm(g_hat - g_mc, axis=1) / np.linalg.norm(g_mc, axis=1)
        entry.update(gradient_rel_error=relative_error(g_hat, g_mc), gradient_median_state_error=float(np.median(per_state)),
                     gradient_cosine=mean_cosine(g_hat, g_mc))
        table["critics"][name] = entry
    return table, points, critics


def experiment_3(cfg, rng, exp1=None, cache=None, exp2=None):
    fidelity, points, critics = critic_fidelity(cfg, rng)
    bias_with_g = None
    if exp1 is not None:   # (b): beta_H with the value terminal vs the gradient terminal, H <= 8
        bias_with_g = {name: {rho: {h: (rows["Q"][h]["bias"], rows["G"][h]["bias"]) for h in exp1["horizons"] if 0 < h <= 8}
                              for rho, rows in snap["rho"].items()} for name, snap in exp1["snapshots"].items()}
    trained = {name: (cfg["methods"][name], runs) for name, runs in exp2["runs"].items()} if exp2 else None
    runs = run_methods(cfg["exp3_methods"], cfg, "exp3 training runs", cache, trained)
    summary = summarise_runs(runs)
    comparisons = {}   # G (lambda 0.95) against Q at the same actor horizon, paired by seed
    for q_name in (k for k in runs if k.startswith("Q_H")):
        g_name = "G" + q_name[1:] + "_lam0.95"
        if g_name not in runs:
            continue
        q = summary[q_name]
        reach = [ad.runs.first_reaching(r["curve"]["env_steps"], r["curve"]["return"], q["score_mean"]) for r in runs[g_name]]
        comparisons[g_name + " vs " + q_name] = dict(
            ad.runs.paired_difference(summary[g_name]["scores"], q["scores"]),
            G_env_steps_to_Q_score_fraction=[None if s is None else s / cfg["env_steps"] for s in reach])
    return {"fidelity": fidelity, "bias_Q_vs_G_terminal": bias_with_g, "runs": runs, "summary": summary,
            "critics": critics,
            "comparisons": comparisons, "points": points}


# ----------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------
def _h_axis(ax, horizons):
    """log2 axis for H, with H = 0 drawn at 1/2."""
    ax.set_xscale("log", base=2)
    ax.set_xticks([h if h else 0.5 for h in horizons], [str(h) for h in horizons])
    ax.set_xlabel("horizon H")


def plot_bias_variance(exp1, out, filename):
    plt = ad.runs.pyplot()
    names = list(exp1["snapshots"])
    fig, axes = plt.subplots(len(names), 3, figsize=(15, 4.0 * len(names)), squeeze=False)
    panels = [("bias", "Bias of the mean gradient", "bias  |mean g - grad J|^2 / |grad J|^2"),
              ("variance", "Variance of one episode's gradient", "variance  tr Cov(g) / |grad J|^2"),
              ("mse64", "Error of a 64-episode mean (what one update sees)", "relative MSE at batch 64")]
    for r, name in enumerate(names):
        for c, (key, title, ylabel) in enumerate(panels):
            ax = axes[r, c]
            for i, rho in enumerate(exp1["rhos"]):
                rows = exp1["snapshots"][name]["rho"][rho]
                hs = sorted(rows["Q"])
                ax.plot([h if h else 0.5 for h in hs], [rows["Q"][h][key] for h in hs], "o-", color=f"C{i}",
                        label=f"rho = {rho}, Q terminal")
                if key == "bias":
                    hs = sorted(h for h in rows["G"] if h < T)
                    ax.plot(hs, [rows["G"][h][key] for h in hs], "s--", color=f"C{i}", alpha=0.5,
                            label=f"rho = {rho}, G terminal")
            ax.set_yscale("log")
            _h_axis(ax, exp1["horizons"])
            ax.set_ylabel(ylabel)
            ax.set_title(f"theta_{name}: {title}\n(H = 0 is DDPG-like, H = {T} is BPTT; units of |grad J|^2)", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return ad.runs.save_figure(fig, out, filename, dpi=90)


def plot_mse_map(exp1, out, filename):
    plt = ad.runs.pyplot()
    names, horizons, rhos = list(exp1["snapshots"]), exp1["horizons"], exp1["rhos"]
    fig, axes = plt.subplots(1, len(names), figsize=(6.5 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        snap = exp1["snapshots"][name]["rho"]
        grid = np.log10([[snap[rho]["Q"][h]["mse64"] for h in horizons] for rho in rhos])
        image = ax.imshow(grid, cmap="viridis", aspect="auto", origin="lower")
        for i in range(len(rhos)):
            for j in range(len(horizons)):
                ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=7, color="w")
        best = [int(np.argmin(row)) for row in grid]
        ax.plot(best, range(len(rhos)), "r*-", markersize=14, label="best H for each rho")
        ax.set_xticks(range(len(horizons)), [str(h) for h in horizons])
        ax.set_yticks(range(len(rhos)), [str(r) for r in rhos])
        ax.set_xlabel("model horizon H (steps before the critic takes over)")
        ax.set_ylabel("contact smoothing rho (m)")
        ax.set_title(f"theta_{name}: error of a 64-episode gradient, log10 of MSE / |grad J|^2\n"
                     "(darker is better; the stars trace the path of manageable variance)", fontsize=9)
        ax.legend(fontsize=8, loc="upper left")
        fig.colorbar(image, ax=ax, label="log10 relative MSE")
    fig.tight_layout()
    return ad.runs.save_figure(fig, out, filename, dpi=90)


def plot_training(runs, methods, out, filename, title):
    plt = ad.runs.pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(15, 8.5))
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, 20))
    for i, (name, seeds) in enumerate(runs.items()):
        color = colors[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20]
        steps = np.array(seeds[0]["curve"]["env_steps"])
        for ax, key in ((axes[0, 0], "return"), (axes[0, 1], "box_error")):
            values = np.array([r["curve"][key] for r in seeds])
            ax.plot(steps, values.mean(axis=0), color=color, label=methods[name]["label"] if key == "return" else None)
            ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=color, alpha=0.12)
        for r in seeds:
            axes[1, 0].plot(r["curve"]["seconds"], r["curve"]["return"], color=color, alpha=0.7)
        if all("grad_norms" in r for r in seeds):
            norms = np.array([r["grad_norms"] for r in seeds])
            smooth = np.array([np.median(norms[:, max(0, k - 4):k + 1]) for k in range(norms.shape[1])])
            axes[1, 1].plot(N_ENVS * seeds[0]["window"] * np.arange(1, len(smooth) + 1), smooth, color=color)
    axes[0, 0].set(title="Return on the hard system during training (line: mean over seeds, band: min to max)",
                   ylabel="evaluation return (128 fixed starts; higher is better)", xlabel="environment steps")
    axes[0, 1].set(title="Where the box ends: |b_T - b*|, its distance from the target after 128 steps",
                   ylabel="|b_T - b*| (m, log scale)", xlabel="environment steps", yscale="log")
    axes[1, 0].set(title="Return against training time (each line one seed)", ylabel="evaluation return",
                   xlabel="training wall-clock seconds (2 shared cores)")
    axes[1, 1].axhline(GRAD_CLIP, color="k", lw=0.8, ls=":", label=f"clipped above {GRAD_CLIP:g}")
    axes[1, 1].set(title="Actor gradient norm before clipping (running median of 5 iterations)",
                   ylabel="pre-clip gradient norm (log scale)", xlabel="environment steps", yscale="log")
    axes[1, 1].legend(fontsize=8)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.title.set_fontsize(9)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
               title="arm (colour in every panel)")
    axes[0, 0].legend().set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    return ad.runs.save_figure(fig, out, filename, dpi=90)


def plot_switches(switches, methods, out, filename):
    """The direction of the actor's gradient at each H (its cosine with BPTT's), at the anneal's switch points."""
    plt = ad.runs.pyplot()
    names = list(switches)
    columns = min(4, len(names))
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.3 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.set_axis_off()
    for ax, name in zip(axes.flat, names):
        steps = [p["env_steps"] for p in switches[name]]
        for j, h in enumerate(DIAGNOSED_HORIZONS):
            ax.plot(steps, [p["gradient_cosine"][str(h)] for p in switches[name]], "o-", color=f"C{j}", label=f"H = {h}")
        ax.axhline(0.0, color="k", lw=0.6)
        ax.set(ylim=(-1.05, 1.05), xlabel="environment steps (the anneal's switch points)",
               ylabel="cosine with BPTT's gradient", title=f"{methods[name]['label']}\n"
               "is the critic-based gradient pointing the right way? (1 = yes)")
        ax.title.set_fontsize(8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return ad.runs.save_figure(fig, out, filename, dpi=90)


def plot_critics(exp3, out, filename):
    plt = ad.runs.pyplot()
    points = exp3["points"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    v_mc, g_mc = points["v_mc"], points["g_mc"]
    scale = np.sqrt(np.mean(g_mc ** 2, axis=0))     # per coordinate, so p, v, b, w share one plot
    lo, hi = v_mc.min(), v_mc.max()
    axes[1].plot([-3, 3], [-3, 3], "k:", lw=0.8, label="perfect critic")
    axes[0].plot([lo, hi], [lo, hi], "k:", lw=0.8, label="perfect critic")
    for i, name in enumerate(n for n in points if n not in ("v_mc", "g_mc")):
        v_hat, g_hat = points[name]
        if v_hat is not None:
            axes[0].plot(v_mc, v_hat, ".", ms=3, color=f"C{i}", label=name)
        axes[1].plot((g_mc / scale).ravel(), (g_hat / scale).ravel(), ".", ms=2, color=f"C{i}", alpha=0.6, label=name)
    axes[0].set(xlabel="Monte Carlo value V(x)", ylabel="critic's value V_hat(x)",
                title="Values on held-out states (theta_good, rho = 0.01)")
    axes[1].set(xlabel="Monte Carlo grad_x V (each coordinate in units of its RMS)",
                ylabel="critic's gradient: grad_x Q_hat or G_hat", xlim=(-3, 3), ylim=(-3, 3),
                title="Value gradients on the same states: what the actor uses")
    for i, (name, seeds) in enumerate(exp3["runs"].items()):
        returns = np.array([r["curve"]["return"] for r in seeds])
        axes[2].plot(seeds[0]["curve"]["env_steps"], returns.mean(axis=0), color=f"C{i}", label=name)
    axes[2].set(xlabel="environment steps", ylabel="evaluation return on the hard system (mean over seeds)",
                title="Training with a value critic (Q) or a value-gradient critic (G)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.title.set_fontsize(9)
    fig.tight_layout()
    return ad.runs.save_figure(fig, out, filename, dpi=90)


# ----------------------------------------------------------------------------
# Printed tables
# ----------------------------------------------------------------------------
def show(title, header, rows):
    """One printed table: the title, then the rows under the header (numbers to 3 significant digits)."""
    ad.runs.print_table(header, rows, title=title)


def print_exp1(exp1):
    horizons = exp1["horizons"]
    for name, snap in exp1["snapshots"].items():
        print(f"\ntheta_{name}: |grad J| = {np.linalg.norm(snap['grad_J']):.3g} (finite differences, hard contact; "
              f"noise floor of the truth {snap['truth_noise_floor']:.1e} in units of |grad J|^2)")
        for key, label in (("variance", "variance nu_H"), ("bias", "bias beta_H, Q terminal"),
                           ("mse64", "relative MSE at batch 64, Q terminal")):
            show(f"theta_{name}: {label} ({exp1['episodes']} episodes)", ["rho \\ H"] + horizons,
                        [[str(rho)] + [snap["rho"][rho]["Q"][h][key] for h in horizons] for rho in exp1["rhos"]])
        show(f"theta_{name}: bias beta_H, G terminal", ["rho \\ H"] + horizons,
                    [[str(rho)] + [snap["rho"][rho]["G"].get(h, {}).get("bias") for h in horizons] for rho in exp1["rhos"]])
        show(f"theta_{name}: at H = T: max per-sample |g| / |grad J| and contact onsets per episode",
                    ["rho", "max |g|", "onsets"],
                    [[str(rho), snap["rho"][rho]["Q"][T]["max_norm"], snap["rho"][rho]["Q"][T]["contact_onsets"]]
                     for rho in exp1["rhos"]])
    sweep = exp1["stiffness_sweep"]
    if sweep:
        show("theta_init, H = T: variance nu over stiffness k x rho", ["k \\ rho"] + list(exp1["rhos"]),
                    [[str(k)] + [sweep[k][rho]["variance"] for rho in exp1["rhos"]] for k in sweep])
    c = exp1["claims"]
    best = list(c["best_H_by_mse64"].values())
    rows = [[f"nu(H=T, rho=0) / nu(H=T, rho={c['rho_moderate']})", c["variance_ratio_at_H_T_rho0_over_rho_moderate"], ">= 100"],
            ["nu(H=T) / nu(smallest H >= 8), rho=0", c["variance_growth_rho0_from_smallest_H>=8_to_T"], ">= 100"],
            ["fraction of H steps where beta falls, rho=0", c["bias_falls_with_H_rho0_fraction_of_steps"], "1 (monotone)"],
            [f"beta(H=T) at rho={exp1['rhos'][-1]} (smoothing bias floor)", c["bias_floor_largest_rho_at_H_T"], ">= 0.05"],
            ["best H by MSE64 for rho = " + ", ".join(map(str, exp1["rhos"])), ", ".join(map(str, best)), "grows with rho"]]
    met = [rows[0][1] >= 100, rows[1][1] >= 100, rows[2][1] == 1.0, rows[3][1] >= 0.05, best == sorted(best)]
    show(f"Exp 1 claims (theta_init, k=1000, {exp1['episodes']} episodes per cell)", ["claim", "measured", "bar", "met"],
         [r + ["yes" if m else "no"] for r, m in zip(rows, met)])
    print("  The bars are those of a convincing picture, not tuned to pass. With few episodes per cell (the lesson run)\n"
          "  the heavy-tailed hard-contact cells are noisy, so a 'no' here may flip; --full (2048 episodes) tests them.")
    show(f"Smoothing ratio tr Cov(hard) / tr Cov(rho={next(iter(exp1['smoothing_ratio'].values()))['rho']}) at H = T: "
         "plain, by sample count, and the median over 8 independent batches with its 93% interval",
         ["snapshot", "ratio", *[f"n={n}" for n in next(iter(exp1["smoothing_ratio"].values()))["ratio_by_count"]],
          "batch median", "interval", "max |g| / mean |g| (hard)"],
         [[f"theta_{name}", r["ratio"], *r["ratio_by_count"].values(), r["batch_median"],
           "{:.3g} to {:.3g}".format(*r["batch_interval_93pct"]), r["max_over_mean_norm_hard"]]
          for name, r in exp1["smoothing_ratio"].items()])


def print_runs(title, summary, methods):
    show(title, ["arm", "score", "+- se", "seeds", "|b_T - b*|", "median pre-clip |grad|", "clipped", "train s"],
         [[methods[k]["label"], s["score_mean"], s["score_se"], s["seeds"], s["box_error_mean"],
           s["median_pre_clip_grad_norm"], s["fraction_clipped"], s["train_seconds_mean"]] for k, s in summary.items()])
    print(f"  score: mean over seeds of each run's last {SCORE_LAST} evaluations (return on the hard system, "
          "128 fixed starts); +- is the standard error over seeds (ddof=1)")


def print_exp2(exp2, methods):
    print_runs("Exp 2: training, evaluated on the hard system", exp2["summary"], methods)
    c = exp2["claims"]
    if c["best_fixed_arm"]:
        print(f"  best fixed arm: {methods[c['best_fixed_arm']]['label']}")
    show("Exp 2: paired score differences (same seeds, same initial policies)", ["difference", "mean", "+- se", "n"],
         [[k, d["mean"], d["se"], d["n"]] for k, d in c["paired_score_differences"].items()])
    if min(s["seeds"] for s in exp2["summary"].values()) < 5:
        print("  With fewer than 5 seeds these differences are anecdotes, not tests (se needs >= 2 seeds);\n"
              "  the README's tables come from 5 seeds per arm (--seeds 5, or --full).")
    if "gradient_cosine_by_H" in c:
        show(f"Exp 2: over all {c['diagnosed_policies']} diagnosed policies, the cosine of the actor's gradient at H "
             "with BPTT's (mean +- se), and the critic's value error at the bootstrap states",
             ["H", "cosine", "+- se", "Q value error"],
             [[h, *c["gradient_cosine_by_H"][h], c["critic_value_error_by_H"][h]] for h in c["gradient_cosine_by_H"]])
    if "BPTT_median_grad_norm_over_others" in c:
        print(f"  BPTT's median pre-clip gradient norm / the other arms' median: {c['BPTT_median_grad_norm_over_others']:.3g}")
    for name, points in exp2["switches"].items():
        show(f"Exp 2: {methods[name]['label']}: the actor's gradient error at each H against BPTT's, where the "
             "anneal switches H (mean over seeds)", ["env steps", "H now", "reference noise"]
             + [f"err H={h}" for h in DIAGNOSED_HORIZONS] + [f"cos H={h}" for h in DIAGNOSED_HORIZONS]
             + [f"Q err H={h}" for h in DIAGNOSED_HORIZONS],
             [[round(p["env_steps"]), p["horizon"], p["reference_noise"]]
              + [p[key][str(h)] for key in ("gradient_rel_error", "gradient_cosine", "critic_value_rel_error")
                 for h in DIAGNOSED_HORIZONS] for p in points])


def print_exp3(exp3, methods):
    f = exp3["fidelity"]
    show(f"Exp 3a: critic fidelity on held-out states (reference noise: value {f['reference_value_noise']:.3f}, "
                f"gradient {f['reference_gradient_noise']:.3f})",
                ["critic", "value rel. error", "gradient rel. error", "median over states", "gradient cosine"],
                [[name, e["value_rel_error"], e["gradient_rel_error"], e["gradient_median_state_error"], e["gradient_cosine"]]
                 for name, e in f["critics"].items()])
    if exp3["bias_Q_vs_G_terminal"]:
        rows = []
        for name, by_rho in exp3["bias_Q_vs_G_terminal"].items():
            for rho, by_h in by_rho.items():
                rows.append([f"theta_{name}, rho={rho}"] + [f"{q:.2g} / {g:.2g}" for q, g in by_h.values()])
        h_list = list(next(iter(next(iter(exp3["bias_Q_vs_G_terminal"].values())).values())))
        show("Exp 3b: bias beta_H, Q terminal / G terminal", ["setting"] + [f"H={h}" for h in h_list], rows)
    print_runs("Exp 3c: training with the value-gradient critic", exp3["summary"], methods)
    show("Exp 3c: G against Q at the same actor horizon (paired by seed)", ["comparison", "score G - Q", "+- se",
                                                                           "G steps to Q's score / budget"],
         [[k, c["mean"], c["se"], ", ".join(ad.runs.format_cell(f) for f in c["G_env_steps_to_Q_score_fraction"])]
          for k, c in exp3["comparisons"].items()])
    if min(s["seeds"] for s in exp3["summary"].values()) < 5:
        print("  One seed per arm: these training differences are anecdotes; the README's come from 5 seeds (--seeds 5).")


if __name__ == "__main__":
    ad.runs.run(main)
