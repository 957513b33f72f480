"""The tracing machinery: Tensor, primitives, and the backward pass.

A Tensor wraps a NumPy array. Every operation on Tensors is a *primitive*: a
NumPy forward that returns its output together with a vector-Jacobian product
(VJP), mapping the gradient of the output to the gradients of the inputs.
When any input requires a gradient, the output remembers its inputs and the
VJP; `backward()` then walks the graph in reverse topological order, calling
each VJP once and summing the gradients that arrive at each node.

    forward:   y = f(x1, x2, ...)                    (NumPy)
    backward:  (dL/dx1, dL/dx2, ...) = vjp(dL/dy)    (NumPy, written by hand)

The primitives themselves live in `ops.py` (elementwise maths, reductions,
shapes) and `kernels.py` (fused layers); this file knows none of them.
"""

import contextlib
import gc
import inspect
import itertools
import os

import numpy as np

# ----------------------------------------------------------------------------
# Global switches: gradient recording and anomaly detection
# ----------------------------------------------------------------------------
_grad_enabled = True
_detect_anomaly = False


@contextlib.contextmanager
def no_grad():
    """Inside this block no graph is built: results are plain constants."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


@contextlib.contextmanager
def detect_anomaly():
    """Raise FloatingPointError, naming the op, as soon as a NaN or inf appears
    in a forward output or in a gradient computed by a VJP."""
    global _detect_anomaly
    previous, _detect_anomaly = _detect_anomaly, True
    try:
        yield
    finally:
        _detect_anomaly = previous


def is_grad_enabled():
    return _grad_enabled


# One clock for ops and in-place changes: each recorded op gets the next tick when it runs, and so does each
# in-place change of a tensor's data. An input changed at a later tick than the op that read it makes that op's
# saved values stale, and backward says so instead of returning a silently wrong gradient.
_clock = itertools.count(1)
_last_change = 0          # tick of the latest in-place change of any tensor's data


# ----------------------------------------------------------------------------
# Tensor
# ----------------------------------------------------------------------------
class Tensor:
    """An ndarray that can remember how it was made.

    data           the ndarray. Python numbers and lists become float64 (lists of bools stay a bool mask),
                   float16 becomes float32, other arrays are kept as given (so an int8 frame stays small).
                   The maths ops compute in floating point: integer and bool inputs are promoted to
                   float64 (Tensor(np.uint8(1)) - 2 is -1.0). Complex arrays are refused.
    grad           d(output)/d(self), summed over every backward that reached it; same dtype as data
    requires_grad  True for parameters (leaves) and anything computed from one; only float data may
    op             name of the primitive that made it ("leaf" for inputs)
    """

    __slots__ = ("_data", "grad", "requires_grad", "op", "_inputs", "_vjp", "_saved", "name", "_tick", "_changed")
    __array_ufunc__ = None  # make `ndarray + Tensor` call Tensor.__radd__

    def __init__(self, data, requires_grad=False, name=None):
        if isinstance(data, Tensor):
            data = data._data
        elif isinstance(data, (list, tuple)) and any(isinstance(d, Tensor) for d in data):
            raise TypeError("Tensor: got a list of Tensors; use ad.stack(tensors) to join them and keep the "
                            "gradient (or Tensor([t.data for t in tensors]) for a constant)")
        array = np.asarray(data)
        kind = array.dtype.kind
        if kind == "c":
            raise TypeError(f"Tensor: complex arrays are not supported (dtype {array.dtype}): the engine "
                            "differentiates real functions; pass the real and imaginary parts as float arrays")
        if kind == "O" or kind in "SUV":
            raise TypeError(f"Tensor: needs numbers, got an array of dtype {array.dtype}")
        if kind != "f":
            if requires_grad:
                raise TypeError(f"Tensor: requires_grad=True needs a float array, got dtype {array.dtype}")
            if kind in "iu" and not isinstance(data, np.ndarray):
                array = array.astype(np.float64)  # Tensor([1, 2]) and Tensor(3) are float; [True, False] a mask
        elif array.dtype == np.float16:
            array = array.astype(np.float32)
        self._data = array
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self.op = "leaf"
        self._inputs = ()
        self._vjp = None
        self._saved = None
        self.name = name
        self._tick = 0          # the tick of the op that made it (none for a leaf)
        self._changed = 0       # tick of the last in-place change of data

    # -- data, with in-place changes noticed -----------------------------------
    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        """`t.data = array` and `t.data -= step` (what optimizers do). Writing into the same array, as `-=`
        does, is noted: an op recorded before it now holds stale values, and its backward will refuse.
        (Writes that bypass this, t.data[0] = 1 or np.add(..., out=t.data), cannot be seen.)"""
        global _last_change
        if isinstance(value, Tensor):
            value = value._data
        old = self._data
        if value is old or (isinstance(value, np.ndarray) and np.may_share_memory(value, old)):
            self._changed = _last_change = next(_clock)
        self._data = value if isinstance(value, np.ndarray) else np.asarray(value)

    # -- read-only views -----------------------------------------------------
    shape = property(lambda self: self._data.shape)
    dtype = property(lambda self: self._data.dtype)
    ndim = property(lambda self: self._data.ndim)
    size = property(lambda self: self._data.size)

    def __len__(self):
        return len(self._data)

    def __bool__(self):
        if self._data.size != 1:
            raise ValueError(f"bool(Tensor): the truth value of a tensor of shape {self.shape} is ambiguous; "
                             "use (t.data > 0).any() or .all()")
        return bool(self._data)

    def item(self):
        return self._data.item()

    def numpy(self):
        return self._data

    def detach(self):
        """The same values, cut from the graph (a new leaf without grad)."""
        return Tensor(self._data)

    def __repr__(self):
        made_by = f"op={self.op}" if self.op != "leaf" else "leaf"
        grad = ", requires_grad" if self.requires_grad else ""
        label = f" {self.name!r}" if self.name else ""
        if self._data.size <= 6:
            values = np.array2string(self._data, precision=4, separator=", ")
            return f"Tensor{label}({values}, shape={self.shape}, dtype={self.dtype}, {made_by}{grad})"
        return f"Tensor{label}(shape={self.shape}, dtype={self.dtype}, {made_by}{grad})"

    def describe(self):
        """A short phrase naming this tensor in an error message."""
        what = f"leaf {self.name!r}" if self.name else ("a leaf" if self.op == "leaf" else f"the output of '{self.op}'")
        return f"{what} of shape {self.shape}"

    # -- the backward pass ---------------------------------------------------
    def backward(self, grad=None):
        """Accumulate d(self)/d(node) into `.grad` of every node that needs it.

        A scalar needs no `grad` (it is taken as 1); any other shape must be
        given the gradient of some scalar with respect to it.
        """
        if not self.requires_grad:
            raise RuntimeError("backward: this tensor does not require grad "
                               "(no input had requires_grad=True, or it was made under no_grad)")
        if grad is None:
            if self._data.size != 1:
                raise RuntimeError(f"backward: output has shape {self.shape}; only a scalar may omit grad, "
                                   f"so pass grad= an array of shape {self.shape}")
            grad = np.ones_like(self._data)
        else:
            grad = np.asarray(grad._data if isinstance(grad, Tensor) else grad, dtype=self.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"backward: grad has shape {grad.shape} but the output has shape {self.shape}")

        collecting = gc.isenabled()
        gc.disable()     # the pass makes no reference cycles: spare the collector rescanning the whole graph
        try:
            self._backward(grad)
        finally:
            if collecting:
                gc.enable()

    def _backward(self, grad):
        pending = {self: grad}                # gradients that arrived, not yet passed on
        for node in reversed(_topological_order(self)):
            g = pending.pop(node, None)
            if g is None:
                continue
            vjp = node._vjp
            if vjp is None:                   # a leaf (a parameter or an input)
                if node.grad is None:
                    node.grad = g.copy()      # its own array: safe to update in place
                else:
                    node.grad += g            # accumulate across backward calls
                continue
            node.grad = g if node.grad is None else node.grad + g
            if _last_change > node._tick:     # something changed in place since this op ran
                _refuse_stale_inputs(node)
            saved = node._saved               # not None: one VJP per input, called only where needed
            for x, gx in zip(node._inputs, vjp if saved is not None else vjp(g)):
                if gx is None or not (isinstance(x, Tensor) and x.requires_grad):
                    continue
                if saved is not None:
                    gx = gx(g, *saved)
                data = x._data
                if gx.shape != data.shape:
                    gx = unbroadcast(gx, data.shape)
                if gx.dtype is not data.dtype and gx.dtype != data.dtype:
                    gx = gx.astype(data.dtype)     # a float32 input gets a float32 gradient
                if _detect_anomaly and not np.all(np.isfinite(gx)):
                    raise FloatingPointError(f"detect_anomaly: the backward of '{node.op}' produced nan/inf "
                                             f"in the gradient of {x.describe()}")
                pending[x] = pending[x] + gx if x in pending else gx

    def zero_grad(self):
        self.grad = None


def _topological_order(root):
    """Nodes reachable from root that need a gradient, every node after all of its inputs.

    Iterative depth-first search (an explicit stack, no recursion), so a graph
    of hundreds of thousands of nodes, e.g. BPTT over a long episode, is fine.
    (The order also fixes the order in which gradients are summed, so it is
    kept as it was: same graph, same gradients, to the last bit.)
    """
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, inputs_done = stack.pop()
        if inputs_done:
            order.append(node)
            continue
        if node in visited:
            continue
        visited.add(node)
        stack.append((node, True))
        for x in node._inputs:
            if isinstance(x, Tensor) and x.requires_grad and x not in visited:
                stack.append((x, False))
    return order


def _refuse_stale_inputs(node):
    """Raise if an input or the output of `node` was changed in place after `node` ran."""
    for i, x in enumerate((node,) + tuple(node._inputs)):
        if isinstance(x, Tensor) and getattr(x, "_changed", 0) > node._tick:   # set only by an in-place change
            which = "its output" if i == 0 else f"its input {i - 1}, {x.describe()},"
            raise RuntimeError(f"backward: the data of {which} was changed in place after '{node.op}' ran "
                               f"(e.g. t.data *= ..., or an optimizer step), so the values '{node.op}' saved are "
                               "stale; run the forward again after changing parameters")


def unbroadcast(grad, shape):
    """Sum a gradient back down to `shape`, undoing NumPy broadcasting:
    leading axes that were added, and axes of size 1 that were stretched."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra == 1 and grad.shape[1:] == shape:            # the usual case: a bias added to a batch of rows
        return grad.sum(axis=0)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad.reshape(shape)


