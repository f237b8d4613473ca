"""Solvers converge on known contractions; diverging solves are contained."""
import pytest
import torch

from deqnca.core.solvers import SOLVERS, get_solver, register_solver, residuals


def affine_contraction(B=4, C=3, H=5, W=5, rho=0.6, seed=0):
    """f(z) = A z + b with ‖A‖ = rho: the fixed point (I − A)⁻¹ b is known in closed form."""
    g = torch.Generator().manual_seed(seed)
    D = C * H * W
    Q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    A = (Q * torch.linspace(-rho, rho, D, dtype=torch.float64)) @ Q.T
    b = torch.randn(B, D, generator=g, dtype=torch.float64)
    z_star = torch.linalg.solve(torch.eye(D, dtype=torch.float64) - A, b.T).T
    f = lambda z: (z.flatten(1) @ A.T + b).view(B, C, H, W)
    z0 = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    return f, z0, z_star.view(B, C, H, W)


@pytest.mark.parametrize("name", ["fixed_point", "anderson", "broyden"])
def test_solvers_reach_known_fixed_point(name):
    f, z0, z_star = affine_contraction()
    z, stats = get_solver(name)(f, z0, max_iter=200, tol=1e-9)
    err = (z - z_star).flatten(1).norm(dim=1) / z_star.flatten(1).norm(dim=1)
    assert err.max() < 1e-6, err
    assert stats.rel_residual.max() < 1e-8
    assert stats.nstep <= 200


def test_acceleration_beats_picard_on_slow_contraction():
    f, z0, z_star = affine_contraction(rho=0.95)
    _, s_fp = get_solver("fixed_point")(f, z0, max_iter=500, tol=1e-8)
    _, s_aa = get_solver("anderson")(f, z0, max_iter=500, tol=1e-8)
    assert s_aa.rel_residual.max() < 1e-8
    assert s_aa.nstep < s_fp.nstep / 2, (s_aa.nstep, s_fp.nstep)


def test_rollout_is_exactly_T_steps_and_differentiable():
    w = torch.tensor(0.5, requires_grad=True)
    f = lambda z: w * z + 1
    z, stats = get_solver("rollout")(f, torch.zeros(2, 1, 1, 1), max_iter=3)
    # z_3 = 1 + w + w²  -> dz/dw = 1 + 2w
    assert torch.allclose(z, torch.full_like(z, 1 + 0.5 + 0.25))
    z.sum().backward()
    assert torch.isclose(w.grad, torch.tensor(2 * (1 + 2 * 0.5)))
    assert stats.nstep == 3


def test_fixed_point_stops_per_sample():
    f, z0, _ = affine_contraction(rho=0.5)
    z, stats = get_solver("fixed_point")(f, z0, max_iter=100, tol=1e-6)
    assert (stats.rel_residual < 1e-6).all()


def test_fixed_point_counts_each_samples_own_steps():
    """`sample_steps`: in a batch of contractions of different rates, each sample's count is the one it takes
    solved alone, and the batch's nstep is the slowest's."""
    rates = torch.tensor([0.1, 0.5, 0.8]).view(3, 1, 1, 1)
    c = torch.ones(3, 2, 4, 4)

    def f(z, r=rates):
        return r * z + c[: len(z)]

    _, batch = get_solver("fixed_point")(f, torch.zeros(3, 2, 4, 4), max_iter=200, tol=1e-6)
    alone = [get_solver("fixed_point")(lambda z, r=rates[k:k + 1]: r * z + c[:1], torch.zeros(1, 2, 4, 4),
                                       max_iter=200, tol=1e-6)[1].nstep for k in range(3)]
    assert batch.sample_steps.tolist() == alone and alone[0] < alone[1] < alone[2] == batch.nstep
    _, short = get_solver("fixed_point")(f, torch.zeros(3, 2, 4, 4), max_iter=alone[1], tol=1e-6)
    assert short.sample_steps.tolist() == alone[:2] + [-1]          # the slowest never got there


