"""CartPole learned by backprop through a differentiable twin of the environment (DP), against REINFORCE (RL).

The idea. Gymnasium's CartPole-v1 is ten lines of explicit-Euler physics. Written
with our engine (one fused op, `cartpole_step`, whose VJP is the transposed
Jacobian of the Euler step) it becomes a differentiable twin that reproduces
gymnasium bit for bit. A cost on the state is then a loss. Backprop carries it
through the physics into the force and into the policy network, and the RL
problem becomes ordinary training. The action is discrete (push left or right),
so the policy ends in a straight-through sign: forward sign(net(obs)), backward
the identity; force = 10·sign. The RL baseline is REINFORCE with a learned
baseline on the real environment, with the same engine, network and optimiser.

Measured by `python cartpole_dp.py` (training seeds 0-9 for DP, 0-4 for RL;
evaluation = 100 deterministic episodes of gymnasium.make("CartPole-v1") from
reset seeds 1000000-1000099, which no training uses; bar = mean ≥ 475):

    DP episodes to the bar, seeds 0-9:   3 2 2 1 2 2 2 1 5 3   (mean 2.3, max 5; 10/10 ≤ 5)
       gymnasium mean/min at that point: 500/500 499.8/483 500/500 499.9/491 500/500
                                         483.1/319 499.8/479 480.7/316 500/500 497.7/421
       simulated steps used: 800 per seed on average (8,002 in all)
    RL episodes to the bar, seeds 0-4:   36 8 3 89 20          (mean 31.2, median 20; 2,683 env steps per seed)
    RL / DP episodes:                    13.6
    the saved policy (seed 0), reloaded by policy_from_file: mean 500.0, min 500

and by `--full` (DP seeds 0-29, RL seeds 0-19): DP 30/30 seeds within 5
episodes (mean 2.23, max 5, 740 simulated steps); RL mean 47.5 and median 35.5
episodes (3 to 157; 4,872 env steps). RL / DP = 21.2. So DP needs about 20 times
fewer episodes. That is far from the blog's "around 5 against hundreds": with the
same network, REINFORCE is a much stronger baseline than the blog's RL. With
trainable biases it needs 85 episodes on average (--full).

Counting. One DP training episode is one trajectory of the twin from a reset
(U(−0.05, 0.05)⁴, drawn from the training seed) until it fails or reaches 500
steps; the policy is updated during it. After every training episode (DP and
RL alike) the deterministic policy is screened on the twin from gymnasium's own
start states: this replays gymnasium's 100 episodes exactly (a test checks it)
at 1/20 of the cost. When the screen says ≥ 475, the same 100 episodes run on
gymnasium itself, and the bar counts only if gymnasium agrees (it always has).
Stopping at the first pass favours both methods equally.

What works, and why (the --full ablation: DP seeds 0-29, reached within 5 / within 10 episodes):

  this script: tanh, biases fixed at 0, window 1 + lookahead   30/30   30/30
  the Flux setup: ReLU, biases, tanh out, window 8, Adam 0.03   2/30   18/30
  ReLU hidden layers (biases fixed at 0)                       15/30   22/30
  biases trained                                               10/30   30/30
  window 2, no lookahead, gradient through the policy input    29/30   30/30
  window 3, no lookahead, gradient through the policy input    16/30   16/30
  window 3, lookahead, gradient through the policy input       30/30   30/30
  window 4, lookahead, gradient through the policy input       23/30   25/30
  window 4, lookahead, policy input detached                   29/30   30/30
  window 16, lookahead, policy input detached                  23/30   30/30

1. The network: tanh hidden layers with the biases fixed at 0. Raw
   observations are about 0.05 in size, so the state-dependent part of the
   output is tiny, while Adam moves every bias by about lr per step. The biases
   take over and the policy collapses to a constant push (evaluation return 9).
   Without biases a tanh network is odd, f(−s) = −f(s). That is the symmetry of
   the physics (mirror the state and the right force is mirrored too). Near the
   origin the network is linear, so the policy starts as a random linear switching
   controller sign(k·s), the right family: sign(θ + 0.2θ̇ + 0.1x + 0.1ẋ) lasts
   500 steps in all 100 evaluation episodes. The prior alone does something: 4
   of 100 untrained networks already pass (--full), so "1 episode" results are
   partly the prior. RL gets the same network.
2. The window: one step, each force credited with the positions it first moves.
   Under explicit Euler a force changes the velocities at the next step and the
   positions one step later. The Flux cost looks at positions only, so the last
   action of every window gets no gradient; here the cost is taken at x + τẋ,
   θ + τθ̇ (the next positions, already fixed by the state). Longer windows do
   not help, for a reason specific to the straight-through sign. With the
   gradient also flowing through the policy's input (the state that one force
   produced sets the next force), the backward pass sees a feedback loop of gain
   10·∂net/∂s. That gain is large for a good bang-bang controller, and under
   explicit Euler the linearised loop is unstable. Each step back flips the
   gradient's sign and multiplies its size by about 10 (median over 4 trained
   policies × 8 states; 2.5 to 150 in 80% of cases; --full prints one such
   window). A window's gradient is then dominated by its first action, with a
   sign set by the parity of the number of credited actions (W − 1 without the
   lookahead, W with it): one or three work, two or four do not (table).
   Detaching the policy's input removes the parity effect, but long windows
   then give only greedy open-loop sensitivities and fewer updates (window 16:
   23/30 within 5, mean 4.2 episodes). A one-step window gives one Adam step per
   simulated step, the most updates an episode can give.
3. The cost: the Flux per-step loss (r_x r_θ − 2.4·0.2094)², where r_x and r_θ are
   the distances of the cart and of the angle to their limits. In development
   runs (not reproduced by --full) a quadratic cost, a log barrier, and a cost on
   the pole tip x + 2l·sinθ were no better (tip 177/180 seeds within 5, Flux
   178/180). Adam's lr 0.01 beat 0.003 and 0.03.
What still fails, 2 seeds in 180 in development runs (they needed 6 and 7
episodes): a single trajectory stays close to the switching surface, where
ẋ is nearly a function of the other coordinates. Its coefficient is then poorly
determined and can take the greedy (wrong) sign, and the cart drifts.

The RL baseline: P(push right) = σ(net(obs)), returns-to-go with γ = 0.99,
advantages G_t − V(s_t) normalised per episode, one Adam(0.01) update per
episode, and a value network of the same shape (with biases: V is even in s).
Tuned like DP's (seeds 0-9, mean episodes to the bar): lr 0.01 gave 42, against
92 and 86 for lr 0.02 and 0.03 and 180 for 0.001. γ 0.95 or 0.999 and a value
lr of 0.03 were within seed noise (43, 32, 33).

Run:  python cartpole_dp.py          # 10 DP seeds, 5 RL seeds, figures: 44 s (19 s of CPU)
      python cartpole_dp.py --full   # 30 DP seeds, 20 RL seeds, the ablations: 8 min (3.2 min of CPU)
(wall times measured on 2 cores shared with other jobs)
RL is cheap here (about 3 s per seed), so the default run includes five RL
curves, not only the --full run. Outputs in runs/cartpole_dp/: metrics.json,
params.npz (the seed-0 DP policy), curves.png and balancing.gif. To use a policy:

    policy = cartpole_dp.policy_from_file("runs/cartpole_dp/params.npz")
    obs, _ = env.reset(); obs, reward, terminated, truncated, _ = env.step(policy(obs))
"""

