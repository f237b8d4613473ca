"""Growing NCA: deqnca's training step against the same step written as idiomatic jitted JAX.

    PYTHONPATH=src python benchmarks/grow_jax_peer.py                                  # all variants, 1 thread
    PYTHONPATH=src python benchmarks/grow_jax_peer.py --steps 3 --warmup 1             # short
    PYTHONPATH=src python benchmarks/grow_jax_peer.py --variants deqnca jax-scan-rolled --json-out out/grow_peer.json

JAX and optax are not deqnca's requirements (where they are missing, the JAX variants are reported skipped): the
environment benchmarks/cells_jax_peer.py describes runs this benchmark too, e.g.

    PYTHONPATH=src /tmp/jaxenv/bin/python benchmarks/grow_jax_peer.py --steps 3 --warmup 1
    PYTHONPATH=src /tmp/jaxenv/bin/python -m pytest -q tests/test_grow_jax_peer.py   # the JAX step does deqnca's work

What is timed: one training step of the growing NCA (tasks/grow/rule.py) with the grow task's recipe
(tasks/grow/task.py), as `deqnca grow train` takes it with its default preset (`equilibrium`: GrowConfig's
defaults, the BPTT trainer, the persistent pool): the 72×72 lizard, a pool of 1,024 states; 8 states drawn from it
and sorted by loss, the worst restarted from the seed (one live cell); 64–96 CA steps (one number per step) —
perceive: fixed depthwise 3×3 filters (identity, Sobel x, Sobel y) on the 16 channels, 16 -> 48; update: 1×1
48 -> 128, ReLU, 1×1 128 -> 16 without bias (zero-initialised); fire mask Bernoulli(0.5) per cell; alive mask
(3×3 max of alpha > 0.1 before and after the step) — the mean squared error of the RGBA channels against the
target, the backward pass through all the CA steps, every parameter's gradient divided by its norm (+1e-8),
Adam 2e-3 (×0.1 from step 2,000), the final states written back to the pool (those not finite or with no live
cell left as the seed). Every variant starts from deqnca's initial weights and pool; each draws its own random
numbers but one: step i of every variant takes the number of CA steps that deqnca's step i draws (GrowTask.batch,
from the step's seed), so that each round times the same work.

Variants (all in one process, the timed steps interleaved round robin, the first variant rotated each
round, so that a change of the machine's load hits all alike):
- `deqnca`: the engine's step, the body of engine/trainer.py's `fit` loop: GrowTask.batch, the rate of `lr_at`,
  the engine's GuardedStep (GrowTask.loss, backward, the finite checks, prepare_gradients, torch.optim.Adam,
  check_step), after_step (pool write-back, loss meter). PyTorch eager, NCHW, float32 (`--amp auto` stays
  float32 on a CPU without bfloat16 units; on one with them it might pick bf16, which JAX here does not use).
- `jax-scan-unrolled`: the same step as one `jax.jit` function (pool sampling, sorting and write-back included,
  the pool and optimiser state donated): the CA steps a `jax.lax.scan(..., unroll=True)` over max_steps (96)
  steps, each a `lax.cond` on its index < the step's number of CA steps. That number is an argument of the
  jitted function, not a static one: one compilation serves all 33 numbers, and a step past the number costs a
  branch and the zeros its backward pass keeps for the branch not taken, not a CA step (recompiling per number
  would mean 33 compilations; a `jnp.where` mask would compute all 96). The perception a depthwise
  `lax.conv_general_dilated` (feature_group_count=16) in NHWC/HWIO, the alive mask by `lax.reduce_window`
  (max), the 1×1 layers as matmuls, the fire masks for all 96 steps drawn with jax.random before the scan,
  `jax.value_and_grad`, the normalisation by `jax.tree.map`, optax.adam with optax.piecewise_constant_schedule.
  Not in it: the engine's guards (skip a step whose loss or gradient is not finite; restore the last good
  weights when most of the batch died out), which healthy steps only check.
- `jax-scan-rolled`: the same with a rolled scan (unroll=1).

Each variant's time per step is the median over `--steps` timed steps after `--warmup` untimed ones (JAX: after
its ahead-of-time compilation, whose seconds are reported apart); `deqnca ÷ this` is deqnca's median over the
variant's; `cpu/wall` is the process CPU time over wall time of the timed steps (≈ 1 on one thread on an idle
core; below 1 when other jobs take the core; above 1 when a library ran more threads than set). Threads are set
as benchmarks/cells_jax_peer.py sets them (`set_threads`, before either library is imported).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone

from cells_jax_peer import _cpu_model, _finish, _load, _missing, _versions, interleave, normalise, set_threads

FIRE_RATE, ALIVE = 0.5, 0.1          # GrowingConfig's defaults (JaxSide checks them against the task's rule)
JAX_VARIANTS = {"jax-scan-unrolled": True, "jax-scan-rolled": 1}
VARIANTS = ("deqnca", *JAX_VARIANTS)
NAMES = ("w1.weight", "w1.bias", "w2.weight")


def grow_task(**overrides):
    """(task, optimiser): the grow task of `deqnca grow train` with its default preset (options `overrides`
    changed), built as the engine's `fit` builds it, without a run folder."""
    import dataclasses

    import torch

    from deqnca.engine.trainer import make_optimizer
    from deqnca.tasks.grow.config import PRESETS
    from deqnca.tasks.grow.targets import load_target
    from deqnca.tasks.grow.task import GrowTask

    cfg = dataclasses.replace(PRESETS.build("equilibrium"), **overrides)
    cfg.validate()
    task = GrowTask(cfg, load_target(cfg.target, pad=cfg.pad))
    task.setup()
    torch.manual_seed(cfg.seed)
    task.model = task.build_model()
    return task, make_optimizer(task.model.parameters(), cfg)


