"""The engine, op by op: finite-difference checks of every VJP (with
broadcasting), the backward pass, the switches, errors and optimisers."""

import numpy as np
import pytest

import autodiff as ad

TOL = 1e-6  # worst relative error allowed against central differences (float64)
rng = np.random.default_rng(1234)


def check(f, *arrays):
    ad.assert_gradcheck(f, list(arrays), rtol=TOL)     # raises with a report naming the worst element


def positive(*shape):
    return rng.uniform(0.5, 2.0, size=shape)


def normal(*shape):
    return rng.normal(size=shape)


# ----------------------------------------------------------------------------
# Binary ops with broadcasting: equal shapes, size-1 axes, missing leading axes
# ----------------------------------------------------------------------------
BROADCAST_PAIRS = [((3, 4), (3, 4)), ((3, 4), (4,)), ((3, 1), (1, 4)), ((2, 3, 4), (3, 1)), ((), (2, 3)),
                   ((5,), (2, 1, 5))]
BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: a ** b,
    "maximum": ad.maximum,
    "minimum": ad.minimum,
}


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("shapes", BROADCAST_PAIRS, ids=str)
def test_binary_op_gradients_with_broadcasting(name, shapes):
    a, b = positive(*shapes[0]), positive(*shapes[1])
    check(BINARY[name], a, b)


def test_operators_with_plain_numbers_and_arrays_on_either_side():
    x = normal(3)
    check(lambda x: 2.0 * x - 1.0 + x / 3.0 + 1.0 / (x * x + 1.0) - 3.0 + (np.ones(3) * x), x)
    check(lambda x: (x * x + 1.0) ** 1.5 + 2.0 ** x, x)
    y = ad.Tensor(np.ones(3)) + ad.Tensor(x)          # no grad anywhere: plain values
    assert not y.requires_grad and np.allclose(y.data, 1 + x)


@pytest.mark.parametrize("shapes", [((3, 4), (4, 2)), ((4,), (4, 2)), ((3, 4), (4,)), ((4,), (4,)),
                                    ((2, 3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5)), ((3, 4), (2, 4, 5))], ids=str)
def test_matmul_gradients(shapes):
    check(lambda a, b: a @ b, normal(*shapes[0]), normal(*shapes[1]))


# ----------------------------------------------------------------------------
# Elementwise functions
# ----------------------------------------------------------------------------
UNARY = {
    "exp": (ad.exp, normal), "log": (ad.log, positive), "sqrt": (ad.sqrt, positive),
    "sin": (ad.sin, normal), "cos": (ad.cos, normal), "tanh": (ad.tanh, normal),
    "sigmoid": (ad.sigmoid, normal), "softplus": (ad.softplus, normal), "neg": (lambda x: -x, normal),
    "relu": (ad.relu, lambda *s: normal(*s) + np.sign(normal(*s)) * 0.1),
    "abs": (ad.abs, lambda *s: normal(*s) + np.sign(normal(*s)) * 0.1),
    "clip": (lambda x: ad.clip(x, -0.5, 0.5), lambda *s: np.array([-1.2, -0.3, 0.1, 0.4, 0.9, 2.0])[:s[-1]]),
    "pow_scalar": (lambda x: x ** 3, normal),
}


@pytest.mark.parametrize("name", UNARY)
@pytest.mark.parametrize("shape", [(6,), (2, 3), (2, 1, 3)], ids=str)
def test_unary_op_gradients(name, shape):
    f, sample = UNARY[name]
    check(f, sample(*shape))


def test_where_gradient_goes_to_the_chosen_branch():
    cond = np.array([True, False, True, False])
    check(lambda a, b: ad.where(cond, a, b), normal(4), normal(4))
    check(lambda a, b: ad.where(cond, a, b), normal(2, 4), normal(4))   # broadcasting


def test_straight_through_sign_and_stop_gradient():
    x = ad.Tensor([-2.0, 0.0, 3.0], requires_grad=True)
    y = ad.straight_through_sign(x)
    assert y.data.tolist() == [-1.0, 1.0, 1.0]                       # sign(0) = +1
    (y * ad.Tensor([1.0, 2.0, 3.0])).sum().backward()
    assert x.grad.tolist() == [1.0, 2.0, 3.0]                        # identity backward
    z = ad.Tensor([1.0, 2.0], requires_grad=True)
    (ad.stop_gradient(z) * z).sum().backward()
    assert z.grad.tolist() == [1.0, 2.0]                             # only the live factor
    w = ad.Tensor([1.0, 2.0], requires_grad=True)
    ad.scale_gradient(w * w, 0.5).sum().backward()
    assert np.allclose(w.grad, 0.5 * 2 * w.data)