import math
import os
import time

import numpy as np

import autodiff as ad

# ----------------------------------------------------------------------------
# Gymnasium's CartPole-v1, constant for constant
# ----------------------------------------------------------------------------
GRAVITY = 9.8
MASS_CART = 1.0
MASS_POLE = 0.1
TOTAL_MASS = MASS_POLE + MASS_CART
LENGTH = 0.5                      # half the pole's length
POLEMASS_LENGTH = MASS_POLE * LENGTH
FORCE_MAG = 10.0
TAU = 0.02                        # seconds per step, explicit Euler
THETA_LIMIT = 12 * 2 * math.pi / 360
X_LIMIT = 2.4
MAX_STEPS = 500                   # the TimeLimit of CartPole-v1
REWARD_THRESHOLD = 475.0          # gymnasium's registered reward_threshold


def _dynamics(state, force):
    """Gymnasium's equations, in gymnasium's order of operations (so the
    results agree to the last bit), on a batch of states (B, 4)."""
    x, x_dot, theta, theta_dot = state[:, 0], state[:, 1], state[:, 2], state[:, 3]
    costheta, sintheta = np.cos(theta), np.sin(theta)
    temp = (force + POLEMASS_LENGTH * np.square(theta_dot) * sintheta) / TOTAL_MASS
    denom = LENGTH * (4.0 / 3.0 - MASS_POLE * np.square(costheta) / TOTAL_MASS)
    thetaacc = (GRAVITY * sintheta - costheta * temp) / denom
    xacc = temp - POLEMASS_LENGTH * thetaacc * costheta / TOTAL_MASS
    return costheta, sintheta, temp, denom, thetaacc, xacc


