"""Fused kernels: whole layers as single primitives with hand-written backward.

A graph of small ops pays Python overhead per op and stores every
intermediate. A fused kernel does the same maths in a few NumPy calls and
keeps only what its backward needs. Each kernel here is tested against the
unfused composition of `ops` (tests/test_autodiff.py) and timed against
hand-written NumPy (benchmarks/autodiff_overhead.py). Each checks its
arguments' shapes in the forward, so a wrong parameter list or shape is a
one-line error naming the kernel, not a wrong answer or a NumPy traceback
from deep in the backward.

Conventions: a linear layer computes x @ W + b with W of shape (n_in, n_out),
so a batch of row vectors goes in and comes out; leading axes are batch axes.
"""

import numpy as np

from .engine import primitive
from .ops import stable_sigmoid

# activation name -> (f(z), f'(z) written in terms of the output y = f(z))
ACTIVATIONS = {
    None: (lambda z: z, None),
    "linear": (lambda z: z, None),
    "tanh": (np.tanh, lambda y: 1.0 - y * y),
    "relu": (lambda z: np.maximum(z, 0.0), lambda y: y > 0),
    "sigmoid": (stable_sigmoid, lambda y: y * (1.0 - y)),
}


def _activation(name):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {[k for k in ACTIVATIONS if k]}")
    return ACTIVATIONS[name]


def _dense_forward(x, W, b, activation):
    z = x @ W
    if b is not None:
        z += b
    return _activation(activation)[0](z)


def _dense_backward(g, x, W, y, activation, need_x):
    """One layer's backward. Returns (dx or None, dW, db)."""
    derivative = ACTIVATIONS[activation][1]               # the name was checked in the forward
    dz = g if derivative is None else g * derivative(y)
    if dz.ndim == 2:                                      # a batch of rows: the usual case
        dW, db = x.T @ dz, dz.sum(axis=0)
    else:                                                 # more batch axes: flatten them
        dz2 = dz.reshape(-1, dz.shape[-1])
        dW, db = x.reshape(-1, x.shape[-1]).T @ dz2, dz2.sum(axis=0)
    dx = dz @ W.T if need_x else None
    return dx, dW, db


def _shape(a):
    return a.shape if type(a) is np.ndarray else np.shape(a)


def _check_layer(kernel, features, W, b, layer=""):
    """A layer's W must be (features, n_out) and its bias (n_out,) or absent. Returns n_out."""
    shape = _shape(W)
    if len(shape) != 2:
        raise ValueError(f"{kernel}: W{layer} must be a matrix (n_in, n_out), got shape {shape}")
    if shape[0] != features:
        raise ValueError(f"{kernel}: x has {features} features but W{layer} expects {shape[0]} "
                         f"(W{layer} is {shape}, i.e. (n_in, n_out))")
    if b is not None and _shape(b) != (shape[1],):
        raise ValueError(f"{kernel}: b{layer} has shape {_shape(b)} but W{layer} {shape} needs a bias of "
                         f"shape ({shape[1]},)")
    return shape[1]


def _features(kernel, x):
    shape = _shape(x)
    if not shape:
        raise ValueError(f"{kernel}: x is a single number; it needs a last axis of features")
    return shape[-1]


@primitive
def linear(x, W, b=None, activation=None, needs_grad=(True,)):
    """y = f(x @ W + b), one op. Backward: dz = g ⊙ f'(z); dx = dz Wᵀ;
    dW = xᵀ dz; db = Σ dz over the batch."""
    _check_layer("linear", _features("linear", x), W, b)
    y = _dense_forward(x, W, b, activation)

    def vjp(g):
        dx, dW, db = _dense_backward(g, x, W, y, activation, needs_grad[0])
        return dx, dW, (db if b is not None else None)
    return y, vjp


