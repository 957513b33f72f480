"""CartPole learned by backprop through a differentiable twin of the environment (DP), against REINFORCE (RL).

The idea. Gymnasium's CartPole-v1 is ten lines of explicit-Euler physics. Written with our engine as one fused
op, `cartpole_step`, whose backward is the transposed Jacobian of the Euler step, it becomes a differentiable
twin that reproduces Gymnasium bit for bit. A cost on the state is then a loss: backprop carries it through the
physics into the force and into the policy network, and the RL problem becomes ordinary training.

    state s = (x, ẋ, θ, θ̇),   force F = 10·sign(net(s))     sign is straight-through: backward = identity
    s' = s + τ·f(s, F)                                       explicit Euler, τ = 0.02 s, as in Gymnasium
    cost(s') = (r_x·r_θ − 2.4·0.2094)²                       r_x, r_θ = distances to the failure limits
    one Adam step on ∂cost/∂weights after every simulated step (truncated BPTT, a one-step window)

The claim tested is the Flux team's (Innes, Joy and Karmali, 2019, "DP vs RL" on the Flux blog, with its code
in FluxML/model-zoo): backprop through the simulator solves CartPole in "around 5 episodes", where RL needs
hundreds. "Solved" is Gymnasium's bar for CartPole-v1, a mean return ≥ 475 over deterministic episodes of the
real environment. A stopping rule asks after each training episode, on its own 100 starts, whether the policy is
there; the policy it returns is then measured once on 1,000 starts that decided nothing (section 8). The
comparison is REINFORCE with a learned baseline on the real environment, with the same engine, network
(4-24-48-1, tanh) and optimizer. Part 2 adds LQR on the linearised twin (the classical comparator), random
search over untrained networks (a control for luck) and the original's setting, CartPole-v0.

Run:  python cartpole_dp.py          # 10 DP seeds, 5 RL, 5 random-search, 3+3 CartPole-v0 (about a minute)
      python cartpole_dp.py --full   # 30 seeds each (20 RL), 100 Gymnasium checks per policy, the ablations
Outputs in runs/cartpole_dp/ (runs/cartpole_dp_full/ with --full): metrics.json, curves.png, balancing.gif and
params.npz, the first DP seed's policy; policy_from_file(path) turns it into observation -> action 0 or 1.
Results: see README.md, section cartpole_dp.py.
"""

import math
import os
import time
import warnings

import autodiff as ad   # first: it makes BLAS single-threaded before NumPy loads (small matrices, shared cores)
import numpy as np

# ----------------------------------------------------------------------------
# 1. Settings: the lesson run's values; --full adds seeds, Gymnasium checks and the ablations
# ----------------------------------------------------------------------------
SETTINGS = {
    "dp_seeds": 10,             # DP training seeds: --seed, --seed + 1, ...
    "dp_max_episodes": 10,
    "margin": 10.0,             # the stopping rule: mean >= 475 + margin on the stopping starts,
    "budget": 5,                # or, after this many episodes, the best policy seen if it is at the bar
    "rl_seeds": 5,
    "rl_max_episodes": 1000,
    "rs_seeds": 5,              # random search over untrained networks: its seeds, and draws per seed
    "rs_draws": 25,
    "v0_seeds": 3,              # the original's setting, CartPole-v0: seeds for the Flux setup and for this script
    "v0_max_episodes": 50,
    "window": 1,
    "lr": 0.01,
    "gym_check": 20,            # reported starts also played on Gymnasium itself, per policy
    "ablations": False,         # what each design choice is worth (on the DP seeds, development starts)
}
FULL = {"dp_seeds": 30, "rl_seeds": 20, "rs_seeds": 30, "v0_seeds": 30, "gym_check": 100, "ablations": True}
# The --help text and the type and bounds of every flag: Part 2, beside parse_args.

# ----------------------------------------------------------------------------
# 2. Environment: Gymnasium's CartPole-v1, constant for constant, as a differentiable twin
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


@ad.primitive
def cartpole_step(state, force):
    """One explicit-Euler step of CartPole for a batch: state (B, 4) = [x, ẋ, θ, θ̇], force (B,) in newtons.

        temp = (F + m_p l θ̇² sinθ) / M,   D = l (4/3 − m_p cos²θ / M)
        θ̈ = (g sinθ − cosθ·temp) / D,     ẍ = temp − (m_p l / M) θ̈ cosθ
        x' = x + τẋ,  ẋ' = ẋ + τẍ,  θ' = θ + τθ̇,  θ̇' = θ̇ + τθ̈

    The VJP, derived by hand: only ẍ and θ̈ depend on θ, θ̇ and F, so with g' = ∂L/∂s' the chain rule gives
        ∂L/∂x = g'_x,   ∂L/∂ẋ = g'_ẋ + τ g'_x,   ∂L/∂θ = g'_θ + τ (g'_ẋ ∂ẍ/∂θ + g'_θ̇ ∂θ̈/∂θ),
        ∂L/∂θ̇ = g'_θ̇ + τ g'_θ + τ (g'_ẋ ∂ẍ/∂θ̇ + g'_θ̇ ∂θ̈/∂θ̇),   ∂L/∂F = τ (g'_ẋ ∂ẍ/∂F + g'_θ̇ ∂θ̈/∂F),
    with the quotient rule for θ̈ = N/D: ∂θ̈/∂θ = (g cosθ + sinθ·temp − cosθ ∂temp/∂θ − θ̈ ∂D/∂θ) / D,
    ∂D/∂θ = 2 l m_p cosθ sinθ / M, ∂temp/∂θ = (m_p l/M) θ̇² cosθ, ∂temp/∂θ̇ = 2 (m_p l/M) θ̇ sinθ, ∂temp/∂F = 1/M,
    and ∂ẍ/∂· = ∂temp/∂· − (m_p l/M)(cosθ ∂θ̈/∂· − θ̈ sinθ [for θ only]).
    Checked in tests/test_cartpole_dp.py against finite differences, and the forward against Gymnasium."""
    state = np.asarray(state, dtype=np.float64)
    force = np.broadcast_to(np.asarray(force, dtype=np.float64), state.shape[:1])
    x, x_dot, theta, theta_dot = state.T
    cos, sin = np.cos(theta), np.sin(theta)     # then Gymnasium's order of operations: equal to the last bit
    temp = (force + POLEMASS_LENGTH * np.square(theta_dot) * sin) / TOTAL_MASS
    denom = LENGTH * (4.0 / 3.0 - MASS_POLE * np.square(cos) / TOTAL_MASS)
    thetaacc = (GRAVITY * sin - cos * temp) / denom
    xacc = temp - POLEMASS_LENGTH * thetaacc * cos / TOTAL_MASS
    new = np.stack([x + TAU * x_dot, x_dot + TAU * xacc, theta + TAU * theta_dot, theta_dot + TAU * thetaacc], axis=1)

    def vjp(g):
        g_x, g_xdot, g_theta, g_thetadot = g[:, 0], g[:, 1], g[:, 2], g[:, 3]
        k = POLEMASS_LENGTH / TOTAL_MASS
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
    """What Gymnasium shows the agent: the float64 state rounded to float32."""
    return np.asarray(state, dtype=np.float32).astype(np.float64)


