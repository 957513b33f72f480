"""The engine's edges: each case was once a silent wrong answer or an error that did not name the op."""

import os
import subprocess
import sys

import numpy as np
import pytest

import autodiff as ad
from autodiff.__main__ import main as list_primitives

rng = np.random.default_rng(3)


def leaf(*values):
    return ad.Tensor(np.array(values, dtype=float), requires_grad=True)


# ----------------------------------------------------------------------------
# Silent wrong results that are now right, or refused
# ----------------------------------------------------------------------------
def test_tuple_and_list_indices_scatter_add_like_numpy():
    x = ad.Tensor(np.zeros((2, 3)), requires_grad=True)
    x[0, (1, 1, 2)].sum().backward()
    assert x.grad.tolist() == [[0, 2, 1], [0, 0, 0]]
    y = ad.Tensor(np.zeros(3), requires_grad=True)
    y[((0, 0),)].sum().backward()
    assert y.grad.tolist() == [2, 0, 0]
    z = ad.Tensor(np.zeros(3), requires_grad=True)
    z[[2, 2, 0]].sum().backward()
    assert z.grad.tolist() == [1, 0, 2]
    w = ad.Tensor(np.zeros(3), requires_grad=True)
    w[ad.Tensor(np.array([1, 1]))].sum().backward()            # an integer Tensor as the index
    assert w.grad.tolist() == [0, 2, 0]
    ad.assert_gradcheck(lambda x: x[1, (0, 0, 2)] ** 2, [rng.normal(size=(2, 3))])
    ad.assert_gradcheck(lambda x: x[np.array([[True, False, True], [False, True, True]])] ** 2,
                        [rng.normal(size=(2, 3))])


def test_mlp_refuses_an_odd_parameter_list():
    x, W1, b1, W2 = ad.Tensor(np.ones((4, 3))), ad.Tensor(np.ones((3, 5))), ad.Tensor(np.zeros(5)), ad.Tensor(
        np.ones((5, 2)))
    with pytest.raises(ValueError, match=r"mlp: params must come in pairs .* got 3 arrays"):
        ad.mlp(x, W1, b1, W2)
    with pytest.raises(ValueError, match=r"mlp: x has 5 features but W2 expects 4"):
        ad.mlp(x, W1, b1, ad.Tensor(np.ones((4, 2))), ad.Tensor(np.zeros(2)))


def test_gru_kernels_validate_every_shape_in_the_forward():
    x, h = ad.Tensor(np.ones((3, 2))), ad.Tensor(np.zeros((3, 1)))
    Wx, Wh, bx, bh = np.ones((2, 3)), np.ones((1, 3)), np.zeros(3), np.zeros(3)
    assert ad.gru_cell(x, h, Wx, Wh, bx, bh).shape == (3, 1)              # hidden size 1, right shapes
    with pytest.raises(ValueError, match=r"gru_cell: Wx has shape \(2, 1\), expected \(2, 3\)"):
        ad.gru_cell(x, h, np.ones((2, 1)), Wh, bx, bh)                     # would broadcast silently
    with pytest.raises(ValueError, match=r"gru_cell: bx has shape \(1, 3\), expected \(3,\)"):
        ad.gru_cell(x, h, Wx, Wh, np.zeros((1, 3)), bh)
    with pytest.raises(ValueError, match=r"gru_cell: x \(3, 2\) and h \(4, 1\) differ in their batch axes"):
        ad.gru_cell(x, ad.Tensor(np.zeros((4, 1))), Wx, Wh, bx, bh)
    with pytest.raises(ValueError, match=r"gru_sequence: xs has shape \(0, 3, 2\): it needs at least one step"):
        ad.gru_sequence(np.ones((0, 3, 2)), np.zeros((3, 1)), Wx, Wh, bx, bh)
    with pytest.raises(ValueError, match=r"gru_sequence: xs has shape \(4, 0, 2\)"):
        ad.gru_sequence(np.ones((4, 0, 2)), np.zeros((0, 1)), Wx, Wh, bx, bh)
    with pytest.raises(ValueError, match=r"gru_sequence: x \(3, 2\) and h \(2, 1\) differ in their batch axes"):
        ad.gru_sequence(np.ones((4, 3, 2)), np.zeros((2, 1)), Wx, Wh, bx, bh)