def rollout_steps(cfg, step: int) -> int:
    """The number of CA steps deqnca's step `step` takes: GrowTask.batch's first draw from the step's generator."""
    import torch

    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    return int(torch.randint(cfg.min_steps, cfg.max_steps + 1, (1,), generator=gen))


# --- the JAX side: parameters in deqnca's names, NHWC states ---------------------------------------------

def params_from_torch(tensors) -> dict:
    """deqnca's GrowingNCARule weights (or gradients), {name: tensor} as `rule.named_parameters()` gives them, as
    JAX arrays: the 1×1 kernels (in, out)."""
    import jax.numpy as jnp

    p = {n: t.detach().cpu().numpy() for n, t in dict(tensors).items()}
    return {"w1.weight": jnp.asarray(p["w1.weight"][:, :, 0, 0].T), "w1.bias": jnp.asarray(p["w1.bias"]),
            "w2.weight": jnp.asarray(p["w2.weight"][:, :, 0, 0].T)}


def to_torch_layout(tree: dict) -> dict:
    """A JAX parameter (or gradient) tree as numpy arrays in torch's shapes, keyed by deqnca's names."""
    import numpy as np

    return {"w1.weight": np.asarray(tree["w1.weight"]).T[:, :, None, None], "w1.bias": np.asarray(tree["w1.bias"]),
            "w2.weight": np.asarray(tree["w2.weight"]).T[:, :, None, None]}


def perception_kernel(channels: int):
    """(3, 3, 1, 3C) HWIO depthwise kernel: identity, Sobel x, Sobel y (÷ 8) for every channel, channel c ->
    outputs 3c..3c+2 (the paper's order, as feature_group_count groups them)."""
    import jax.numpy as jnp

    identity = jnp.zeros((3, 3), jnp.float32).at[1, 1].set(1.0)
    sobel_x = jnp.array([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], jnp.float32) / 8
    bank = jnp.stack([identity, sobel_x, sobel_x.T], axis=-1)              # (3, 3, 3)
    return jnp.tile(bank, (1, 1, channels))[:, :, None, :]


def seed_state(height: int, width: int, channels: int):
    """(H, W, C): one live cell in the centre, alpha and hidden channels 1, RGB 0."""
    import jax.numpy as jnp

    return jnp.zeros((height, width, channels), jnp.float32).at[height // 2, width // 2, 3:].set(1.0)


def alive(z):
    """(B, H, W, 1) bool: where the 3×3 max of alpha exceeds the threshold (a constant for autodiff, as in torch)."""
    import jax.numpy as jnp
    from jax import lax

    alpha = lax.stop_gradient(z[..., 3:4])
    return lax.reduce_window(alpha, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 1, 1, 1), "SAME") > ALIVE


def ca_step(params, kernel, z, fire):
    """One step of the stochastic rule (GrowingNCARule.step): z (B, H, W, C), fire (B, H, W, 1) bool."""
    import jax
    from jax import lax

    y = lax.conv_general_dilated(z, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                 feature_group_count=z.shape[-1])
    h = jax.nn.relu(y @ params["w1.weight"] + params["w1.bias"])
    new = z + (h @ params["w2.weight"]) * fire
    return new * (alive(z) & alive(new))


def make_rollout(unroll=True):
    """rollout(params, kernel, z (B,H,W,C), fire (T,B,H,W,1) bool, steps) -> z after the first `steps` of the T
    CA steps: `steps` is traced, the steps past it are skipped by lax.cond (one compilation for every number)."""
    import jax.numpy as jnp
    from jax import lax

    def rollout(params, kernel, z, fire, steps):
        def step(z, drawn):
            t, f = drawn
            return lax.cond(t < steps, lambda z: ca_step(params, kernel, z, f), lambda z: z, z), None

        return lax.scan(step, z, (jnp.arange(fire.shape[0]), fire), unroll=unroll)[0]

    return rollout