@ad.primitive
def cartpole_step(state, force):
    """One explicit-Euler step of CartPole for a batch: state (B, 4) =
    [x, ẋ, θ, θ̇], force (B,) in newtons. Returns the next state (B, 4).

        temp = (F + m_p l θ̇² sinθ) / M
        θ̈    = (g sinθ − cosθ temp) / (l (4/3 − m_p cos²θ / M))
        ẍ    = temp − m_p l θ̈ cosθ / M
        x' = x + τ ẋ,  ẋ' = ẋ + τ ẍ,  θ' = θ + τ θ̇,  θ̇' = θ̇ + τ θ̈

    The VJP is the transpose of this map's Jacobian, written out by hand."""
    state = np.asarray(state, dtype=np.float64)
    force = np.broadcast_to(np.asarray(force, dtype=np.float64), state.shape[:1])
    cos, sin, temp, denom, thetaacc, xacc = _dynamics(state, force)
    x, x_dot, theta, theta_dot = state.T
    new = np.stack([x + TAU * x_dot, x_dot + TAU * xacc, theta + TAU * theta_dot, theta_dot + TAU * thetaacc], axis=1)

    def vjp(g):
        g_x, g_xdot, g_theta, g_thetadot = g[:, 0], g[:, 1], g[:, 2], g[:, 3]
        k = POLEMASS_LENGTH / TOTAL_MASS
        # partial derivatives of temp, θ̈ and ẍ with respect to θ, θ̇ and F
        dtemp_dth, dtemp_dthd, dtemp_dF = k * theta_dot ** 2 * cos, 2 * k * theta_dot * sin, 1.0 / TOTAL_MASS
        ddenom_dth = 2 * LENGTH * MASS_POLE * cos * sin / TOTAL_MASS
        dthacc_dth = ((GRAVITY * cos + sin * temp - cos * dtemp_dth) - thetaacc * ddenom_dth) / denom
        dthacc_dthd = -cos * dtemp_dthd / denom
        dthacc_dF = -cos * dtemp_dF / denom
        dxacc_dth = dtemp_dth - k * (dthacc_dth * cos - thetaacc * sin)
        dxacc_dthd = dtemp_dthd - k * dthacc_dthd * cos
        dxacc_dF = dtemp_dF - k * dthacc_dF * cos
        through_acc_th = TAU * (g_xdot * dxacc_dth + g_thetadot * dthacc_dth)
        through_acc_thd = TAU * (g_xdot * dxacc_dthd + g_thetadot * dthacc_dthd)
        grad_state = np.stack([g_x, g_xdot + TAU * g_x, g_theta + through_acc_th,
                               g_thetadot + TAU * g_theta + through_acc_thd], axis=1)
        grad_force = TAU * (g_xdot * dxacc_dF + g_thetadot * dthacc_dF)
        return grad_state, grad_force
    return new, vjp


def terminated(state):
    """Gymnasium's termination test, for a batch of states (B, 4) -> (B,) bool."""
    x, theta = state[:, 0], state[:, 2]
    return (x < -X_LIMIT) | (x > X_LIMIT) | (theta < -THETA_LIMIT) | (theta > THETA_LIMIT)


def reset_states(rng, batch=1):
    """Gymnasium's reset distribution: every state variable ~ U(−0.05, 0.05)."""
    return rng.uniform(-0.05, 0.05, size=(batch, 4))


def as_observation(state):
    """What gymnasium shows the agent: the float64 state rounded to float32."""
    return np.asarray(state, dtype=np.float32).astype(np.float64)


# ----------------------------------------------------------------------------
# The network (the same shape for DP and RL): 4 -> 24 -> 48 -> 1, tanh hidden
# ----------------------------------------------------------------------------
SIZES = (4, 24, 48, 1)
ACTIVATION = "tanh"


def make_network(rng):
    return ad.nn.MLP(SIZES, rng, activation=ACTIVATION, out_activation=None)


def forward_numpy(weights, obs):
    """The same network in plain NumPy, for acting (no graph): weights is the
    list [W1, b1, W2, b2, W3, b3], obs is (B, 4) or (4,); returns (B,) or ()."""
    h = np.asarray(obs, dtype=np.float64)
    for i in range(0, len(weights) - 2, 2):
        h = np.tanh(h @ weights[i] + weights[i + 1])
    return (h @ weights[-2] + weights[-1])[..., 0]


def weights_of(network):
    return [p.data for p in network.parameters()]


def scorer(network):
    """obs (B, 4) or (4,) -> network output, without building a graph. The
    tanh network runs in plain NumPy (fast for single observations)."""
    if network.activation == ACTIVATION and network.out_activation is None:
        weights = [w.copy() for w in weights_of(network)]
        return lambda obs: forward_numpy(weights, obs)

    def score(obs):
        with ad.no_grad():
            return network(ad.Tensor(np.atleast_2d(obs))).data[:, 0].reshape(np.shape(obs)[:-1])
    return score


def gym_action(score):
    """Network output -> gymnasium action: 1 (push right, +10 N) if ≥ 0 else 0.
    For DP this is the forward of the straight-through sign; for RL it is the
    deterministic (most likely) action of the Bernoulli policy σ(score)."""
    return int(score >= 0.0)


def trainable_weights(network):
    """The weight matrices only: the policy's biases stay at zero (see the
    docstring: a tanh network without biases is odd, f(−s) = −f(s), like the
    physics, and raw observations of size 0.05 would otherwise be swamped by
    biases that Adam moves as fast as the weights)."""
    return [p for name, p in network.named_parameters().items() if name.startswith("W")]


# ----------------------------------------------------------------------------
# DP: the training signal, and one training episode of truncated BPTT
# ----------------------------------------------------------------------------
def dp_force(policy, state):
    """Force for a batch of states (Tensor (B, 4)) as a Tensor (B,) = 10·sign(policy(obs)).
    The policy reads the float32-rounded observation, as under gymnasium; the
    rounding is added as a constant, so a gradient can still reach the state."""
    rounding = ad.Tensor(as_observation(state.data) - state.data)
    sign = ad.straight_through_sign(policy(state + rounding))
    return FORCE_MAG * sign[:, 0]