def test_linear_refuses_a_bias_of_the_wrong_shape_in_the_forward():
    x = ad.Tensor(np.ones((4, 3)))
    W = ad.Tensor(np.ones((3, 2)), requires_grad=True)
    with pytest.raises(ValueError, match=r"linear: b has shape \(1, 2\) but W \(3, 2\) needs a bias of shape \(2,\)"):
        ad.linear(x, W, ad.Tensor(np.zeros((1, 2)), requires_grad=True))
    with pytest.raises(ValueError, match=r"mlp: b1 has shape \(1, 2\)"):
        ad.mlp(x, W, ad.Tensor(np.zeros((1, 2))))


def test_complex_arrays_are_refused():
    with pytest.raises(TypeError, match="complex arrays are not supported"):
        ad.Tensor(np.array([1 + 2j]), requires_grad=True)
    with pytest.raises(TypeError, match="complex"):
        ad.Tensor(np.array([1 + 2j]))


def test_integer_and_bool_inputs_are_computed_as_float64_and_stored_as_given():
    one, two = ad.Tensor(np.array([1], np.uint8)), ad.Tensor(np.array([2], np.uint8))
    assert one.dtype == np.uint8                                # an int8 frame stays small
    difference = one - two
    assert difference.data.tolist() == [-1.0] and difference.dtype == np.float64   # not 255
    assert (ad.Tensor(np.array([True])) - ad.Tensor(np.array([True]))).data.tolist() == [0.0]   # bool − bool
    assert ad.Tensor([1, 2]).dtype == np.float64 and ad.Tensor(3).dtype == np.float64
    frames = ad.Tensor(np.array([[0, 1], [1, 0]], np.int8))
    assert frames[0].dtype == np.int8                           # shape ops keep the dtype
    W = ad.Tensor(np.ones((2, 1)), requires_grad=True)
    (frames @ W).sum().backward()
    assert W.grad.tolist() == [[1.0], [1.0]]


def test_logsumexp_and_softmaxes_are_exact_at_plus_and_minus_infinity():
    inf = np.inf
    with np.errstate(all="raise"):
        assert ad.logsumexp(ad.Tensor([inf, 0.0])).item() == inf
        assert ad.logsumexp(ad.Tensor([-inf, -inf])).item() == -inf
        assert ad.logsumexp(ad.Tensor([-inf, 0.0])).item() == 0.0
        assert ad.softmax(ad.Tensor([inf, 0.0, inf])).data.tolist() == [0.5, 0.0, 0.5]   # the limit
        assert ad.log_softmax(ad.Tensor([inf, 0.0])).data.tolist() == [0.0, -inf]
        assert ad.log_softmax(ad.Tensor([-inf, 0.0])).data.tolist() == [-inf, 0.0]
        rows = ad.logsumexp(ad.Tensor([[inf, 1.0], [1.0, 2.0], [-inf, -inf]]), axis=1).data
    assert rows[0] == inf and rows[1] == pytest.approx(np.log(np.e + np.e ** 2)) and rows[2] == -inf
    x = ad.Tensor(np.array([-inf, 0.0, 1.0]), requires_grad=True)
    ad.logsumexp(x).backward()
    assert np.allclose(x.grad, [0.0, 1 / (1 + np.e), np.e / (1 + np.e)])


def test_changing_data_after_the_forward_is_detected_and_names_the_tensor():
    x = ad.Tensor(np.array([1.0, 2.0]), requires_grad=True, name="x")
    y = (x * x).sum()
    x.data *= 10
    with pytest.raises(RuntimeError, match=r"input 0, leaf 'x' of shape \(2,\), was changed in place after 'mul'"):
        y.backward()
    c = ad.Tensor(np.array([3.0, 4.0]), name="c")                # a constant the gradient depends on
    z = (x * c).sum()
    c.data += 1
    with pytest.raises(RuntimeError, match="leaf 'c'"):
        z.backward()
    t = ad.tanh(x)                                               # tanh's VJP uses its own output
    t.data *= 0
    with pytest.raises(RuntimeError, match="its output was changed in place after 'tanh'"):
        t.backward(np.ones(2))


def test_replacing_data_with_a_new_array_keeps_the_old_graph_valid():
    x = ad.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = (x * x).sum()
    x.data = np.array([5.0, 5.0])            # a new array: the graph still holds the one it used
    y.backward()
    assert x.grad.tolist() == [2.0, 4.0]


