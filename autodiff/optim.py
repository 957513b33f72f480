"""Optimisers: each `step()` applies its update formula to every parameter
that has a `.grad`, in place. All of them *minimise*; to maximise a reward,
minimise its negative.

    SGD      v ← μ v + g;                    θ ← θ − lr v
    RMSProp  c ← ρ c + (1 − ρ) g²;           θ ← θ − lr g / (√c + ε)
    Adam     m ← β₁ m + (1 − β₁) g;  v ← β₂ v + (1 − β₂) g²
             θ ← θ − lr m̂ / (√v̂ + ε),  m̂ = m/(1 − β₁ᵗ),  v̂ = v/(1 − β₂ᵗ)

Updates are in place (`p.data -= ...`), like PyTorch's: a graph recorded before
`step()` holds the same arrays, so run a fresh forward after each step. Calling
backward on a graph recorded before the step raises an error naming the
parameter (the engine notes every in-place change of `.data`), instead of
returning a gradient computed from the updated values.

`state_dict()` / `load_state_dict()` give the optimiser's memory as plain
arrays so a checkpoint can hold it (and a resumed run continue exactly).
"""

import numpy as np


class Optimizer:
    def __init__(self, params, lr):
        self.params = list(params)
        self.lr = lr
        self.steps = 0

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        self.steps += 1
        for i, p in enumerate(self.params):
            if p.grad is not None:
                self._update(i, p, p.grad)

    def _slots(self):
        """Names of the per-parameter state lists (subclasses fill them)."""
        return ()

    def state_dict(self):
        state = {"steps": np.array(self.steps), "lr": np.array(self.lr)}
        for slot in self._slots():
            for i, array in enumerate(getattr(self, slot)):
                state[f"{slot}_{i}"] = array
        return state

    def load_state_dict(self, state):
        self.steps = int(state["steps"])
        self.lr = float(state["lr"])
        for slot in self._slots():
            arrays = getattr(self, slot)
            for i in range(len(arrays)):
                key = f"{slot}_{i}"
                if key not in state or state[key].shape != arrays[i].shape:
                    raise ValueError(f"optimiser state {key!r} is missing or has the wrong shape")
                arrays[i] = np.array(state[key], dtype=arrays[i].dtype)


class SGD(Optimizer):
    def __init__(self, params, lr=1e-2, momentum=0.0):
        super().__init__(params, lr)
        self.momentum = momentum
        self.velocity = [np.zeros_like(p.data) for p in self.params]

    def _slots(self):
        return ("velocity",)

    def _update(self, i, p, g):
        if self.momentum:
            self.velocity[i] = self.momentum * self.velocity[i] + g
            g = self.velocity[i]
        p.data -= self.lr * g


class RMSProp(Optimizer):
    """Defaults are the Pong-from-pixels settings (decay 0.99, eps 1e-5);
    note ε is added to √c, not inside the square root."""

    def __init__(self, params, lr=1e-4, decay=0.99, eps=1e-5):
        super().__init__(params, lr)
        self.decay, self.eps = decay, eps
        self.cache = [np.zeros_like(p.data) for p in self.params]

    def _slots(self):
        return ("cache",)

    def _update(self, i, p, g):
        self.cache[i] = self.decay * self.cache[i] + (1.0 - self.decay) * g * g
        p.data -= self.lr * g / (np.sqrt(self.cache[i]) + self.eps)


class Adam(Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, lr)
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.m = [np.zeros_like(p.data) for p in self.params]
        self.v = [np.zeros_like(p.data) for p in self.params]

    def _slots(self):
        return ("m", "v")

    def _update(self, i, p, g):
        self.m[i] = self.beta1 * self.m[i] + (1.0 - self.beta1) * g
        self.v[i] = self.beta2 * self.v[i] + (1.0 - self.beta2) * g * g
        m_hat = self.m[i] / (1.0 - self.beta1 ** self.steps)
        v_hat = self.v[i] / (1.0 - self.beta2 ** self.steps)
        p.data -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


def clip_grad_norm(params, max_norm):
    """Scale all gradients together so their joint L2 norm is at most
    `max_norm`. Returns the norm *before* clipping (worth logging: clipping
    hides how large the raw gradients were)."""
    grads = [p.grad for p in params if p.grad is not None]
    total = float(np.sqrt(sum(float(np.sum(g * g)) for g in grads)))
    if total > max_norm:
        scale = max_norm / (total + 1e-12)
        for p in params:
            if p.grad is not None:
                p.grad = p.grad * scale
    return total
