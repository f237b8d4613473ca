"""benchmarks/cells_jax_peer.py's JAX step does deqnca's work: for the same weights, pool, digits, residual noise and
fire masks, its batch, loss, gradients (before normalisation) and update (normalisation + Adam) are deqnca's
engine step's (CellsTask.batch / loss / prepare_gradients, torch.optim.Adam) to float32 rounding.

Skipped where JAX or optax is not installed (deqnca does not need them)."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

B, T = 4, 6          # batch (1 fresh, 1 mutated, 2 from the pool) and CA steps: small, the same code paths
STEP = 3             # the engine's step whose random draws are replayed
REL = 1e-4           # float32 tolerance: relative to the largest magnitude of each compared array


def _close(ours, theirs, what):
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    assert ours.shape == theirs.shape, what
    scale = max(np.abs(theirs).max(), 1e-30)
    err = np.abs(ours - theirs).max() / scale
    assert err <= REL, f"{what}: max |JAX − deqnca| / max |deqnca| = {err:.2e} > {REL:.0e}"
    assert np.linalg.norm(ours - theirs) <= REL * np.linalg.norm(theirs), what


def _nhwc(t):
    return t.detach().cpu().numpy().transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def deqnca_step():
    """deqnca's task at a step with non-zero weights and pooled states, its batch, the replayed random draws, the
    loss and raw gradients, then the normalised-gradient Adam step (weights before and after)."""
    from cells_vs_cax import _task

    threads = torch.get_num_threads()
    torch.set_num_threads(1)                  # small tensors on a shared machine; restored below
    task, opt = _task("article", B, T, 64)
    rule = task.model.rule
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():            # w2 starts at zero (only w2 would get gradients); random pooled states
        rule.w2.weight.copy_(0.05 * torch.randn(rule.w2.weight.shape, generator=g))
        rule.w2.bias.copy_(0.01 * torch.randn(rule.w2.bias.shape, generator=g))
        task.pool["z"].copy_(0.3 * torch.randn(task.pool["z"].shape, generator=g))
    before = {n: p.detach().clone() for n, p in rule.named_parameters()}
    pool = {k: v.clone() for k, v in task.pool.items()}
    batch = task.batch(0, STEP, STEP)
    # the draws deqnca's batch and rollout make, replayed from the generators' seeds (task.py, rule_article.py)
    host = torch.Generator().manual_seed(task.cfg.seed * 1_000_003 + STEP)
    idx = torch.randperm(task.cfg.pool_size, generator=host)[:B]
    new = torch.randint(len(task.x), (task.cfg.fresh + task.cfg.mutate,), generator=host)
    gen = torch.Generator().manual_seed(task.cfg.seed * 1_000_003 + STEP)
    noise, fire = [], []
    for _ in range(T):               # each step draws its noise (randn, as Δ) and then its fire mask (rand)
        noise.append(torch.randn(B, rule.state_channels, 28, 28, generator=gen))
        fire.append(torch.rand(B, 1, 28, 28, generator=gen) <= rule.fire_rate)
    loss, _ = task.loss(batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in rule.named_parameters()}
    task.prepare_gradients()
    opt.step()
    after = {n: p.detach().clone() for n, p in rule.named_parameters()}
    torch.set_num_threads(threads)
    return {"task": task, "batch": batch, "pool": pool, "idx": idx, "new": new,
            "noise": np.stack([_nhwc(n) for n in noise]), "fire": np.stack([_nhwc(f) for f in fire]),
            "loss": float(loss.detach()), "grads": grads, "before": before, "after": after}


def test_the_pool_batch_is_deqncas(deqnca_step):
    import jax.numpy as jnp

    from cells_jax_peer import pool_batch

    d = deqnca_step
    z0, img, idx = d["batch"].data
    assert torch.equal(d["idx"], idx)                 # the replayed draw is the one the engine made
    x_all = jnp.asarray(_nhwc(d["task"].x))
    ours_z, ours_img = pool_batch(jnp.asarray(_nhwc(d["pool"]["z"])), jnp.asarray(d["pool"]["img"].numpy()), x_all,
                                  jnp.asarray(d["idx"].numpy()), jnp.asarray(d["new"].numpy()),
                                  d["task"].cfg.fresh, d["task"].cfg.mutate)
    assert np.array_equal(np.asarray(ours_img), img.numpy())
    assert np.array_equal(np.asarray(ours_z), _nhwc(z0))
    assert (z0[0] == 0).all() and (z0[-1] != 0).any()     # a restarted and a mutated state are in the batch


@pytest.mark.parametrize("variant", ["jax-scan-unrolled", "jax-scan-rolled", "jax-im2col"])
def test_the_jax_loss_and_gradients_are_deqncas(deqnca_step, variant):
    import jax.numpy as jnp

    from cells_jax_peer import JAX_VARIANTS, loss_fn, make_rollout, params_from_torch, to_torch_layout

    d = deqnca_step
    task = d["task"]
    z0, img, _ = d["batch"].data
    params = params_from_torch(d["before"])                 # the weights the step started from
    rollout = make_rollout(*JAX_VARIANTS[variant])
    args = (jnp.asarray(_nhwc(task.x[img])), jnp.asarray(_nhwc(z0)), jnp.asarray(task.y[img].numpy().astype(np.int32)),
            jnp.asarray(d["noise"]), jnp.asarray(d["fire"]))
    (loss, _), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True), static_argnums=6)(params, *args, rollout)
    assert abs(float(loss) - d["loss"]) <= REL * abs(d["loss"]), (float(loss), d["loss"])
    ours = to_torch_layout(grads)
    for n, g in d["grads"].items():
        assert np.abs(g.numpy()).max() > 0, n           # every parameter takes part
        _close(ours[n], g.numpy(), f"{variant}: gradient of {n}")


def test_the_jax_update_is_deqncas(deqnca_step):
    """From deqnca's raw gradients: normalisation and optax's Adam give torch's Adam step's weights."""
    import cells_jax_peer

    _check_adam_update(deqnca_step, cells_jax_peer, optax.adam(cells_jax_peer.LR), cells_jax_peer.LR)


def _check_adam_update(d, peer, opt, lr):
    """`peer`'s normalisation and `opt` (optax's Adam), jitted, from deqnca's raw gradients `d["grads"]` at
    `d["before"]`: the same step as torch's Adam took to `d["after"]` (a first step: ±lr where g ≠ 0)."""
    params, grads = peer.params_from_torch(d["before"]), peer.params_from_torch(d["grads"])

    @jax.jit
    def update(params, grads):
        return optax.apply_updates(params, opt.update(peer.normalise(grads), opt.init(params), params)[0])

    ours = peer.to_torch_layout(update(params, grads))
    assert set(ours) == set(peer.NAMES)
    for n in peer.NAMES:
        step = d["after"][n].numpy() - d["before"][n].numpy()
        assert np.abs(step).max() == pytest.approx(lr, rel=1e-3)      # Adam's first step: ±lr where g ≠ 0
        np.testing.assert_allclose(ours[n] - d["before"][n].numpy(), step, rtol=0, atol=1e-3 * lr,
                                   err_msg=f"the update of {n}")