def step_cost(state, lookahead=True):
    """The Flux per-step loss: (r_x r_θ − 2.4·0.2094)², where r_x and r_θ are
    the distances of the cart and the angle to their failure limits (zero
    beyond). With lookahead it is measured at x + τẋ, θ + τθ̇: the positions one
    step later, already fixed by this state (see the docstring for why)."""
    x, theta = state[:, 0], state[:, 2]
    if lookahead:
        x, theta = x + TAU * state[:, 1], theta + TAU * state[:, 3]
    r_x = ad.maximum(ad.minimum(X_LIMIT - x, X_LIMIT + x), 0.0)
    r_theta = ad.maximum(ad.minimum(THETA_LIMIT - theta, THETA_LIMIT + theta), 0.0)
    return ad.mean((r_x * r_theta - X_LIMIT * THETA_LIMIT) ** 2)


def train_dp_episode(policy, optimizer, rng, window=1, lookahead=True, closed_loop=False):
    """One training episode: a trajectory of the twin from a reset until it
    fails or reaches 500 steps, with one Adam step per window of `window` steps
    (truncated BPTT: each window starts from the previous one's state, detached).
    closed_loop=True also lets the gradient flow through the policy's input
    (how the state a force produced changes the next force). Returns the
    number of steps, which is this episode's return."""
    state, steps, done = reset_states(rng), 0, False
    while not done:
        s, costs = ad.Tensor(state), []
        for _ in range(window):
            s = cartpole_step(s, dp_force(policy, s if closed_loop else s.detach()))
            costs.append(step_cost(s, lookahead))
            steps += 1
            done = bool(terminated(s.data)[0]) or steps == MAX_STEPS
            if done:
                break
        loss = ad.sum(ad.stack(costs)) / len(costs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        state = s.data
    return steps


def closed_loop_force_gradients(policy, state, steps=6):
    """dL/dF_k for the forces of one window with the gradient flowing through
    the policy's input, L = the cost after the window. For a trained bang-bang
    policy these alternate in sign and grow going back: the reason longer
    closed-loop windows fail (docstring, point 2)."""
    s, forces = ad.Tensor(np.atleast_2d(state)), []
    for _ in range(steps):
        forces.append(dp_force(policy, s))
        s = cartpole_step(s, forces[-1])
    step_cost(s).backward()
    policy.zero_grad()
    return np.array([float(f.grad[0]) for f in forces])


# ----------------------------------------------------------------------------
# RL baseline: REINFORCE with a learned baseline, on the real gymnasium env
# ----------------------------------------------------------------------------
def run_rl_episode(env, weights, obs, rng):
    """Sample one episode from the Bernoulli policy P(push right) = σ(net(obs))."""
    observations, actions, rewards, done = [], [], [], False
    while not done:
        p_right = 1.0 / (1.0 + np.exp(-forward_numpy(weights, obs)))
        action = int(rng.random() < p_right)
        observations.append(obs)
        actions.append(action)
        obs, reward, term, trunc, _ = env.step(action)
        rewards.append(reward)
        done = term or trunc
    return np.array(observations, dtype=np.float64), np.array(actions, dtype=np.float64), np.array(rewards)


def reinforce_update(policy, value, policy_opt, value_opt, observations, actions, rewards, gamma):
    """∇J ≈ Σ_t (G_t − V(s_t)) ∇log π(a_t|s_t), advantages normalised; V is
    regressed on the returns-to-go G_t = Σ_k γ^k r_{t+k}."""
    returns = np.zeros(len(rewards))
    running = 0.0
    for t in reversed(range(len(rewards))):
        running = rewards[t] + gamma * running
        returns[t] = running
    obs = ad.Tensor(observations)
    values = value(obs)[:, 0]
    advantage = returns - values.data
    advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
    logits = policy(obs)[:, 0]
    log_prob = -ad.softplus(-(2.0 * actions - 1.0) * logits)   # log σ(±logit)
    policy_loss = -ad.mean(log_prob * advantage)
    value_loss = ad.mean((values - returns) ** 2)
    policy_opt.zero_grad()
    value_opt.zero_grad()
    policy_loss.backward()
    value_loss.backward()
    policy_opt.step()
    value_opt.step()


# ----------------------------------------------------------------------------
# Evaluation: 100 episodes of the real CartPole-v1 from seeds no training used
# ----------------------------------------------------------------------------
EVAL_SEEDS = tuple(range(1_000_000, 1_000_100))


def gym_initial_states(seeds):
    """The float64 states gymnasium's CartPole-v1 starts from after reset(seed=s)."""
    import gymnasium as gym
    env = gym.make("CartPole-v1")
    states = []
    for s in seeds:
        env.reset(seed=int(s))
        states.append(np.array(env.unwrapped.state, dtype=np.float64))
    env.close()
    return np.array(states)


def evaluate_on_gym(score, seeds=EVAL_SEEDS):
    """Returns of the deterministic policy on gymnasium.make("CartPole-v1");
    score(obs) is the network's output, action = 1 if it is ≥ 0."""
    import gymnasium as gym
    env = gym.make("CartPole-v1")
    returns = []
    for s in seeds:
        obs, _ = env.reset(seed=int(s))
        total, done = 0.0, False
        while not done:
            obs, reward, term, trunc, _ = env.step(gym_action(score(obs)))
            total += reward
            done = term or trunc
        returns.append(total)
    env.close()
    return np.array(returns)


def evaluate_on_twin(score, initial_states):
    """The same evaluation on the twin, all episodes at once: from gymnasium's
    own start states, with float32 observations, it replays gymnasium's
    episodes exactly (tested), in ~1/20 of the time. Used to screen after every
    training episode; the bar is then confirmed on gymnasium itself."""
    state = np.array(initial_states, dtype=np.float64)
    alive = np.ones(len(state), dtype=bool)
    returns = np.zeros(len(state))
    for _ in range(MAX_STEPS):
        force = np.where(score(as_observation(state)) >= 0.0, FORCE_MAG, -FORCE_MAG)
        state = cartpole_step(state, force).data
        returns += alive                      # +1 every step, the failing one included
        alive &= ~terminated(state)
        if not alive.any():
            break
    return returns


# ----------------------------------------------------------------------------
# Training runs: train, evaluate after every episode, stop at the bar
# ----------------------------------------------------------------------------
def reached_bar(score, eval_states, record, confirm_on_gym=True):
    """Screen on the twin; if it says ≥ 475, confirm on gymnasium itself.
    Appends the twin's mean to record["eval_mean"]; returns True at the bar."""
    twin_returns = evaluate_on_twin(score, eval_states)
    record["eval_mean"].append(float(twin_returns.mean()))
    if twin_returns.mean() < REWARD_THRESHOLD or not confirm_on_gym:
        return twin_returns.mean() >= REWARD_THRESHOLD
    gym_returns = evaluate_on_gym(score)
    record["gym_eval_mean"], record["gym_eval_min"] = float(gym_returns.mean()), float(gym_returns.min())
    record["twin_equals_gym"] = bool(np.array_equal(twin_returns, gym_returns))
    return gym_returns.mean() >= REWARD_THRESHOLD


def run_dp(seed, eval_states, max_episodes, window=1, lookahead=True, closed_loop=False, lr=0.01,
           activation=ACTIVATION, out_activation=None, train_biases=False, confirm_on_gym=True):
    """Train a DP policy from `seed` until the bar or `max_episodes`.
    Returns (network, record) with per-episode returns and evaluations."""
    rng = np.random.default_rng(seed)
    policy = ad.nn.MLP(SIZES, rng, activation=activation, out_activation=out_activation)
    params = policy.parameters() if train_biases else trainable_weights(policy)
    optimizer = ad.optim.Adam(params, lr)
    record = {"seed": seed, "train_return": [], "eval_mean": [], "episodes_to_bar": None, "steps": 0}
    for episode in range(1, max_episodes + 1):
        steps = train_dp_episode(policy, optimizer, rng, window, lookahead, closed_loop)
        record["train_return"].append(steps)
        record["steps"] += steps
        if reached_bar(scorer(policy), eval_states, record, confirm_on_gym):
            record["episodes_to_bar"] = episode
            break
    return policy, record


def run_rl(seed, eval_states, max_episodes, lr=0.01, value_lr=0.01, gamma=0.99, train_biases=False,
           confirm_on_gym=True):
    """REINFORCE with a learned baseline on gymnasium's CartPole-v1, evaluated
    after every episode like DP. Same network, same engine, same optimiser."""
    import gymnasium as gym
    rng = np.random.default_rng(seed)
    policy, value = make_network(rng), make_network(rng)
    policy_opt = ad.optim.Adam(policy.parameters() if train_biases else trainable_weights(policy), lr)
    value_opt = ad.optim.Adam(value.parameters(), value_lr)   # V(s) is even in s: it needs its biases
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=seed)             # later resets continue the env's own random stream
    record = {"seed": seed, "train_return": [], "eval_mean": [], "episodes_to_bar": None, "steps": 0}
    for episode in range(1, max_episodes + 1):
        observations, actions, rewards = run_rl_episode(env, weights_of(policy), obs, rng)
        obs, _ = env.reset()
        record["train_return"].append(len(rewards))
        record["steps"] += len(rewards)
        reinforce_update(policy, value, policy_opt, value_opt, observations, actions, rewards, gamma)
        if reached_bar(scorer(policy), eval_states, record, confirm_on_gym):
            record["episodes_to_bar"] = episode
            break
    env.close()
    return policy, record


