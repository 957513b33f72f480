"""autodiff: a small reverse-mode automatic differentiation engine over NumPy.

    import autodiff as ad
    x = ad.Tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = ad.sum(ad.tanh(x) * x)
    y.backward()
    x.grad                      # d y / d x

Layout (read in this order):
    engine.py     Tensor, the backward pass, `primitive` for defining ops
    ops.py        every elementary op with its vector-Jacobian product
    kernels.py    fused layers (linear, mlp, GRU) with hand-written backward
    nn.py         Linear, MLP, GRUCell, initialisers, saving parameters
    optim.py      SGD, RMSProp, Adam, clip_grad_norm
    gradcheck.py  finite-difference checking of any function
    runs.py       not autodiff: what the six scripts share (command line, run folder, results, input checks)
"""

# One BLAS thread, set here and nowhere else. Every matrix in this project is small (batches of tens to a
# few thousand rows, layers of 64-256 units): BLAS threads only add overhead, 10x or more on two busy cores,
# and make results depend on the thread count. It must happen before NumPy loads, so a script or benchmark
# imports autodiff before numpy. To choose otherwise, set OPENBLAS_NUM_THREADS (or OMP_/MKL_) yourself.
import os as _os
import sys as _sys

if "numpy" not in _sys.modules:        # once NumPy has loaded, its BLAS has already chosen its threads
    for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        _os.environ.setdefault(_name, "1")

from . import nn, optim, runs
from .engine import (PRIMITIVES, Tensor, detect_anomaly, graph_string, is_grad_enabled, no_grad, primitive,
                     print_graph, unbroadcast)
from .gradcheck import assert_gradcheck, gradcheck
from .kernels import gru_cell, gru_sequence, linear, mlp
from .ops import (abs, add, clip, concatenate, cos, div, exp, getitem, log, log_softmax, logsumexp, matmul,
                  max, maximum, mean, minimum, mul, neg, power, relu, reshape, scale_gradient, sigmoid, sin,
                  softmax, softplus, sqrt, stable_sigmoid, stack, stop_gradient, straight_through_sign, sub, sum,
                  tanh, transpose, where)

__all__ = [name for name in dir() if not name.startswith("_")]