def per_sample_loss(z, target):
    """(B,) mean squared error of the visible channels (premultiplied RGBA) against target (H, W, 4)."""
    import jax.numpy as jnp

    return jnp.mean(jnp.square(z[..., :4] - target), axis=(1, 2, 3))


def loss_fn(params, kernel, z0, fire, steps, target, rollout):
    """(the batch's mean loss, the final states)."""
    z = rollout(params, kernel, z0, fire, steps)
    return per_sample_loss(z, target).mean(), z


def pool_batch(pool, idx, seed, target, seeds: int):
    """deqnca's batch from the pool: (idx, states) sorted by loss, highest first, the first `seeds` states replaced
    by the seed."""
    import jax.numpy as jnp

    z0 = pool[idx]
    order = jnp.argsort(-per_sample_loss(z0, target))
    return idx[order], z0[order].at[:seeds].set(seed)


def learning_rate(cfg):
    """The engine's `lr_at` as an optax schedule of the update count, for the schedules the grow presets use."""
    import optax

    if cfg.warmup_steps or cfg.schedule not in ("constant", "step"):
        raise ValueError(f"schedule {cfg.schedule!r} with {cfg.warmup_steps} warm-up steps: not written in JAX here")
    if cfg.schedule == "step":
        return optax.piecewise_constant_schedule(cfg.lr, {cfg.lr_decay_at: cfg.lr_decay})
    return optax.constant_schedule(cfg.lr)


def make_train_step(rollout, optimizer, batch: int, max_steps: int, seeds: int = 1):
    """The whole training step (pool in, pool out) as one function for jax.jit; `steps` (≤ max_steps) its number
    of CA steps. Also returns the loss and the number of states reseeded in the pool."""
    import jax
    import jax.numpy as jnp
    import optax

    def train_step(params, opt_state, pool, key, steps, kernel, seed, target):
        key, k_idx, k_fire = jax.random.split(key, 3)           # the next key is returned
        idx = jax.random.permutation(k_idx, pool.shape[0])[:batch]
        idx, z0 = pool_batch(pool, idx, seed, target, seeds)
        fire = jax.random.uniform(k_fire, (max_steps, *z0.shape[:3], 1)) < FIRE_RATE
        (loss, z), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, kernel, z0, fire, steps, target,
                                                                      rollout)
        updates, opt_state = optimizer.update(normalise(grads), opt_state, params)
        params = optax.apply_updates(params, updates)
        keep = jnp.all(jnp.isfinite(z), axis=(1, 2, 3)) & jnp.any(alive(z), axis=(1, 2, 3))
        pool = pool.at[idx].set(jnp.where(keep[:, None, None, None], z, seed))
        return params, opt_state, pool, key, loss, jnp.sum(~keep)

    return train_step


# --- the timed sides -------------------------------------------------------------------------------------

class DeqncaSide:
    """deqnca's engine step: the body of `fit`'s loop (engine/trainer.py) with its GuardedStep (engine/step.py)."""

    compile_s = 0.0

    def __init__(self, **overrides):
        import warnings

        from deqnca.engine.run import Run
        from deqnca.engine.step import GuardedStep

        self.task, self.opt = grow_task(**overrides)
        self.run = Run(counters={"skipped_steps": 0, "restored": 0, **self.task.counters})
        self.task.counters, self.task.meter = self.run.counters, self.run.meter
        self.guarded = GuardedStep(self.task, self.opt, self.run, "off", warnings.warn, "(no run folder)")

    def step(self) -> float:
        from deqnca.engine.trainer import lr_at

        task, run, cfg = self.task, self.run, self.task.cfg
        batch = task.batch(run.epoch, run.step_in_epoch, run.global_step)
        self.guarded.set_lr(lr_at(cfg, run.global_step, run.fraction(cfg.epochs, cfg.steps, cfg.time_budget)))
        ok, out = self.guarded(batch)
        task.after_step(batch, out, ok, run.global_step + 1)
        run.step_taken()
        return float(out.loss)


