"""How much does the engine cost? Forward+backward of three workloads, each
written three ways and timed in the same run (median of repeats):

  plain    the engine's elementary ops only
  fused    the engine with its fused kernels (and the pendulum's fused step)
  numpy    hand-written NumPy forward and backward, the floor to compare with

  1. BPTT through Pendulum-v1: batch 64, 200 steps, policy MLP 3→32→32→1
     (tanh, torque 2·tanh), loss = mean over the batch of the summed cost
  2. a GRU actor-critic over a sequence: batch 256, 100 steps, input 7,
     hidden 256, softmax policy over 5 actions and a value head
  3. a chain of 1,000 tiny ops on a 4-element vector (per-op overhead)

Every variant's gradient is checked against the hand-written one before it is
timed. Run: python benchmarks/autodiff_overhead.py [--repeats N] [--quick]
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import autodiff as ad  # noqa: E402
import pendulum_bptt  # noqa: E402


def median_time(fn, repeats):
    fn()                                   # warm-up (and caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def assert_same_gradients(name, grads, reference):
    for g, r in zip(grads, reference):
        if not np.allclose(g, r, rtol=1e-9, atol=1e-11):
            raise AssertionError(f"{name}: gradient differs from the hand-written one by {np.max(np.abs(g - r)):.2e}")


# ----------------------------------------------------------------------------
# 1. Pendulum BPTT
# ----------------------------------------------------------------------------
G, DT, MAX_SPEED, MAX_TORQUE = 10.0, 0.05, 8.0, 2.0


def pendulum_setup(batch=64, hidden=32, seed=0):
    rng = np.random.default_rng(seed)
    sizes = (3, hidden, hidden, 1)
    params = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        params += [rng.normal(0, 1 / np.sqrt(n_in), (n_in, n_out)), rng.normal(0, 0.1, n_out)]
    state0 = np.stack([rng.uniform(-np.pi, np.pi, batch), rng.uniform(-1, 1, batch)], axis=1)
    return params, state0


def pendulum_numpy(params, state0, steps):
    """Hand-written forward and backward of the mean summed cost."""
    W1, b1, W2, b2, W3, b3 = params
    th, thd = state0[:, 0].copy(), state0[:, 1].copy()
    batch = th.shape[0]
    tape = []
    total = 0.0
    for _ in range(steps):
        obs = np.stack([np.cos(th), np.sin(th), thd], axis=1)
        h1 = np.tanh(obs @ W1 + b1)
        h2 = np.tanh(h1 @ W2 + b2)
        a = np.tanh(h2 @ W3 + b3)[:, 0]
        u = MAX_TORQUE * a                                  # already inside [-2, 2]: the clip is the identity
        wrapped = (th + np.pi) % (2 * np.pi) - np.pi
        total += np.sum(wrapped ** 2 + 0.1 * thd ** 2 + 0.001 * u ** 2)
        raw = thd + (3 * G / 2 * np.sin(th) + 3.0 * u) * DT
        new_thd = np.clip(raw, -MAX_SPEED, MAX_SPEED)
        tape.append((th, thd, obs, h1, h2, a, u, wrapped, np.abs(raw) <= MAX_SPEED))
        th, thd = th + new_thd * DT, new_thd
    loss = total / batch
    grads = [np.zeros_like(p) for p in params]
    d_th, d_thd = np.zeros(batch), np.zeros(batch)
    scale = 1.0 / batch
    for th, thd, obs, h1, h2, a, u, wrapped, inside in reversed(tape):
        d_new_thd = d_thd + d_th * DT                       # θ' = θ + θ̇' dt, θ̇' passes on
        d_raw = d_new_thd * inside
        d_th = d_th + scale * 2 * wrapped + d_raw * 3 * G / 2 * np.cos(th) * DT
        d_thd = scale * 0.2 * thd + d_raw
        d_u = scale * 0.002 * u + d_raw * 3.0 * DT
        dz3 = (d_u * MAX_TORQUE * (1 - a * a))[:, None]
        grads[4] += h2.T @ dz3
        grads[5] += dz3.sum(0)
        dz2 = (dz3 @ W3.T) * (1 - h2 * h2)
        grads[2] += h1.T @ dz2
        grads[3] += dz2.sum(0)
        dz1 = (dz2 @ W2.T) * (1 - h1 * h1)
        grads[0] += obs.T @ dz1
        grads[1] += dz1.sum(0)
        d_obs = dz1 @ W1.T
        d_th = d_th - d_obs[:, 0] * np.sin(th) + d_obs[:, 1] * np.cos(th)
        d_thd = d_thd + d_obs[:, 2]
    return loss, grads


def pendulum_engine(params, state0, steps, fused):
    tensors = [ad.Tensor(p, requires_grad=True) for p in params]
    state = ad.Tensor(state0)
    step = pendulum_bptt.step_fused if fused else pendulum_bptt.step_ops
    costs = []
    for _ in range(steps):
        obs = pendulum_bptt.observation(state)
        if fused:
            torque = MAX_TORQUE * ad.mlp(obs, *tensors, activation="tanh", out_activation="tanh")
        else:
            h = obs
            for i in range(3):
                h = ad.tanh(h @ tensors[2 * i] + tensors[2 * i + 1])
            torque = MAX_TORQUE * h
        state, cost = step(state, torque)            # torque (B, 1)
        costs.append(cost)
    loss = ad.stack(costs).sum() / state0.shape[0]
    loss.backward()
    return loss.item(), [t.grad for t in tensors]


# ----------------------------------------------------------------------------
# 2. GRU actor-critic
# ----------------------------------------------------------------------------
def gru_setup(T=100, batch=256, n_in=7, hidden=256, n_actions=5, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.normal(0, 1 / np.sqrt(n_in), (n_in, 3 * hidden)), rng.normal(0, 1 / np.sqrt(hidden), (hidden, 3 * hidden)),
              np.zeros(3 * hidden), np.zeros(3 * hidden),
              rng.normal(0, 0.01, (hidden, n_actions)), np.zeros(n_actions),
              rng.normal(0, 1 / np.sqrt(hidden), (hidden, 1)), np.zeros(1)]
    data = dict(xs=rng.normal(size=(T, batch, n_in)),
                onehot=np.eye(n_actions)[rng.integers(0, n_actions, (T, batch))],
                advantages=rng.normal(size=(T, batch)), returns=rng.normal(size=(T, batch)))
    return params, data


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def gru_numpy(params, data):
    """Hand-written GRU + heads + PPO-style loss, forward and backward."""
    Wx, Wh, bx, bh, Wp, bp, Wv, bv = params
    xs, onehot, adv, ret = data["xs"], data["onehot"], data["advantages"], data["returns"]
    T, B, _ = xs.shape
    H = Wh.shape[0]
    xp = (xs.reshape(T * B, -1) @ Wx + bx).reshape(T, B, 3 * H)
    h = np.zeros((B, H))
    hs, cache = np.empty((T, B, H)), []
    for t in range(T):
        hp = h @ Wh + bh
        r = sigmoid(xp[t, :, :H] + hp[:, :H])
        z = sigmoid(xp[t, :, H:2 * H] + hp[:, H:2 * H])
        n = np.tanh(xp[t, :, 2 * H:] + r * hp[:, 2 * H:])
        cache.append((h, r, z, n, hp[:, 2 * H:]))
        h = (1 - z) * n + z * h
        hs[t] = h
    hs2 = hs.reshape(T * B, H)
    logits = hs2 @ Wp + bp
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    values = (hs2 @ Wv + bv)[:, 0]
    N = T * B
    oh, a2, r2 = onehot.reshape(N, -1), adv.reshape(N), ret.reshape(N)
    loss = -np.sum(logp * oh * a2[:, None]) / N + 0.5 * np.sum((values - r2) ** 2) / N
    d_logp = -oh * a2[:, None] / N
    d_logits = d_logp - np.exp(logp) * d_logp.sum(axis=1, keepdims=True)
    d_values = (values - r2) / N
    grads = [None] * 8
    grads[4], grads[5] = hs2.T @ d_logits, d_logits.sum(0)
    grads[6], grads[7] = hs2.T @ d_values[:, None], np.array([d_values.sum()])
    d_hs = (d_logits @ Wp.T + d_values[:, None] @ Wv.T).reshape(T, B, H)
    d_xp, d_hp = np.empty((T, B, 3 * H)), np.empty((T, B, 3 * H))
    dh = np.zeros((B, H))
    for t in reversed(range(T)):
        h_prev, r, z, n, hn = cache[t]
        g = d_hs[t] + dh
        dn = g * (1 - z) * (1 - n * n)
        dz = g * (h_prev - n) * z * (1 - z)
        dr = dn * hn * r * (1 - r)
        d_xp[t] = np.concatenate([dr, dz, dn], axis=1)
        d_hp[t] = np.concatenate([dr, dz, dn * r], axis=1)
        dh = g * z + d_hp[t] @ Wh.T
    h_prevs = np.concatenate([np.zeros((1, B, H)), hs[:-1]]).reshape(N, H)
    dxp2, dhp2 = d_xp.reshape(N, -1), d_hp.reshape(N, -1)
    grads[0], grads[1] = xs.reshape(N, -1).T @ dxp2, h_prevs.T @ dhp2
    grads[2], grads[3] = dxp2.sum(0), dhp2.sum(0)
    return loss, grads


def gru_engine(params, data, fused):
    t = [ad.Tensor(p, requires_grad=True) for p in params]
    Wx, Wh, bx, bh, Wp, bp, Wv, bv = t
    xs = ad.Tensor(data["xs"])
    T, B, _ = data["xs"].shape
    H = params[1].shape[0]
    h0 = ad.Tensor(np.zeros((B, H)))
    if fused:
        hs = ad.gru_sequence(xs, h0, Wx, Wh, bx, bh)
        logits, values = ad.linear(hs, Wp, bp), ad.linear(hs, Wv, bv)
    else:
        h, states = h0, []
        for step in range(T):
            xp, hp = xs[step] @ Wx + bx, h @ Wh + bh
            r = ad.sigmoid(xp[:, :H] + hp[:, :H])
            z = ad.sigmoid(xp[:, H:2 * H] + hp[:, H:2 * H])
            n = ad.tanh(xp[:, 2 * H:] + r * hp[:, 2 * H:])
            h = (1.0 - z) * n + z * h
            states.append(h)
        hs = ad.stack(states)
        logits, values = hs @ Wp + bp, hs @ Wv + bv
    N = T * B
    logp = ad.log_softmax(logits)
    policy_loss = -(logp * ad.Tensor(data["onehot"] * data["advantages"][..., None])).sum() / N
    value_loss = 0.5 * ((values[..., 0] - ad.Tensor(data["returns"])) ** 2).sum() / N
    loss = policy_loss + value_loss
    loss.backward()
    return loss.item(), [p.grad for p in t]


# ----------------------------------------------------------------------------
# 3. A chain of tiny ops
# ----------------------------------------------------------------------------
def chain_engine(n_ops=1000):
    x = ad.Tensor(np.linspace(0.1, 0.4, 4), requires_grad=True)
    y = x
    for i in range(n_ops):
        y = y * 1.001 if i % 2 else y + 0.01
    y.sum().backward()
    return x.grad


def chain_numpy(n_ops=1000):
    y = np.linspace(0.1, 0.4, 4)
    for i in range(n_ops):
        y = y * 1.001 if i % 2 else y + 0.01
    g = np.ones(4)
    for i in reversed(range(n_ops)):
        g = g * 1.001 if i % 2 else g
    return g


# ----------------------------------------------------------------------------
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--repeats", type=ad.runs.positive_int, default=7, help="timed repeats (median is reported)")
    parser.add_argument("--quick", action="store_true", help="smaller workloads (a smoke test, not the figures)")
    args = parser.parse_args(argv)
    scale = 4 if args.quick else 1
    rows = []

    params, state0 = pendulum_setup()
    steps = 200 // scale
    reference = pendulum_numpy(params, state0, steps)
    for fused in (False, True):
        result = pendulum_engine(params, state0, steps, fused)
        assert abs(result[0] - reference[0]) < 1e-9 * abs(reference[0])
        assert_same_gradients("pendulum", result[1], reference[1])
    rows.append(("1. pendulum BPTT (64 x 200 steps)",
                 median_time(lambda: pendulum_engine(params, state0, steps, False), args.repeats),
                 median_time(lambda: pendulum_engine(params, state0, steps, True), args.repeats),
                 median_time(lambda: pendulum_numpy(params, state0, steps), args.repeats)))

    params, data = gru_setup(T=100 // scale)
    reference = gru_numpy(params, data)
    for fused in (False, True):
        result = gru_engine(params, data, fused)
        assert abs(result[0] - reference[0]) < 1e-9 * abs(reference[0])
        assert_same_gradients("gru", result[1], reference[1])
    repeats = max(3, args.repeats // 2)
    rows.append(("2. GRU actor-critic (256 x 100, H=256)",
                 median_time(lambda: gru_engine(params, data, False), repeats),
                 median_time(lambda: gru_engine(params, data, True), repeats),
                 median_time(lambda: gru_numpy(params, data), repeats)))

    assert np.allclose(chain_engine(), chain_numpy())
    plain = median_time(chain_engine, args.repeats)
    rows.append(("3. chain of 1,000 tiny ops", plain, plain, median_time(chain_numpy, args.repeats)))

    print(f"{'workload':40s} {'plain':>10s} {'fused':>10s} {'numpy':>10s} {'plain/np':>9s} {'fused/np':>9s}")
    for name, plain, fused, numpy_time in rows:
        print(f"{name:40s} {plain * 1e3:8.1f}ms {fused * 1e3:8.1f}ms {numpy_time * 1e3:8.1f}ms "
              f"{plain / numpy_time:8.2f}x {fused / numpy_time:8.2f}x")
    per_op = rows[2][1] / 1000 * 1e6
    print(f"per-op overhead (forward + backward of one tiny op): {per_op:.2f} µs (target < 10 µs)")
    print("targets: fused within 1.3x of hand-written NumPy on workloads 1 and 2")
    return rows


if __name__ == "__main__":
    main()
