"""Every primitive op, each with its vector-Jacobian product beside its forward.

Read an op as: "the output is ..., and given g = dL/d(output), the gradients of
the inputs are ...". Most ops give one VJP per input, written above the
forward as `vjp=(f_a, f_b)`, each f(g, *inputs, output); the engine calls only
those whose input needs a gradient (no work for the constant in `x * 2`).
Ops that keep intermediate values return a closure with their output instead.
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
# Arithmetic (the Tensor operators). Each VJP is given (g, *inputs, output).
# ----------------------------------------------------------------------------
@float_op(vjp=(lambda g, a, b, out: g,
               lambda g, a, b, out: g))
def add(a, b):
    """a + b;  da = g, db = g."""
    return a + b


@float_op(vjp=(lambda g, a, b, out: g,
               lambda g, a, b, out: -g))
def sub(a, b):
    """a − b;  da = g, db = −g."""
    return a - b


@float_op(vjp=(lambda g, a, b, out: g * b,
               lambda g, a, b, out: g * a))
def mul(a, b):
    """a ⊙ b;  da = g ⊙ b, db = g ⊙ a."""
    return a * b


@float_op(vjp=(lambda g, a, b, out: g / b,
               lambda g, a, b, out: -g * a / (b * b)))
def div(a, b):
    """a / b;  da = g / b, db = −g a / b²."""
    return a / b


@float_op(vjp=(lambda g, a, out: -g,))
def neg(a):
    """−a;  da = −g."""
    return -a


def _power_grad_base(g, a, b, out):
    """d/da a^b = b a^(b−1), and 0 where b = 0 (even at a = 0, where a^(b−1) is inf)."""
    if np.ndim(b) == 0:
        return np.zeros_like(g) if b == 0 else g * b * a ** (b - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b == 0, 0, g * b * a ** (b - 1))


def _power_grad_exponent(g, a, b, out):
    """d/db a^b = a^b log a, taken where a > 0 (elsewhere a^b is not differentiable in b)."""
    log_a = np.log(np.where(a > 0, a, 1)) if isinstance(a, np.ndarray) else (math.log(a) if a > 0 else 0.0)
    return g * out * log_a


@float_op(vjp=(_power_grad_base, _power_grad_exponent))
def power(a, b):
    """a ** b;  da = g b a^(b−1) (0 where b = 0), db = g a^b log a (where a > 0)."""
    return a ** b


def _matmul_grad_a(g, a, b, out):
    """dA = g Bᵀ (a vector a is a one-row matrix; leading axes are batch axes, summed by the engine)."""
    if type(a) is np.ndarray and type(b) is np.ndarray and a.ndim == 2 and b.ndim == 2:
        return g @ b.T
    a, b = np.asarray(a), np.asarray(b)
    a2, b2, g2 = _as_matrices(g, a, b)
    grad = g2 @ np.swapaxes(b2, -1, -2)
    return grad[..., 0, :] if a.ndim == 1 else grad


def _matmul_grad_b(g, a, b, out):
    """dB = Aᵀ g (a vector b is a one-column matrix)."""
    if type(a) is np.ndarray and type(b) is np.ndarray and a.ndim == 2 and b.ndim == 2:
        return a.T @ g
    a, b = np.asarray(a), np.asarray(b)
    a2, b2, g2 = _as_matrices(g, a, b)
    grad = np.swapaxes(a2, -1, -2) @ g2
    return grad[..., 0] if b.ndim == 1 else grad


def _as_matrices(g, a, b):
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    shape = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2]) + (a2.shape[-2], b2.shape[-1])
    return a2, b2, np.reshape(g, shape)


@float_op(vjp=(_matmul_grad_a, _matmul_grad_b))
def matmul(a, b):
    """a @ b. For matrices: dA = g Bᵀ, dB = Aᵀ g, batched over leading axes."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul needs at least 1-D inputs; use * for scalars")
    inner_b = b.shape[-2] if b.ndim > 1 else b.shape[0]
    if a.shape[-1] != inner_b:
        raise ValueError(f"inner dimensions differ ({a.shape[-1]} != {inner_b})")
    return a @ b


# ----------------------------------------------------------------------------
# Elementwise functions
# ----------------------------------------------------------------------------
@float_op(vjp=(lambda g, x, out: g * out,))
def exp(x):
    """e^x;  dx = g e^x (the output, reused)."""
    return np.exp(x)


@float_op(vjp=(lambda g, x, out: g / x,))
def log(x):
    """log x;  dx = g / x."""
    return np.log(x)


@float_op(vjp=(lambda g, x, out: g * 0.5 / out,))
def sqrt(x):
    """√x;  dx = g / (2√x)."""
    return np.sqrt(x)


@float_op(vjp=(lambda g, x, out: g * np.cos(x),))
def sin(x):
    """sin x;  dx = g cos x."""
    return np.sin(x)


@float_op(vjp=(lambda g, x, out: -g * np.sin(x),))
def cos(x):
    """cos x;  dx = −g sin x."""
    return np.cos(x)


@float_op(vjp=(lambda g, x, out: g * (1.0 - out * out),))
def tanh(x):
    """tanh x;  dx = g (1 − tanh² x)."""
    return np.tanh(x)