# ----------------------------------------------------------------------------
# Saved policies
# ----------------------------------------------------------------------------
def save_policy(path, network, **extra):
    ad.nn.save_parameters(path, network.named_parameters(), sizes=np.array(SIZES),
                          activation=np.array(ACTIVATION), **extra)


def policy_from_file(path):
    """A function gymnasium observation -> gymnasium action (0 or 1), from a
    params.npz written by this script. Raises ValueError naming the problem if
    the file is corrupt or holds another network."""
    network = make_network(0)
    arrays = ad.nn.load_parameters(path, network.named_parameters())
    if "sizes" in arrays and tuple(arrays["sizes"].tolist()) != SIZES:
        raise ValueError(f"{path}: network sizes {tuple(arrays['sizes'].tolist())}, expected {SIZES}")
    weights = weights_of(network)

    def policy(observation):
        obs = np.asarray(observation, dtype=np.float64)
        if obs.shape != (4,):
            raise ValueError(f"policy: expected a CartPole observation of shape (4,), got shape {obs.shape}")
        if not np.all(np.isfinite(obs)):
            raise ValueError(f"policy: observation contains nan or inf: {obs}")
        return gym_action(forward_numpy(weights, obs))
    return policy


# ----------------------------------------------------------------------------
# Figures: learning curves and a GIF of the learned policy
# ----------------------------------------------------------------------------
def plot_curves(path, dp_records, rl_records):
    plt = ad.runs.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for records, color, name in ((dp_records, "tab:blue", "DP (backprop through the twin)"),
                                 (rl_records, "tab:orange", "RL (REINFORCE + baseline, real env)")):
        for i, r in enumerate(records):
            episodes = np.arange(1, len(r["eval_mean"]) + 1)
            ax.plot(episodes, r["eval_mean"], color=color, lw=1, alpha=0.6, label=name if i == 0 else None)
            if r["episodes_to_bar"]:
                ax.plot(r["episodes_to_bar"], r["eval_mean"][-1], "*", color=color, ms=9, mec="k", mew=0.5)
    ax.axhline(REWARD_THRESHOLD, color="k", ls="--", lw=0.8, label="bar: mean 475 over 100 episodes")
    ax.set_xscale("log")
    ax.set_xlabel("training episodes")
    ax.set_ylabel("evaluation return (mean of 100 episodes)")
    ax.set_title("CartPole-v1: deterministic policy after each training episode\n"
                 "(one line per seed, ★ = bar reached, confirmed on gymnasium)", fontsize=9)
    ax.set_ylim(0, 520)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def record_gym_episode(score, seed):
    """States of one real gymnasium episode under the deterministic policy."""
    import gymnasium as gym
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=int(seed))
    states, done = [np.array(env.unwrapped.state)], False
    while not done:
        obs, _, term, trunc, _ = env.step(gym_action(score(obs)))
        states.append(np.array(env.unwrapped.state))
        done = term or trunc
    env.close()
    return np.array(states)