def test_optimizers_updating_between_steps_are_fine_and_an_old_graph_is_refused():
    w = ad.Tensor(np.array([1.0, -1.0]), requires_grad=True)
    for make in (lambda p: ad.optim.SGD(p, lr=0.1, momentum=0.9), lambda p: ad.optim.Adam(p, lr=0.1),
                 lambda p: ad.optim.RMSProp(p, lr=0.1)):
        optimizer = make([w])
        for _ in range(3):                    # forward, backward, step: the usual loop
            optimizer.zero_grad()
            loss = (w * w).sum()
            loss.backward()
            optimizer.step()
        assert np.all(np.abs(w.data) < 1.0)
    old = (w * w).sum()
    w.grad = np.ones(2)
    optimizer.step()                          # between this forward and its backward
    with pytest.raises(RuntimeError, match="changed in place after 'mul'.*optimizer step"):
        old.backward()


def test_bool_of_a_tensor_is_numpys():
    with pytest.raises(ValueError, match=r"bool\(Tensor\): the truth value of a tensor of shape \(2,\) is ambiguous"):
        bool(ad.Tensor([0.0, 0.0]))
    assert not ad.Tensor([0.0]) and ad.Tensor(1.0)


def test_a_list_of_tensors_is_refused_with_a_pointer_to_stack():
    with pytest.raises(TypeError, match=r"use ad.stack\(tensors\)"):
        ad.Tensor([leaf(1.0), leaf(2.0)])
    with pytest.raises(TypeError, match="dtype object"):
        ad.Tensor(np.array([object()]))


def test_power_zero_has_a_zero_gradient_and_a_scalar_base_keeps_float32():
    x = leaf(0.0, 2.0)
    (x ** 0).sum().backward()
    assert x.grad.tolist() == [0.0, 0.0]
    e = leaf(0.0, 1.0)
    (x ** e).sum().backward()
    assert np.all(np.isfinite(x.grad))
    f = ad.Tensor(np.array([0.5, 1.0], np.float32), requires_grad=True)
    y = 2.0 ** f
    assert y.dtype == np.float32
    y.sum().backward()
    assert f.grad.dtype == np.float32 and np.allclose(f.grad, np.log(2) * 2.0 ** f.data)


def test_float32_training_stays_float32_through_mean_max_maximum_and_kernels():
    x = ad.Tensor(rng.normal(size=(4, 3)).astype(np.float32))
    W = ad.Tensor(rng.normal(size=(3, 2)).astype(np.float32), requires_grad=True)
    h = ad.linear(x, W, activation="tanh")
    loss = ad.mean(h) + ad.max(h) + ad.maximum(h, 0.0).sum() + ad.minimum(h, 0.1).mean()
    assert loss.dtype == np.float32
    loss.backward()
    assert W.grad.dtype == np.float32


# ----------------------------------------------------------------------------
# Errors that name the op and say what is wrong
# ----------------------------------------------------------------------------
def test_concatenating_a_scalar_names_the_op():
    with pytest.raises(ValueError, match=r"concatenate: .*input 1 is 0-d .*use ad.stack"):
        ad.concatenate([leaf(1.0, 2.0), ad.Tensor(3.0)])


def test_numpy_reductions_on_a_tensor_use_the_engine_or_say_why_not():
    x = leaf(1.0, 2.0)
    total = np.sum(x)                          # NumPy calls x.sum(axis=None, dtype=None, out=None)
    assert isinstance(total, ad.Tensor) and total.item() == 3.0
    total.backward()
    assert x.grad.tolist() == [1.0, 1.0]
    assert np.mean(x).item() == 1.5 and np.max(x).item() == 2.0
    with pytest.raises(TypeError, match=r"sum: got NumPy's option\(s\) out.*use ad.sum"):
        np.sum(x, out=np.zeros(()))


def test_errors_inside_an_op_name_it_with_its_inputs():
    with pytest.raises(ValueError, match=r"reshape: inputs of shapes \(2,\), \(1,\) \(float64, tuple\): cannot reshape"):
        leaf(1.0, 2.0).reshape(3)
    with pytest.raises(IndexError, match=r"getitem: .*index 5 is out of bounds"):
        leaf(1.0, 2.0)[5]


def test_detect_anomaly_blames_the_outside_for_a_nan_already_in_the_input():
    x = leaf(1.0, np.nan)
    with ad.detect_anomaly():
        with pytest.raises(FloatingPointError, match=r"input 0 of 'sum' \(a leaf of shape \(2,\)\) already holds"
                                                     r" nan/inf: it came in from outside"):
            x.sum()
        with pytest.raises(FloatingPointError, match="'log' produced nan/inf in its forward"), \
                np.errstate(invalid="ignore"):
            ad.log(leaf(-1.0))