# ----------------------------------------------------------------------------
# 3. Model: one network shape for DP and RL, 4 -> 24 -> 48 -> 1, tanh hidden, biases fixed at 0
# ----------------------------------------------------------------------------
SIZES = (4, 24, 48, 1)
ACTIVATION = "tanh"


def make_network(rng):
    return ad.nn.MLP(SIZES, rng, activation=ACTIVATION, out_activation=None)


def trainable_weights(network):
    """The weight matrices only: the biases stay at 0. Raw observations are about 0.05 in size, and Adam moves
    a bias as fast as a weight, so trained biases swamp the state and the policy collapses to a constant push.
    Without biases a tanh network is odd, f(−s) = −f(s), like the physics (mirror the state, mirror the push),
    and near the origin it starts as a random linear switching controller sign(k·s): the right family."""
    return [p for name, p in network.named_parameters().items() if name.startswith("W")]


def dp_force(policy, state):
    """Force for a batch of states (Tensor (B, 4)) as a Tensor (B,) = 10·sign(policy(obs)), the sign
    straight-through. The policy reads the float32-rounded observation, as under Gymnasium; the rounding is
    added as a constant, so a gradient can still reach the state."""
    rounding = ad.Tensor(as_observation(state.data) - state.data)
    sign = ad.straight_through_sign(policy(state + rounding))
    return FORCE_MAG * sign[:, 0]


# ----------------------------------------------------------------------------
# 4. Loss: the Flux per-step cost on the state, one step ahead
# ----------------------------------------------------------------------------
def step_cost(state, lookahead=True):
    """(r_x r_θ − 2.4·0.2094)², the per-step loss of the original (Flux's code), where r_x and r_θ are the
    distances of the cart and of the angle to their failure limits (0 beyond). Under explicit Euler a force
    moves the velocities at the next step and the positions only one step later, so a cost on the positions
    alone gives the last force of a window no gradient. With lookahead the cost is taken at x + τẋ, θ + τθ̇:
    the positions one step later, already fixed by this state."""
    x, theta = state[:, 0], state[:, 2]
    if lookahead:
        x, theta = x + TAU * state[:, 1], theta + TAU * state[:, 3]
    r_x = ad.maximum(ad.minimum(X_LIMIT - x, X_LIMIT + x), 0.0)
    r_theta = ad.maximum(ad.minimum(THETA_LIMIT - theta, THETA_LIMIT + theta), 0.0)
    return ad.mean((r_x * r_theta - X_LIMIT * THETA_LIMIT) ** 2)


# ----------------------------------------------------------------------------
# 5. Update: one window of truncated BPTT, then one Adam step
# ----------------------------------------------------------------------------
def train_dp_episode(policy, optimizer, rng, window=1, lookahead=True, closed_loop=False, max_steps=MAX_STEPS):
    """One training episode: the twin from a reset until it fails or reaches max_steps, one Adam step per window
    of `window` steps (each from the previous window's state, detached); returns its length, the return.
    Why a window of one step, and the policy's input detached: Part 2, `closed_loop_force_gradients`."""
    state, steps, done = reset_states(rng), 0, False
    while not done:
        s, costs = ad.Tensor(state), []
        for _ in range(window):
            s = cartpole_step(s, dp_force(policy, s if closed_loop else s.detach()))
            costs.append(step_cost(s, lookahead))
            steps += 1
            done = bool(terminated(s.data)[0]) or steps == max_steps
            if done:
                break
        loss = ad.sum(ad.stack(costs)) / len(costs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        state = s.data
    return steps


# ----------------------------------------------------------------------------
# 6. Training: train a DP policy from one seed until the stopping rule says "bar reached"
# ----------------------------------------------------------------------------
def run_dp(seed, rule, max_episodes, window=1, lookahead=True, closed_loop=False, lr=0.01,
           activation=ACTIVATION, out_activation=None, train_biases=False, init=None):
    """Train a DP policy from `seed`, asking the stopping rule (section 8) after every training episode; returns
    (network, record). The keywords after `lr` serve the original's setup and the ablations (Part 2, ABLATIONS)."""
    rng = np.random.default_rng(seed)
    policy = ad.nn.MLP(SIZES, rng, activation=activation, out_activation=out_activation, init=init)
    params = policy.parameters() if train_biases else trainable_weights(policy)
    optimizer = ad.optim.Adam(params, lr)
    record, best = new_record(seed), BestSeen()
    for episode in range(1, max_episodes + 1):
        steps = train_dp_episode(policy, optimizer, rng, window, lookahead, closed_loop, rule.max_steps)
        note_episode(record, steps, policy, f"DP seed {seed}, training episode {episode}")   # Part 2
        if rule.stop(policy, episode, record, best):
            break
    return policy, record


# ----------------------------------------------------------------------------
# 7. Baseline: REINFORCE on the real environment, same network and optimizer (LQR, random search: Part 2)
# ----------------------------------------------------------------------------
def reinforce_update(policy, value, policy_opt, value_opt, observations, actions, rewards, gamma):
    """∇J ≈ Σ_t (G_t − V(s_t)) ∇log π(a_t|s_t), advantages normalised per episode; V is regressed on the
    returns-to-go G_t = Σ_k γ^k r_{t+k}. π(push right) = σ(net(s))."""
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
    for optimizer, loss in ((policy_opt, policy_loss), (value_opt, value_loss)):     # two separate networks
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def run_rl(seed, rule, max_episodes, lr=0.01, value_lr=0.01, gamma=0.99, train_biases=False):
    """REINFORCE with a learned baseline on Gymnasium's CartPole-v1, one update per sampled episode, with the
    same stopping rule as DP. Same network, engine and optimizer; lr 0.01 was the best of 0.001-0.03."""
    import gymnasium as gym
    rng = np.random.default_rng(seed)
    policy, value = make_network(rng), make_network(rng)
    policy_opt = ad.optim.Adam(policy.parameters() if train_biases else trainable_weights(policy), lr)
    value_opt = ad.optim.Adam(value.parameters(), value_lr)   # V(s) is even in s: it needs its biases
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=seed)             # later resets continue the env's own random stream
    record, best = new_record(seed), BestSeen()
    for episode in range(1, max_episodes + 1):
        observations, actions, rewards = sample_rl_episode(env, weights_of(policy), obs, rng)
        obs, _ = env.reset()
        reinforce_update(policy, value, policy_opt, value_opt, observations, actions, rewards, gamma)
        note_episode(record, len(rewards), policy, f"RL seed {seed}, training episode {episode}")
        if rule.stop(policy, episode, record, best):
            break
    env.close()
    return policy, record


