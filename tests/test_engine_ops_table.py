"""Every primitive of ops.py and kernels.py, from one table: each keeps float32 in its forward and in its
VJP (computed in float32, not cast afterwards), and each matches central finite differences in float64.
A new op without a row here fails test_the_table_covers_every_primitive."""

import numpy as np
import pytest

import autodiff as ad

rng = np.random.default_rng(7)


def normal(*shape):
    return rng.normal(size=shape)


def positive(*shape):
    return rng.uniform(0.5, 2.0, size=shape)


def away_from_zero(*shape):
    """Values at least 0.1 from 0, so kinks (relu, abs, clip) are not straddled by finite differences."""
    x = normal(*shape)
    return x + np.sign(x) * 0.1


H = 2  # hidden size of the GRU rows

# name -> function returning (positional inputs, keyword options); float arrays are the differentiable inputs
CASES = {
    "add": lambda: ([normal(3, 4), normal(4)], {}),
    "sub": lambda: ([normal(3, 4), normal(3, 1)], {}),
    "mul": lambda: ([normal(3, 4), normal(4)], {}),
    "div": lambda: ([normal(3, 4), positive(4)], {}),
    "neg": lambda: ([normal(3)], {}),
    "power": lambda: ([positive(3, 2), normal(2)], {}),
    "matmul": lambda: ([normal(3, 4), normal(4, 2)], {}),
    "exp": lambda: ([normal(4)], {}),
    "log": lambda: ([positive(4)], {}),
    "sqrt": lambda: ([positive(4)], {}),
    "sin": lambda: ([normal(4)], {}),
    "cos": lambda: ([normal(4)], {}),
    "tanh": lambda: ([normal(4)], {}),
    "sigmoid": lambda: ([normal(4)], {}),
    "relu": lambda: ([away_from_zero(5)], {}),
    "softplus": lambda: ([normal(4)], {}),
    "abs": lambda: ([away_from_zero(5)], {}),
    "clip": lambda: ([np.array([-1.2, -0.3, 0.1, 0.4, 0.9]), -0.5, 0.5], {}),
    "where": lambda: ([np.array([True, False, True]), normal(3), normal(2, 3)], {}),
    "maximum": lambda: ([normal(3, 4), normal(4) + 0.05], {}),
    "minimum": lambda: ([normal(3, 4), normal(4) + 0.05], {}),
    "straight_through_sign": lambda: ([normal(4)], {}),
    "stop_gradient": lambda: ([normal(4)], {}),
    "scale_gradient": lambda: ([normal(4), 0.5], {}),
    "sum": lambda: ([normal(2, 3)], {"axis": 1}),
    "mean": lambda: ([normal(2, 3)], {"axis": 0, "keepdims": True}),
    "max": lambda: ([normal(2, 3)], {"axis": 1}),
    "logsumexp": lambda: ([normal(2, 3)], {"axis": -1}),
    "softmax": lambda: ([normal(2, 3)], {}),
    "log_softmax": lambda: ([normal(2, 3)], {}),
    "reshape": lambda: ([normal(2, 3)], {"shape": (3, 2)}),
    "transpose": lambda: ([normal(2, 3, 4)], {"axes": (2, 0, 1)}),
    "getitem": lambda: ([normal(4, 3), (np.array([0, 2, 2]), slice(1, None))], {}),
    "concatenate": lambda: ([normal(2, 3), normal(1, 3)], {"axis": 0}),
    "stack": lambda: ([normal(2, 3), normal(2, 3)], {"axis": 1}),
    "linear": lambda: ([normal(4, 3), normal(3, 2), normal(2)], {"activation": "tanh"}),
    "mlp": lambda: ([normal(4, 3), normal(3, 5), normal(5), normal(5, 2), normal(2)], {"activation": "tanh"}),
    "gru_cell": lambda: ([normal(3, 2), normal(3, H), normal(2, 3 * H), normal(H, 3 * H), normal(3 * H),
                          normal(3 * H)], {}),
    "gru_sequence": lambda: ([normal(4, 3, 2), normal(3, H), normal(2, 3 * H), normal(H, 3 * H), normal(3 * H),
                              normal(3 * H)], {}),
}
# their gradient is defined not to be the derivative (tested by value in test_autodiff.py)
NOT_A_DERIVATIVE = {"straight_through_sign", "stop_gradient", "scale_gradient"}


def as_dtype(args, dtype):
    return [a.astype(dtype) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a for a in args]


def test_the_table_covers_every_primitive():
    ours = {name for name, op in ad.PRIMITIVES.items()
            if op.forward.__module__ in ("autodiff.ops", "autodiff.kernels")}
    assert ours == set(CASES), f"without a row: {sorted(ours - set(CASES))}; stale rows: {sorted(set(CASES) - ours)}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_op_keeps_float32_in_forward_and_in_its_vjp(name):
    args, options = CASES[name]()
    args = as_dtype(args, np.float32)
    op = ad.PRIMITIVES[name]
    if op.vjps is None:                                            # the raw op, before the engine casts
        out, vjp = op.forward(*args, **options)
        grads = vjp(np.ones(np.shape(out), np.float32))
    else:
        out = op.forward(*args, **options)
        grads = [f(np.ones(out.shape, np.float32), *args, out) if f is not None else None for f in op.vjps]
    assert out.dtype == np.float32, f"{name}: forward gives {out.dtype}"
    for i, (a, grad) in enumerate(zip(args, grads)):
        if isinstance(a, np.ndarray) and a.dtype == np.float32 and grad is not None:
            assert np.asarray(grad).dtype == np.float32, f"{name}: the VJP of input {i} computes in {grad.dtype}"
    tensors = [ad.Tensor(a, requires_grad=True) if isinstance(a, np.ndarray) and a.dtype == np.float32 else a
               for a in args]
    result = op(*tensors, **options)
    assert result.dtype == np.float32
    result.backward(np.ones(result.shape, np.float32))
    for t in tensors:
        if isinstance(t, ad.Tensor) and t.grad is not None:
            assert t.grad.dtype == np.float32


@pytest.mark.parametrize("name", sorted(set(CASES) - NOT_A_DERIVATIVE))
def test_every_op_matches_finite_differences(name):
    args, options = CASES[name]()
    places = [i for i, a in enumerate(args) if isinstance(a, np.ndarray) and a.dtype.kind == "f"]
    op = ad.PRIMITIVES[name]

    def f(*xs):
        full = list(args)
        for i, x in zip(places, xs):
            full[i] = x
        return op(*full, **options)
    ad.assert_gradcheck(f, [args[i] for i in places])


@pytest.mark.parametrize("name", sorted(CASES))
def test_float64_stays_float64(name):
    args, options = CASES[name]()
    tensors = [ad.Tensor(a, requires_grad=True) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a
               for a in args]
    result = ad.PRIMITIVES[name](*tensors, **options)
    assert result.dtype == np.float64
    result.backward(np.ones(result.shape))
    assert all(t.grad.dtype == np.float64 for t in tensors if isinstance(t, ad.Tensor) and t.grad is not None)
