"""Every primitive op, each with its vector-Jacobian product beside its forward.

Read an op as: "the output is ..., and given g = dL/d(output), the gradients of
the inputs are ...". Binary ops may return gradients in the broadcast shape;
the engine sums them back to each input's shape (`engine.unbroadcast`).
"""

import numpy as np

from .engine import Tensor, primitive


def _axes(axis, ndim):
    """Normalise an `axis` argument to a tuple of non-negative ints."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, int):
        axis = (axis,)
    return tuple(a % ndim for a in axis)


def _expand(g, shape, axis, keepdims):
    """Reshape the gradient of a reduction so it broadcasts against the input."""
    if keepdims or axis is None and g.ndim == 0:
        return g
    for a in sorted(_axes(axis, len(shape))):
        g = np.expand_dims(g, a)
    return g


def stable_sigmoid(x):
    """1/(1+e^-x) without overflow for any x (e^-|x| never exceeds 1)."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


# ----------------------------------------------------------------------------
# Arithmetic (the Tensor operators)
# ----------------------------------------------------------------------------
@primitive
def add(a, b):
    return a + b, lambda g: (g, g)


@primitive
def sub(a, b):
    return a - b, lambda g: (g, -g)


@primitive
def mul(a, b):
    return a * b, lambda g: (g * b, g * a)


@primitive
def div(a, b):
    return a / b, lambda g: (g / b, -g * a / (b * b))


@primitive
def neg(a):
    return -a, lambda g: (-g,)


@primitive
def power(a, b):
    """a ** b. d/da = b a^(b-1);  d/db = a^b log a (only where a > 0)."""
    out = a ** b

    def vjp(g):
        grad_a = g * b * a ** (b - 1) if np.ndim(b) or b != 0 else None
        grad_b = None
        if isinstance(b, np.ndarray):
            grad_b = g * out * np.log(np.where(a > 0, a, 1.0))
        return grad_a, grad_b
    return out, vjp


