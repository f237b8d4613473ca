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
