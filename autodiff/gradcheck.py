"""Check any function's gradient against central finite differences.

    errors = ad.gradcheck(lambda x, W: ad.tanh(x @ W).sum(), [x, W], verbose=True)

For each input, every element is nudged by ±eps and the change in a fixed
random projection of the output, (f(x+eps) − f(x−eps)) / 2eps, is compared
with the engine's gradient of the same projection.
"""

from collections import namedtuple

import numpy as np

from .engine import Tensor, no_grad

GradError = namedtuple("GradError", "index shape max_abs max_rel")


def gradcheck(f, inputs, eps=1e-6, seed=0, verbose=False):
    """Compare the autodiff gradient of `f(*inputs)` with central differences.

    inputs: arrays (or Tensors); each becomes a float64 Tensor that requires grad.
    Returns one GradError per input: the worst absolute error and the worst
    error relative to the gradient's scale, max|analytic − numeric| / max|numeric|.
    """
    arrays = [np.array(x.data if isinstance(x, Tensor) else x, dtype=np.float64) for x in inputs]
    tensors = [Tensor(a, requires_grad=True) for a in arrays]
    out = f(*tensors)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: f must return a Tensor, got {type(out).__name__}")
    projection = np.random.default_rng(seed).normal(size=out.shape)

    def projected(*xs):
        with no_grad():
            return float(np.sum(f(*[Tensor(x) for x in xs]).data * projection))

    out.backward(projection)
    errors = []
    for i, (array, tensor) in enumerate(zip(arrays, tensors)):
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
        max_abs = float(np.max(np.abs(analytic - numeric))) if array.size else 0.0
        scale = float(np.max(np.abs(numeric))) if array.size else 0.0
        errors.append(GradError(i, array.shape, max_abs, max_abs / max(scale, 1e-8)))
        if verbose:
            print(f"input {i} shape {array.shape}: max abs error {max_abs:.2e}, "
                  f"max rel error {errors[-1].max_rel:.2e}")
    return errors