# ----------------------------------------------------------------------------
# Defining primitives
# ----------------------------------------------------------------------------
PRIMITIVES = {}  # name -> op, every primitive defined (ops, kernels, and any script's own)


def primitive(forward=None, *, name=None, vjp=None, float_inputs=False):
    """Turn a NumPy function with a hand-written VJP into an autodiff op.

    `forward(*inputs, **options)` receives the positional inputs as ndarrays
    (or whatever non-Tensor values were passed) and keyword options unchanged.
    It returns `(output, vjp)` where `vjp(g)` maps the gradient of the output
    to a tuple with one gradient per positional input (None where there is
    none). Gradients may have the broadcast shape and any float dtype: they
    are summed back to each input's shape and cast to its dtype. A forward
    that declares a keyword argument `needs_grad` receives a tuple of
    booleans, one per input, so it can skip gradients nobody asked for.

    The other form, for ops that need nothing but their inputs and output
    (most of ops.py), gives one VJP per input up front, `vjp=(f1, f2, ...)`,
    each `f(g, *inputs, output)`, or None for an input without gradient; the
    forward then returns only the output. Only the VJPs of inputs that need a
    gradient are called, and no closure is made per call (it is faster).

    With float_inputs=True, an op whose inputs are all integer or bool (so
    NumPy would give an integer result, or refuse, as for bool − bool) is
    computed again with them as float64.

    Example, a softplus with its derivative written beside it:

        @ad.primitive
        def softplus(x):
            out = np.logaddexp(0.0, x)              # log(1 + e^x), stable
            return out, lambda g: (g * ad.stable_sigmoid(x),)

        y = softplus(ad.Tensor([0.0, 1.0], requires_grad=True))
    """
    vjps = vjp

    def wrap(forward):
        op_name = name or forward.__name__
        wants_needs = "needs_grad" in inspect.signature(forward).parameters

        def op(*inputs, **options):
            arrays, recording = [], False
            for x in inputs:
                if isinstance(x, Tensor):
                    arrays.append(x._data)
                    if x.requires_grad:
                        recording = True
                else:
                    arrays.append(x)
            recording = recording and _grad_enabled
            if wants_needs:
                options["needs_grad"] = tuple([recording and isinstance(x, Tensor) and x.requires_grad
                                               for x in inputs])
            try:
                if vjps is None:
                    out, vjp = forward(*arrays, **options)
                else:                                   # (a call without ** is faster when there are no options)
                    out, vjp = (forward(*arrays, **options) if options else forward(*arrays)), vjps
                if type(out) is not np.ndarray:
                    out = np.asarray(out)
                if float_inputs and out.dtype is not _FLOAT64 and out.dtype.kind in "biu":
                    raise _IntegerResult
            except (ValueError, TypeError, IndexError, _IntegerResult) as error:
                out, vjp, arrays = _again_in_float64(error, op_name, float_inputs, forward, vjps, arrays, options)
            if _detect_anomaly:
                _check_forward(op_name, inputs, arrays, out)
            result = Tensor.__new__(Tensor)
            result._data = out
            result.grad = None
            result.name = None
            result.op = op_name
            if recording:
                result.requires_grad = True
                result._inputs = inputs
                result._vjp = vjp
                if vjps is not None:
                    arrays.append(out)
                    result._saved = tuple(arrays)     # what each f(g, *inputs, output) is given (a tuple of
                                                      # arrays, which the cycle collector soon stops scanning)
                else:
                    result._saved = None
                result._tick = next(_clock)
            else:
                result.requires_grad = False
                result._inputs = ()
                result._vjp = None
                result._tick = 0
            return result

        op.__name__ = op_name
        op.__qualname__ = op_name
        op.__doc__ = forward.__doc__
        op.forward = forward
        op.vjps = vjps
        key = op_name
        if key in PRIMITIVES and PRIMITIVES[key].forward.__module__ != forward.__module__:
            key = f"{forward.__module__}.{op_name}"     # a script's op of the same name does not hide ours
        PRIMITIVES[key] = op
        return op

    return wrap(forward) if forward is not None else wrap