# ----------------------------------------------------------------------------
# Reductions, softmax family, shapes, indexing
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "logsumexp"])
@pytest.mark.parametrize("axis,keepdims", [(None, False), (0, False), (1, True), ((0, 2), False), (-1, False)])
def test_reduction_gradients(reduce, axis, keepdims):
    if reduce == "logsumexp" and axis is None:
        axis = -1
    f = getattr(ad, reduce)
    check(lambda x: f(x, axis=axis, keepdims=keepdims), normal(2, 3, 4))


def test_reductions_as_methods():
    x = normal(3, 4)
    check(lambda x: x.sum(axis=0) * x.mean(axis=1, keepdims=True) + x.max(axis=1, keepdims=True), x)


@pytest.mark.parametrize("f", [ad.softmax, ad.log_softmax], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_gradients(f, axis):
    check(lambda x: f(x, axis=axis), normal(3, 5))


def test_stable_forms_do_not_overflow_at_plus_minus_1000():
    big = np.array([[1000.0, -1000.0, 0.0], [-1000.0, -1000.0, -1000.0]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):   # underflow to 0 is correct
        s = ad.softmax(ad.Tensor(big)).data
        ls = ad.log_softmax(ad.Tensor(big)).data
        lse = ad.logsumexp(ad.Tensor(big), axis=-1).data
        sig = ad.sigmoid(ad.Tensor(np.array([-1000.0, 0.0, 1000.0]))).data
        sp = ad.softplus(ad.Tensor(np.array([-1000.0, 1000.0]))).data
    assert np.allclose(s, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]])
    assert np.allclose(ls[0], [0.0, -2000.0, -1000.0]) and np.allclose(lse, [1000.0, -1000.0 + np.log(3)])
    assert np.allclose(sig, [0.0, 0.5, 1.0]) and np.allclose(sp, [0.0, 1000.0])
    x = ad.Tensor(big, requires_grad=True)
    (ad.log_softmax(x) * ad.Tensor(normal(2, 3))).sum().backward()
    assert np.all(np.isfinite(x.grad))


def test_shape_op_gradients():
    x = normal(2, 3, 4)
    weights, matrix, weights_t = ad.Tensor(normal(6, 4)), ad.Tensor(normal(6, 2)), ad.Tensor(normal(4, 2, 3))
    check(lambda x: ad.reshape(x, (6, 4)) * weights, x)
    check(lambda x: x.reshape(4, 6) @ matrix, x)
    check(lambda x: ad.transpose(x, (2, 0, 1)) * weights_t, x)
    check(lambda x: x.T * ad.Tensor(np.arange(12.0).reshape(4, 3)), normal(3, 4))


def test_concatenate_and_stack_gradients():
    a, b, c = normal(2, 3), normal(2, 1), normal(2, 4)
    weights = ad.Tensor(normal(2, 2, 3))
    check(lambda a, b, c: ad.concatenate([a, b, c], axis=1) ** 2, a, b, c)
    check(lambda a, b: ad.stack([a, b], axis=1) * weights, normal(2, 3), normal(2, 3))
    check(lambda a, b: ad.stack([a, b], axis=0) * weights, normal(2, 3), normal(2, 3))
    check(lambda a, b: ad.concatenate([a, b], axis=0), normal(1, 3), normal(2, 3))


def test_indexing_basic_and_integer_array_scatter_add():
    x = normal(5, 4)
    check(lambda x: x[1:4, ::2] * 3.0, x)
    check(lambda x: x[2], x)
    check(lambda x: x[..., 1] + x[:, None, 0], x)
    check(lambda x: x[np.array([0, 2, 2, 4])] ** 2, x)                   # repeated rows accumulate
    check(lambda x: x[np.array([0, 1, 1]), np.array([3, 2, 2])], x)
    t = ad.Tensor(np.zeros(3), requires_grad=True)
    t[np.array([0, 0, 2])].sum().backward()
    assert t.grad.tolist() == [2.0, 0.0, 1.0]


# ----------------------------------------------------------------------------
# Fused kernels against their unfused composition
# ----------------------------------------------------------------------------
def unfused_gru_cell(x, h, Wx, Wh, bx, bh):
    H = h.shape[-1]
    xp, hp = x @ Wx + bx, h @ Wh + bh
    r = ad.sigmoid(xp[..., :H] + hp[..., :H])
    z = ad.sigmoid(xp[..., H:2 * H] + hp[..., H:2 * H])
    n = ad.tanh(xp[..., 2 * H:] + r * hp[..., 2 * H:])
    return (1.0 - z) * n + z * h