def save_balancing_gif(path, states, every=4):
    """Cart and pole drawn from the state with matplotlib, every `every`-th step."""
    plt = ad.runs.pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 1.9), dpi=80)
    frames = []
    pole = 2 * LENGTH
    for t in range(0, len(states), every):
        x, _, theta, _ = states[t]
        ax.clear()
        ax.set_xlim(-X_LIMIT - 0.3, X_LIMIT + 0.3)
        ax.set_ylim(-0.3, 1.3)
        ax.set_aspect("equal")
        ax.axis("off")
        ax.plot([-X_LIMIT, X_LIMIT], [0, 0], color="0.5", lw=1)
        ax.plot([-X_LIMIT, -X_LIMIT, None, X_LIMIT, X_LIMIT], [-0.1, 0.1, None, -0.1, 0.1], color="tab:red", lw=1)
        ax.add_patch(plt.Rectangle((x - 0.25, -0.08), 0.5, 0.16, color="tab:blue"))
        ax.plot([x, x + pole * np.sin(theta)], [0, pole * np.cos(theta)], color="tab:brown", lw=3)
        ax.text(-X_LIMIT - 0.2, 1.15, f"step {t}", fontsize=7)
        frames.append(ad.runs.figure_to_array(fig))
    plt.close(fig)
    ad.runs.save_gif(path, frames, fps=25)


# ----------------------------------------------------------------------------
# What each design choice is worth (--full): DP variants over many seeds
# ----------------------------------------------------------------------------
ABLATIONS = {   # name -> keyword arguments of run_dp
    "this script: tanh, zero biases, window 1 + lookahead": {},
    "Flux setup: ReLU, biases, tanh out, window 8, Adam 0.03": dict(
        activation="relu", train_biases=True, out_activation="tanh", window=8, lookahead=False,
        closed_loop=True, lr=0.03),
    "ReLU instead of tanh (zero biases)": dict(activation="relu"),
    "biases trained": dict(train_biases=True),
    "window 2, no lookahead, closed loop": dict(window=2, lookahead=False, closed_loop=True),
    "window 3, no lookahead, closed loop": dict(window=3, lookahead=False, closed_loop=True),
    "window 3, lookahead, closed loop": dict(window=3, closed_loop=True),
    "window 4, lookahead, closed loop": dict(window=4, closed_loop=True),
    "window 4, lookahead, input detached": dict(window=4),
    "window 16, lookahead, input detached": dict(window=16),
}