def test_broyden_contains_divergence():
    # a map with no fixed point: z -> z + 1 pushes Broyden's iterates away; the wrapper must return
    # finite states no larger than a rollout could reach, and count the fallbacks.
    f = lambda z: 2.0 * z + torch.tanh(z) + 1.0
    z0 = torch.randn(3, 2, 4, 4)
    z, stats = get_solver("broyden")(f, z0, max_iter=8, tol=1e-6)
    assert torch.isfinite(z).all()


def test_residuals_definition():
    z = torch.zeros(2, 1, 2, 2)
    fz = torch.ones(2, 1, 2, 2)
    a, r = residuals(fz, z)
    assert torch.allclose(a, torch.full((2,), 2.0)) and torch.allclose(r, torch.ones(2), atol=1e-6)


def test_registry():
    register_solver("identity", lambda f, z0, max_iter, tol=0, stop_mode="rel", **_: (z0, None))
    assert "identity" in SOLVERS
    with pytest.raises(ValueError, match="unknown solver"):
        get_solver("newton-raphson-9000")
    SOLVERS.unregister("identity")
    assert "identity" not in SOLVERS


def test_fixed_point_batched_stop_checks_return_the_same_states():
    f, z0, _ = affine_contraction(rho=0.5)
    z1, s1 = get_solver("fixed_point")(f, z0, max_iter=100, tol=1e-6, sync_every=1)
    z8, s8 = get_solver("fixed_point")(f, z0, max_iter=100, tol=1e-6, sync_every=8)
    assert torch.equal(z1, z8) and s1.nstep <= s8.nstep < s1.nstep + 8
    assert len(s8.trace) == s8.nstep and s8.trace[:len(s1.trace)] == s1.trace


def test_torchdeq_masking_fix_keeps_broydens_best_iterate_finite(monkeypatch):
    """TorchDeq 0.1.0 selects the best iterate with mask·new + ~mask·old, so one overflowed Broyden
    iterate turns the kept state NaN; after deqnca's patch every sample comes back finite."""
    import torchdeq.solver.utils as utils
    from torchdeq.solver import broyden_solver

    from deqnca.core.solvers import _TORCHDEQ_ORIGINAL, patch_torchdeq_masking

    patch_torchdeq_masking()
    torch.manual_seed(0)
    K1, K2 = torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.Conv2d(48, 32, 3, padding=1)
    with torch.no_grad():
        u = torch.relu(K1(torch.rand(8, 1, 12, 12)))
        f = lambda z: z + torch.tanh(K2(torch.cat([u, z], 1)))     # eq. (2) at initialisation
        z0 = torch.randn(8, 32, 12, 12)
        finite = lambda z: int(torch.isfinite(z).flatten(1).all(1).sum())
        patched, _, _ = broyden_solver(f, z0, max_iter=40, tol=1e-3, stop_mode="abs")
        monkeypatch.setattr(utils, "batch_masked_mixing", _TORCHDEQ_ORIGINAL["batch_masked_mixing"])
        unpatched, _, _ = broyden_solver(f, z0, max_iter=40, tol=1e-3, stop_mode="abs")
    assert finite(unpatched) < 8          # the library bug is real on this input
    assert finite(patched) == 8


def _freezing_picard(f, z0, max_iter, tol, check_every=1):
    """The per-sample Picard iteration as it reads: converged samples frozen inside the batch by a select over
    the whole state every step (what `fixed_point` did before it kept converged rows instead)."""
    z, fz, steps, done = z0, f(z0), 1, None
    met = torch.full((z0.shape[0],), -1)
    trace = []
    for _ in range(max_iter - 1):
        if steps % check_every == 0:
            a, r = residuals(fz, z)
            trace.append(r.mean())
            done = r < tol
            met = torch.where(done & (met < 0), steps, met)
            if bool(done.all()):
                break
        z = fz if done is None else torch.where(done.view(-1, 1, 1, 1), z, fz)
        fz, steps = f(z), steps + 1
    a, r = residuals(fz, z)
    return z, a, r, torch.where((r < tol) & (met < 0), steps, met), steps, torch.stack(trace).tolist()