def gru_inputs(T=4, B=3, I=2, H=5):
    return [normal(T, B, I), normal(B, H), normal(I, 3 * H) * 0.5, normal(H, 3 * H) * 0.5, normal(3 * H),
            normal(3 * H)]


@pytest.mark.parametrize("activation", [None, "tanh", "relu", "sigmoid"])
def test_linear_kernel_matches_composition(activation):
    x, W, b = normal(2, 5, 3), normal(3, 4), normal(4)
    composed = {None: lambda z: z, "tanh": ad.tanh, "relu": ad.relu, "sigmoid": ad.sigmoid}[activation]
    fused = ad.linear(*(ad.Tensor(a) for a in (x, W, b)), activation=activation)
    assert np.allclose(fused.data, composed(ad.Tensor(x) @ ad.Tensor(W) + ad.Tensor(b)).data, atol=1e-14)
    check(lambda x, W, b: ad.linear(x, W, b, activation=activation), x, W, b)
    check(lambda x, W: ad.linear(x, W, activation=activation), x, W)   # without bias


def test_mlp_kernel_matches_composition_and_skips_input_grad():
    x = normal(6, 3)
    params = [normal(3, 8), normal(8), normal(8, 8), normal(8), normal(8, 2), normal(2)]
    fused = ad.mlp(ad.Tensor(x), *(ad.Tensor(p) for p in params), activation="tanh", out_activation="sigmoid")
    h = ad.Tensor(x)
    for i in range(3):
        h = h @ ad.Tensor(params[2 * i]) + ad.Tensor(params[2 * i + 1])
        h = ad.tanh(h) if i < 2 else ad.sigmoid(h)
    assert np.allclose(fused.data, h.data, atol=1e-14)
    check(lambda x, *p: ad.mlp(x, *p, activation="relu"), x + 0.05, *params)
    W = ad.Tensor(params[0], requires_grad=True)
    ad.mlp(ad.Tensor(x), W, ad.Tensor(params[1])).sum().backward()
    assert W.grad is not None


def test_gru_cell_kernel_matches_composition():
    xs, h, Wx, Wh, bx, bh = gru_inputs()
    args = [xs[0], h, Wx, Wh, bx, bh]
    tensors = [ad.Tensor(a, requires_grad=True) for a in args]
    unfused = [ad.Tensor(a, requires_grad=True) for a in args]
    projection = normal(*h.shape)
    (ad.gru_cell(*tensors) * projection).sum().backward()
    (unfused_gru_cell(*unfused) * projection).sum().backward()
    for a, b in zip(tensors, unfused):
        assert np.allclose(a.grad, b.grad, atol=1e-12)
    check(ad.gru_cell, *args)


def test_gru_sequence_kernel_matches_cell_by_cell_composition():
    args = gru_inputs(T=6)
    fused_inputs = [ad.Tensor(a, requires_grad=True) for a in args]
    loop_inputs = [ad.Tensor(a, requires_grad=True) for a in args]
    projection = normal(6, 3, 5)
    hs = ad.gru_sequence(*fused_inputs)
    h, states = loop_inputs[1], []
    for t in range(6):
        h = unfused_gru_cell(loop_inputs[0][t], h, *loop_inputs[2:])
        states.append(h)
    assert np.allclose(hs.data, ad.stack(states).data, atol=1e-13)
    (hs * projection).sum().backward()
    (ad.stack(states) * projection).sum().backward()
    for a, b in zip(fused_inputs, loop_inputs):
        assert np.allclose(a.grad, b.grad, atol=1e-12)
    check(ad.gru_sequence, *args)


def test_nn_modules_and_parameter_collection(tmp_path):
    mlp = ad.nn.MLP((3, 16, 2), rng=0, activation="tanh")
    assert list(mlp.named_parameters()) == ["W1", "b1", "W2", "b2"]
    assert ad.nn.MLP((3, 16, 2), rng=0).layers[0][0].data.tolist() == mlp.layers[0][0].data.tolist()  # seeded
    cell = ad.nn.GRUCell(4, 6, rng=1)
    hs = cell.sequence(ad.Tensor(normal(5, 2, 4)), cell.initial_state(2))
    assert hs.shape == (5, 2, 6)
    layer = ad.nn.Linear(3, 2, rng=0, activation="relu")
    assert layer(ad.Tensor(normal(4, 3))).shape == (4, 2)
    path = tmp_path / "p.npz"
    ad.nn.save_parameters(path, mlp.named_parameters())
    other = ad.nn.MLP((3, 16, 2), rng=5)
    ad.nn.load_parameters(path, other.named_parameters())
    assert np.array_equal(other.layers[1][0].data, mlp.layers[1][0].data)
    with pytest.raises(ValueError, match="shape"):
        ad.nn.load_parameters(path, ad.nn.MLP((3, 8, 2)).named_parameters())
    path.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a readable"):
        ad.nn.load_parameters(path, other.named_parameters())


