"""The tracing machinery: Tensor, primitives, and the backward pass.

A Tensor wraps a NumPy array. Every operation on Tensors is a *primitive*: a
NumPy forward that returns its output together with a vector-Jacobian product
(VJP), a closure mapping the gradient of the output to the gradients of the
inputs. When any input requires a gradient, the output remembers its inputs and
that closure; `backward()` then walks the graph in reverse topological order,
calling each VJP once and summing the gradients that arrive at each node.

    forward:   y = f(x1, x2, ...)                    (NumPy)
    backward:  (dL/dx1, dL/dx2, ...) = vjp(dL/dy)    (NumPy, written by hand)

The primitives themselves live in `ops.py` (elementwise maths, reductions,
shapes) and `kernels.py` (fused layers); this file knows none of them.
"""

import contextlib
import inspect

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


# ----------------------------------------------------------------------------
# Tensor
# ----------------------------------------------------------------------------
class Tensor:
    """An ndarray that can remember how it was made.

    data           the ndarray (float64 unless given a float32 array)
    grad           d(output)/d(self), summed over every backward that reached it
    requires_grad  True for parameters (leaves) and anything computed from one
    op             name of the primitive that made it ("leaf" for inputs)
    """

    __slots__ = ("data", "grad", "requires_grad", "op", "_parents", "_vjp", "name")
    __array_ufunc__ = None  # make `ndarray + Tensor` call Tensor.__radd__

    def __init__(self, data, requires_grad=False, name=None):
        if isinstance(data, Tensor):
            data = data.data
        array = np.asarray(data)
        if array.dtype.kind not in "fc":
            if requires_grad:
                raise TypeError(f"Tensor: requires_grad=True needs a float array, got dtype {array.dtype}")
            if array.dtype.kind in "iu" and not isinstance(data, np.ndarray):
                array = array.astype(np.float64)  # Tensor([1, 2]) is a float vector
        elif array.dtype == np.float16:
            array = array.astype(np.float32)
        self.data = array
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self.op = "leaf"
        self._parents = ()
        self._vjp = None
        self.name = name

    # -- read-only views -----------------------------------------------------
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)

    def __len__(self):
        return len(self.data)

    def item(self):
        return self.data.item()

    def numpy(self):
        return self.data

    def detach(self):
        """The same values, cut from the graph (a new leaf without grad)."""
        return Tensor(self.data)

    def __repr__(self):
        made_by = f"op={self.op}" if self.op != "leaf" else "leaf"
        grad = ", requires_grad" if self.requires_grad else ""
        label = f" {self.name!r}" if self.name else ""
        if self.data.size <= 6:
            values = np.array2string(self.data, precision=4, separator=", ")
            return f"Tensor{label}({values}, shape={self.shape}, dtype={self.dtype}, {made_by}{grad})"
        return f"Tensor{label}(shape={self.shape}, dtype={self.dtype}, {made_by}{grad})"

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
            if self.data.size != 1:
                raise RuntimeError(f"backward: output has shape {self.shape}; only a scalar may omit grad, "
                                   f"so pass grad= an array of shape {self.shape}")
            grad = np.ones_like(self.data)
        else:
            grad = np.asarray(grad.data if isinstance(grad, Tensor) else grad, dtype=self.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"backward: grad has shape {grad.shape} but the output has shape {self.shape}")

        pending = {id(self): grad}            # gradients that arrived, not yet passed on
        for node in reversed(_topological_order(self)):
            g = pending.pop(id(node), None)
            if g is None:
                continue
            if node._vjp is None:             # a leaf (a parameter or an input)
                if node.grad is None:
                    node.grad = g.copy()      # its own array: safe to update in place
                else:
                    node.grad += g            # accumulate across backward calls
                continue
            node.grad = g if node.grad is None else node.grad + g
            input_grads = node._vjp(g)
            for parent, g_parent in zip(node._parents, input_grads):
                if parent is None or g_parent is None:
                    continue
                if _detect_anomaly and not np.all(np.isfinite(g_parent)):
                    raise FloatingPointError(f"detect_anomaly: the backward of '{node.op}' produced nan/inf "
                                             f"in the gradient of an input of shape {parent.shape}")
                if g_parent.shape != parent.data.shape:
                    g_parent = unbroadcast(g_parent, parent.data.shape)
                key = id(parent)
                pending[key] = g_parent if key not in pending else pending[key] + g_parent

    def zero_grad(self):
        self.grad = None

    # -- operators (the ops are defined in ops.py and attached there) --------
    def __hash__(self):
        return id(self)