# ----------------------------------------------------------------------------
# 8. Measurement: three disjoint sets of starts, the stopping rule, and the reported score
# ----------------------------------------------------------------------------
# Gymnasium reset seeds. The twin's training starts come from each training seed's own generator instead.
DEVELOPMENT_SEEDS = range(1_000_000, 1_001_000)  # shaped the method: tuning, ablations, the rule (+ SEEN_SEEDS)
STOPPING_SEEDS = range(2_000_000, 2_000_100)     # the stopping rule's own 100 starts, after every episode
REPORTED_SEEDS = range(4_000_000, 4_001_000)     # measured once, after training; nothing else touches them
STOP_MARGIN = 10.0     # stop at a stopping-set mean >= bar + 10, chosen on development seeds and starts
BUDGET = 5             # the claim's budget in training episodes: then fall back on the best policy seen
TASKS = {"CartPole-v1": {"max_steps": 500, "bar": 475.0},    # Gymnasium's registered reward_threshold
         "CartPole-v0": {"max_steps": 200, "bar": 195.0}}    # the original's setting


def evaluate_on_gym(score, seeds, env_id="CartPole-v1"):
    """Returns of the deterministic policy on gymnasium.make(env_id), one episode per reset seed;
    score(obs) is the network's output, action = 1 (push right) if it is ≥ 0. The rule and the reported score
    use its fast path, evaluate_on_twin (Part 2: all episodes at once on the twin, tested equal)."""
    result = ad.runs.play_episodes(env_id, lambda obs: (score(obs) >= 0.0).astype(int), seeds)
    return result["returns"]


class StoppingRule:
    """Asked after every training episode: is the deterministic policy at the bar on the stopping starts?

    Screened on the twin, confirmed on Gymnasium itself (if confirm_on_gym). Stopping at the first pass picks a
    lucky moment, so the stopping-set mean flatters the policy: the margin buys the reported set its bar. And a
    policy can pass by luck at one episode and fall back at the next (training goes on during each episode),
    so at the budget the rule returns the best policy seen if it is at the bar, rather than training on.
    Bookkeeping in Part 2: at_budget, returns_on_gym, BestSeen, note_plain_rule (what margin 0 would do)."""

    def __init__(self, env_id="CartPole-v1", seeds=STOPPING_SEEDS, margin=STOP_MARGIN, confirm_on_gym=True,
                 reported=None, budget=BUDGET):
        self.env_id, self.seeds, self.margin, self.confirm_on_gym = env_id, seeds, margin, confirm_on_gym
        self.max_steps, self.bar = TASKS[env_id]["max_steps"], TASKS[env_id]["bar"]
        self.states, self.reported, self.budget = gym_initial_states(seeds, env_id), reported, budget

    def stop(self, network, episode, record, best):
        """After training episode `episode`: True if training stops; `network` then holds the policy to return."""
        if self(scorer(network), record):
            record["episodes_to_bar"] = record["returned_episode"] = episode
            return True
        return bool(self.budget) and at_budget(self, network, episode, record, best)

    def __call__(self, score, record):
        twin = evaluate_on_twin(score, self.states, self.max_steps)
        record["stop_mean"].append(float(twin.mean()))
        note_plain_rule(record, twin.mean() >= self.bar, score, self.reported)
        passed = twin.mean() >= self.bar + self.margin
        if passed and self.confirm_on_gym:
            passed = returns_on_gym(self, score, record, twin).mean() >= self.bar + self.margin
        return bool(passed)


class ReportedScore:
    """A finished policy's score on the 1,000 reported starts, on the twin (an exact replay; the first
    `gym_check` also on Gymnasium itself, which must agree), per start too, for paired comparisons."""

    def __init__(self, env_id="CartPole-v1", seeds=REPORTED_SEEDS, gym_check=20):
        self.env_id, self.seeds, self.gym_check = env_id, seeds, gym_check
        self.max_steps, self.bar = TASKS[env_id]["max_steps"], TASKS[env_id]["bar"]
        self.states = gym_initial_states(seeds, env_id)

    def __call__(self, score, check_on_gym=False):
        returns = evaluate_on_twin(score, self.states, self.max_steps)
        mean, se = ad.runs.mean_and_se(returns)
        result = {"mean": mean, "se": se, "min": float(returns.min()), "returns": returns,
                  "reaches_bar": bool(mean >= self.bar)}
        if check_on_gym and self.gym_check:
            gym = evaluate_on_gym(score, self.seeds[:self.gym_check], self.env_id)
            result["twin_equals_gym"] = bool(np.array_equal(gym, returns[:self.gym_check]))
        return result


# ----------------------------------------------------------------------------
# 9. main: train DP, the baselines, the original's setting; measure on the reported starts; report
# ----------------------------------------------------------------------------
def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    if args.play:
        return play(args, started)
    out = ad.runs.prepare_out(args.out)
    reported = ReportedScore(gym_check=args.gym_check)
    rule = StoppingRule(margin=args.margin, reported=reported, budget=args.budget or None)
    metrics = {"sets": describe_sets(args)}

    dp_policies, dp_records = train_seeds("DP", args.dp_seeds, args.seed, reported, lambda seed: run_dp(
        seed, rule, args.dp_max_episodes, window=args.window, lr=args.lr))
    metrics["dp"] = summarise(dp_records)
    metrics["saved_policy"] = save_and_reload(out, dp_policies[0], dp_records[0], args.seed, reported)
    rl_records = []
    if args.rl_seeds:
        _, rl_records = train_seeds("RL", args.rl_seeds, args.seed, reported,
                                    lambda seed: run_rl(seed, rule, args.rl_max_episodes))
        metrics["rl"] = summarise(rl_records)
    rs_records = other_comparators(metrics, args, rule, reported)     # random search and LQR: Part 2
    metrics["paired_vs_dp"] = paired_comparisons(dp_records, rl_records, rs_records, metrics["lqr"])
    if args.v0_seeds:
        metrics["original_setting"] = original_setting(args)
    if args.ablations:
        long_run_extras(metrics, args, dp_policies[0])
    records = {"dp": dp_records, "rl": rl_records, "random_search": rs_records}   # every seed's curve and scores
    report(metrics, args, out, started, rule, dp_policies[0], records)   # Part 2
    return metrics