@primitive
def mlp(x, *params, activation="tanh", out_activation=None, needs_grad=None):
    """A whole multilayer perceptron as one op: params = (W1, b1, W2, b2, ...),
    hidden layers use `activation`, the last one `out_activation`."""
    if len(params) < 2 or len(params) % 2:
        raise ValueError(f"mlp: params must come in pairs (W1, b1, W2, b2, ...); got {len(params)} arrays "
                         f"of shapes {', '.join(str(np.shape(p)) for p in params) or 'none'}")
    weights, biases = params[0::2], params[1::2]
    features = _features("mlp", x)
    for i, (W, b) in enumerate(zip(weights, biases)):
        features = _check_layer("mlp", features, W, b, layer=i + 1)
    layer_inputs, outputs = [], []
    h = x
    for i, (W, b) in enumerate(zip(weights, biases)):
        layer_inputs.append(h)
        h = _dense_forward(h, W, b, activation if i < len(weights) - 1 else out_activation)
        outputs.append(h)

    def vjp(g):
        grads = []
        for i in reversed(range(len(weights))):
            act = activation if i < len(weights) - 1 else out_activation
            need_x = i > 0 or needs_grad is None or needs_grad[0]
            g, dW, db = _dense_backward(g, layer_inputs[i], weights[i], outputs[i], act, need_x)
            grads = [dW, db] + grads
        return (g, *grads)
    return h, vjp


# ----------------------------------------------------------------------------
# GRU (the gate layout of cuDNN / PyTorch)
#   r = σ(x Wx_r + bx_r + h Wh_r + bh_r)             reset gate
#   z = σ(x Wx_z + bx_z + h Wh_z + bh_z)             update gate
#   n = tanh(x Wx_n + bx_n + r ⊙ (h Wh_n + bh_n))    candidate
#   h' = (1 − z) ⊙ n + z ⊙ h
# Wx is (n_in, 3H), Wh is (H, 3H), bx and bh are (3H,), gates ordered r, z, n.
# ----------------------------------------------------------------------------
def _check_gru(kernel, x, h, Wx, Wh, bx, bh):
    """Shapes of one GRU step: x (..., n_in), h (..., H) with the same batch axes, Wx (n_in, 3H),
    Wh (H, 3H), bx and bh (3H,). Hidden size 1 is where a wrong shape would otherwise broadcast."""
    n_in, H = _features(kernel, x), _features(kernel, h)
    expected = {"Wx": (n_in, 3 * H), "Wh": (H, 3 * H), "bx": (3 * H,), "bh": (3 * H,)}
    for name, array in zip(expected, (Wx, Wh, bx, bh)):
        if _shape(array) != expected[name]:
            raise ValueError(f"{kernel}: {name} has shape {_shape(array)}, expected {expected[name]} for "
                             f"{n_in} input features and hidden size {H} (gates r, z, n side by side)")
    if _shape(x)[:-1] != _shape(h)[:-1]:
        raise ValueError(f"{kernel}: x {np.shape(x)} and h {np.shape(h)} differ in their batch axes")


def _gru_step(x_proj, h, Wh, bh):
    """One step given the input projection x Wx + bx; returns h' and what the
    backward needs."""
    H = h.shape[-1]
    h_proj = h @ Wh + bh
    r = stable_sigmoid(x_proj[..., :H] + h_proj[..., :H])
    z = stable_sigmoid(x_proj[..., H:2 * H] + h_proj[..., H:2 * H])
    n = np.tanh(x_proj[..., 2 * H:] + r * h_proj[..., 2 * H:])
    h_new = n + z * (h - n)
    return h_new, (r, z, n, h_proj[..., 2 * H:])


def _gru_step_backward(g, h, saved, dx_proj, dh_proj):
    """Backward of one step. Writes the gradients of the input projection
    (x Wx + bx) into dx_proj and of the hidden projection (h Wh + bh) into
    dh_proj, both (B, 3H), and returns the part of dL/dh that flows through
    the update gate directly (the caller adds dh_proj @ Whᵀ)."""
    r, z, n, hn = saved
    H = h.shape[-1]
    da_n = g * (1.0 - z) * (1.0 - n * n)                   # through (1 − z) ⊙ n, then tanh
    dx_proj[..., 2 * H:] = da_n
    dh_proj[..., 2 * H:] = da_n * r                        # r gates the hidden part of n
    dx_proj[..., :H] = dh_proj[..., :H] = da_n * hn * r * (1.0 - r)
    dx_proj[..., H:2 * H] = dh_proj[..., H:2 * H] = g * (h - n) * z * (1.0 - z)
    return g * z