class JaxSide:
    """One jitted JAX variant, from deqnca's initial weights and pool; step i takes deqnca's step i's CA steps."""

    def __init__(self, name: str, deqnca: DeqncaSide):
        import jax
        import jax.numpy as jnp
        import optax

        task, rule = deqnca.task, deqnca.task.model.rule
        self.cfg = cfg = task.cfg
        if (cfg.trainer, cfg.variant, rule.config.fire_rate, rule.config.alive_threshold) != \
                ("bptt", "persistent", FIRE_RATE, ALIVE):
            raise ValueError("the JAX step is written for the BPTT trainer, the persistent pool and the rule's "
                             f"default fire rate {FIRE_RATE} and alive threshold {ALIVE}")
        optimizer = optax.adam(learning_rate(cfg))
        self.params = params_from_torch(rule.named_parameters())
        self.opt_state = optimizer.init(self.params)
        self.pool = jnp.asarray(task.pool.cpu().numpy().transpose(0, 2, 3, 1))
        height, width = task.target.shape[1:]
        self.kernel = perception_kernel(rule.config.channels)
        self.seed = seed_state(height, width, rule.config.channels)
        self.target = jnp.asarray(task.target.cpu().numpy().transpose(1, 2, 0))
        self.key, self.i = jax.random.key(0), 0
        fn = jax.jit(make_train_step(make_rollout(JAX_VARIANTS[name]), optimizer, cfg.batch_size, cfg.max_steps,
                                     cfg.seeds), donate_argnums=(0, 1, 2))
        t = time.perf_counter()
        self.fn = fn.lower(*self._args(cfg.max_steps)).compile()
        self.compile_s = time.perf_counter() - t

    def _args(self, steps: int):
        import numpy as np

        return self.params, self.opt_state, self.pool, self.key, np.int32(steps), self.kernel, self.seed, self.target

    def step(self) -> float:
        steps = rollout_steps(self.cfg, self.i)
        self.params, self.opt_state, self.pool, self.key, loss, _ = self.fn(*self._args(steps))
        self.i += 1
        return float(loss)                 # waits for the step


def race(names, steps: int, warmup: int) -> dict:
    """Build every side, then `warmup` + `steps` rounds, one step of each side per round, rotated
    (cells_jax_peer.interleave); each row also gets deqnca's median over its own."""
    sides = {"deqnca": DeqncaSide()}
    for n in names:
        if n in JAX_VARIANTS:
            sides[n] = JaxSide(n, sides["deqnca"])
    rows = interleave({n: sides[n] for n in names if n in sides}, steps, warmup)
    for row in rows.values():
        row["deqnca_over_this"] = rows["deqnca"]["s_per_step"] / row["s_per_step"]
    return rows


def _table(rows: dict) -> str:
    lines = ["| variant | s / step | min – max | deqnca ÷ this | compile s | cpu/wall |", "|---|---|---|---|---|---|"]
    for n, r in rows.items():
        lines.append(f"| {n} | {r['s_per_step']:.3f} | {r['min_s']:.3f} – {r['max_s']:.3f} | "
                     f"{r['deqnca_over_this']:.2f} | {r['compile_s']:.1f} | {r['cpu_over_wall']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for torch and XLA (default 1)")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per variant")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first (JAX: after compiling)")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                    help="which to time (deqnca is always timed: the ratios are to it)")
    ap.add_argument("--json-out", help="write the result here as JSON")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    xla_flags = set_threads(args.threads)
    names = ["deqnca"] + [n for n in args.variants if n != "deqnca"]
    import torch

    from deqnca.tasks.grow.config import PRESETS

    cfg = PRESETS.build("equilibrium")
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cpu": _cpu_model(), "cpus": os.cpu_count(), "threads": args.threads,
                          "torch_threads": torch.get_num_threads(), "XLA_FLAGS": xla_flags,
                          "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "loadavg_start": os.getloadavg()},
              "versions": _versions(), "steps": args.steps, "warmup": args.warmup, "skipped": {},
              "ca_steps": [rollout_steps(cfg, i) for i in range(args.warmup + args.steps)]}
    m = result["machine"]
    print(f"{result['date']}; CPU {m['cpu']} ({m['cpus']} logical); load average at start "
          f"{_load(m['loadavg_start'])}")
    print(f"threads: torch.set_num_threads({args.threads}) -> {m['torch_threads']}; "
          f"OMP_NUM_THREADS={m['OMP_NUM_THREADS']}; XLA_FLAGS={xla_flags!r}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items() if v))
    if len(names) > 1 and (gone := _missing("jax", "optax")):
        result["skipped"].update({n: f"{gone} not installed" for n in names[1:]})
        names = ["deqnca"]
    result["variants"] = race(names, args.steps, args.warmup)
    m["loadavg_end"] = os.getloadavg()
    print(f"\n{_table(result['variants'])}\n")
    print(f"load average at end {_load(m['loadavg_end'])}; {args.steps} timed step(s) after {args.warmup} "
          f"warm-up step(s) per variant; CA steps per round (every variant alike): {result['ca_steps']}")
    return _finish(result, args.json_out)


if __name__ == "__main__":
    sys.exit(main())