# ============================== Part 2: running the experiment ==============================
# The command line: the --help text, each flag's type and bounds, --play
HELP = {
    "dp_seeds": "DP training seeds",
    "dp_max_episodes": "give up on a DP seed after this many training episodes",
    "margin": "stop training at a mean return >= bar + margin on the stopping starts",
    "budget": "after this many training episodes without a stop, return the best policy seen if its mean on "
              "the stopping starts is >= bar, else train on (0: no budget)",
    "rl_seeds": "RL training seeds (0 skips RL)",
    "rl_max_episodes": "give up on an RL seed after this many training episodes",
    "rs_seeds": "random-search seeds (0 skips it)",
    "rs_draws": "untrained networks drawn per random-search seed",
    "v0_seeds": "seeds per method on CartPole-v0, the original's setting (0 skips it)",
    "v0_max_episodes": "give up on a CartPole-v0 seed after this many training episodes",
    "window": "DP: simulated steps per BPTT window (one Adam step per window)",
    "lr": "DP: Adam learning rate",
    "gym_check": "reported starts per policy also played on Gymnasium, which must agree with the twin",
    "ablations": "the ablation table: DP variants on the DP seeds, on development starts",
}
TYPES = {
    "dp_seeds": ad.runs.whole(1, 1000),
    "dp_max_episodes": ad.runs.whole(1, 10_000),
    "margin": ad.runs.number(minimum=0.0, maximum=25.0),
    "budget": ad.runs.whole(0, 10_000),
    "rl_seeds": ad.runs.whole(0, 1000),
    "rl_max_episodes": ad.runs.whole(1, 100_000),
    "rs_seeds": ad.runs.whole(0, 1000),
    "rs_draws": ad.runs.whole(1, 10_000),
    "v0_seeds": ad.runs.whole(0, 1000),
    "v0_max_episodes": ad.runs.whole(1, 10_000),
    "window": ad.runs.whole(1, 500),
    "lr": ad.runs.number(exclusive_minimum=0.0),
    "gym_check": ad.runs.whole(0, 1000),
}


def parse_args(argv=None):
    return ad.runs.command_line(__doc__, "cartpole_dp", SETTINGS, FULL, HELP, types=TYPES, argv=argv,
                                add_arguments=add_arguments)


def add_arguments(parser):
    parser.add_argument("--play", metavar="PARAMS", default=None,
                        help="instead of training: play a saved params.npz on Gymnasium from the first 100 "
                             "reported starts (writes play.json in --out)")


def play(args, started):
    """--play PARAMS: the saved policy's deterministic returns on Gymnasium, written to out/play.json."""
    policy = policy_from_file(args.play)
    out = ad.runs.prepare_out(args.out)
    returns = evaluate_on_gym(lambda obs: np.array([policy(o) for o in obs]) * 2.0 - 1.0, REPORTED_SEEDS[:100])
    mean, se = ad.runs.mean_and_se(returns)
    print(f"{args.play}: mean return {mean:.1f} ± {se:.1f} (min {returns.min():.0f}) over {len(returns)} "
          f"Gymnasium CartPole-v1 episodes")
    ad.runs.write_metrics(out, {"params": args.play, "returns": returns, "mean": mean, "se": se}, args, started,
                          name="play.json")


# ----------------------------------------------------------------------------
# Records, the stopping rule's bookkeeping, several seeds in a row, the original's setting
# ----------------------------------------------------------------------------
SEEN_SEEDS = range(3_000_000, 3_001_000)   # a former reported set: it shaped the stopping rule, so it counts
                                           # as development now, listed in metrics.json beside the others


def describe_sets(args):
    def span(seeds):
        return f"Gymnasium reset seeds {seeds[0]:,}..{seeds[-1]:,} ({len(seeds):,} starts)"
    return {"development": span(DEVELOPMENT_SEEDS) + ": tuning, ablations, the stopping rule",
            "seen": span(SEEN_SEEDS) + ": the previous reported set, development since it shaped the rule",
            "stopping": span(STOPPING_SEEDS) + f": the stopping rule, mean >= bar + {args.margin:g}, or the best "
                                               f"policy seen at {args.budget} episodes if it is >= bar",
            "reported": span(REPORTED_SEEDS) + f": scored once after training, on the twin, the first "
                                               f"{args.gym_check} also on Gymnasium"}


def new_record(seed):
    return {"seed": seed, "train_return": [], "stop_mean": [], "episodes_to_bar": None, "returned_episode": None,
            "at_budget": False, "steps": 0, "plain_rule_episode": None}


def note_plain_rule(record, at_bar, score, reported):
    """Bookkeeping for the margin's cost: the first training episode at which the plain rule (margin 0) would
    have stopped, and that policy's reported score (measured, never used to decide)."""
    if record["plain_rule_episode"] is None and at_bar:
        record["plain_rule_episode"] = len(record["stop_mean"])
        if reported is not None:
            record["plain_rule_reported_mean"] = reported(score)["mean"]


class BestSeen:
    """The policy with the highest stopping-set mean so far (the later one on a tie), as a copy of its weights."""

    def __init__(self):
        self.mean, self.episode, self.weights = -np.inf, None, None

    def offer(self, mean, episode, network):
        if mean >= self.mean:
            self.mean, self.episode, self.weights = mean, episode, [p.data.copy() for p in network.parameters()]

    def restore(self, network):
        for p, w in zip(network.parameters(), self.weights):
            p.data = w.copy()