@primitive
def gru_cell(x, h, Wx, Wh, bx, bh):
    """One GRU step h' = GRU(x, h) as a single op."""
    _check_gru("gru_cell", x, h, Wx, Wh, bx, bh)
    x_proj = x @ Wx + bx
    h_new, saved = _gru_step(x_proj, h, Wh, bh)

    def vjp(g):
        dx_proj, dh_proj = np.empty_like(x_proj), np.empty_like(x_proj)
        dh = _gru_step_backward(g, h, saved, dx_proj, dh_proj) + dh_proj @ Wh.T
        x2 = x.reshape(-1, x.shape[-1])
        dxp2, dhp2 = dx_proj.reshape(-1, dx_proj.shape[-1]), dh_proj.reshape(-1, dh_proj.shape[-1])
        return (dx_proj @ Wx.T, dh, x2.T @ dxp2, h.reshape(-1, h.shape[-1]).T @ dhp2,
                dxp2.sum(axis=0), dhp2.sum(axis=0))
    return h_new, vjp


@primitive
def gru_sequence(xs, h0, Wx, Wh, bx, bh, needs_grad=None):
    """Run a GRU over a whole sequence xs of shape (T, B, n_in) from h0 (B, H);
    returns every hidden state, shape (T, B, H). One op for the whole of BPTT:
    the input projections of all steps are one matrix product, and so are the
    weight gradients, leaving only the recurrence itself in a Python loop."""
    if np.ndim(xs) != 3 or np.ndim(h0) != 2:
        raise ValueError(f"gru_sequence: xs must be (T, B, n_in) and h0 (B, H); got {np.shape(xs)} and "
                         f"{np.shape(h0)}")
    if xs.shape[0] == 0 or xs.shape[1] == 0:
        raise ValueError(f"gru_sequence: xs has shape {xs.shape}: it needs at least one step (T) and one "
                         "sequence (B)")
    _check_gru("gru_sequence", xs[0], h0, Wx, Wh, bx, bh)
    T = xs.shape[0]
    x_proj = (xs.reshape(-1, xs.shape[-1]) @ Wx + bx).reshape(T, xs.shape[1], -1)
    hs = np.empty((T,) + h0.shape, dtype=np.result_type(xs, h0, Wh))
    saved, h = [], h0
    for t in range(T):
        h, s = _gru_step(x_proj[t], h, Wh, bh)
        hs[t] = h
        saved.append(s)

    def vjp(g):
        H = h0.shape[-1]
        dx_proj = np.empty_like(x_proj)
        dh_proj = np.empty(x_proj.shape, dtype=x_proj.dtype)
        dh = np.zeros_like(h0)
        WhT = Wh.T
        for t in reversed(range(T)):
            h_prev = hs[t - 1] if t > 0 else h0
            dh = _gru_step_backward(g[t] + dh, h_prev, saved[t], dx_proj[t], dh_proj[t]) + dh_proj[t] @ WhT
        h_prevs = np.concatenate([h0[None], hs[:-1]], axis=0).reshape(-1, H)
        dxp2, dhp2 = dx_proj.reshape(-1, 3 * H), dh_proj.reshape(-1, 3 * H)
        dxs = (dxp2 @ Wx.T).reshape(xs.shape) if needs_grad is None or needs_grad[0] else None
        return (dxs, dh, xs.reshape(-1, xs.shape[-1]).T @ dxp2, h_prevs.T @ dhp2,
                dxp2.sum(axis=0), dhp2.sum(axis=0))
    return hs, vjp
