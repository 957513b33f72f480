"""Every primitive op, each with its vector-Jacobian product beside its forward.

Read an op as: "the output is ..., and given g = dL/d(output), the gradients of
the inputs are ...". A binary op gives one VJP per input, and the engine calls
only those whose input needs a gradient (no work for the constant in `x * 2`).
Binary ops may return gradients in the broadcast shape: the engine sums them
back to each input's shape (`engine.unbroadcast`). Every op keeps its input's
float dtype, forward and backward: float32 in, float32 out.

`float_op` is `primitive` for the maths: integer and bool inputs are computed
as float64 (a uint8 1 − 2 is −1.0, not 255). Shape ops keep any dtype.
"""

import functools
import math

import numpy as np

from .engine import Tensor, primitive

float_op = functools.partial(primitive, float_inputs=True)


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
@float_op
def add(a, b):
    return a + b, (lambda g: g, lambda g: g)


@float_op
def sub(a, b):
    return a - b, (lambda g: g, lambda g: -g)


@float_op
def mul(a, b):
    return a * b, (lambda g: g * b, lambda g: g * a)


@float_op
def div(a, b):
    return a / b, (lambda g: g / b, lambda g: -g * a / (b * b))


@float_op
def neg(a):
    return -a, lambda g: (-g,)


@float_op
def power(a, b):
    """a ** b. d/da = b a^(b-1) (0 where b = 0, also at a = 0);  d/db = a^b log a (only where a > 0)."""
    out = a ** b

    def grad_a(g):
        if np.ndim(b) == 0:
            return np.zeros_like(g) if b == 0 else g * b * a ** (b - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(b == 0, 0, g * b * a ** (b - 1))

    def grad_b(g):
        log_a = np.log(np.where(a > 0, a, 1)) if isinstance(a, np.ndarray) else (math.log(a) if a > 0 else 0.0)
        return g * out * log_a
    return out, (grad_a, grad_b)


@float_op
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
    if a.ndim == 2 and b.ndim == 2:                      # the common case, said plainly
        return out, (lambda g: g @ b.T, lambda g: a.T @ g)
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    g_shape = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2]) + (a2.shape[-2], b2.shape[-1])

    def grad_a(g):
        grad = np.reshape(g, g_shape) @ np.swapaxes(b2, -1, -2)
        return grad[..., 0, :] if a.ndim == 1 else grad

    def grad_b(g):
        grad = np.swapaxes(a2, -1, -2) @ np.reshape(g, g_shape)
        return grad[..., 0] if b.ndim == 1 else grad
    return out, (grad_a, grad_b)


# ----------------------------------------------------------------------------
# Elementwise functions
# ----------------------------------------------------------------------------
@float_op
def exp(x):
    out = np.exp(x)
    return out, lambda g: (g * out,)


@float_op
def log(x):
    return np.log(x), lambda g: (g / x,)


@float_op
def sqrt(x):
    out = np.sqrt(x)
    return out, lambda g: (g * 0.5 / out,)


@float_op
def sin(x):
    return np.sin(x), lambda g: (g * np.cos(x),)


@float_op
def cos(x):
    return np.cos(x), lambda g: (-g * np.sin(x),)


@float_op
def tanh(x):
    out = np.tanh(x)
    return out, lambda g: (g * (1.0 - out * out),)


@float_op
def sigmoid(x):
    out = stable_sigmoid(x)
    return out, lambda g: (g * out * (1.0 - out),)


@float_op
def relu(x):
    return np.maximum(x, 0), lambda g: (g * (x > 0),)


@float_op
def softplus(x):
    """log(1 + e^x), computed as logaddexp(0, x) so it never overflows."""
    return np.logaddexp(0.0, x), lambda g: (g * stable_sigmoid(x),)


@float_op
def abs(x):  # noqa: A001 (shadows the builtin on purpose: ad.abs)
    return np.abs(x), lambda g: (g * np.sign(x),)


@float_op
def clip(x, low, high):
    """Gradient passes where low <= x <= high, and is zero where clipped."""
    inside = (x >= low) & (x <= high)
    return np.clip(x, low, high), (lambda g: g * inside, None, None)


@float_op
def where(condition, a, b):
    condition = np.asarray(condition, dtype=bool)
    return np.where(condition, a, b), (None, lambda g: np.where(condition, g, 0), lambda g: np.where(condition, 0, g))