# ----------------------------------------------------------------------------
# The backward pass
# ----------------------------------------------------------------------------
def test_gradient_accumulates_when_a_tensor_is_used_twice_and_across_backward_calls():
    x = ad.Tensor([3.0], requires_grad=True)
    y = x * x + x                    # x feeds three edges
    y.sum().backward()
    assert x.grad.tolist() == [7.0]
    y.sum().backward()               # the graph is kept: a second backward adds
    assert x.grad.tolist() == [14.0]
    a = ad.Tensor(2.0, requires_grad=True)
    b = a * 3.0
    c = b * b                         # b used twice: dc/db = 2b = 12, dc/da = 36
    c.backward()
    assert b.grad == 12.0 and a.grad == 36.0


def test_a_graph_of_200000_nodes():
    x = ad.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = x
    for _ in range(200_000):
        y = y * 1.0
    y.sum().backward()                # iterative topological order: no recursion limit
    assert x.grad.tolist() == [1.0, 1.0]


def test_float32_is_kept_and_float64_is_the_default():
    assert ad.Tensor([1, 2]).dtype == np.float64
    assert ad.Tensor(1.5).dtype == np.float64
    x = ad.Tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    y = ad.tanh(x * 2.0).sum()
    assert y.dtype == np.float32
    y.backward()
    assert x.grad.dtype == np.float32


def test_tensor_basics_and_repr():
    x = ad.Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True, name="x")
    assert x.shape == (2, 3) and x.T.shape == (3, 2) and x.sum().item() == 15.0
    assert not x.detach().requires_grad and x.detach().op == "leaf"
    assert "shape=(2, 3)" in repr(x) and "float64" in repr(x)
    assert "op=mul" in repr(x * 2.0)
    assert x.grad is None


def test_graph_printing_shows_ops_and_shapes():
    W = ad.Tensor(normal(3, 2), requires_grad=True, name="W")
    x = ad.Tensor(normal(4, 3))
    h = ad.tanh(x @ W)
    text = ad.graph_string((h * h).sum())
    assert "sum ()" in text and "tanh (4, 2)" in text and "matmul (4, 2)" in text
    assert "leaf 'W' (3, 2)" in text and "see #" in text     # h is shared, shown once


# ----------------------------------------------------------------------------
# Switches
# ----------------------------------------------------------------------------
def test_no_grad_builds_no_graph():
    x = ad.Tensor([1.0, 2.0], requires_grad=True)
    with ad.no_grad():
        y = ad.exp(x) * 2.0
        assert not ad.is_grad_enabled()
    assert not y.requires_grad and y._inputs == () and y._vjp is None
    assert ad.is_grad_enabled()
    assert (x * 2.0).requires_grad


def test_detect_anomaly_names_the_op_in_forward_and_backward():
    with ad.detect_anomaly():
        with pytest.raises(FloatingPointError, match="'log'"):
            with np.errstate(all="ignore"):
                ad.log(ad.Tensor([-1.0, 1.0], requires_grad=True))
        x = ad.Tensor([0.0], requires_grad=True)
        y = ad.sqrt(x)                 # forward is finite (0), backward is 1/(2·0) = inf
        with pytest.raises(FloatingPointError, match="'sqrt'"):
            with np.errstate(all="ignore"):
                y.sum().backward()
    with np.errstate(all="ignore"):
        assert np.isnan(ad.log(ad.Tensor([-1.0])).data[0])  # off: no check