def at_budget(rule, network, episode, record, best):
    """StoppingRule's budget: keep the best policy of the first rule.budget episodes; at episode rule.budget,
    if its stopping-set mean is ≥ bar, put it back into `network`, confirm it on Gymnasium, and stop."""
    if episode <= rule.budget:
        best.offer(record["stop_mean"][-1], episode, network)
    if episode != rule.budget or best.mean < rule.bar:
        return False
    best.restore(network)
    returns_on_gym(rule, scorer(network), record)
    record["episodes_to_bar"], record["returned_episode"], record["at_budget"] = episode, best.episode, True
    return True


def returns_on_gym(rule, score, record, twin=None):
    """The stopping starts played on Gymnasium itself: its mean and min, and whether the twin agreed."""
    twin = evaluate_on_twin(score, rule.states, rule.max_steps) if twin is None else twin
    gym = evaluate_on_gym(score, rule.seeds, rule.env_id)
    record["gym_stop_mean"], record["gym_stop_min"] = float(gym.mean()), float(gym.min())
    record["twin_equals_gym"] = bool(np.array_equal(twin, gym))
    return gym


def note_episode(record, steps, network, when):
    """A training episode into `record`: its return (its length) and steps; then the weights checked finite."""
    record["train_return"].append(steps)
    record["steps"] += steps
    check_weights(network, when)


def check_weights(network, when):
    """A diverged run stops here, named (exit 3), before anything is saved: an earlier params.npz is kept."""
    for name, p in network.named_parameters().items():
        ad.runs.check_finite(f"weight {name}", p.data, when)


def train_seeds(method, n_seeds, first_seed, reported, train):
    """train(seed) -> (network, record) for n_seeds consecutive seeds, each then scored on the reported starts,
    with a progress line per seed. Returns the networks and the records (per-start returns kept aside)."""
    networks, records = [], []
    progress = ad.runs.Progress(n_seeds, f"{method} seeds", every=0)
    for i in range(n_seeds):
        with np.errstate(over="ignore", invalid="ignore"):    # non-finite weights are caught, named, by check_weights
            network, record = train(first_seed + i)
        score = reported(scorer(network), check_on_gym=True)
        record["reported_returns"] = score.pop("returns")
        record["reported"] = score
        networks.append(network)
        records.append(record)
        progress.update(i + 1, seed=record["seed"], episodes=record["episodes_to_bar"] or "not reached",
                        stopping_gym_mean=record.get("gym_stop_mean", float("nan")), reported_mean=score["mean"],
                        reported_min=score["min"])
    return networks, records


def original_setting(args):
    """The original's own setting: CartPole-v0 (200 steps, bar 195) and its rule (stop at the first mean ≥ 195
    over 100 test episodes, no margin), for the Flux setup (as in its code: ReLU, trained biases, Glorot init,
    tanh output, 8-step closed-loop windows, Adam 0.03) and for this script's choices. Training episodes end
    at 200 steps there too."""
    reported = ReportedScore("CartPole-v0", gym_check=args.gym_check)
    rule = StoppingRule("CartPole-v0", margin=0.0, reported=reported, budget=None)
    result = {}
    for name, options in (("Flux setup", FLUX_SETUP), ("this script", {})):
        _, records = train_seeds(f"CartPole-v0, {name}:", args.v0_seeds, args.seed, reported,
                                 lambda seed: run_dp(seed, rule, args.v0_max_episodes, **options))
        result[name] = summarise(records, bar=rule.bar)
    return result


# ----------------------------------------------------------------------------
# Two more comparators: LQR on the linearised twin (the classical one), random search (a control for luck)
# ----------------------------------------------------------------------------
def other_comparators(metrics, args, rule, reported):
    """Random search (if --rs-seeds) and LQR, each scored like DP, into metrics["random_search"] and
    metrics["lqr"]; returns random search's records."""
    rs_records = []
    if args.rs_seeds:
        _, rs_records = train_seeds("random search", args.rs_seeds, args.seed, reported,
                                    lambda seed: random_search(seed, rule, args.rs_draws))
        metrics["random_search"] = summarise(rs_records)
    metrics["lqr"] = lqr_baseline(rule, reported)
    return rs_records


def linearised_twin():
    """A = ∂s'/∂s (4, 4) and B = ∂s'/∂F (4, 1) of the twin at the upright rest state, read off the twin's own
    VJP: the backward of output i is row i of the Jacobian."""
    A, B = np.zeros((4, 4)), np.zeros((4, 1))
    for i in range(4):
        state, force = ad.Tensor(np.zeros((1, 4)), requires_grad=True), ad.Tensor(np.zeros(1), requires_grad=True)
        ad.sum(cartpole_step(state, force)[:, i]).backward()
        A[i], B[i, 0] = state.grad[0], force.grad[0]
    return A, B


def lqr_gain(A, B, Q=None, R=None, iterations=100_000):
    """The discrete-time LQR gain K (u = −K s minimises Σ sᵀQs + uᵀRu on s' = As + Bu), from the Riccati
    recursion K = (R + BᵀPB)⁻¹ BᵀPA, P ← Q + Aᵀ P (A − BK), iterated to its fixed point. Q = I and R = 1
    were chosen before any measurement. CartPole only pushes ±10 N, so the policy is the bang-bang
    F = 10·sign(−K s) (lqr_scorer): knowing the model, with zero training episodes."""
    Q = np.eye(4) if Q is None else Q
    R = np.eye(1) if R is None else R
    P = Q
    for _ in range(iterations):
        K = np.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)
        P_next = Q + A.T @ P @ (A - B @ K)
        converged = np.allclose(P_next, P, rtol=1e-12, atol=0.0)
        P = P_next
        if converged:
            break
    return K


def lqr_scorer(K):
    """obs (B, 4) -> −K s, whose sign is the push (the same interface as a network's output)."""
    return lambda obs: -(np.asarray(obs, dtype=np.float64) @ K.T)[..., 0]


def lqr_baseline(rule, reported):
    """LQR on the linearised twin, asked by the stopping rule once (zero training episodes) and then scored."""
    A, B = linearised_twin()
    K = lqr_gain(A, B)
    score = lqr_scorer(K)
    record = new_record(None)
    record["episodes_to_bar"] = 0 if rule(score, record) else None
    result = reported(score, check_on_gym=True)
    record["reported_returns"] = result.pop("returns")
    record["reported"] = result
    record["gain"] = K[0]
    record["closed_loop_spectral_radius"] = float(np.max(np.abs(np.linalg.eigvals(A - B @ K))))
    return record