@pytest.mark.parametrize("max_iter,check_every", [(200, 1), (200, 3), (12, 1)])
def test_fixed_point_keeps_each_samples_state_as_freezing_it_would(max_iter, check_every):
    """Keeping each converged sample's rows (and letting the batch step on) returns bit for bit the states,
    residuals, step counts and trace of freezing converged samples in the batch; also when max_iter cuts the
    slow samples off, and with sparse checks."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 6, 3, 3, generator=g) * 0.08
    rate = torch.tensor([0.2, 0.5, 0.7, 0.9]).view(4, 1, 1, 1)        # samples converge at different steps
    c = torch.randn(4, 6, 7, 7, generator=g)
    f = lambda z: rate * torch.tanh(torch.nn.functional.conv2d(z, w, padding=1) + c)
    z0 = torch.randn(4, 6, 7, 7, generator=g)
    z, stats = get_solver("fixed_point")(f, z0, max_iter=max_iter, tol=1e-6, check_every=check_every)
    ref_z, ref_a, ref_r, ref_met, ref_steps, ref_trace = _freezing_picard(f, z0, max_iter, 1e-6, check_every)
    assert len(set(ref_met.tolist())) >= 3, ref_met          # the samples did stop at different steps
    assert torch.equal(z, ref_z) and torch.equal(stats.abs_residual, ref_a) and torch.equal(stats.rel_residual, ref_r)
    assert stats.sample_steps.tolist() == ref_met.tolist() and stats.nstep == ref_steps
    assert stats.trace == ref_trace


def test_a_rollout_in_chunks_gives_the_whole_batchs_states_and_gradients():
    """`rows_per_chunk`: the essay's rollout (a `RowMap`, restricted to each chunk's rows) reaches the same
    states and weight gradients as the whole batch at once; only the convolutions' summation order differs."""
    from deqnca.tasks.mnist.config import preset
    from deqnca.tasks.mnist.model import EquilibriumModel

    torch.manual_seed(0)
    model = EquilibriumModel(preset("essay").model)
    x = torch.rand(20, 1, 12, 12).contiguous(memory_format=torch.channels_last)
    y = torch.arange(20) % 10
    out = {}
    for chunk in (None, 8):
        z, stats = model.solve(x, generator=torch.Generator().manual_seed(1), rows_per_chunk=chunk)
        model.readout.loss(z, x, y)[0].backward()
        out[chunk] = (z.detach(), stats.rel_residual, model.rule.K2.weight.grad.clone(), model.K1.weight.grad.clone())
        model.zero_grad(set_to_none=True)
    assert out[8][0].stride() == out[None][0].stride()              # the batch's memory layout
    for whole, chunked in zip(out[None], out[8]):
        torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    f = model.step_map(x)
    assert torch.equal(f.rows(slice(8, 16))(x.new_zeros(8, 32, 12, 12)), f(x.new_zeros(20, 32, 12, 12))[8:16])


@pytest.mark.parametrize("rule", ["residual_tanh", "contractive_tanh"])
def test_the_injected_rule_step_in_place_is_the_rule_as_written(rule):
    """The injection's step works in place on the convolution's output: the same states and gradients, bit
    for bit, as the rule written out of place, σ(W_z * z + (W_u * u + b)) (+ z for the residual rule)."""
    import torch.nn.functional as F

    from deqnca.core.conditioning import make_conditioning
    from deqnca.core.rules import make_rule

    torch.manual_seed(0)
    module = make_rule(rule, input_channels=3, state_channels=5).eval()   # eval: no power-iteration update
    u = torch.rand(2, 3, 6, 6)
    z0 = torch.randn(2, 5, 6, 6)
    grads = []
    for written_out in (False, True):
        f = module.bind(u, make_conditioning("injection"))
        if written_out:
            w = module.state_weight() if rule == "contractive_tanh" else module.K2.weight[:, 3:]
            injected = F.conv2d(u, module.K2.weight[:, :3], module.K2.bias, padding=1)
            def step(z, w=w, injected=injected):
                return torch.tanh(F.conv2d(z, w, padding=1) + injected)
            f = (lambda z, step=step: z + step(z)) if rule == "residual_tanh" else step
        z = z0
        for _ in range(4):
            z = f(z)
        z.square().sum().backward()
        grads.append((z.detach(), module.K2.weight.grad.clone(), module.K2.bias.grad.clone()))
        module.zero_grad(set_to_none=True)
    for in_place, written in zip(*grads):
        assert torch.equal(in_place, written)