def _share_of_a(a, b, a_wins, dtype):
    """1 where a wins, 0 where b wins, and 0.5 at ties (the average of the two one-sided slopes)."""
    return np.where(a_wins, 1.0, np.where(a == b, 0.5, 0.0)).astype(dtype, copy=False)


@float_op
def maximum(a, b):
    """Ties share the gradient equally, the average of the two one-sided slopes."""
    return np.maximum(a, b), (lambda g: g * _share_of_a(a, b, a > b, g.dtype),
                              lambda g: g * (1 - _share_of_a(a, b, a > b, g.dtype)))


@float_op
def minimum(a, b):
    return np.minimum(a, b), (lambda g: g * _share_of_a(a, b, a < b, g.dtype),
                              lambda g: g * (1 - _share_of_a(a, b, a < b, g.dtype)))


@float_op
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
    return np.array(x, copy=True), (lambda g: g * scale, None)


# ----------------------------------------------------------------------------
# Reductions
# ----------------------------------------------------------------------------
@float_op
def sum(x, axis=None, keepdims=False):  # noqa: A001
    shape = np.shape(x)
    return np.sum(x, axis=axis, keepdims=keepdims), lambda g: (np.broadcast_to(_expand(g, shape, axis, keepdims), shape),)


@float_op
def mean(x, axis=None, keepdims=False):
    shape = np.shape(x)
    count = math.prod(shape[a] for a in _axes(axis, len(shape)))     # a Python int keeps float32 float32
    return (np.mean(x, axis=axis, keepdims=keepdims),
            lambda g: (np.broadcast_to(_expand(g, shape, axis, keepdims) / count, shape),))


@float_op
def max(x, axis=None, keepdims=False):  # noqa: A001
    """The gradient goes to the maximal entries, split equally among ties."""
    out = np.max(x, axis=axis, keepdims=True)

    def vjp(g):
        is_max = (x == out).astype(g.dtype)
        share = is_max / np.sum(is_max, axis=axis, keepdims=True)
        return (share * _expand(g, np.shape(x), axis, keepdims),)
    return (out if keepdims else np.squeeze(out, axis=axis) if axis is not None else out.reshape(())), vjp


def _softmax_parts(x, axis):
    """m = max along axis, e = e^(x − m), total = Σ e: what logsumexp and the softmaxes share.

    Shifting by the max keeps e^x from overflowing. Where the max is ±inf, x − m would be nan, so the
    shift is 0 there; where it is +inf, e is 1 at the +inf entries and 0 elsewhere (the limit of softmax as
    those entries grow), and `top_is_inf` marks those rows (None when every max is finite)."""
    m = np.max(x, axis=axis, keepdims=True)
    if np.isfinite(m).all():
        e = np.exp(x - m)
        return m, e, np.sum(e, axis=axis, keepdims=True), None
    top_is_inf = m == np.inf
    m = np.where(np.isfinite(m), m, 0)
    e = np.where(top_is_inf, x == np.inf, np.exp(x - m)).astype(np.result_type(x, np.float32), copy=False)
    return m, e, np.sum(e, axis=axis, keepdims=True), top_is_inf


@float_op
def logsumexp(x, axis=-1, keepdims=False):
    """log Σ e^x, shifted by the max so e^x never overflows; +inf if any x is +inf, −inf if all are −inf.
    d/dx = softmax(x)."""
    m, e, total, top_is_inf = _softmax_parts(x, axis)
    with np.errstate(divide="ignore"):                     # log 0 = −inf: every entry was −inf
        out = m + np.log(total)
    if top_is_inf is not None:
        out = np.where(top_is_inf, np.inf, out)
    return (out if keepdims else np.squeeze(out, axis=axis),
            lambda g: (_expand(g, np.shape(x), axis, keepdims) * e / total,))


@float_op
def softmax(x, axis=-1):
    """y = e^x / Σ e^x;  dx = y ⊙ (g − Σ g y)."""
    _, e, total, _ = _softmax_parts(x, axis)
    out = e / total
    return out, lambda g: (out * (g - np.sum(g * out, axis=axis, keepdims=True)),)