def random_search(seed, rule, draws):
    """What DP adds over luck: draw up to `draws` untrained networks from DP's own prior (tanh, biases 0) and
    keep the first that passes the stopping rule (at the budget, the best draw so far if it is at the bar). No
    training; record["episodes_to_bar"] counts draws. If none passes, the draw with the best stopping-set score
    is returned (and the bar is not reached)."""
    stream = ad.runs.random_streams(seed, "random_search")["random_search"]
    record, best = new_record(seed), BestSeen()
    for draw in range(1, draws + 1):
        network = make_network(stream)
        if rule.stop(network, draw, record, best):
            return network, record
        best.offer(record["stop_mean"][-1], draw, network)
    best.restore(network)
    return network, record


# ----------------------------------------------------------------------------
# Acting without a graph, the RL episode sampler, the twin's fast evaluation, Gymnasium's start states
# ----------------------------------------------------------------------------
def forward_numpy(weights, obs):
    """The tanh network in plain NumPy, for acting (no graph): weights is the list [W1, b1, W2, b2, W3, b3],
    obs is (B, 4) or (4,); returns (B,) or (). Same as make_network(...)(obs), tested equal in
    tests/test_cartpole_dp.py (test_policy_from_file_round_trip)."""
    h = np.asarray(obs, dtype=np.float64)
    for i in range(0, len(weights) - 2, 2):
        h = np.tanh(h @ weights[i] + weights[i + 1])
    return (h @ weights[-2] + weights[-1])[..., 0]


def weights_of(network):
    return [p.data for p in network.parameters()]


def scorer(network):
    """obs (B, 4) or (4,) -> network output, without building a graph. The tanh network runs in plain NumPy
    (fast for single observations); other variants (the Flux setup, ablations) run through the engine."""
    if network.activation == ACTIVATION and network.out_activation is None:
        weights = [w.copy() for w in weights_of(network)]
        return lambda obs: forward_numpy(weights, obs)

    def score(obs):
        with ad.no_grad():
            return network(ad.Tensor(np.atleast_2d(obs))).data[:, 0].reshape(np.shape(obs)[:-1])
    return score


def gym_action(score):
    """Network output -> Gymnasium action: 1 (push right, +10 N) if ≥ 0 else 0. For DP this is the forward of
    the straight-through sign; for RL it is the deterministic (most likely) action of the policy σ(score)."""
    return int(score >= 0.0)


def sample_rl_episode(env, weights, obs, rng):
    """Sample one training episode from the Bernoulli policy P(push right) = σ(net(obs))."""
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


def evaluate_on_twin(score, initial_states, max_steps=MAX_STEPS):
    """Same as evaluate_on_gym, but on the twin, all episodes at once (the fast path): from Gymnasium's own
    start states, with float32 observations, it replays Gymnasium's episodes exactly (tested equal in
    tests/test_cartpole_dp.py, and checked in every run: twin_equals_gym)."""
    state = np.array(initial_states, dtype=np.float64)
    alive = np.ones(len(state), dtype=bool)
    returns = np.zeros(len(state))
    for _ in range(max_steps):
        force = np.where(score(as_observation(state)) >= 0.0, FORCE_MAG, -FORCE_MAG)
        state = cartpole_step(state, force).data
        returns += alive                      # +1 every step, the failing one included
        alive &= ~terminated(state)
        if not alive.any():
            break
    return returns


def gym_initial_states(seeds, env_id="CartPole-v1"):
    """The float64 states Gymnasium's CartPole starts from after reset(seed=s)."""
    warnings.filterwarnings("ignore", message=".*CartPole-v0 is out of date")   # it is the original's setting
    return ad.runs.reset_states(env_id, seeds)


# ----------------------------------------------------------------------------
# Saved policies
# ----------------------------------------------------------------------------
def save_policy(path, network, **extra):
    ad.nn.save_parameters(path, network.named_parameters(), sizes=np.array(SIZES),
                          activation=np.array(ACTIVATION), **extra)


def policy_from_file(path):
    """A function Gymnasium observation -> Gymnasium action (0 or 1), from a params.npz written by this script.
    Raises ValueError (ad.runs.BadInput) naming the file and the problem if it is damaged or holds another
    network."""
    network = make_network(0)
    arrays = ad.nn.load_parameters(path, network.named_parameters())
    if "sizes" in arrays and tuple(arrays["sizes"].tolist()) != SIZES:
        raise ad.runs.BadInput(f"{path}: network sizes {tuple(arrays['sizes'].tolist())}, expected {SIZES}")
    weights = weights_of(network)

    def policy(observation):
        obs = np.asarray(observation, dtype=np.float64)
        if obs.shape != (4,):
            raise ValueError(f"policy: expected a CartPole observation of shape (4,), got shape {obs.shape}")
        if not np.all(np.isfinite(obs)):
            raise ValueError(f"policy: observation contains nan or inf: {obs}")
        return gym_action(forward_numpy(weights, obs))
    return policy


def save_and_reload(out, network, record, seed, reported):
    """Save the policy to out/params.npz, reload it the way a user would, and play it on Gymnasium from the
    first reported starts: it must give the trained policy's returns."""
    path = os.path.join(out, "params.npz")
    save_policy(path, network, seed=seed, episodes=len(record["train_return"]))
    reloaded = policy_from_file(path)
    seeds = REPORTED_SEEDS[:reported.gym_check or 1]
    returns = evaluate_on_gym(lambda obs: np.array([1.0 if reloaded(o) else -1.0 for o in obs]), seeds)
    return {"seed": seed, "training_episodes": len(record["train_return"]), "gym_episodes": len(seeds),
            "gym_mean": float(returns.mean()), "gym_min": float(returns.min()),
            "same_returns_as_trained": bool(np.array_equal(returns, record["reported_returns"][:len(seeds)]))}