@pytest.fixture
def compiled_residuals():
    """The solvers' residuals compiled (process-wide), and eager again after the test."""
    from deqnca.core import solvers

    yield solvers.compile_residuals(True)
    solvers.compile_residuals(False)


def test_compiled_residuals_equal_eager_ones_and_a_solve_keeps_its_states(compiled_residuals):
    """One fused kernel for ‖f(z) − z‖ and ‖f(z)‖: the eager values up to float32 summation order (1e-6
    relative), in either memory layout and at any batch size; a Picard solve takes the same steps to the same
    states, bit for bit (its states do not depend on the residuals, only its stops do)."""
    from deqnca.core import solvers

    if not compiled_residuals:
        pytest.skip(f"torch.compile unavailable here: {solvers.compiled_failed()}")
    g = torch.Generator().manual_seed(0)
    for batch, layout in ((5, torch.contiguous_format), (64, torch.channels_last), (3, torch.channels_last)):
        z = torch.randn(batch, 32, 14, 14, generator=g).contiguous(memory_format=layout)
        fz = (z + 1e-3 * torch.randn(z.shape, generator=g)).contiguous(memory_format=layout)
        with torch.no_grad():
            fused = residuals(fz, z)
            solvers.compile_residuals(False)
            eager = residuals(fz, z)
            solvers.compile_residuals(True)
        for a, b in zip(fused, eager):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    assert solvers.compiled_failed() is None
    w = torch.randn(6, 6, 3, 3, generator=g) * 0.08
    rate = torch.tensor([0.2, 0.5, 0.7, 0.9]).view(4, 1, 1, 1)
    c = torch.randn(4, 6, 7, 7, generator=g)
    f = lambda z: rate * torch.tanh(torch.nn.functional.conv2d(z, w, padding=1) + c)
    z0 = torch.randn(4, 6, 7, 7, generator=g)
    z, stats = get_solver("fixed_point")(f, z0, max_iter=200, tol=1e-6)
    solvers.compile_residuals(False)
    ref_z, ref_stats = get_solver("fixed_point")(f, z0, max_iter=200, tol=1e-6)
    assert stats.sample_steps.tolist() == ref_stats.sample_steps.tolist() and torch.equal(z, ref_z)
    torch.testing.assert_close(stats.rel_residual, ref_stats.rel_residual, rtol=1e-5, atol=0)


def test_a_failed_compile_falls_back_to_eager_residuals_and_says_why(monkeypatch):
    """No C++ compiler (or an old torch): the first compiled call fails, the same numbers come from the eager
    residuals, a warning says why, and compiling stays off for the process."""
    from deqnca.core import residuals as residuals_module
    from deqnca.core import solvers

    def broken(fn, **kw):
        def call(*a):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
        return call
    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(residuals_module, "_COMPILED", residuals_module._CompiledResiduals())
    assert solvers.compile_residuals(True)
    z, fz = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    with torch.no_grad(), pytest.warns(UserWarning, match="compiled residuals unavailable.*C\\+\\+ compiler"):
        a, r = residuals(fz, z)
    assert a.tolist() == pytest.approx([48 ** 0.5] * 2) and "InvalidCxxCompiler" in solvers.compiled_failed()
    assert not solvers.compile_residuals(True)



def test_compiled_residuals_stay_eager_under_a_dispatch_mode(monkeypatch):
    """Under a tensor-dispatch mode (FlopCounterMode, a profiler's) the compiled kernel is not called: compiling
    it there would leave it eager for the rest of the process."""
    from torch.utils.flop_counter import FlopCounterMode

    from deqnca.core import residuals as residuals_module

    calls = []
    compiled = residuals_module._CompiledResiduals()
    compiled._fn = lambda fz, z: calls.append(1) or residuals_module._eager_residuals(fz, z)
    monkeypatch.setattr(residuals_module, "_COMPILED", compiled)
    assert residuals_module.compile_residuals(True)
    z, fz = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    with torch.no_grad():
        with FlopCounterMode(display=False):
            residuals(fz, z)
        assert calls == []
        residuals(fz, z)
    assert calls == [1]