_FLOAT64 = np.dtype(np.float64)


class _IntegerResult(Exception):
    """A maths op gave an integer array: its inputs were all integer or bool (uint8 1 − 2 = 255)."""


def _again_in_float64(error, op_name, float_inputs, forward, vjps, arrays, options):
    """The forward failed, or gave integers: for a maths op with integer or bool inputs, run it again with
    those as float64; otherwise raise the error with the op's name and its inputs' shapes."""
    integers = [isinstance(a, np.ndarray) and a.dtype.kind in "biu" for a in arrays]
    if not (float_inputs and any(integers)):
        raise _named(error, op_name, arrays) from None
    arrays = [a.astype(np.float64) if is_integer else a for a, is_integer in zip(arrays, integers)]
    try:
        if vjps is None:
            out, vjp = forward(*arrays, **options)
        else:
            out, vjp = forward(*arrays, **options), vjps
    except (ValueError, TypeError, IndexError) as again:
        raise _named(again, op_name, arrays) from None
    return np.asarray(out), vjp, arrays


def _named(error, op_name, arrays):
    """The same kind of error, its message starting with the op and its inputs' shapes and dtypes."""
    message = str(error)
    if not message.startswith(op_name + ":"):
        shapes = ", ".join(str(np.shape(a)) for a in arrays)
        dtypes = ", ".join(str(a.dtype) if isinstance(a, np.ndarray) else type(a).__name__ for a in arrays)
        message = f"{op_name}: inputs of shapes {shapes} ({dtypes}): {message}"
    try:
        return type(error)(message)
    except TypeError:          # an error class with its own constructor (e.g. NumPy's ufunc errors)
        return next(kind(message) for kind in (ValueError, TypeError, IndexError) if isinstance(error, kind))


