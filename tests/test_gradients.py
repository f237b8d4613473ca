"""Implicit gradients match unrolled autograd at a converged fixed point; BPTT is exact."""
import pytest
import torch
import torch.nn.functional as F

from deqnca.core.conditioning import Additive, Injection, ReadOnlyChannels
from deqnca.core.gradients import BPTT, Phantom
from deqnca.core.rules import ContractiveTanhRule, ResidualTanhRule, conv_operator_norm
from deqnca.core.solvers import get_solver
from deqnca.tasks.mnist.model import EquilibriumModel


def _loss_grads(model, x, seed=0, **kw):
    model.zero_grad()
    g = torch.Generator().manual_seed(seed)
    out = model(x, generator=g, **kw)
    out.pow(2).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_implicit_gradient_matches_unrolled_autograd():
    torch.manual_seed(0)
    cfg = dict(rule="contractive_tanh", rule_kw={"gamma": 0.5}, solver="anderson",
               solver_kw={"max_iter": 60, "tol": 1e-10}, gradient="implicit",
               gradient_kw={"b_solver": "anderson", "b_max_iter": 60, "b_tol": 1e-10},
               input_channels=4, state_channels=6, hidden=8)
    model = EquilibriumModel(cfg).double().eval()   # eval: freeze the power-iteration vector
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    g_ift = _loss_grads(model, x)
    unrolled = EquilibriumModel({**cfg, "solver": "rollout", "gradient": "bptt", "gradient_kw": {},
                                 "solver_kw": {"max_iter": 80}}).double().eval()
    unrolled.load_state_dict(model.state_dict())
    g_bptt = _loss_grads(unrolled, x)
    for name in g_ift:
        err = (g_ift[name] - g_bptt[name]).norm() / (g_bptt[name].norm() + 1e-12)
        assert err < 1e-5, (name, err.item())


def test_implicit_gradient_matches_finite_differences():
    torch.manual_seed(1)
    cfg = dict(rule="contractive_tanh", rule_kw={"gamma": 0.6}, solver="fixed_point",
               solver_kw={"max_iter": 200, "tol": 1e-12}, gradient="implicit",
               gradient_kw={"b_solver": "fixed_point", "b_max_iter": 200, "b_tol": 1e-12},
               input_channels=2, state_channels=3, hidden=4)
    model = EquilibriumModel(cfg).double().eval()
    x = torch.rand(2, 1, 5, 5, dtype=torch.float64)
    grads = _loss_grads(model, x)
    p = model.K1.bias
    for i in range(p.numel()):
        with torch.no_grad():
            old = p[i].item()
            p[i] = old + 1e-6
            up = model(x, generator=torch.Generator().manual_seed(0)).pow(2).sum().item()
            p[i] = old - 1e-6
            down = model(x, generator=torch.Generator().manual_seed(0)).pow(2).sum().item()
            p[i] = old
        fd = (up - down) / 2e-6
        assert abs(fd - grads["K1.bias"][i].item()) < 1e-6 * max(1, abs(fd)), (fd, grads["K1.bias"][i])


def test_phantom_and_bptt_produce_gradients_and_bptt_rejects_other_solvers():
    model = EquilibriumModel(dict(solver="fixed_point", gradient="phantom", gradient_kw={"k": 2},
                                  solver_kw={"max_iter": 5, "tol": 1e-3}))
    g = _loss_grads(model, torch.rand(2, 1, 8, 8))
    assert all(torch.isfinite(v).all() and v.abs().sum() > 0 for v in g.values())
    with pytest.raises(ValueError, match="needs solver 'rollout'"):
        BPTT()(lambda z: z, get_solver("fixed_point"), torch.zeros(1, 1, 2, 2), max_iter=2)
    with pytest.raises(ValueError):
        Phantom(k=0)


def test_conditioning_variants_agree():
    torch.manual_seed(0)
    rule = ResidualTanhRule(4, 6)
    u, z = torch.rand(2, 4, 7, 7), torch.randn(2, 6, 7, 7)
    a = rule.bind(u, Injection())(z)
    b = rule.bind(u, ReadOnlyChannels())(z)
    assert torch.allclose(a, b, atol=1e-6)


def test_additive_conditioning_adds_the_input_after_the_nonlinearity():
    torch.manual_seed(0)
    rule = ContractiveTanhRule(4, 6, gamma=0.8)
    rule.eval()
    u, z = torch.rand(2, 4, 7, 7), torch.randn(2, 6, 7, 7)
    w = rule.state_weight()
    expected = torch.tanh(F.conv2d(z, w, rule.K2.bias, padding=1)) + F.conv2d(u, rule.K2.weight[:, :4], padding=1)
    assert torch.allclose(rule.bind(u, Additive())(z), expected, atol=1e-6)
    assert not torch.allclose(rule.bind(u, Injection())(z), expected, atol=1e-3)   # a different model
    f = rule.bind(u, Additive())                                                     # still a γ-contraction
    z2 = torch.randn_like(z)
    assert (f(z) - f(z2)).norm() <= 0.8 * 1.01 * (z - z2).norm()
    with pytest.raises(ValueError, match="activation"):
        Additive().bind(rule.K2.weight, rule.K2.bias, u)


def test_contractive_rule_is_a_contraction_at_any_size():
    torch.manual_seed(0)
    rule = ContractiveTanhRule(4, 6, gamma=0.8)
    with torch.no_grad():
        rule.K2.weight.mul_(10)            # far outside the ball: the parameterisation must pull it back
    rule.train()
    for _ in range(30):
        rule.state_weight()
    rule.eval()
    w = rule.state_weight()
    exact, _ = conv_operator_norm(w.detach(), torch.randn(1, 6, 32, 32), n_iter=500)
    assert exact <= 0.8 * 1.01
    for size in (5, 28, 64):
        u = torch.rand(1, 4, size, size)
        f = rule.bind(u, Injection())
        z1, z2 = torch.randn(1, 6, size, size), torch.randn(1, 6, size, size)
        ratio = (f(z1) - f(z2)).norm() / (z1 - z2).norm()
        assert ratio <= 0.8 * 1.01, (size, ratio)