def test_the_jitted_train_step_writes_the_pool_back_and_takes_an_adam_step(deqnca_step):
    """The timed JAX step end to end, with its own random draws (compiled once, as the benchmark's): B pool states
    replaced by finite rollouts, the others untouched, new digits for the fresh and mutated, Adam's first ±lr."""
    import jax.numpy as jnp

    from cells_jax_peer import LR, make_rollout, make_train_step, params_from_torch

    d = deqnca_step
    task = d["task"]
    opt = optax.adam(LR)
    params = params_from_torch(d["before"])
    pool_z, pool_img = jnp.asarray(_nhwc(d["pool"]["z"])), jnp.asarray(d["pool"]["img"].numpy().astype(np.int32))
    step = jax.jit(make_train_step(make_rollout("conv", 1), opt, batch=B, steps=2, fresh=1, mutate=1))
    out = step(params, opt.init(params), pool_z, pool_img, jax.random.key(0), jnp.asarray(_nhwc(task.x)),
               jnp.asarray(task.y.numpy().astype(np.int32)))
    new_params, _, new_z, new_img, _, loss, right, cells = out
    assert np.isfinite(float(loss)) and 0 <= int(right) <= int(cells) > 0
    changed = np.flatnonzero(np.any(np.asarray(new_z) != np.asarray(pool_z), axis=(1, 2, 3)))
    assert len(changed) == B and np.isfinite(np.asarray(new_z)).all()
    moved = np.flatnonzero(np.asarray(new_img) != np.asarray(pool_img))
    assert set(moved) <= set(changed) and len(moved) >= 1           # the fresh and the mutated states' new digits
    for n, p in new_params.items():
        assert float(jnp.abs(p - params[n]).max()) == pytest.approx(LR, rel=1e-3), n