def _topological_order(root):
    """Nodes reachable from root, every node after all of its inputs.

    Iterative depth-first search (an explicit stack, no recursion), so a graph
    of hundreds of thousands of nodes, e.g. BPTT over a long episode, is fine.
    """
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, inputs_done = stack.pop()
        if inputs_done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for parent in node._parents:
            if parent is not None and id(parent) not in visited:
                stack.append((parent, False))
    return order


def unbroadcast(grad, shape):
    """Sum a gradient back down to `shape`, undoing NumPy broadcasting:
    leading axes that were added, and axes of size 1 that were stretched."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad.reshape(shape)


# ----------------------------------------------------------------------------
# Defining primitives
# ----------------------------------------------------------------------------
PRIMITIVES = {}  # name -> op, every primitive ever defined (ops, kernels, scripts)


def primitive(forward=None, *, name=None):
    """Turn a NumPy function with a hand-written VJP into an autodiff op.

    `forward(*inputs, **options)` receives the positional inputs as ndarrays
    (or whatever non-Tensor values were passed) and keyword options unchanged.
    It returns `(output, vjp)` where `vjp(g)` maps the gradient of the output
    to a tuple with one gradient per positional input (None where there is
    none). Gradients may have the broadcast shape: they are summed back to each
    input's shape automatically. A forward that declares a keyword argument
    `needs_grad` receives a tuple of booleans, one per input, so it can skip
    gradients nobody asked for.

    Example, a softplus with its derivative written beside it:

        @ad.primitive
        def softplus(x):
            out = np.logaddexp(0.0, x)              # log(1 + e^x), stable
            return out, lambda g: (g * ad.ops.stable_sigmoid(x),)

        y = softplus(ad.Tensor([0.0, 1.0], requires_grad=True))
    """
    def wrap(forward):
        op_name = name or forward.__name__
        wants_needs = "needs_grad" in inspect.signature(forward).parameters

        def op(*inputs, **options):
            arrays, parents, recording = [], [], False
            for x in inputs:
                if isinstance(x, Tensor):
                    arrays.append(x.data)
                    if x.requires_grad and _grad_enabled:
                        recording = True
                        parents.append(x)
                    else:
                        parents.append(None)
                else:
                    arrays.append(x)
                    parents.append(None)
            if wants_needs:
                options["needs_grad"] = tuple(p is not None for p in parents)
            try:
                out, vjp = forward(*arrays, **options)
            except ValueError as error:
                shapes = ", ".join(str(np.shape(a)) for a in arrays)
                raise ValueError(f"{op_name}: inputs of shapes {shapes}: {error}") from None
            if _detect_anomaly and not np.all(np.isfinite(out)):
                raise FloatingPointError(f"detect_anomaly: '{op_name}' produced nan/inf in its forward "
                                         f"(output shape {np.shape(out)})")
            result = Tensor.__new__(Tensor)
            result.data = out if isinstance(out, np.ndarray) else np.asarray(out)
            result.grad = None
            result.name = None
            result.op = op_name
            if recording:
                result.requires_grad = True
                result._parents = tuple(parents)
                result._vjp = vjp
            else:
                result.requires_grad = False
                result._parents = ()
                result._vjp = None
            return result

        op.__name__ = op_name
        op.__qualname__ = op_name
        op.__doc__ = forward.__doc__
        op.forward = forward
        PRIMITIVES[op_name] = op
        return op

    return wrap(forward) if forward is not None else wrap


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
        children = [p for p in node._parents if p is not None]
        child_indent = indent + ("" if is_root else ("   " if last else "│  "))
        for i, child in reversed(list(enumerate(children))):
            stack.append((child, child_indent, i == len(children) - 1, False))
    if stack:
        lines.append(f"... (graph truncated at {max_nodes} lines)")
    return "\n".join(lines)


def print_graph(tensor, max_nodes=200):
    print(graph_string(tensor, max_nodes))