@float_op
def log_softmax(x, axis=-1):
    """y = x − logsumexp(x);  dx = g − softmax(x) Σ g."""
    m, e, total, top_is_inf = _softmax_parts(x, axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (x - m) - np.log(total)
        if top_is_inf is not None:                          # x − (+inf) is nan: take log softmax itself
            out = np.where(top_is_inf, np.log(e / total), out)
    return out, lambda g: (g - np.exp(out) * np.sum(g, axis=axis, keepdims=True),)


# ----------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------
@primitive
def reshape(x, shape):
    return np.reshape(x, shape), (lambda g: np.reshape(g, np.shape(x)), None)


@primitive
def transpose(x, axes=None):
    inverse = None if axes is None else tuple(np.argsort(axes))
    return np.transpose(x, axes), lambda g: (np.transpose(g, inverse),)


def _plain_index(index):
    """An index as NumPy reads it, with each list, tuple or Tensor inside it made an array
    (x[0, (1, 1, 2)] picks entries 1, 1 and 2 of row 0)."""
    def part(i):
        if isinstance(i, Tensor):
            i = i.data
        if isinstance(i, (list, tuple)):
            i = np.asarray(i)
            if i.size == 0:
                i = i.astype(np.intp)
        return i
    return tuple(part(i) for i in index) if isinstance(index, tuple) else part(index)


@primitive
def getitem(x, index):
    """x[index]. Basic slices write the gradient back in place; array indices
    (integer or bool) may repeat entries, so their gradient is scatter-added (np.add.at)."""
    index = _plain_index(index)
    advanced = any(isinstance(i, np.ndarray) for i in (index if isinstance(index, tuple) else (index,)))

    def vjp(g):
        grad = np.zeros_like(x)
        if advanced:
            np.add.at(grad, index, g)
        else:
            grad[index] = g
        return grad
    return x[index], (vjp, None)


def _split_vjp(g, sizes, axis):
    return tuple(np.split(g, np.cumsum(sizes)[:-1], axis=axis))


@primitive(name="concatenate")
def _concatenate(*xs, axis=0):
    for i, x in enumerate(xs):
        if np.ndim(x) == 0:
            raise ValueError(f"input {i} is 0-d (a single number) and has no axis to join along; "
                             "use ad.stack, or reshape it to shape (1,)")
    sizes = [np.shape(x)[axis] for x in xs]
    return np.concatenate(xs, axis=axis), lambda g: _split_vjp(g, sizes, axis)


@primitive(name="stack")
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
def _method(reduce):
    """x.sum(axis, keepdims), and so also np.sum(x), which calls x.sum(axis=..., dtype=None, out=None)."""
    def method(x, axis=None, keepdims=False, dtype=None, out=None, **numpy_options):
        if dtype is not None or out is not None or numpy_options:
            given = ", ".join(k for k, v in dict(dtype=dtype, out=out, **numpy_options).items() if v is not None)
            raise TypeError(f"{reduce.__name__}: got NumPy's option(s) {given}, which a tensor does not take; "
                            f"use ad.{reduce.__name__}(x, axis=..., keepdims=...), or np.{reduce.__name__}(x.data) "
                            "for a plain array without gradient")
        return reduce(x, axis=axis, keepdims=keepdims)
    method.__name__ = reduce.__name__
    return method


def _attach():
    T = Tensor
    T.__add__, T.__sub__, T.__mul__, T.__truediv__, T.__pow__, T.__matmul__ = add, sub, mul, div, power, matmul
    T.__neg__ = neg
    T.__radd__ = lambda a, b: add(b, a)
    T.__rsub__ = lambda a, b: sub(b, a)
    T.__rmul__ = lambda a, b: mul(b, a)
    T.__rtruediv__ = lambda a, b: div(b, a)
    T.__rpow__ = lambda a, b: power(b, a)
    T.__rmatmul__ = lambda a, b: matmul(b, a)
    T.__getitem__ = getitem
    T.sum, T.mean, T.max = _method(sum), _method(mean), _method(max)
    T.reshape = lambda a, *shape: reshape(a, shape[0] if len(shape) == 1 and isinstance(shape[0], tuple) else shape)
    T.transpose = lambda a, axes=None: transpose(a, axes)
    T.T = property(lambda a: transpose(a))
    for name in ("exp", "log", "tanh", "sigmoid", "relu", "sin", "cos", "sqrt", "abs"):
        setattr(T, name, globals()[name])


_attach()