def _check_forward(op_name, inputs, arrays, out):
    """detect_anomaly: blame the op only if its inputs were finite."""
    if np.all(np.isfinite(out)):
        return
    for i, (x, a) in enumerate(zip(inputs, arrays)):
        if isinstance(a, np.ndarray) and a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            source = x.describe() if isinstance(x, Tensor) else f"an array of shape {a.shape}"
            raise FloatingPointError(f"detect_anomaly: input {i} of '{op_name}' ({source}) already holds "
                                     "nan/inf: it came in from outside the checked graph, not from "
                                     f"'{op_name}'")
    raise FloatingPointError(f"detect_anomaly: '{op_name}' produced nan/inf in its forward "
                             f"(output shape {np.shape(out)})")


def where_defined(op):
    """(file, line) of a primitive's forward, for `python -m autodiff`."""
    code = op.forward.__code__
    return os.path.abspath(code.co_filename), code.co_firstlineno


# ----------------------------------------------------------------------------
# Looking at a graph
# ----------------------------------------------------------------------------
def graph_string(tensor, max_nodes=200):
    """The graph behind `tensor` as an indented tree: op, shape, dtype.

    A node reached a second time is printed once and then referred to by its
    number, so shared subexpressions are visible as such.
    """
    lines, numbers = [], {}
    stack = [(tensor, "", True, True)]
    while stack and len(lines) < max_nodes:
        node, indent, last, is_root = stack.pop()
        branch = "" if is_root else ("└─ " if last else "├─ ")
        label = node.op if node.op != "leaf" else ("leaf " + (repr(node.name) if node.name else "")).strip()
        grad_mark = "  requires_grad" if node.requires_grad and node.op == "leaf" else ""
        if id(node) in numbers:
            lines.append(f"{indent}{branch}(see #{numbers[id(node)]}) {label}")
            continue
        numbers[id(node)] = len(numbers) + 1
        lines.append(f"{indent}{branch}#{numbers[id(node)]} {label} {node.shape} {node.dtype}{grad_mark}")
        children = [x for x in node._inputs if isinstance(x, Tensor) and x.requires_grad]
        child_indent = indent + ("" if is_root else ("   " if last else "│  "))
        for i, child in reversed(list(enumerate(children))):
            stack.append((child, child_indent, i == len(children) - 1, False))
    if stack:
        lines.append(f"... (graph truncated at {max_nodes} lines)")
    return "\n".join(lines)


def print_graph(tensor, max_nodes=200):
    print(graph_string(tensor, max_nodes))
