"""Pendulum-v1 swing-up learned by backpropagation through time (draft)."""

import numpy as np

import autodiff as ad

# ----------------------------------------------------------------------------
# Gymnasium's Pendulum-v1, constant for constant
# ----------------------------------------------------------------------------
G, M, L = 10.0, 1.0, 1.0          # gravity, mass, length
DT = 0.05                         # seconds per step
MAX_SPEED, MAX_TORQUE = 8.0, 2.0  # |θ̇| is clipped to 8 after each step; |u| to 2 before it
EPISODE_STEPS = 200               # the TimeLimit of Pendulum-v1
GRAVITY_TERM = 3 * G / (2 * L)    # 15.0, written as Gymnasium writes it (same rounding)
TORQUE_TERM = 3.0 / (M * L ** 2)  # 3.0


def angle_normalize(theta):
    """θ wrapped into [−π, π); θ = 0 is upright."""
    return ((theta + np.pi) % (2 * np.pi)) - np.pi


def step_numpy(state, torque):
    """One step of the batch, plain NumPy: state (B, 2) = [θ, θ̇], torque (B,).
    Returns next_state (B, 2) and cost (B,), exactly as Gymnasium computes them."""
    theta, speed = state[:, 0], state[:, 1]
    u = np.minimum(np.maximum(torque, -MAX_TORQUE), MAX_TORQUE)
    cost = angle_normalize(theta) ** 2 + 0.1 * speed ** 2 + 0.001 * u ** 2
    new_speed = speed + (GRAVITY_TERM * np.sin(theta) + TORQUE_TERM * u) * DT
    new_speed = np.minimum(np.maximum(new_speed, -MAX_SPEED), MAX_SPEED)
    new_theta = theta + new_speed * DT
    return np.stack([new_theta, new_speed], axis=1), cost


# ----------------------------------------------------------------------------
# The same step as a differentiable function, written two ways
# ----------------------------------------------------------------------------
def _torque_vector(torque):
    """Accept the torque as (B,) or as the policy's (B, 1) column."""
    return torque.reshape((-1,)) if torque.ndim == 2 else torque


def step_ops(state, torque):
    """One step with the engine's elementary ops (a graph of ~20 nodes).

    state: Tensor (B, 2) = [θ, θ̇];  torque: Tensor (B,) or (B, 1).
    Returns (next_state (B, 2), cost (B,)): the cost is that of the pre-step
    state and the clipped torque, as in Gymnasium."""
    theta, speed = state[:, 0], state[:, 1]
    u = ad.clip(_torque_vector(torque), -MAX_TORQUE, MAX_TORQUE)
    # angle_normalize shifts θ by a multiple of 2π: a constant, so its slope is 1
    wrapped = theta + ad.Tensor(angle_normalize(theta.data) - theta.data)
    cost = wrapped * wrapped + 0.1 * (speed * speed) + 0.001 * (u * u)
    new_speed = ad.clip(speed + (GRAVITY_TERM * ad.sin(theta) + TORQUE_TERM * u) * DT, -MAX_SPEED, MAX_SPEED)
    new_theta = theta + new_speed * DT
    return ad.stack([new_theta, new_speed], axis=1), cost


@ad.primitive
def pendulum_dynamics(state, torque):
    """next_state = f(state, torque) as one op.

    Forward (semi-implicit Euler):  u = clip(τ, ±2)
        θ̇' = clip(θ̇ + (15 sin θ + 3u) dt, ±8),   θ' = θ + θ̇' dt
    Backward, given g = (gθ', gθ̇'):
        a   = (gθ̇' + gθ' dt) · [θ̇' not clipped]      gradient reaching the unclipped θ̇'
        gθ  = gθ' + a · 15 cos θ · dt,   gθ̇ = a,   gτ = a · 3 dt · [τ not clipped]
    (Written with in-place NumPy calls: this op runs 200 times per episode,
    and at batch 64 the number of NumPy calls, not the arithmetic, is the cost.)"""
    theta, speed = state[:, 0], state[:, 1]
    u = _torque_vector(torque)
    u_clipped = np.minimum(np.maximum(u, -MAX_TORQUE), MAX_TORQUE)
    raw_speed = np.sin(theta)                    # the same operations in the same order as
    raw_speed *= GRAVITY_TERM                    # Gymnasium: thdot + (15 sin th + 3 u) dt
    raw_speed += TORQUE_TERM * u_clipped
    raw_speed *= DT
    raw_speed += speed
    next_state = np.empty_like(state)
    new_speed = next_state[:, 1]
    np.minimum(np.maximum(raw_speed, -MAX_SPEED), MAX_SPEED, out=new_speed)
    np.multiply(new_speed, DT, out=next_state[:, 0])
    next_state[:, 0] += theta

    def vjp(g):
        a = g[:, 0] * DT
        a += g[:, 1]
        a *= new_speed == raw_speed              # zero where the speed clip was active
        grad_state = np.empty_like(g)
        grad_theta = np.cos(theta)
        grad_theta *= GRAVITY_TERM * DT
        grad_theta *= a
        np.add(g[:, 0], grad_theta, out=grad_state[:, 0])
        grad_state[:, 1] = a
        grad_torque = a * (TORQUE_TERM * DT)
        grad_torque *= u_clipped == u            # zero where the torque clip was active
        return grad_state, grad_torque.reshape(np.shape(torque))
    return next_state, vjp


@ad.primitive
def pendulum_cost(state, torque):
    """cost = angle_normalize(θ)² + 0.1 θ̇² + 0.001 clip(τ, ±2)² as one op.
    Backward: gθ = 2 wrap(θ) g,  gθ̇ = 0.2 θ̇ g,  gτ = 0.002 u g · [τ not clipped]."""
    theta, speed = state[:, 0], state[:, 1]
    u = _torque_vector(torque)
    u_clipped = np.minimum(np.maximum(u, -MAX_TORQUE), MAX_TORQUE)
    wrapped = angle_normalize(theta)
    cost = wrapped * wrapped
    cost += 0.1 * (speed * speed)
    cost += 0.001 * (u_clipped * u_clipped)

    def vjp(g):
        grad_state = np.empty_like(state)
        np.multiply(g, 2.0 * wrapped, out=grad_state[:, 0])
        np.multiply(g, 0.2 * speed, out=grad_state[:, 1])
        grad_torque = g * (0.002 * u_clipped)
        grad_torque *= u_clipped == u
        return grad_state, grad_torque.reshape(np.shape(torque))
    return cost, vjp


def step_fused(state, torque):
    """The same step as `step_ops` with two hand-differentiated primitives
    (dynamics and cost) instead of ~20 small ops. Same arguments, same values,
    same gradients (tests/test_pendulum_bptt.py checks all three)."""
    return pendulum_dynamics(state, torque), pendulum_cost(state, torque)


@ad.primitive
def observation(state):
    """Gymnasium's observation [cos θ, sin θ, θ̇] of a (B, 2) state, one op.
    Backward: gθ = −g_cos sin θ + g_sin cos θ,  gθ̇ = g_θ̇."""
    theta = state[:, 0]
    cos, sin = np.cos(theta), np.sin(theta)
    obs = np.empty((state.shape[0], 3), dtype=state.dtype)
    obs[:, 0], obs[:, 1], obs[:, 2] = cos, sin, state[:, 1]

    def vjp(g):
        grad_state = np.empty_like(state)
        np.subtract(g[:, 1] * cos, g[:, 0] * sin, out=grad_state[:, 0])
        grad_state[:, 1] = g[:, 2]
        return (grad_state,)
    return obs, vjp