# ----------------------------------------------------------------------------
# gradcheck that asserts
# ----------------------------------------------------------------------------
def test_assert_gradcheck_passes_a_right_vjp_and_reports_a_wrong_one():
    @ad.primitive
    def cube(x):
        return x ** 3, lambda g: (3 * x ** 2 * g,)

    @ad.primitive
    def wrong_cube(x):
        return x ** 3, lambda g: (2 * x ** 2 * g,)

    ad.assert_gradcheck(lambda x, w: cube(x) * w, [np.linspace(0.5, 2.0, 4), np.ones(4)])
    with pytest.raises(AssertionError) as failure:
        ad.assert_gradcheck(lambda x, w: wrong_cube(x) * w, [np.linspace(0.5, 2.0, 4), np.ones(4)])
    report = str(failure.value)
    assert "input 0 of 2, shape (4,)" in report and "input 1" not in report      # only the wrong input
    assert "worst element (" in report and "engine " in report and "finite difference " in report
    assert "tolerance rtol=1e-06" in report and "input value: [0.5, 1. , 1.5, 2. ]" in report


# ----------------------------------------------------------------------------
# python -m autodiff
# ----------------------------------------------------------------------------
def test_listing_shows_every_engine_primitive_with_file_and_line(capsys):
    assert list_primitives([]) == 0
    text = capsys.readouterr().out
    for name, op in ad.PRIMITIVES.items():
        if op.forward.__module__ in ("autodiff.ops", "autodiff.kernels"):
            path, line = ad.engine.where_defined(op)
            assert f"{os.path.basename(path)}:{line}" in text and name in text
            with open(path) as source:
                assert any(f"def {op.forward.__name__}(" in row for row in source.readlines()[line - 1:line + 4])
    assert "--script trebuchet.py" in text and "--all-scripts" in text


def test_listing_a_scripts_own_primitives(tmp_path, capsys):
    script = tmp_path / "my_lesson.py"
    script.write_text("import numpy as np\nimport autodiff as ad\n\n\n@ad.primitive\ndef double(x):\n"
                      "    return 2 * x, lambda g: (2 * g,)\n")
    assert list_primitives(["--script", str(script)]) == 0
    text = capsys.readouterr().out
    assert "Fused ops of my_lesson.py (1):" in text and "double" in text and "my_lesson.py:5" in text
    assert list_primitives(["--script", str(tmp_path / "missing.py")]) == 2


def test_python_dash_m_autodiff_runs():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-m", "autodiff"], cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "gru_sequence" in done.stdout


# ----------------------------------------------------------------------------
# Defining primitives
# ----------------------------------------------------------------------------
def test_a_primitive_with_one_vjp_per_input_calls_only_those_needed():
    called = []

    def vjp_x(g, x, c, out):
        called.append("x")
        return g * c

    def vjp_c(g, x, c, out):
        called.append("c")
        return g * x

    @ad.primitive(vjp=(vjp_x, vjp_c))
    def scaled(x, c):
        return x * c

    x = leaf(1.0, 2.0)
    scaled(x, ad.Tensor([3.0, 4.0])).sum().backward()
    assert x.grad.tolist() == [3.0, 4.0] and called == ["x"]        # not the constant's
    ad.assert_gradcheck(lambda x, c: scaled(x, c), [np.array([1.0, 2.0]), np.array([3.0, -1.0])])


def test_a_scripts_primitive_of_the_same_name_does_not_hide_the_engines():
    @ad.primitive
    def add(a, b):
        return a + b, lambda g: (g, g)

    assert ad.PRIMITIVES["add"] is ad.add
    assert ad.PRIMITIVES[f"{__name__}.add"] is add


def test_the_benchmark_variants_agree_and_run_without_torch():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.join(root, "benchmarks"))
    import autodiff_overhead as bench
    params, state0 = bench.pendulum_setup(batch=4, hidden=5)
    reference = bench.pendulum_numpy(params, state0, 6)
    bench.assert_same("plain", *bench.pendulum_plain(params, state0, 6), reference)
    bench.assert_same("fused", *bench.pendulum_fused(params, state0, 6), reference)
    params, data = bench.gru_setup(T=3, batch=2, n_in=3, hidden=4, n_actions=2)
    reference = bench.gru_numpy(params, data)
    for fused in (False, True):
        bench.assert_same("gru", *bench.gru_engine(params, data, fused), reference)
    assert "holds" in bench.verdict(1.0, 1.3) and "DOES NOT HOLD" in bench.verdict(2.0, 1.3)


def test_a_list_of_bools_stays_a_mask():
    mask = ad.Tensor([True, False, True])
    assert mask.dtype == bool
    x = leaf(1.0, 2.0, 3.0)
    x[mask].sum().backward()
    assert x.grad.tolist() == [1.0, 0.0, 1.0]