@primitive
def matmul(a, b):
    """a @ b. For matrices: dA = g Bᵀ, dB = Aᵀ g, batched over leading axes.
    A vector is treated as a one-row matrix on the left, one column on the right."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul needs at least 1-D inputs; use * for scalars")
    inner_b = b.shape[-2] if b.ndim > 1 else b.shape[0]
    if a.shape[-1] != inner_b:
        raise ValueError(f"inner dimensions differ ({a.shape[-1]} != {inner_b})")
    out = a @ b

    def vjp(g):
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g2 = np.reshape(g, np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2]) + (a2.shape[-2], b2.shape[-1]))
        grad_a = g2 @ np.swapaxes(b2, -1, -2)
        grad_b = np.swapaxes(a2, -1, -2) @ g2
        return (grad_a[..., 0, :] if a.ndim == 1 else grad_a), (grad_b[..., 0] if b.ndim == 1 else grad_b)
    return out, vjp


# ----------------------------------------------------------------------------
# Elementwise functions
# ----------------------------------------------------------------------------
@primitive
def exp(x):
    out = np.exp(x)
    return out, lambda g: (g * out,)


@primitive
def log(x):
    return np.log(x), lambda g: (g / x,)


@primitive
def sqrt(x):
    out = np.sqrt(x)
    return out, lambda g: (g * 0.5 / out,)


@primitive
def sin(x):
    return np.sin(x), lambda g: (g * np.cos(x),)


@primitive
def cos(x):
    return np.cos(x), lambda g: (-g * np.sin(x),)


@primitive
def tanh(x):
    out = np.tanh(x)
    return out, lambda g: (g * (1.0 - out * out),)


@primitive
def sigmoid(x):
    out = stable_sigmoid(x)
    return out, lambda g: (g * out * (1.0 - out),)


@primitive
def relu(x):
    return np.maximum(x, 0), lambda g: (g * (x > 0),)


@primitive
def softplus(x):
    """log(1 + e^x), computed as logaddexp(0, x) so it never overflows."""
    return np.logaddexp(0.0, x), lambda g: (g * stable_sigmoid(x),)


@primitive
def abs(x):  # noqa: A001 (shadows the builtin on purpose: ad.abs)
    return np.abs(x), lambda g: (g * np.sign(x),)


@primitive
def clip(x, low, high):
    """Gradient passes where low <= x <= high, and is zero where clipped."""
    inside = (x >= low) & (x <= high)
    return np.clip(x, low, high), lambda g: (g * inside, None, None)


@primitive
def where(condition, a, b):
    condition = np.asarray(condition, dtype=bool)
    return np.where(condition, a, b), lambda g: (None, np.where(condition, g, 0), np.where(condition, 0, g))


@primitive
def maximum(a, b):
    """Ties share the gradient equally, the average of the two one-sided slopes."""
    out = np.maximum(a, b)
    weight_a = np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))
    return out, lambda g: (g * weight_a, g * (1.0 - weight_a))


@primitive
def minimum(a, b):
    out = np.minimum(a, b)
    weight_a = np.where(a < b, 1.0, np.where(a == b, 0.5, 0.0))
    return out, lambda g: (g * weight_a, g * (1.0 - weight_a))


@primitive
def straight_through_sign(x):
    """Forward: sign(x) with sign(0) = +1. Backward: identity (the gradient of
    the sign is taken to be 1, the 'straight-through' estimator)."""
    return np.where(x >= 0, 1.0, -1.0).astype(np.result_type(x, np.float32)), lambda g: (g,)


@primitive
def stop_gradient(x):
    """The identity whose gradient is zero: a constant in the graph."""
    return np.array(x, copy=True), lambda g: (None,)


@primitive
def scale_gradient(x, scale):
    """Forward: x unchanged. Backward: the gradient is multiplied by `scale`."""
    return np.array(x, copy=True), lambda g: (g * scale, None)


# ----------------------------------------------------------------------------
# Reductions
# ----------------------------------------------------------------------------
@primitive
def sum(x, axis=None, keepdims=False):  # noqa: A001
    shape = np.shape(x)
    return np.sum(x, axis=axis, keepdims=keepdims), lambda g: (np.broadcast_to(_expand(g, shape, axis, keepdims), shape),)


@primitive
def mean(x, axis=None, keepdims=False):
    shape = np.shape(x)
    count = np.prod([shape[a] for a in _axes(axis, len(shape))]) if shape else 1
    return (np.mean(x, axis=axis, keepdims=keepdims),
            lambda g: (np.broadcast_to(_expand(g, shape, axis, keepdims) / count, shape),))


@primitive
def max(x, axis=None, keepdims=False):  # noqa: A001
    """The gradient goes to the maximal entries, split equally among ties."""
    out = np.max(x, axis=axis, keepdims=True)

    def vjp(g):
        is_max = (x == out)
        share = is_max / np.sum(is_max, axis=axis, keepdims=True)
        return (share * _expand(g, np.shape(x), axis, keepdims),)
    return (out if keepdims else np.squeeze(out, axis=axis) if axis is not None else out.reshape(())), vjp


@primitive
def logsumexp(x, axis=-1, keepdims=False):
    """log Σ e^x, shifted by the max so e^x never overflows. d/dx = softmax(x)."""
    shift = np.max(x, axis=axis, keepdims=True)
    shifted = np.exp(x - shift)
    total = np.sum(shifted, axis=axis, keepdims=True)
    out = shift + np.log(total)
    return (out if keepdims else np.squeeze(out, axis=axis),
            lambda g: (_expand(g, np.shape(x), axis, keepdims) * shifted / total,))


@primitive
def softmax(x, axis=-1):
    """y = e^x / Σ e^x;  dx = y ⊙ (g − Σ g y)."""
    shifted = np.exp(x - np.max(x, axis=axis, keepdims=True))
    out = shifted / np.sum(shifted, axis=axis, keepdims=True)
    return out, lambda g: (out * (g - np.sum(g * out, axis=axis, keepdims=True)),)


@primitive
def log_softmax(x, axis=-1):
    """y = x − logsumexp(x);  dx = g − softmax(x) Σ g."""
    shifted = x - np.max(x, axis=axis, keepdims=True)
    out = shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))
    return out, lambda g: (g - np.exp(out) * np.sum(g, axis=axis, keepdims=True),)


# ----------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------
@primitive
def reshape(x, shape):
    return np.reshape(x, shape), lambda g: (np.reshape(g, np.shape(x)), None)


@primitive
def transpose(x, axes=None):
    inverse = None if axes is None else tuple(np.argsort(axes))
    return np.transpose(x, axes), lambda g: (np.transpose(g, inverse),)


@primitive
def getitem(x, index):
    """x[index]. Basic slices write the gradient back in place; integer-array
    indices may repeat, so their gradient is scatter-added (np.add.at)."""
    advanced = any(isinstance(i, (list, np.ndarray)) for i in (index if isinstance(index, tuple) else (index,)))

    def vjp(g):
        grad = np.zeros_like(x)
        if advanced:
            np.add.at(grad, index, g)
        else:
            grad[index] = g
        return grad, None
    return x[index], vjp


def _split_vjp(g, sizes, axis):
    return tuple(np.split(g, np.cumsum(sizes)[:-1], axis=axis))


@primitive
def _concatenate(*xs, axis=0):
    sizes = [np.shape(x)[axis] for x in xs]
    return np.concatenate(xs, axis=axis), lambda g: _split_vjp(g, sizes, axis)


@primitive
def _stack(*xs, axis=0):
    return np.stack(xs, axis=axis), lambda g: tuple(np.moveaxis(g, axis, 0))


def concatenate(tensors, axis=0):
    """Join a sequence of tensors along an existing axis."""
    return _concatenate(*tensors, axis=axis)


def stack(tensors, axis=0):
    """Join a sequence of equally shaped tensors along a new axis."""
    return _stack(*tensors, axis=axis)


# ----------------------------------------------------------------------------
# Tensor operators and methods
# ----------------------------------------------------------------------------
def _attach():
    T = Tensor
    T.__add__ = lambda a, b: add(a, b)
    T.__radd__ = lambda a, b: add(b, a)
    T.__sub__ = lambda a, b: sub(a, b)
    T.__rsub__ = lambda a, b: sub(b, a)
    T.__mul__ = lambda a, b: mul(a, b)
    T.__rmul__ = lambda a, b: mul(b, a)
    T.__truediv__ = lambda a, b: div(a, b)
    T.__rtruediv__ = lambda a, b: div(b, a)
    T.__pow__ = lambda a, b: power(a, b)
    T.__rpow__ = lambda a, b: power(b, a)
    T.__matmul__ = lambda a, b: matmul(a, b)
    T.__rmatmul__ = lambda a, b: matmul(b, a)
    T.__neg__ = lambda a: neg(a)
    T.__getitem__ = lambda a, index: getitem(a, index.data if isinstance(index, Tensor) else index)
    T.sum = lambda a, axis=None, keepdims=False: sum(a, axis=axis, keepdims=keepdims)
    T.mean = lambda a, axis=None, keepdims=False: mean(a, axis=axis, keepdims=keepdims)
    T.max = lambda a, axis=None, keepdims=False: max(a, axis=axis, keepdims=keepdims)
    T.reshape = lambda a, *shape: reshape(a, shape[0] if len(shape) == 1 and isinstance(shape[0], tuple) else shape)
    T.transpose = lambda a, axes=None: transpose(a, axes)
    T.T = property(lambda a: transpose(a))
    for name in ("exp", "log", "tanh", "sigmoid", "relu", "sin", "cos", "sqrt", "abs"):
        setattr(T, name, globals()[name])


_attach()
