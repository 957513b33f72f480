"""Check any function's gradient against central finite differences.

    errors = ad.gradcheck(lambda x, W: ad.tanh(x @ W).sum(), [x, W], verbose=True)
    ad.assert_gradcheck(lambda x, W: ad.tanh(x @ W).sum(), [x, W])   # in a test: raises if wrong

For each input, every element is nudged by ±eps and the change in a fixed
random projection of the output, (f(x+eps) − f(x−eps)) / 2eps, is compared
with the engine's gradient of the same projection.
"""

from collections import namedtuple

import numpy as np

from .engine import Tensor, no_grad

GradError = namedtuple("GradError", "index shape max_abs max_rel")


def _engine_and_numeric(f, inputs, eps, seed):
    """For each input: (the float64 input array, the engine's gradient, the finite-difference gradient)."""
    arrays = [np.array(x.data if isinstance(x, Tensor) else x, dtype=np.float64) for x in inputs]
    tensors = [Tensor(a, requires_grad=True) for a in arrays]
    out = f(*tensors)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: f must return a Tensor, got {type(out).__name__}")
    projection = np.random.default_rng(seed).normal(size=out.shape)

    def projected(*xs):
        with no_grad():
            return float(np.sum(f(*[Tensor(x) for x in xs]).data * projection))

    if out.requires_grad:
        out.backward(projection)
    results = []
    for array, tensor in zip(arrays, tensors):
        analytic = tensor.grad if tensor.grad is not None else np.zeros_like(array)
        numeric = np.zeros_like(array)
        flat, flat_numeric = array.reshape(-1), numeric.reshape(-1)
        for j in range(flat.size):
            original = flat[j]
            flat[j] = original + eps
            plus = projected(*arrays)
            flat[j] = original - eps
            minus = projected(*arrays)
            flat[j] = original
            flat_numeric[j] = (plus - minus) / (2 * eps)
        results.append((array, analytic, numeric))
    return results


def _errors(analytic, numeric):
    """(worst absolute error, worst error relative to the gradient's scale max|numeric|)."""
    if not numeric.size:
        return 0.0, 0.0
    max_abs = float(np.max(np.abs(analytic - numeric)))
    return max_abs, max_abs / max(float(np.max(np.abs(numeric))), 1e-8)


def gradcheck(f, inputs, eps=1e-6, seed=0, verbose=False):
    """Compare the autodiff gradient of `f(*inputs)` with central differences.

    inputs: arrays (or Tensors); each becomes a float64 Tensor that requires grad.
    Returns one GradError per input: the worst absolute error and the worst
    error relative to the gradient's scale, max|analytic − numeric| / max|numeric|.
    """
    errors = []
    for i, (array, analytic, numeric) in enumerate(_engine_and_numeric(f, inputs, eps, seed)):
        max_abs, max_rel = _errors(analytic, numeric)
        errors.append(GradError(i, array.shape, max_abs, max_rel))
        if verbose:
            print(f"input {i} shape {array.shape}: max abs error {max_abs:.2e}, max rel error {max_rel:.2e}")
    return errors


def assert_gradcheck(f, inputs, rtol=1e-6, eps=1e-6, seed=0):
    """Raise AssertionError, with a report, unless every input's gradient matches central differences:
    max|engine − finite difference| <= rtol · max|finite difference| for each input (relative to the
    gradient's scale, so a gradient that is zero almost everywhere is still judged fairly).

    The report names the input, prints it, and gives the worst element with both values and the tolerance,
    so a test needs no arithmetic of its own:

        def test_my_op():
            ad.assert_gradcheck(lambda x: my_op(x) * 3.0, [np.linspace(-1, 1, 5)])
    """
    results = _engine_and_numeric(f, inputs, eps, seed)
    failures = []
    for i, (array, analytic, numeric) in enumerate(results):
        max_abs, max_rel = _errors(analytic, numeric)
        if max_rel <= rtol:
            continue
        worst = np.unravel_index(np.argmax(np.abs(analytic - numeric)), array.shape) if array.ndim else ()
        scale = float(np.max(np.abs(numeric)))
        failures.append(
            f"input {i} of {len(results)}, shape {array.shape}:\n"
            f"  worst element {tuple(int(k) for k in worst)}: engine {analytic[worst]:.6g}, finite difference {numeric[worst]:.6g}"
            f" (difference {max_abs:.3g})\n"
            f"  relative error {max_rel:.3g} > tolerance rtol={rtol:g} (allowed difference {rtol * scale:.3g} ="
            f" rtol x max|finite difference| {scale:.3g}; eps={eps:g})\n"
            f"  input value: {np.array2string(array, precision=4, threshold=20, separator=', ')}\n"
            f"  engine gradient (of a fixed random projection of f's output, seed {seed}): {np.array2string(analytic, precision=4, threshold=20, separator=', ')}\n"
            f"  finite difference: {np.array2string(numeric, precision=4, threshold=20, separator=', ')}")
    if failures:
        raise AssertionError("gradcheck failed: the engine's gradient differs from central finite differences\n"
                             + "\n".join(failures))