# ----------------------------------------------------------------------------
# Summaries, paired comparisons and the printed report
# ----------------------------------------------------------------------------
def summarise(records, bar=REWARD_THRESHOLD, bar_episodes=5):
    """Episodes to the bar per seed, their mean/median/max, the stopping-set and reported scores per seed, and
    the same for the plain rule (margin 0), so the margin's cost in episodes can be read off."""
    episodes = [r["episodes_to_bar"] for r in records]
    reached = [e for e in episodes if e is not None]
    plain = [r["plain_rule_episode"] for r in records]
    both = [(e, p) for e, p in zip(episodes, plain) if e is not None and p is not None]
    summary = {"episodes_to_bar": episodes, "reached": len(reached), "seeds": len(records),
               "returned_episode": [r.get("returned_episode") for r in records],
               "budget_returns": sum(r["at_budget"] for r in records),
               "within_5": sum(e <= bar_episodes for e in reached),
               "mean_episodes": float(np.mean(reached)) if reached else None,
               "median_episodes": float(np.median(reached)) if reached else None,
               "max_episodes": max(reached) if reached else None,
               "steps_per_seed": [r["steps"] for r in records],
               "mean_steps_to_bar": float(np.mean([r["steps"] for r in records if r["episodes_to_bar"]]))
               if reached else None,
               "plain_rule_episodes": plain,
               "mean_plain_rule_episodes": float(np.mean([p for p in plain if p])) if any(plain) else None,
               "margin_cost_episodes": float(np.mean([e - p for e, p in both])) if both else None}
    if records and "reported" in records[0]:
        means = [r["reported"]["mean"] for r in records]
        plain_means = [r.get("plain_rule_reported_mean") for r in records]
        summary.update({
            "stopping_gym_mean": [r.get("gym_stop_mean") for r in records],
            "stopping_gym_min": [r.get("gym_stop_min") for r in records],
            "twin_equals_gym": all(r.get("twin_equals_gym", True) and r["reported"].get("twin_equals_gym", True)
                                   for r in records),
            "reported_mean": means, "reported_se": [r["reported"]["se"] for r in records],
            "reported_min": [r["reported"]["min"] for r in records],
            "reported_mean_over_seeds": ad.runs.mean_and_se(means)[0],
            "reported_se_over_seeds": ad.runs.mean_and_se(means)[1],
            "worst_seed_reported_mean": min(means),
            "seeds_reported_at_bar": sum(m >= bar for m in means),
            "seeds_within_5_and_reported_at_bar": sum(e is not None and e <= bar_episodes and m >= bar
                                                      for e, m in zip(episodes, means)),
            "plain_rule_reported_mean": plain_means,
            "plain_rule_seeds_reported_at_bar": sum(m is not None and m >= bar for m in plain_means),
            "plain_rule_seeds_within_5_and_reported_at_bar": sum(
                p is not None and p <= bar_episodes and m is not None and m >= bar for p, m in zip(plain, plain_means))})
    return summary


def paired_comparisons(dp_records, rl_records, rs_records, lqr_record):
    """DP minus each baseline on the same 1,000 reported starts: per start, each method's return averaged over
    its seeds; mean and standard error of the difference over starts."""
    def per_start(records):
        return np.mean([r["reported_returns"] for r in records], axis=0)
    dp = per_start(dp_records)
    found = {"RL": rl_records, "random search": rs_records, "LQR": [lqr_record]}
    return {name: ad.runs.paired_difference(dp, per_start(records)) for name, records in found.items() if records}


def without_returns(records):
    return [{k: v for k, v in r.items() if k != "reported_returns"} for r in records]


def report(metrics, args, out, started, rule, policy, records):
    """The end of the run: every seed's record (by method) into `metrics`, the figures, metrics.json and the
    printed table."""
    metrics["records"] = records
    save_figures(out, records["dp"], records["rl"], policy, rule.bar + rule.margin)
    ad.runs.write_metrics(out, metrics, args, started)
    print_report(metrics, out, started)


def print_report(metrics, out, started):
    rows = []
    named = [("DP", metrics["dp"]), ("RL", metrics.get("rl")), ("random search", metrics.get("random_search"))]
    for name, s in named:
        if s:
            rows.append(report_row({"DP": "DP (this script)", "RL": "RL (REINFORCE)"}.get(name, name + " (draws)"), s))
    lqr = metrics["lqr"]
    rows.append(["LQR (0 episodes)", "1/1" if lqr["episodes_to_bar"] == 0 else "0/1", 0, 0, "-", "-",
                 lqr.get("gym_stop_mean"), f"{lqr['reported']['mean']:.1f} ± {lqr['reported']['se']:.1f}",
                 lqr["reported"]["mean"], "-", "-"])
    for name, s in (metrics.get("original_setting") or {}).items():
        rows.append(report_row(f"CartPole-v0, {name}", s, within="-"))
    ad.runs.print_table(["method", "seeds at bar", "mean ep.", "max ep.", "best at budget", "<=5 ep. & reported at bar",
                         "stopping set (Gym)", "reported ± se", "worst seed", "plain rule: ep.",
                         "plain: <=5 ep. & at bar"], rows,
                        title="Episodes to the bar (stopping rule) and the score on the reported starts")
    for name, d in metrics["paired_vs_dp"].items():
        print(f"DP minus {name} on the same {d['n']:,} reported starts: {d['mean']:+.1f} ± {d['se']:.1f}")
    for name, s in named:
        if s and not s["reached"]:
            print(f"No {name} seed reached the bar within its training episodes (a result, not an error).")
    sp = metrics["saved_policy"]
    print(f"saved policy (seed {sp['seed']}, {sp['training_episodes']} episodes) via policy_from_file on Gymnasium: "
          f"mean {sp['gym_mean']:.1f}, min {sp['gym_min']:.0f} over {sp['gym_episodes']} reported starts "
          f"(same returns as the trained policy: {sp['same_returns_as_trained']})")
    print(f"wrote {out}/metrics.json, params.npz, curves.png, balancing.gif "
          f"({ad.runs.format_seconds(time.perf_counter() - started)})")


def report_row(name, s, within=None):
    mean = lambda values: np.mean([v for v in values if v is not None]) if any(v is not None for v in values) else None
    return [name, f"{s['reached']}/{s['seeds']}", s["mean_episodes"], s["max_episodes"], s["budget_returns"],
            within or f"{s['seeds_within_5_and_reported_at_bar']}/{s['seeds']}", mean(s["stopping_gym_mean"]),
            f"{s['reported_mean_over_seeds']:.1f} ± {s['reported_se_over_seeds']:.1f}", s["worst_seed_reported_mean"],
            s["mean_plain_rule_episodes"], f"{s['plain_rule_seeds_within_5_and_reported_at_bar']}/{s['seeds']}"]


# ----------------------------------------------------------------------------
# Figures: learning curves and a GIF of the learned policy
# ----------------------------------------------------------------------------
def save_figures(out, dp_records, rl_records, network, stop_level):
    plot_curves(os.path.join(out, "curves.png"), dp_records, rl_records, stop_level)
    states = record_gym_episode(scorer(network), REPORTED_SEEDS[0])
    save_balancing_gif(os.path.join(out, "balancing.gif"), states)


