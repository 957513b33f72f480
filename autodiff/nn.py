"""Layers with explicit parameters: Linear, MLP, GRUCell.

No metaclass, no registration: every module lists its own parameters in
`named_parameters()`, a plain dict from name to Tensor, and `parameters()` is
that dict's values. Initialisers take a `numpy.random.Generator`, so a seed
fixes every weight.
"""

import os

import numpy as np

from .engine import Tensor
from .kernels import gru_cell, gru_sequence, linear, mlp
from .runs import BadInput, check_array
from .runs import load_arrays as _load_checked


# ----------------------------------------------------------------------------
# Initialisers (each returns an ndarray drawn from `rng`)
# ----------------------------------------------------------------------------
def glorot_uniform(rng, n_in, n_out, gain=1.0):
    """U(−a, a) with a = gain·√(6/(n_in+n_out)): keeps activations' variance
    roughly constant through tanh layers (Glorot & Bengio, 2010)."""
    limit = gain * np.sqrt(6.0 / (n_in + n_out))
    return rng.uniform(-limit, limit, size=(n_in, n_out))


def he_normal(rng, n_in, n_out):
    """N(0, 2/n_in): the variance-preserving choice for ReLU layers."""
    return rng.normal(0.0, np.sqrt(2.0 / n_in), size=(n_in, n_out))


def orthogonal(rng, n_in, n_out, gain=1.0):
    """A (semi-)orthogonal matrix times `gain`, from the QR of a Gaussian."""
    a = rng.normal(size=(max(n_in, n_out), min(n_in, n_out)))
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))               # make the decomposition unique
    return gain * (q if n_in >= n_out else q.T)


INITIALISERS = {"glorot": glorot_uniform, "he": he_normal, "orthogonal": orthogonal}


def _rng(seed_or_rng):
    return seed_or_rng if isinstance(seed_or_rng, np.random.Generator) else np.random.default_rng(seed_or_rng)


def parameter(array, name=None):
    """A leaf tensor that training will update."""
    return Tensor(np.asarray(array, dtype=np.float64), requires_grad=True, name=name)


# ----------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------
class Module:
    """What every layer has: its parameters by name, and a way to zero them."""

    def named_parameters(self):
        raise NotImplementedError

    def parameters(self):
        return list(self.named_parameters().values())

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None


class Linear(Module):
    """y = f(x @ W + b) with W of shape (n_in, n_out), as one fused op."""

    def __init__(self, n_in, n_out, rng=0, init="glorot", activation=None, bias=True, gain=1.0):
        rng = _rng(rng)
        self.activation = activation
        if init == "orthogonal":
            W = orthogonal(rng, n_in, n_out, gain)
        else:
            W = INITIALISERS[init](rng, n_in, n_out) * gain
        self.W = parameter(W, "W")
        self.b = parameter(np.zeros(n_out), "b") if bias else None

    def __call__(self, x):
        return linear(x, self.W, self.b, activation=self.activation)

    def named_parameters(self):
        return {"W": self.W, "b": self.b} if self.b is not None else {"W": self.W}


class MLP(Module):
    """A stack of Linear layers run as one fused op.

    sizes=(3, 32, 32, 1) gives two hidden layers of 32 with `activation`
    and an output layer with `out_activation` (None: linear).
    """

    def __init__(self, sizes, rng=0, activation="tanh", out_activation=None, init=None):
        rng = _rng(rng)
        self.sizes, self.activation, self.out_activation = tuple(sizes), activation, out_activation
        init = init or ("he" if activation == "relu" else "glorot")
        self.layers = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            self.layers.append((parameter(INITIALISERS[init](rng, n_in, n_out)), parameter(np.zeros(n_out))))

    def __call__(self, x):
        flat = [p for layer in self.layers for p in layer]
        return mlp(x, *flat, activation=self.activation, out_activation=self.out_activation)

    def named_parameters(self):
        named = {}
        for i, (W, b) in enumerate(self.layers):
            named[f"W{i + 1}"], named[f"b{i + 1}"] = W, b
        return named


class GRUCell(Module):
    """A gated recurrent unit (gates r, z, n; see kernels.py for the maths).

    `cell(x, h)` takes one step; `cell.sequence(xs, h0)` runs a whole
    (T, B, n_in) sequence as one fused op and returns all T hidden states.
    """

    def __init__(self, n_in, n_hidden, rng=0):
        rng = _rng(rng)
        self.n_hidden = n_hidden
        # orthogonal blocks per gate keep the recurrence well conditioned at the start
        self.Wx = parameter(np.concatenate([orthogonal(rng, n_in, n_hidden) for _ in range(3)], axis=1), "Wx")
        self.Wh = parameter(np.concatenate([orthogonal(rng, n_hidden, n_hidden) for _ in range(3)], axis=1), "Wh")
        self.bx = parameter(np.zeros(3 * n_hidden), "bx")
        self.bh = parameter(np.zeros(3 * n_hidden), "bh")

    def __call__(self, x, h):
        return gru_cell(x, h, self.Wx, self.Wh, self.bx, self.bh)

    def sequence(self, xs, h0):
        return gru_sequence(xs, h0, self.Wx, self.Wh, self.bx, self.bh)

    def initial_state(self, batch_size):
        return Tensor(np.zeros((batch_size, self.n_hidden)))

    def named_parameters(self):
        return {"Wx": self.Wx, "Wh": self.Wh, "bx": self.bx, "bh": self.bh}


# ----------------------------------------------------------------------------
# Saving and loading parameters (.npz, never pickle)
# ----------------------------------------------------------------------------
def save_parameters(path, named, **extra):
    """Write {name: Tensor or array} (and any extra arrays) to an .npz file
    atomically: to a temporary file first, then renamed over the target, so an
    interrupted save never leaves a half-written file behind."""
    arrays = {name: (p.data if isinstance(p, Tensor) else np.asarray(p)) for name, p in named.items()}
    arrays.update({k: np.asarray(v) for k, v in extra.items()})
    for name, array in arrays.items():
        # np.savez would pickle an object array (e.g. an int beyond 64 bits), and load_arrays never unpickles:
        # refuse to write a file that could not be read back.
        if array.dtype.kind not in "biufcSU":
            raise ValueError(f"{path}: {name!r} is a {array.dtype} array that .npz cannot store without pickling")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, "." + os.path.basename(path) + ".tmp.npz")
    np.savez(temporary, **arrays)
    os.replace(temporary, path)


def load_arrays(path):
    """Read an .npz written by save_parameters: never unpickling, and every problem (missing, not an .npz,
    an object array) a one-line error naming the file (autodiff.runs.BadInput, a ValueError)."""
    return _load_checked(path)


def load_parameters(path, named):
    """Copy the arrays in `path` into the tensors of `named` (in place),
    checking that every name is present and every shape matches."""
    arrays = load_arrays(path)
    for name, p in named.items():
        if name not in arrays:
            raise BadInput(f"{path}: missing parameter {name!r} (file has {sorted(arrays)})")
        check_array(arrays[name], f"{path}: parameter {name!r}", p.shape)
        p.data = arrays[name].astype(p.dtype)
    return arrays