# ----------------------------------------------------------------------------
# Errors a learner will hit
# ----------------------------------------------------------------------------
def test_error_messages_name_the_op_and_shapes():
    a, b = ad.Tensor(np.ones((3, 4))), ad.Tensor(np.ones((5, 2)))
    with pytest.raises(ValueError, match=r"matmul: inputs of shapes \(3, 4\), \(5, 2\).*4 != 5"):
        a @ b
    with pytest.raises(ValueError, match=r"add: inputs of shapes \(3, 4\), \(5, 2\)"):
        a + b
    with pytest.raises(ValueError, match=r"linear: .*3 features but W expects 4"):
        ad.linear(ad.Tensor(np.ones((2, 3))), ad.Tensor(np.ones((4, 2))))
    y = ad.Tensor(np.ones(3), requires_grad=True) * 2.0
    with pytest.raises(RuntimeError, match=r"backward: output has shape \(3,\); only a scalar may omit grad"):
        y.backward()
    with pytest.raises(ValueError, match=r"grad has shape \(2,\) but the output has shape \(3,\)"):
        y.backward(np.ones(2))
    with pytest.raises(TypeError, match="requires_grad=True needs a float array, got dtype int64"):
        ad.Tensor(np.array([1, 2]), requires_grad=True)
    with pytest.raises(TypeError, match="dtype bool"):
        ad.Tensor(np.array([True]), requires_grad=True)
    with pytest.raises(RuntimeError, match="does not require grad"):
        ad.Tensor([1.0]).sum().backward()


# ----------------------------------------------------------------------------
# Optimisers against their formulas
# ----------------------------------------------------------------------------
def run_optimizer(make, grads):
    p = ad.Tensor(np.array([1.0, -2.0]), requires_grad=True)
    opt = make([p])
    for g in grads:
        p.grad = np.array(g)
        opt.step()
    return p.data


GRADS = [[0.5, -1.0], [0.2, 0.3], [-0.4, 0.1]]


def test_sgd_with_momentum_formula():
    theta, v = np.array([1.0, -2.0]), np.zeros(2)
    for g in GRADS:
        v = 0.9 * v + np.array(g)
        theta = theta - 0.1 * v
    assert np.allclose(run_optimizer(lambda p: ad.optim.SGD(p, lr=0.1, momentum=0.9), GRADS), theta, atol=1e-15)


def test_rmsprop_formula_pong_settings():
    theta, cache = np.array([1.0, -2.0]), np.zeros(2)
    for g in map(np.array, GRADS):
        cache = 0.99 * cache + 0.01 * g ** 2
        theta = theta - 1e-4 * g / (np.sqrt(cache) + 1e-5)
    assert np.allclose(run_optimizer(lambda p: ad.optim.RMSProp(p, lr=1e-4, decay=0.99, eps=1e-5), GRADS), theta,
                       atol=1e-15)


def test_adam_formula():
    theta, m, v = np.array([1.0, -2.0]), np.zeros(2), np.zeros(2)
    for t, g in enumerate(map(np.array, GRADS), start=1):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g ** 2
        theta = theta - 0.01 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    assert np.allclose(run_optimizer(lambda p: ad.optim.Adam(p, lr=0.01), GRADS), theta, atol=1e-15)


def test_optimizer_state_round_trip_continues_exactly():
    p1 = ad.Tensor(np.array([1.0, -2.0]), requires_grad=True)
    opt1 = ad.optim.Adam([p1], lr=0.01)
    for g in GRADS[:2]:
        p1.grad = np.array(g)
        opt1.step()
    p2 = ad.Tensor(p1.data.copy(), requires_grad=True)
    opt2 = ad.optim.Adam([p2], lr=0.5)
    opt2.load_state_dict({k: np.array(v) for k, v in opt1.state_dict().items()})
    p1.grad = p2.grad = np.array(GRADS[2])
    opt1.step()
    opt2.step()
    assert np.array_equal(p1.data, p2.data)


def test_clip_grad_norm_scales_jointly_and_returns_the_raw_norm():
    a, b = ad.Tensor(np.zeros(2), requires_grad=True), ad.Tensor(np.zeros(1), requires_grad=True)
    a.grad, b.grad = np.array([3.0, 0.0]), np.array([4.0])
    assert ad.optim.clip_grad_norm([a, b], 1.0) == pytest.approx(5.0)
    assert np.allclose(a.grad, [0.6, 0.0]) and np.allclose(b.grad, [0.8])
    assert ad.optim.clip_grad_norm([a, b], 10.0) == pytest.approx(1.0)   # under the limit: unchanged
    assert np.allclose(b.grad, [0.8])


def test_user_defined_primitive_and_gradcheck_report():
    @ad.primitive
    def cube(x):
        return x ** 3, lambda g: (3 * x ** 2 * g,)

    assert "cube" in ad.PRIMITIVES
    check(lambda x: cube(x) * 2.0, normal(4))

    @ad.primitive
    def wrong_cube(x):
        return x ** 3, lambda g: (2 * x ** 2 * g,)   # a deliberately wrong VJP is caught

    errors = ad.gradcheck(wrong_cube, [positive(3)])
    assert errors[0].max_rel > 0.1