def plot_curves(path, dp_records, rl_records, stop_level):
    plt = ad.runs.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for records, color, name in ((dp_records, "tab:blue", "DP (backprop through the twin)"),
                                 (rl_records, "tab:orange", "RL (REINFORCE + baseline, real env)")):
        for i, r in enumerate(records):
            episodes = np.arange(1, len(r["stop_mean"]) + 1)
            ax.plot(episodes, r["stop_mean"], color=color, lw=1, alpha=0.6, label=name if i == 0 else None)
            if r["episodes_to_bar"]:
                ax.plot(r["episodes_to_bar"], r["reported"]["mean"], "*", color=color, ms=9, mec="k", mew=0.5)
    ax.axhline(REWARD_THRESHOLD, color="k", ls="--", lw=0.8, label="bar: mean 475")
    ax.axhline(stop_level, color="0.4", ls=":", lw=0.8, label=f"stopping level {stop_level:g} (stopping starts)")
    ax.set_xscale("log")
    ax.set_xlabel("training episodes")
    ax.set_ylabel("return (mean over 100 stopping starts)")
    ax.set_title("CartPole-v1: deterministic policy after each training episode\n"
                 "(one line per seed; ★ = score on the 1,000 reported starts when stopped; at the 5-episode "
                 "budget, of the best policy seen)", fontsize=9)
    ax.set_ylim(0, 520)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    ad.runs.save_figure(fig, os.path.dirname(path), os.path.basename(path), dpi=110)


def record_gym_episode(score, seed):
    """Observations of one real Gymnasium episode under the deterministic policy."""
    observations = []
    ad.runs.play_episodes("CartPole-v1", lambda obs: (score(obs) >= 0.0).astype(int), [seed],
                          watch=lambda t, obs, running: observations.append(obs[0].copy()))
    return np.array(observations)


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
FLUX_SETUP = dict(activation="relu", train_biases=True, out_activation="tanh", window=8, lookahead=False,
                  closed_loop=True, lr=0.03, init="glorot")     # the original's choices, from its code
ABLATIONS = {   # name -> keyword arguments of run_dp
    "this script: tanh, zero biases, window 1 + lookahead": {},
    "Flux setup: ReLU, biases, tanh out, window 8, Adam 0.03": FLUX_SETUP,
    "ReLU instead of tanh (zero biases)": dict(activation="relu"),
    "biases trained": dict(train_biases=True),
    "window 2, no lookahead, closed loop": dict(window=2, lookahead=False, closed_loop=True),
    "window 3, no lookahead, closed loop": dict(window=3, lookahead=False, closed_loop=True),
    "window 3, lookahead, closed loop": dict(window=3, closed_loop=True),
    "window 4, lookahead, closed loop": dict(window=4, closed_loop=True),
    "window 4, lookahead, input detached": dict(window=4),
    "window 16, lookahead, input detached": dict(window=16),
}


def closed_loop_force_gradients(policy, state, steps=6):
    """dL/dF_k for the forces of one window with the gradient flowing through the policy's input, L = the cost
    after the window: why `train_dp_episode` trains on windows of one step, its input detached.

    With closed_loop=True the gradient also flows through the policy's input (the state one force produced sets
    the next force). For a good bang-bang policy that backward loop has a gain of about −10 per step, so these
    alternate in sign and grow going back: a longer window's gradient is dominated by its first force, with a
    sign set by the window's length. One step also gives the most updates per episode."""
    s, forces = ad.Tensor(np.atleast_2d(state)), []
    for _ in range(steps):
        forces.append(dp_force(policy, s))
        s = cartpole_step(s, forces[-1])
    step_cost(s).backward()
    policy.zero_grad()
    return np.array([float(f.grad[0]) for f in forces])


def untrained_pass_rate(states, seeds):
    """How often a freshly initialised network already passes: 'reached the bar after 1 episode' is partly
    the prior."""
    means = [evaluate_on_twin(scorer(make_network(np.random.default_rng(s))), states).mean() for s in seeds]
    return float(np.mean(np.array(means) >= REWARD_THRESHOLD))


def long_run_extras(metrics, args, policy):
    """--full, on development starts (the plain rule on the first 100, screened on the twin): the closed-loop
    gradient of one window, the untrained pass rate, and what each design choice is worth."""
    rule = StoppingRule(seeds=DEVELOPMENT_SEEDS[:100], margin=0.0, confirm_on_gym=False, budget=None)
    seeds = range(args.seed, args.seed + args.dp_seeds)
    state = rule.states[:1]
    for _ in range(100):                  # a state on the trained policy's own trajectory
        state = cartpole_step(state, np.where(scorer(policy)(state) >= 0, FORCE_MAG, -FORCE_MAG)).data
    grads = closed_loop_force_gradients(policy, state)
    metrics["closed_loop_force_gradients"] = grads
    print("closed loop, dL/dF_k for k = 0..5:", np.array2string(grads, precision=2),
          "| ratios dL/dF_k / dL/dF_k+1:", np.array2string(grads[:-1] / grads[1:], precision=1))
    metrics["untrained_pass_rate"] = untrained_pass_rate(rule.states, range(args.seed, args.seed + 100))
    print(f"untrained networks that already pass: {100 * metrics['untrained_pass_rate']:.0f}% of 100")
    metrics["ablations"] = {}
    for name, options in ABLATIONS.items():
        records = [run_dp(s, rule, args.dp_max_episodes, **options)[1] for s in seeds]
        summary = metrics["ablations"][name] = summarise(records)
        print(f"ablation {name:56s} within 5 episodes {summary['within_5']:2d}/{len(records)}, "
              f"within {args.dp_max_episodes} {summary['reached']:2d}/{len(records)}", flush=True)
    records = [run_rl(s, rule, args.rl_max_episodes, train_biases=True)[1]
               for s in range(args.seed, args.seed + args.rl_seeds)]
    summary = metrics["ablations"]["RL with biases trained"] = summarise(records)
    print(f"ablation {'RL with biases trained':56s} episodes to the bar: "
          f"mean {ad.runs.format_cell(summary['mean_episodes'])}, median {ad.runs.format_cell(summary['median_episodes'])}"
          f" ({summary['reached']}/{len(records)} seeds)")


if __name__ == "__main__":
    ad.runs.run(main)
