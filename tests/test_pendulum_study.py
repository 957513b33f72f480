"""The pendulum study's own op (docs/pendulum_bptt_study.py): the optimum's cost-to-go, bilinear on the value
iteration's grid, as a differentiable tail. Its hand-written VJP is checked against finite differences."""

import numpy as np

import autodiff as ad


def test_optimum_cost_to_go_matches_finite_differences(docs_study):
    study = docs_study("pendulum_bptt_study")
    grid = (31, 25)
    rng = np.random.default_rng(0)
    values = rng.normal(size=grid[0] * grid[1]) * 50.0      # any table: the op only interpolates it
    states = np.column_stack([rng.uniform(-3.0, 3.0, 40), rng.uniform(-7.5, 7.5, 40)])
    ad.assert_gradcheck(lambda s: ad.sum(study.optimum_cost_to_go(s, values=values, grid=grid) * 0.7), [states],
                        rtol=1e-5)


def test_optimum_cost_to_go_is_minus_the_table_at_grid_points(docs_study):
    """At grid point (i, j), angle 2 pi i / n_theta - pi and speed -8 + 16 j / (n_speed - 1), the cost is -V[i, j]."""
    study = docs_study("pendulum_bptt_study")
    grid = (31, 25)
    values = np.random.default_rng(1).normal(size=grid[0] * grid[1])
    i, j = np.array([3, 17, 30]), np.array([0, 12, 23])
    states = np.column_stack([2 * np.pi * i / grid[0] - np.pi, -8.0 + 16.0 * j / (grid[1] - 1)])
    cost = study.optimum_cost_to_go(states, values=values, grid=grid).data
    assert np.allclose(cost, -values[i * grid[1] + j], atol=1e-9)


def test_bounded_adjoint_is_the_identity_with_each_rows_gradient_capped(docs_study):
    """bounded_adjoint is deliberately not a derivative: forward it is the identity, backward it scales each row of
    the incoming gradient down to norm <= limit. With a limit no row reaches, its VJP is the identity's (checked
    against finite differences); with a small one, every row's gradient has norm exactly the limit, direction kept."""
    study = docs_study("pendulum_bptt_study")
    rng = np.random.default_rng(2)
    states, weights = rng.normal(size=(30, 2)), rng.normal(size=(30, 2)) * np.geomspace(0.01, 100.0, 30)[:, None]
    ad.assert_gradcheck(lambda s: ad.sum(study.bounded_adjoint(s, limit=1e9) * weights), [states], rtol=1e-6)
    x = ad.Tensor(states, requires_grad=True)
    y = study.bounded_adjoint(x, limit=0.5)
    assert np.array_equal(y.data, states)
    ad.sum(y * weights).backward()
    norms, big = np.linalg.norm(x.grad, axis=1), np.linalg.norm(weights, axis=1) > 0.5
    assert np.allclose(norms[big], 0.5) and np.allclose(x.grad[~big], weights[~big])
    assert np.allclose(x.grad[big] / norms[big, None], weights[big] / np.linalg.norm(weights[big], axis=1)[:, None])


def test_weight_average_is_the_mean_of_the_weights_it_read_and_leaves_the_net_alone(docs_study):
    """WeightAverage over 80 updates reads the last quarter (after update 60 on, and the final net; horizon 2): its
    "mean" net holds the plain mean of the weights it saw, its "ema" the exponential average, and the trained net
    is untouched."""
    study = docs_study("pendulum_bptt_study")
    net = study.pb.make_policy(np.random.default_rng(0), 8)
    average = study.WeightAverage(net, updates=80, fraction=0.25)
    assert average.checkpoints(100, 10) == [100 + 10 * k for k in range(60, 80)] and average.horizon == 2.0
    seen = []
    for k in range(3):
        for p in net.parameters():
            p.data = p.data + 0.1 * (k + 1)
        seen.append([p.data.copy() for p in net.parameters()])
        average.observe(None)
    averaged, ema = average.net_with("mean"), average.net_with("ema")
    horizon = average.horizon
    for i, (p, q, r) in enumerate(zip(averaged.parameters(), ema.parameters(), net.parameters())):
        assert np.allclose(p.data, np.mean([w[i] for w in seen], axis=0), atol=1e-12)
        expected = seen[0][i]
        for w in seen[1:]:
            expected = expected + (w[i] - expected) / horizon
        assert np.allclose(q.data, expected, atol=1e-12)
        assert np.array_equal(r.data, seen[-1][i])


def test_clone_of_the_optimum_fits_the_optimal_torques(docs_study):
    """clone_optimum regresses the odd policy on the optimal controller's torques: after a short DAgger run its
    squared torque error on the optimum's own trajectories (fresh starts, labelled by greedy_torque at each step)
    is well below the untrained net's. A clone trained up the error instead of down misses the bar."""
    study = docs_study("pendulum_bptt_study")
    pb, values = study.pb, study.optimum_values()
    state = pb.reset_states(np.random.default_rng(99), 64)
    observations, targets = [], []
    for t in range(pb.EPISODE_STEPS):
        best = study.greedy_torque(values, state, t)
        observations.append(np.stack([np.cos(state[:, 0]), np.sin(state[:, 0]), state[:, 1]], axis=1))
        targets.append(best)
        state = pb.step_numpy(state, best)[0]
    observations, targets = np.concatenate(observations), np.concatenate(targets)

    def error(net):
        return float(np.mean((pb.act(net, observations) - targets) ** 2))
    untrained = error(pb.make_policy(np.random.default_rng((0, 7)), 16))
    clone = study.clone_optimum(0, 16, rounds=2, starts_per_round=32, updates_per_round=600, batch=256)
    assert error(clone) < 0.5 * untrained, (error(clone), untrained)
