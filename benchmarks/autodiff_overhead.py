"""How much does the engine cost? Forward+backward of three workloads, each
written several ways and timed in the same run, the variants interleaved
(one of each in turn, median of the repeats), so a change in the machine's
load moves them together and their ratios stay fair:

  plain    the engine's elementary ops only, as a learner writes it
  fused    the engine with its fused kernels (and a fused pendulum step)
  numpy    hand-written NumPy forward and backward, the floor to compare with
  torch    PyTorch eager with the same plain ops, only if torch is installed
           (it is not a dependency; without it that row says so and is skipped)

  1. BPTT through Pendulum-v1: batch 64, 200 steps, policy MLP 3→32→32→1
     (tanh, torque 2·tanh), float64, loss = mean over the batch of the summed cost
  2. a GRU actor-critic over a sequence: batch 256, 100 steps, input 7,
     hidden 256, softmax policy over 5 actions and a value head
  3. a chain of 1,000 tiny ops on a 4-element vector (per-op overhead)

Every variant's loss and gradient are checked against the hand-written ones
before anything is timed. Times are CPU seconds of this process
(time.process_time), so that waiting for a core on a busy machine is not
counted; on a quiet machine they equal wall time. Each ratio is printed with its target and whether it
holds. BLAS runs on one thread (set by `import autodiff`, which therefore comes
before numpy here). Run:

    python benchmarks/autodiff_overhead.py [--repeats N] [--quick] [--baseline DIR]

--baseline DIR also times the plain workloads with another version of the
engine (DIR/autodiff), in the same run: on a loaded machine, where absolute
times mean little, that is how a speed-up is measured.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import autodiff as ad  # noqa: E402  (first: it sets single-threaded BLAS before NumPy loads)

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

try:
    import torch  # noqa: E402
    torch.set_num_threads(1)
except ImportError:
    torch = None


# CPU time of this process, not wall time: on a shared machine, the time spent waiting for a core is not the
# engine's. With one BLAS thread and a quiet machine the two are the same.
clock = time.process_time


def interleaved_medians(variants, repeats):
    """Median CPU seconds of each named function, timed in turn (a, b, c, a, b, c, ...) after a warm-up."""
    for fn in variants.values():
        fn()
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def assert_same(name, loss, grads, reference, rtol=1e-9):
    if abs(loss - reference[0]) > rtol * abs(reference[0]):
        raise AssertionError(f"{name}: loss {loss} differs from the hand-written {reference[0]}")
    for g, r in zip(grads, reference[1]):
        if not np.allclose(g, r, rtol=rtol, atol=1e-11):
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


def wrap_angle(th):
    return (th + np.pi) % (2 * np.pi) - np.pi


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
        wrapped = wrap_angle(th)
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


def pendulum_plain(params, state0, steps, ad=ad):
    """The engine's elementary ops only: the code a learner writes first. (`ad` may be another version
    of the engine, for --baseline.)"""
    W1, b1, W2, b2, W3, b3 = [ad.Tensor(p, requires_grad=True) for p in params]
    th, thd = ad.Tensor(state0[:, 0]), ad.Tensor(state0[:, 1])
    costs = []
    for _ in range(steps):
        obs = ad.stack([ad.cos(th), ad.sin(th), thd], axis=1)
        h = ad.tanh(obs @ W1 + b1)
        h = ad.tanh(h @ W2 + b2)
        u = MAX_TORQUE * ad.tanh(h @ W3 + b3)[:, 0]
        wrapped = th + (wrap_angle(th.data) - th.data)       # the shift by 2πk is a constant
        costs.append(wrapped * wrapped + 0.1 * (thd * thd) + 0.001 * (u * u))
        thd = ad.clip(thd + (3 * G / 2 * ad.sin(th) + 3.0 * u) * DT, -MAX_SPEED, MAX_SPEED)
        th = th + thd * DT
    loss = ad.stack(costs).sum() / state0.shape[0]
    loss.backward()
    return loss.item(), [p.grad for p in (W1, b1, W2, b2, W3, b3)]


@ad.primitive
def pendulum_step(state, a):
    """One fused step. The state is three rows (θ, θ̇, C) of B entries, C the cost so far; a = tanh(·) (B, 1)
    is the policy's output and u = 2a the torque (already inside the clip at ±2):
        θ̇' = clip(θ̇ + (15 sin θ + 3u) dt, ±8),  θ' = θ + θ̇' dt,  C' = C + wrap(θ)² + 0.1 θ̇² + 0.001 u²
    Backward, given (gθ', gθ̇', gC'):  gC = gC',  s = (gθ̇' + gθ' dt)·[θ̇' not clipped],
        gθ = gθ' + 15 cos θ dt s + 2 wrap(θ) gC',  gθ̇ = s + 0.2 θ̇ gC',  ga = 2 (3 dt s + 0.002 u gC')."""
    th, thd, total = state
    u = MAX_TORQUE * a[:, 0]
    wrapped = wrap_angle(th)
    raw = thd + (3 * G / 2 * np.sin(th) + 3.0 * u) * DT
    out = np.empty_like(state)
    new_thd = np.clip(raw, -MAX_SPEED, MAX_SPEED, out=out[1])
    np.add(th, new_thd * DT, out=out[0])
    np.add(total, wrapped * wrapped + 0.1 * (thd * thd) + 0.001 * (u * u), out=out[2])

    def vjp(g):
        g_th, g_thd, g_cost = g
        s = (g_thd + g_th * DT) * (new_thd == raw)
        d_state = np.empty_like(g)
        d_state[0] = g_th + (3 * G / 2 * DT) * np.cos(th) * s + 2 * wrapped * g_cost
        d_state[1] = s + 0.2 * thd * g_cost
        d_state[2] = g_cost
        return d_state, (MAX_TORQUE * (3.0 * DT * s + 0.002 * u * g_cost))[:, None]
    return out, vjp


@ad.primitive
def observe(state):
    """The policy's input [cos θ, sin θ, θ̇], (B, 3), from the rows (θ, θ̇, C).
    Backward: gθ = −g_cos sin θ + g_sin cos θ, gθ̇ = g_θ̇, gC = 0."""
    c, s = np.cos(state[0]), np.sin(state[0])
    obs = np.empty((state.shape[1], 3))
    obs[:, 0], obs[:, 1], obs[:, 2] = c, s, state[1]

    def vjp(g):
        d_state = np.empty_like(state)
        d_state[0] = g[:, 1] * c - g[:, 0] * s
        d_state[1] = g[:, 2]
        d_state[2] = 0.0
        return (d_state,)
    return obs, vjp


def pendulum_fused(params, state0, steps):
    """The same with ad.mlp for the policy and one fused op for the physics: three ops a step."""
    tensors = [ad.Tensor(p, requires_grad=True) for p in params]
    state = ad.Tensor(np.stack([state0[:, 0], state0[:, 1], np.zeros(len(state0))]))
    for _ in range(steps):
        state = pendulum_step(state, ad.mlp(observe(state), *tensors, activation="tanh", out_activation="tanh"))
    loss = state[2].sum() / state0.shape[0]
    loss.backward()
    return loss.item(), [t.grad for t in tensors]


def pendulum_torch(params, state0, steps):
    """pendulum_plain, op for op, in PyTorch eager."""
    W1, b1, W2, b2, W3, b3 = [torch.tensor(p, requires_grad=True) for p in params]
    th, thd = torch.tensor(state0[:, 0]), torch.tensor(state0[:, 1])
    costs = []
    for _ in range(steps):
        obs = torch.stack([torch.cos(th), torch.sin(th), thd], dim=1)
        h = torch.tanh(obs @ W1 + b1)
        h = torch.tanh(h @ W2 + b2)
        u = MAX_TORQUE * torch.tanh(h @ W3 + b3)[:, 0]
        wrapped = th + torch.from_numpy(wrap_angle(th.detach().numpy()) - th.detach().numpy())
        costs.append(wrapped * wrapped + 0.1 * (thd * thd) + 0.001 * (u * u))
        thd = torch.clamp(thd + (3 * G / 2 * torch.sin(th) + 3.0 * u) * DT, -MAX_SPEED, MAX_SPEED)
        th = th + thd * DT
    loss = torch.stack(costs).sum() / state0.shape[0]
    loss.backward()
    return loss.item(), [p.grad.numpy() for p in (W1, b1, W2, b2, W3, b3)]


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
def chain_engine(n_ops=1000, ad=ad):
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
TORCH_OVER_NUMPY = 47.0 / 12.5   # PyTorch eager / hand-written NumPy on workload 1, measured once elsewhere


def load_baseline(folder):
    """Another version of the engine, e.g. an earlier commit's: `git archive <commit> autodiff | tar -x -C DIR`
    gives DIR/autodiff. Imported under another name, so both versions run in this one process."""
    init = os.path.join(folder, "autodiff", "__init__.py")
    if not os.path.isfile(init):
        raise SystemExit(f"autodiff_overhead.py: error: --baseline {folder}: no autodiff/__init__.py there")
    spec = importlib.util.spec_from_file_location("autodiff_baseline", init,
                                                  submodule_search_locations=[os.path.dirname(init)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["autodiff_baseline"] = module
    spec.loader.exec_module(module)
    return module


def verdict(value, target):
    return f"{value:6.2f}  target <= {target:<5g} {'holds' if value <= target else 'DOES NOT HOLD'}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--repeats", type=ad.runs.positive_int, default=7, help="timed repeats (median is reported)")
    parser.add_argument("--quick", action="store_true", help="smaller workloads (a smoke test, not the figures)")
    parser.add_argument("--baseline", metavar="DIR", help="also time the plain workloads with the engine in "
                        "DIR/autodiff (e.g. the previous commit's), in the same run")
    args = parser.parse_args(argv)
    baseline = load_baseline(args.baseline) if args.baseline else None
    scale = 4 if args.quick else 1
    print(f"numpy {np.__version__}, torch {torch.__version__ if torch else 'not installed'}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (timings move with the load; "
          "the ratios, measured in one run with the variants interleaved, are what count; times are CPU time)\n")

    params, state0 = pendulum_setup()
    steps = 200 // scale
    reference = pendulum_numpy(params, state0, steps)
    pendulum = {"plain": lambda: pendulum_plain(params, state0, steps),
                "fused": lambda: pendulum_fused(params, state0, steps),
                "numpy": lambda: pendulum_numpy(params, state0, steps)}
    if torch is not None:
        pendulum["torch"] = lambda: pendulum_torch(params, state0, steps)
    if baseline is not None:
        pendulum["baseline"] = lambda: pendulum_plain(params, state0, steps, ad=baseline)
    for name, fn in pendulum.items():
        # PyTorch multiplies with its own kernels, summing in another order; 200 chained steps amplify that
        # rounding to ~1e-9 of the gradient, so its check is looser (still far below any real error)
        assert_same(f"pendulum {name}", *fn(), reference, rtol=1e-6 if name == "torch" else 1e-9)
    t1 = interleaved_medians(pendulum, args.repeats)

    params, data = gru_setup(T=100 // scale)
    reference = gru_numpy(params, data)
    gru = {"plain": lambda: gru_engine(params, data, False), "fused": lambda: gru_engine(params, data, True),
           "numpy": lambda: gru_numpy(params, data)}
    for name, fn in gru.items():
        if name != "numpy":
            assert_same(f"gru {name}", *fn(), reference)
    t2 = interleaved_medians(gru, max(3, args.repeats // 2))

    assert np.allclose(chain_engine(), chain_numpy())
    chain = {"plain": chain_engine, "numpy": chain_numpy}
    if baseline is not None:
        chain["baseline"] = lambda: chain_engine(ad=baseline)
    t3 = interleaved_medians(chain, args.repeats)

    columns = ("plain", "fused", "numpy", "torch") + (("baseline",) if baseline is not None else ())
    print(f"{'workload (forward + backward)':44s} " + " ".join(f"{c:>9s}" for c in columns))
    for title, t in (("1. pendulum BPTT (64 x %d steps, MLP 32-32)" % steps, t1),
                     ("2. GRU actor-critic (256 x %d, H=256)" % (100 // scale), t2), ("3. chain of 1,000 tiny ops", t3)):
        cells = [f"{t[k] * 1e3:7.1f}ms" if k in t else f"{'-':>9s}" for k in columns]
        print(f"{title:44s} " + " ".join(cells))

    per_op = t3["plain"] / 1000 * 1e6
    print("\nratios (each measured in this run):")
    print(f"  per-op overhead, forward + backward of one tiny op, µs   {verdict(per_op, 2.6)}")
    print(f"  1. pendulum, fused / numpy                               {verdict(t1['fused'] / t1['numpy'], 1.3)}")
    print(f"  2. GRU, fused / numpy                                    {verdict(t2['fused'] / t2['numpy'], 1.3)}")
    if torch is not None:
        print(f"  1. pendulum, plain / torch eager                         {verdict(t1['plain'] / t1['torch'], 0.75)}")
    else:
        print("  1. pendulum, plain / torch eager                         skipped: torch is not installed")
    plain_numpy = t1["plain"] / t1["numpy"]
    print(f"  1. pendulum, plain / numpy (for reference)               {plain_numpy:6.2f}")
    if baseline is not None:
        print(f"  against --baseline {args.baseline}: tiny-op chain, this engine / baseline   "
              f"{verdict(t3['plain'] / t3['baseline'], 1.0)}")
        print(f"  against --baseline {args.baseline}: pendulum plain, this engine / baseline  "
              f"{verdict(t1['plain'] / t1['baseline'], 1.0)}")
    if torch is None:   # an estimate, not a measurement: say so
        print(f"     estimate without torch: PyTorch eager once took {TORCH_OVER_NUMPY:.2f}x hand-written NumPy on this "
              f"workload (47 ms / 12.5 ms, another machine),\n     so plain / torch would be about "
              f"{plain_numpy / TORCH_OVER_NUMPY:.2f} (target <= 0.75); install torch to measure it")
    return t1, t2, t3


if __name__ == "__main__":
    main()
