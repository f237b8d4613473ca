"""benchmarks/grow_jax_peer.py's JAX step does deqnca's work: for the same weights, pool, number of CA steps and fire
masks, its batch, final states, loss, gradients (before normalisation) and update (normalisation + Adam on the
engine's schedule) are deqnca's grow step's (GrowTask.batch / loss / prepare_gradients, torch.optim.Adam) to
float32 rounding, and the CA steps past the step's number are skipped.

Skipped where JAX or optax is not installed (deqnca does not need them)."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

# the small target, 4 states from a pool of 12, 4..7 CA steps: small, the same code paths as the lizard's
SMALL = {"target": "small", "batch_size": 4, "pool_size": 12, "min_steps": 4, "max_steps": 7}
STEP = 3             # the engine's step whose random draws are replayed
SCAN = 10            # the JAX scan's length: longer than any number of CA steps, the rest must be skipped

from test_jax_peer import REL, _check_adam_update, _close, _nhwc  # noqa: E402  (the cells peer's checks)


@pytest.fixture(scope="module")
def deqnca_step():
    """deqnca's grow task at a step with non-zero weights and pooled states, its batch, the replayed random draws,
    the loss, final states and raw gradients, then the normalised-gradient Adam step (weights before and after)."""
    from grow_jax_peer import grow_task

    threads = torch.get_num_threads()
    torch.set_num_threads(1)                  # small tensors on a shared machine; restored below
    task, opt = grow_task(**SMALL)
    rule, cfg = task.model.rule, task.cfg
    g = torch.Generator().manual_seed(1)
    # w2 starts at zero (only w2 would get gradients); large enough that dead cells next to live ones come alive
    # (the alive mask before the step matters); sparse random pooled states, part of them alive
    with torch.no_grad():
        rule.w2.weight.copy_(0.2 * torch.randn(rule.w2.weight.shape, generator=g))
        sparse = torch.rand(task.pool.shape, generator=g) < 0.3
        task.pool.copy_(0.3 * torch.randn(task.pool.shape, generator=g) * sparse)
    before = {n: p.detach().clone() for n, p in rule.named_parameters()}
    pool = task.pool.clone()
    batch = task.batch(0, STEP, STEP)
    # the draws deqnca's batch and rollout make, replayed from the generators' seeds (task.py, rule.py)
    host = torch.Generator().manual_seed(cfg.seed * 1_000_003 + STEP)
    steps = int(torch.randint(cfg.min_steps, cfg.max_steps + 1, (1,), generator=host))
    idx = torch.randperm(cfg.pool_size, generator=host)[:cfg.batch_size]
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + STEP)
    H, W = task.target.shape[1:]
    fire = [torch.rand(cfg.batch_size, 1, H, W, generator=gen) < rule.config.fire_rate for _ in range(steps)]
    loss, out = task.loss(batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in rule.named_parameters()}
    task.prepare_gradients()
    opt.step()
    after = {n: p.detach().clone() for n, p in rule.named_parameters()}
    torch.set_num_threads(threads)
    # the JAX rollout's masks: the replayed ones, then fire-everywhere ones that a step past the number would apply
    padding = np.ones((SCAN - steps, cfg.batch_size, H, W, 1), bool)
    return {"task": task, "batch": batch, "pool": pool, "idx": idx, "steps": steps,
            "fire": np.concatenate([np.stack([_nhwc(f) for f in fire]), padding]), "loss": float(loss.detach()),
            "final": out.final, "grads": grads, "before": before, "after": after}


def test_the_number_of_ca_steps_and_the_pool_batch_are_deqncas(deqnca_step):
    import jax.numpy as jnp

    from grow_jax_peer import perception_kernel, pool_batch, rollout_steps, seed_state

    d = deqnca_step
    task = d["task"]
    z0, steps, idx = d["batch"].data
    assert steps == d["steps"] == rollout_steps(task.cfg, STEP) < SCAN
    assert set(d["idx"].tolist()) == set(idx.tolist())             # the replayed draw is the one the engine made
    C, H, W = task.pool.shape[1:]
    seed = seed_state(H, W, C)
    assert np.array_equal(np.asarray(seed), _nhwc(task.seed_state)[0])
    ours_idx, ours_z = pool_batch(jnp.asarray(_nhwc(d["pool"])), jnp.asarray(d["idx"].numpy()), seed,
                                  jnp.asarray(task.target.numpy().transpose(1, 2, 0)), task.cfg.seeds)
    assert np.array_equal(np.asarray(ours_idx), idx.numpy())        # sorted by loss, highest first
    assert np.array_equal(np.asarray(ours_z), _nhwc(z0))
    assert not np.array_equal(d["idx"].numpy(), idx.numpy())         # the sort did reorder the draw
    kernel = np.asarray(perception_kernel(C))                          # HWIO of torch's (3C, 1, 3, 3) filters
    assert np.array_equal(kernel, task.model.rule.filters.numpy().transpose(2, 3, 1, 0))


@pytest.mark.parametrize("variant", ["jax-scan-unrolled", "jax-scan-rolled"])
def test_the_jax_loss_and_gradients_are_deqncas(deqnca_step, variant):
    import jax.numpy as jnp

    from grow_jax_peer import JAX_VARIANTS, loss_fn, make_rollout, params_from_torch, perception_kernel, to_torch_layout

    d = deqnca_step
    task = d["task"]
    z0 = d["batch"].data[0]
    params = params_from_torch(d["before"])                 # the weights the step started from
    rollout = make_rollout(JAX_VARIANTS[variant])
    args = (perception_kernel(task.pool.shape[1]), jnp.asarray(_nhwc(z0)), jnp.asarray(d["fire"]),
            jnp.int32(d["steps"]), jnp.asarray(task.target.numpy().transpose(1, 2, 0)))
    (loss, final), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True), static_argnums=6)(params, *args, rollout)
    _close(final, _nhwc(d["final"]), f"{variant}: the final states")
    alive = np.asarray(final[..., 3] > 0.1)
    assert 0 < alive.mean() < 1                             # the alive mask takes part
    assert abs(float(loss) - d["loss"]) <= REL * abs(d["loss"]), (float(loss), d["loss"])
    ours = to_torch_layout(grads)
    assert set(ours) == set(d["grads"])
    for n, g in d["grads"].items():
        assert np.abs(g.numpy()).max() > 0, n           # every parameter takes part
        _close(ours[n], g.numpy(), f"{variant}: gradient of {n}")


def test_the_jax_update_is_deqncas(deqnca_step):
    """From deqnca's raw gradients: normalisation and optax's Adam on the schedule give torch's Adam step's weights."""
    import grow_jax_peer

    cfg = deqnca_step["task"].cfg
    _check_adam_update(deqnca_step, grow_jax_peer, optax.adam(grow_jax_peer.learning_rate(cfg)), cfg.lr)


def test_the_jax_schedule_is_the_engines():
    from deqnca.engine.trainer import lr_at
    from deqnca.tasks.grow.config import PRESETS
    from grow_jax_peer import learning_rate

    cfg = PRESETS.build("equilibrium")
    schedule = learning_rate(cfg)
    for count in (0, 1, cfg.lr_decay_at - 1, cfg.lr_decay_at, cfg.lr_decay_at + 1, cfg.steps - 1):
        assert float(schedule(count)) == pytest.approx(lr_at(cfg, count, count / cfg.steps), rel=1e-6), count
    assert lr_at(cfg, cfg.lr_decay_at, 0.5) < lr_at(cfg, 0, 0.0)      # the schedule does drop


def test_the_jitted_train_step_reseeds_dead_states_and_takes_an_adam_step(deqnca_step):
    """The timed JAX step end to end, with its own random draws, from a pool of dead (zero) states: the restarted
    state grows from the seed and stays alive, the others stay dead and go back to the pool as the seed, the rest
    of the pool is untouched, every weight takes Adam's first ±lr step."""
    import jax.numpy as jnp

    from grow_jax_peer import make_rollout, make_train_step, params_from_torch, perception_kernel, seed_state

    d = deqnca_step
    cfg, task = d["task"].cfg, d["task"]
    C, H, W = task.pool.shape[1:]
    opt = optax.adam(cfg.lr)
    params = params_from_torch(d["before"])
    params["w2.weight"] = params["w2.weight"] / 4      # a gentler rule than the fixture's: the seed survives 5 steps
    pool, seed = jnp.zeros((cfg.pool_size, H, W, C)), seed_state(H, W, C)
    step = jax.jit(make_train_step(make_rollout(1), opt, cfg.batch_size, SCAN, cfg.seeds))
    new_params, _, new_pool, _, loss, reseeded = step(params, opt.init(params), pool, jax.random.key(0),
                                                      jnp.int32(5), perception_kernel(C), seed,
                                                      jnp.asarray(task.target.numpy().transpose(1, 2, 0)))
    assert np.isfinite(float(loss)) and int(reseeded) == cfg.batch_size - cfg.seeds
    new_pool = np.asarray(new_pool)
    changed = np.flatnonzero(np.any(new_pool != 0, axis=(1, 2, 3)))
    assert len(changed) == cfg.batch_size
    as_seed = [i for i in changed if np.array_equal(new_pool[i], np.asarray(seed))]
    assert len(as_seed) == cfg.batch_size - cfg.seeds                  # the grown one differs from the seed
    for n, p in new_params.items():
        assert float(jnp.abs(p - params[n]).max()) == pytest.approx(cfg.lr, rel=1e-3), n