def summarise(records, bar_episodes=5):
    episodes = [r["episodes_to_bar"] for r in records]
    reached = [e for e in episodes if e is not None]
    return {"episodes_to_bar": episodes,
            "reached": len(reached), "seeds": len(records),
            "within_5": sum(e <= bar_episodes for e in reached),
            "mean_episodes": float(np.mean(reached)) if reached else None,
            "median_episodes": float(np.median(reached)) if reached else None,
            "max_episodes": max(reached) if reached else None,
            "simulated_steps_to_bar": [r["steps"] for r in records],
            "mean_steps_to_bar": float(np.mean([r["steps"] for r in records if r["episodes_to_bar"]]))
            if reached else None}


def untrained_pass_rate(eval_states, seeds):
    """How often a freshly initialised network already passes: a reminder
    that 'reached the bar after 1 episode' is partly the prior."""
    means = [evaluate_on_twin(scorer(make_network(np.random.default_rng(s))), eval_states).mean() for s in seeds]
    return float(np.mean(np.array(means) >= REWARD_THRESHOLD))


# ----------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------
def parse_args(argv):
    parser = ad.runs.parser(__doc__, "cartpole_dp")
    parser.add_argument("--dp-seeds", type=ad.runs.positive_int, default=None,
                        help="DP training seeds (default 10; 30 with --full)")
    parser.add_argument("--dp-max-episodes", type=ad.runs.positive_int, default=10,
                        help="give up on a DP seed after this many training episodes")
    parser.add_argument("--rl-seeds", type=ad.runs.nonnegative_int, default=None,
                        help="RL training seeds (default 5; 20 with --full; 0 skips RL)")
    parser.add_argument("--rl-max-episodes", type=ad.runs.positive_int, default=1000,
                        help="give up on an RL seed after this many training episodes")
    parser.add_argument("--window", type=ad.runs.positive_int, default=1, help="DP: steps per BPTT window")
    parser.add_argument("--lr", type=ad.runs.positive_float, default=0.01, help="DP: Adam learning rate")
    args = parser.parse_args(argv)
    if args.dp_seeds is None:
        args.dp_seeds = 30 if args.full else 10
    if args.rl_seeds is None:
        args.rl_seeds = 20 if args.full else 5
    return args


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    out = ad.runs.prepare_out(args.out)
    eval_states = gym_initial_states(EVAL_SEEDS)
    metrics = {"eval": "gymnasium CartPole-v1, deterministic policy, 100 episodes, "
                       f"reset seeds {EVAL_SEEDS[0]}..{EVAL_SEEDS[-1]}; bar = mean >= {REWARD_THRESHOLD}"}

    # -- DP: backprop through the twin, from several training seeds -------------
    dp_records, dp_policies = [], []
    progress = ad.runs.Progress(args.dp_seeds, "DP seeds", every=0)
    for i in range(args.dp_seeds):
        policy, record = run_dp(args.seed + i, eval_states, args.dp_max_episodes, window=args.window, lr=args.lr)
        dp_records.append(record)
        dp_policies.append(policy)
        progress.update(i + 1, seed=record["seed"], episodes=record["episodes_to_bar"] or "not reached",
                        sim_steps=record["steps"], gym_mean=record.get("gym_eval_mean", float("nan")),
                        gym_min=record.get("gym_eval_min", float("nan")))
    metrics["dp"] = summarise(dp_records)
    metrics["dp"]["gym_eval_mean"] = [r.get("gym_eval_mean") for r in dp_records]
    metrics["dp"]["gym_eval_min"] = [r.get("gym_eval_min") for r in dp_records]
    metrics["dp"]["twin_screen_equals_gym"] = all(r.get("twin_equals_gym", True) for r in dp_records)

    # -- the saved policy, reloaded the way a user would -----------------------
    params_path = os.path.join(out, "params.npz")
    save_policy(params_path, dp_policies[0], seed=args.seed, episodes=len(dp_records[0]["train_return"]))
    reloaded = policy_from_file(params_path)
    saved_returns = evaluate_on_gym(lambda obs: 1.0 if reloaded(obs) else -1.0)
    metrics["saved_policy"] = {"seed": args.seed, "training_episodes": len(dp_records[0]["train_return"]),
                               "gym_eval_mean": float(saved_returns.mean()), "gym_eval_min": float(saved_returns.min())}

    # -- RL: REINFORCE with a baseline on the real environment -----------------
    rl_records = []
    if args.rl_seeds:
        progress = ad.runs.Progress(args.rl_seeds, "RL seeds", every=0)
        for i in range(args.rl_seeds):
            _, record = run_rl(args.seed + i, eval_states, args.rl_max_episodes)
            rl_records.append(record)
            progress.update(i + 1, seed=record["seed"], episodes=record["episodes_to_bar"] or "not reached",
                            env_steps=record["steps"], gym_mean=record.get("gym_eval_mean", float("nan")),
                            gym_min=record.get("gym_eval_min", float("nan")))
        metrics["rl"] = summarise(rl_records)
        metrics["rl"]["gym_eval_mean"] = [r.get("gym_eval_mean") for r in rl_records]
        if metrics["rl"]["mean_episodes"] and metrics["dp"]["mean_episodes"]:
            metrics["rl_over_dp_episodes"] = metrics["rl"]["mean_episodes"] / metrics["dp"]["mean_episodes"]

    # -- the long run: what each choice is worth --------------------------------
    if args.full:
        seeds = range(args.seed, args.seed + 30)
        state = eval_states[:1]
        for _ in range(100):                  # a state on the trained policy's own trajectory
            state = cartpole_step(state, np.where(scorer(dp_policies[0])(state) >= 0, FORCE_MAG, -FORCE_MAG)).data
        grads = closed_loop_force_gradients(dp_policies[0], state)
        metrics["closed_loop_force_gradients"] = grads
        print("closed loop, dL/dF_k for k = 0..5:", np.array2string(grads, precision=2),
              "| ratios dL/dF_k / dL/dF_k+1:", np.array2string(grads[:-1] / grads[1:], precision=1))
        metrics["untrained_pass_rate"] = untrained_pass_rate(eval_states, range(args.seed, args.seed + 100))
        print(f"untrained networks that already pass: {100 * metrics['untrained_pass_rate']:.0f}% of 100")
        metrics["ablations"] = {}
        for name, options in ABLATIONS.items():
            records = [run_dp(s, eval_states, args.dp_max_episodes, confirm_on_gym=False, **options)[1]
                       for s in seeds]
            summary = summarise(records)
            metrics["ablations"][name] = summary
            print(f"ablation {name:56s} within 5 episodes {summary['within_5']:2d}/{len(records)}, "
                  f"within {args.dp_max_episodes} {summary['reached']:2d}/{len(records)}", flush=True)
        records = [run_rl(s, eval_states, args.rl_max_episodes, train_biases=True, confirm_on_gym=False)[1]
                   for s in range(args.seed, args.seed + args.rl_seeds)]
        summary = metrics["ablations"]["RL with biases trained"] = summarise(records)
        print(f"ablation {'RL with biases trained':56s} episodes to the bar: mean {summary['mean_episodes']:.1f}, "
              f"median {summary['median_episodes']:.1f} ({summary['reached']}/{len(records)} seeds)")

    # -- figures ------------------------------------------------------------------
    metrics["records"] = {"dp": dp_records, "rl": rl_records}
    plot_curves(os.path.join(out, "curves.png"), dp_records, rl_records)
    states = record_gym_episode(scorer(dp_policies[0]), EVAL_SEEDS[0])
    save_balancing_gif(os.path.join(out, "balancing.gif"), states)
    ad.runs.write_metrics(out, metrics, args, started)

    # -- headline -----------------------------------------------------------------
    dp, rl = metrics["dp"], metrics.get("rl")
    print(f"\n{'':34s}{'DP (twin, BPTT)':>18s}{'RL (REINFORCE)':>18s}")
    print(f"{'seeds reaching the bar':34s}{dp['reached']:>15d}/{dp['seeds']:<2d}"
          + (f"{rl['reached']:>15d}/{rl['seeds']:<2d}" if rl else ""))
    print(f"{'episodes to the bar, per seed':34s}{str(dp['episodes_to_bar'])}")
    if rl:
        print(f"{'':34s}{str(rl['episodes_to_bar'])}  (RL)")
    print(f"{'mean / median / max episodes':34s}"
          f"{dp['mean_episodes']:>8.2f} / {dp['median_episodes']:.1f} / {dp['max_episodes']:<3d}"
          + (f"{rl['mean_episodes']:>7.1f} / {rl['median_episodes']:.1f} / {rl['max_episodes']:<3d}"
             if rl and rl["mean_episodes"] else ""))
    print(f"{'mean simulated / env steps used':34s}{dp['mean_steps_to_bar']:>18.0f}"
          + (f"{rl['mean_steps_to_bar']:>18.0f}" if rl and rl["mean_steps_to_bar"] else ""))
    print(f"{'DP seeds within 5 episodes':34s}{dp['within_5']:>15d}/{dp['seeds']}")
    if "rl_over_dp_episodes" in metrics:
        print(f"{'RL episodes / DP episodes':34s}{metrics['rl_over_dp_episodes']:>18.1f}")
    sp = metrics["saved_policy"]
    print(f"saved policy (seed {sp['seed']}, {sp['training_episodes']} episodes) via policy_from_file on gymnasium: "
          f"mean {sp['gym_eval_mean']:.1f}, min {sp['gym_eval_min']:.0f} over 100 episodes")
    print(f"wrote {out}/metrics.json, params.npz, curves.png, balancing.gif "
          f"({ad.runs.format_seconds(time.perf_counter() - started)})")
    return metrics


if __name__ == "__main__":
    main()