@float_op(vjp=(lambda g, x, out: g * out * (1.0 - out),))
def sigmoid(x):
    """σ(x) = 1/(1+e^−x), without overflow;  dx = g σ (1 − σ)."""
    return stable_sigmoid(x)


@float_op(vjp=(lambda g, x, out: g * (x > 0),))
def relu(x):
    """max(x, 0);  dx = g where x > 0, else 0."""
    return np.maximum(x, 0)


@float_op(vjp=(lambda g, x, out: g * stable_sigmoid(x),))
def softplus(x):
    """log(1 + e^x), computed as logaddexp(0, x) so it never overflows."""
    return np.logaddexp(0.0, x)


@float_op(vjp=(lambda g, x, out: g * np.sign(x),))
def abs(x):  # noqa: A001 (shadows the builtin on purpose: ad.abs)
    """|x|;  dx = g sign(x)."""
    return np.abs(x)


@float_op(vjp=(lambda g, x, low, high, out: g * (out == x), None, None))   # unchanged by the clip = inside
def clip(x, low, high):
    """Gradient passes where low <= x <= high, and is zero where clipped."""
    return np.clip(x, low, high)


@float_op(vjp=(None,
               lambda g, condition, a, b, out: np.where(condition, g, 0),
               lambda g, condition, a, b, out: np.where(condition, 0, g)))
def where(condition, a, b):
    """a where condition, else b;  da = g where condition, db = g elsewhere."""
    return np.where(condition, a, b)


def _share_of_a(a, b, a_wins, dtype):
    """1 where a wins, 0 where b wins, and 0.5 at ties (the average of the two one-sided slopes)."""
    return np.where(a_wins, 1.0, np.where(a == b, 0.5, 0.0)).astype(dtype, copy=False)


@float_op(vjp=(lambda g, a, b, out: g * _share_of_a(a, b, a > b, g.dtype),
               lambda g, a, b, out: g * (1 - _share_of_a(a, b, a > b, g.dtype))))
def maximum(a, b):
    """Ties share the gradient equally, the average of the two one-sided slopes."""
    return np.maximum(a, b)


@float_op(vjp=(lambda g, a, b, out: g * _share_of_a(a, b, a < b, g.dtype),
               lambda g, a, b, out: g * (1 - _share_of_a(a, b, a < b, g.dtype))))
def minimum(a, b):
    """The smaller of a and b; ties share the gradient equally, as in maximum."""
    return np.minimum(a, b)


@float_op(vjp=(lambda g, x, out: g,))
def straight_through_sign(x):
    """Forward: sign(x) with sign(0) = +1. Backward: identity (the gradient of
    the sign is taken to be 1, the 'straight-through' estimator)."""
    return np.where(x >= 0, 1.0, -1.0).astype(np.result_type(x, np.float32))


@primitive(vjp=(None,))
def stop_gradient(x):
    """The identity whose gradient is zero: a constant in the graph."""
    return np.array(x, copy=True)


@primitive(vjp=(lambda g, x, scale, out: g * scale, None))
def scale_gradient(x, scale):
    """Forward: x unchanged. Backward: the gradient is multiplied by `scale`."""
    return np.array(x, copy=True)


# ----------------------------------------------------------------------------
# Reductions
# ----------------------------------------------------------------------------
@float_op
def sum(x, axis=None, keepdims=False):  # noqa: A001
    """Σ x over axis;  dx = g, broadcast back over the summed axes."""
    shape = np.shape(x)
    return np.sum(x, axis=axis, keepdims=keepdims), lambda g: (np.broadcast_to(_expand(g, shape, axis, keepdims), shape),)


@float_op
def mean(x, axis=None, keepdims=False):
    """The mean over axis;  dx = g / n, broadcast back (n = entries averaged)."""
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
    """x with a new shape;  dx = g reshaped back."""
    return np.reshape(x, shape), lambda g: (np.reshape(g, np.shape(x)), None)


@primitive
def transpose(x, axes=None):
    """x with its axes permuted;  dx = g with the inverse permutation."""
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
        return grad, None
    return x[index], vjp


def _split_vjp(g, sizes, axis):
    return tuple(np.split(g, np.cumsum(sizes)[:-1], axis=axis))


@primitive(name="concatenate")
def _concatenate(*xs, axis=0):
    """Join tensors along an existing axis;  each dx is its slice of g."""
    for i, x in enumerate(xs):
        if np.ndim(x) == 0:
            raise ValueError(f"input {i} is 0-d (a single number) and has no axis to join along; "
                             "use ad.stack, or reshape it to shape (1,)")
    sizes = [np.shape(x)[axis] for x in xs]
    return np.concatenate(xs, axis=axis), lambda g: _split_vjp(g, sizes, axis)


@primitive(name="stack")
def _stack(*xs, axis=0):
    """Join equally shaped tensors along a new axis;  each dx is its slice of g."""
    out = np.stack(xs, axis=axis)
    before = (slice(None),) * (axis % out.ndim)                       # g[:, ..., i] along the new axis
    return out, lambda g: [g[before + (i,)] for i in range(len(xs))]


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
    T.__radd__, T.__rmul__ = add, mul                 # 2.0 * x is x * 2.0, to the last bit
    T.__rsub__ = lambda a, b: sub(b, a)
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
