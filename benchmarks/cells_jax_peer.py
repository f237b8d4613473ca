"""Self-classifying MNIST: deqnca's article training step against the same step written as idiomatic jitted JAX.

    PYTHONPATH=src python benchmarks/cells_jax_peer.py                                  # all variants, 1 thread
    PYTHONPATH=src python benchmarks/cells_jax_peer.py --steps 3 --warmup 1 --skip-cax  # short
    PYTHONPATH=src python benchmarks/cells_jax_peer.py --variants deqnca jax-im2col --json-out out/jax_peer.json

JAX and optax (and, for the `cax` variant, cax 0.3.3 with flax) are not deqnca's requirements (where they are
missing, the variants that need them are reported skipped): install them in an environment of their own, e.g.

    python3.11 -m venv /tmp/jaxenv && /tmp/jaxenv/bin/pip install torch numpy safetensors tqdm filelock pytest \
        jax==0.10.2 optax cax==0.3.3
    PYTHONPATH=src /tmp/jaxenv/bin/python benchmarks/cells_jax_peer.py --steps 3 --warmup 1
    PYTHONPATH=src /tmp/jaxenv/bin/python -m pytest -q tests/test_jax_peer.py   # the JAX step does deqnca's work

What is timed: one training step of the article's model (rule_article.py) with deqnca's recipe (task.py),
batch 16 of 28×28 digits (the first 1,024 MNIST training images), as `deqnca cells train --model article`
takes it: draw 16 states from a pool of 160 (4 restart from a new digit, 4 get a new digit with their state
kept where it is alive), 20 CA steps — perceive: a 3×3 convolution [grey, z] 20 -> 80 and ReLU; update: 1×1
80 -> 80, ReLU, 1×1 80 -> 19 (zero-initialised); residual noise N(0, 0.02²); fire mask Bernoulli(0.5) per
cell; only alive cells (grey > 0.1) change — the L2 loss ½ Σ over alive cells of (last 10 channels − one-hot)²
averaged over the batch, the backward pass through the 20 steps, every parameter's gradient divided by its
norm (+1e-8), Adam 1e-3, the final states written back to the pool (non-finite ones as zeros). Every
variant starts from deqnca's initial weights and pool of digit indices; each draws its own random numbers.

Variants (all in one process, the timed steps interleaved round robin, the first variant rotated each
round, so that a change of the machine's load hits all alike):
- `deqnca`: the engine's step as benchmarks/cells_vs_cax.py times it (its `_task` and `_train_step`):
  CellsTask.batch / loss / prepare_gradients, torch.optim.Adam, after_step (pool write-back, the step's
  cell-accuracy counts and loss meter). PyTorch eager, NCHW, float32.
- `jax-scan-unrolled`: the same step as one `jax.jit` function (pool sampling and write-back included,
  the pool and optimiser state donated): the 20 CA steps a `jax.lax.scan(..., unroll=True)`, the
  perception by `jax.lax.conv_general_dilated` in NHWC/HWIO, the 1×1 layers as matmuls, the noise and fire
  masks drawn with jax.random for all 20 steps before the scan, `jax.value_and_grad`, the normalisation
  by `jax.tree.map`, optax.adam(1e-3). It also returns the step's correct and alive cell counts (deqnca's
  after_step counts a few more per-digit statistics from the same argmax).
- `jax-scan-rolled`: the same with a rolled scan (unroll=1), as CAX rolls its steps.
- `jax-im2col`: rolled scan, the 3×3 convolution as im2col: the 9 shifted windows of the zero-padded
  state concatenated along channels and one (B·H·W, 180) × (180, 80) matmul.
- `cax`: CAX 0.3.3 as released, its example notebook's recipe (benchmarks/cells_vs_cax.py: `time_cax`,
  which differs in recipe as that file says). It cannot be interleaved (that function compiles and times
  its own loop): it runs as one block after the other variants, and reports the mean of its timed steps.

Each variant's time per step is the median over `--steps` timed steps after `--warmup` untimed ones (JAX:
after its ahead-of-time compilation, whose seconds are reported apart); `cpu/wall` is the process CPU time
over wall time of the timed steps (≈ 1 on one thread on an idle core; below 1 when other jobs take the
core; above 1 when a library ran more threads than set). torch gets `torch.set_num_threads(N)` and XLA
`XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=N"` (`=true` for N > 1;
an XLA_FLAGS already in the environment is kept), both set before either library is imported.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

BATCH, POOL, ROLLOUT, SIZE, IMAGES = 16, 160, 20, 28, 1024
CHANNELS, CLASSES, FIRE_RATE, NOISE, ALIVE, LR = 19, 10, 0.5, 0.02, 0.1, 1e-3
JAX_VARIANTS = {"jax-scan-unrolled": ("conv", True), "jax-scan-rolled": ("conv", 1), "jax-im2col": ("im2col", 1)}
VARIANTS = ("deqnca", *JAX_VARIANTS, "cax")
NAMES = ("perceive.weight", "perceive.bias", "w1.weight", "w1.bias", "w2.weight", "w2.bias")


def set_threads(n: int) -> str:
    """Fix torch's and XLA's thread counts (before jax is imported); returns the XLA_FLAGS in force."""
    os.environ.setdefault("XLA_FLAGS", f"--xla_cpu_multi_thread_eigen={'true' if n > 1 else 'false'} "
                          f"intra_op_parallelism_threads={n}")
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    import torch

    torch.set_num_threads(n)
    return os.environ["XLA_FLAGS"]


# --- the JAX side: parameters in deqnca's names, NHWC states ---------------------------------------------

def params_from_torch(tensors) -> dict:
    """deqnca's SelfClassifyingRule weights (or gradients), {name: tensor} as `rule.named_parameters()` gives
    them, as JAX arrays: the 3×3 kernel HWIO, the 1×1 ones (in, out)."""
    import jax.numpy as jnp

    p = {n: t.detach().cpu().numpy() for n, t in dict(tensors).items()}
    out = {n: jnp.asarray(p[n]) for n in NAMES if n.endswith("bias")}
    out["perceive.weight"] = jnp.asarray(p["perceive.weight"].transpose(2, 3, 1, 0))
    for n in ("w1.weight", "w2.weight"):
        out[n] = jnp.asarray(p[n][:, :, 0, 0].T)
    return out


def to_torch_layout(tree: dict) -> dict:
    """A JAX parameter (or gradient) tree as numpy arrays in torch's shapes, keyed by deqnca's names."""
    import numpy as np

    out = {n: np.asarray(tree[n]) for n in NAMES if n.endswith("bias")}
    out["perceive.weight"] = np.asarray(tree["perceive.weight"]).transpose(3, 2, 0, 1)
    for n in ("w1.weight", "w2.weight"):
        out[n] = np.asarray(tree[n]).T[:, :, None, None]
    return out


def perceive_conv(params, s):
    """The 3×3 perception, zero padding: lax.conv_general_dilated in NHWC."""
    from jax import lax

    y = lax.conv_general_dilated(s, params["perceive.weight"], (1, 1), "SAME",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + params["perceive.bias"]


def perceive_im2col(params, s):
    """The same as im2col: the 9 shifted windows along channels ((dy, dx, c) order, as HWIO reshapes), one matmul."""
    import jax.numpy as jnp

    h, w = s.shape[1:3]
    padded = jnp.pad(s, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = jnp.concatenate([padded[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=-1)
    k = params["perceive.weight"]
    return cols @ k.reshape(-1, k.shape[-1]) + params["perceive.bias"]


def make_rollout(perceive: str = "conv", unroll=True):
    """rollout(params, x (B,H,W,1), z (B,H,W,19), noise (T,B,H,W,19), fire (T,B,H,W,1) bool) -> z after T steps."""
    import jax
    import jax.numpy as jnp

    perceive_fn = {"conv": perceive_conv, "im2col": perceive_im2col}[perceive]

    def rollout(params, x, z, noise, fire):
        alive = x > ALIVE

        def step(z, drawn):
            eps, f = drawn
            p = jax.nn.relu(perceive_fn(params, jnp.concatenate([x, z], axis=-1)))
            h = jax.nn.relu(p @ params["w1.weight"] + params["w1.bias"])
            dz = h @ params["w2.weight"] + params["w2.bias"] + NOISE * eps
            return z + dz * (f & alive), None

        return jax.lax.scan(step, z, (noise, fire), unroll=unroll)[0]

    return rollout


def loss_fn(params, x, z0, labels, noise, fire, rollout):
    """(mean over the batch of ½ Σ_alive (z[..., -10:] − one-hot)², (final z, correct cells, alive cells))."""
    import jax
    import jax.numpy as jnp

    z = rollout(params, x, z0, noise, fire)
    logits, alive = z[..., -CLASSES:], x > ALIVE
    target = jax.nn.one_hot(labels, CLASSES)[:, None, None, :]
    loss = jnp.mean(jnp.sum(jnp.square(logits - target) * alive, axis=(1, 2, 3)) / 2)
    right = (jnp.argmax(logits, axis=-1) == labels[:, None, None]) & alive[..., 0]
    return loss, (z, jnp.sum(right), jnp.sum(alive))


def normalise(grads):
    """The article's per-parameter normalisation: g / (‖g‖ + 1e-8)."""
    import jax
    import jax.numpy as jnp

    return jax.tree.map(lambda g: g / (jnp.sqrt(jnp.sum(jnp.square(g))) + 1e-8), grads)


def pool_batch(pool_z, pool_img, x_all, idx, new, fresh: int, mutate: int):
    """deqnca's batch from the pool: states idx, the first `fresh` restarted on new digits, the last `mutate`
    given new digits with their state kept where the new digit is alive."""
    z0, img = pool_z[idx], pool_img[idx]
    b = z0.shape[0]
    img = img.at[:fresh].set(new[:fresh]).at[b - mutate:].set(new[fresh:])
    z0 = z0.at[:fresh].set(0.0).at[b - mutate:].multiply((x_all[new[fresh:]] > ALIVE).astype(z0.dtype))
    return z0, img


def draw(k_noise, k_fire, steps: int, z0):
    """The rollout's random numbers for all `steps`: N(0, 1) noise of the state's shape, a Bernoulli(0.5) fire mask."""
    import jax

    shape = (steps, *z0.shape[:3])
    return (jax.random.normal(k_noise, (*shape, z0.shape[3]), z0.dtype),
            jax.random.uniform(k_fire, (*shape, 1)) <= FIRE_RATE)


def make_train_step(rollout, optimizer, batch: int = BATCH, steps: int = ROLLOUT, fresh: int = BATCH // 4,
                    mutate: int = BATCH // 4):
    """The whole training step (pool in, pool out) as one function for jax.jit."""
    import jax
    import jax.numpy as jnp
    import optax

    def train_step(params, opt_state, pool_z, pool_img, key, x_all, y_all):
        key, k_idx, k_new, k_noise, k_fire = jax.random.split(key, 5)    # the next key is returned
        idx = jax.random.permutation(k_idx, pool_z.shape[0])[:batch]
        new = jax.random.randint(k_new, (fresh + mutate,), 0, x_all.shape[0])
        z0, img = pool_batch(pool_z, pool_img, x_all, idx, new, fresh, mutate)
        noise, fire = draw(k_noise, k_fire, steps, z0)
        (loss, (z, right, cells)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, x_all[img], z0, y_all[img], noise, fire, rollout)
        updates, opt_state = optimizer.update(normalise(grads), opt_state, params)
        params = optax.apply_updates(params, updates)
        good = jnp.all(jnp.isfinite(z), axis=(1, 2, 3), keepdims=True)
        pool_z = pool_z.at[idx].set(jnp.where(good, z, 0.0))
        pool_img = pool_img.at[idx].set(img)
        return params, opt_state, pool_z, pool_img, key, loss, right, cells

    return train_step


# --- the timed sides -------------------------------------------------------------------------------------

class DeqncaSide:
    """deqnca's engine step (benchmarks/cells_vs_cax.py)."""

    compile_s = 0.0

    def __init__(self):
        from cells_vs_cax import _task, _train_step

        self.task, self.opt = _task("article", BATCH, ROLLOUT, IMAGES)
        self._step, self.i = _train_step, 0

    def step(self) -> float:
        loss = self._step(self.task, self.opt, self.i)
        self.i += 1
        return float(loss.detach())


class JaxSide:
    """One jitted JAX variant, from deqnca's initial weights, data and pool of digit indices."""

    def __init__(self, name: str, deqnca: DeqncaSide):
        import jax
        import jax.numpy as jnp
        import optax

        task = deqnca.task
        perceive, unroll = JAX_VARIANTS[name]
        optimizer = optax.adam(LR)
        self.params = params_from_torch(task.model.rule.named_parameters())
        self.opt_state = optimizer.init(self.params)
        self.x_all = jnp.asarray(task.x.cpu().numpy().transpose(0, 2, 3, 1))
        self.y_all = jnp.asarray(task.y.cpu().numpy().astype("int32"))
        self.pool_z = jnp.zeros((POOL, SIZE, SIZE, CHANNELS), jnp.float32)
        self.pool_img = jnp.asarray(task.pool["img"].cpu().numpy().astype("int32"))
        self.key = jax.random.key(0)
        fn = jax.jit(make_train_step(make_rollout(perceive, unroll), optimizer), donate_argnums=(0, 1, 2, 3))
        t = time.perf_counter()
        self.fn = fn.lower(*self._args()).compile()
        self.compile_s = time.perf_counter() - t

    def _args(self):
        return self.params, self.opt_state, self.pool_z, self.pool_img, self.key, self.x_all, self.y_all

    def step(self) -> float:
        (self.params, self.opt_state, self.pool_z, self.pool_img, self.key, loss, _, _) = self.fn(*self._args())
        return float(loss)                 # waits for the step


def _cpu_model() -> str:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")


def race(names, steps: int, warmup: int) -> dict:
    """Build every side, then `warmup` + `steps` rounds, one step of each side per round, rotated."""
    sides = {"deqnca": DeqncaSide()}
    for n in names:
        if n in JAX_VARIANTS:
            sides[n] = JaxSide(n, sides["deqnca"])
    return interleave({n: sides[n] for n in names if n in sides}, steps, warmup)


def interleave(sides: dict, steps: int, warmup: int) -> dict:
    """`warmup` + `steps` rounds of one `step()` of each side (each has `step` and `compile_s`), the first side
    rotated each round; per side the median wall time of the timed steps, their spread, CPU over wall time and
    every step's loss."""
    order = list(sides)
    times = {n: [] for n in order}
    cpu = {n: 0.0 for n in order}
    losses = {n: [] for n in order}
    for r in range(warmup + steps):
        for n in order[r % len(order):] + order[:r % len(order)]:
            w, c = time.perf_counter(), time.process_time()
            loss = sides[n].step()
            w, c = time.perf_counter() - w, time.process_time() - c
            losses[n].append(loss)
            if r >= warmup:
                times[n].append(w)
                cpu[n] += c
    return {n: {"s_per_step": statistics.median(times[n]), "min_s": min(times[n]), "max_s": max(times[n]),
                "steps_s": times[n], "cpu_over_wall": cpu[n] / sum(times[n]), "compile_s": sides[n].compile_s,
                "losses": losses[n], "timing": "median, interleaved"} for n in order}


def run_cax(steps: int, warmup: int) -> dict:
    """CAX's example as benchmarks/cells_vs_cax.py times it (its own loop: the mean of its timed steps)."""
    from cells_vs_cax import time_cax

    c = time.process_time()
    r = time_cax(steps, warmup)
    return {"s_per_step": r["s_per_step"], "compile_s": r["warmup_and_compile_s"], "library": r["library"],
            "cpu_over_wall": None, "process_cpu_s": time.process_time() - c,
            "timing": f"mean of {steps}, after the others, not interleaved; compile_s includes {max(1, warmup)} "
                      "warm-up step(s)"}


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in ("torch", "jax", "jaxlib", "optax", "flax", "cax"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def _missing(*modules) -> str | None:
    from importlib.util import find_spec

    return next((m for m in modules if find_spec(m) is None), None)


def _load(avg) -> str:
    return " / ".join(f"{v:.2f}" for v in avg) + " (1 / 5 / 15 min)"


def _agreement(rows: dict) -> str | None:
    """The JAX variants share keys and weights: their losses step by step differ by float rounding only."""
    losses = [r["losses"] for n, r in rows.items() if n in JAX_VARIANTS]
    if len(losses) < 2:
        return None
    worst = max(abs(a - b) / max(abs(b), 1e-30) for other in losses[1:] for a, b in zip(other, losses[0]))
    return (f"the JAX variants' losses over their {len(losses[0])} steps (same keys): largest relative difference "
            f"{worst:.1e}")


def _finish(result: dict, json_out) -> int:
    """The end of a peer benchmark's run: the JAX variants' agreement, what was skipped, the JSON written."""
    if agreement := _agreement(result["variants"]):
        print(agreement)
    for n, why in result["skipped"].items():
        print(f"{n}: skipped ({why})")
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _table(result: dict) -> str:
    rows = result["variants"]
    base = rows["deqnca"]["s_per_step"]
    lines = ["| variant | s / step | min – max | × deqnca | compile s | cpu/wall | timing |",
             "|---|---|---|---|---|---|---|"]
    for n, r in rows.items():
        spread = f"{r['min_s']:.3f} – {r['max_s']:.3f}" if "min_s" in r else "—"
        cw = "—" if r.get("cpu_over_wall") is None else f"{r['cpu_over_wall']:.2f}"
        lines.append(f"| {n} | {r['s_per_step']:.3f} | {spread} | {r['s_per_step'] / base:.2f} | "
                     f"{r['compile_s']:.1f} | {cw} | {r['timing']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for torch and XLA (default 1)")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per variant")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first (JAX: after compiling)")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                    help="which to time (deqnca is always timed: the ratios are to it)")
    ap.add_argument("--skip-cax", action="store_true", help="leave the cax variant out")
    ap.add_argument("--json-out", help="write the result here as JSON")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    xla_flags = set_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    names = ["deqnca"] + [n for n in args.variants if n not in ("deqnca", "cax")]
    want_cax = "cax" in args.variants and not args.skip_cax
    import torch

    result = {"machine": {"cpu": _cpu_model(), "cpus": os.cpu_count(), "threads": args.threads,
                          "torch_threads": torch.get_num_threads(), "XLA_FLAGS": xla_flags,
                          "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "loadavg_start": os.getloadavg()},
              "versions": _versions(), "steps": args.steps, "warmup": args.warmup, "skipped": {}}
    m = result["machine"]
    print(f"CPU {m['cpu']} ({m['cpus']} logical); load average at start {_load(m['loadavg_start'])}")
    print(f"threads: torch.set_num_threads({args.threads}) -> {m['torch_threads']}; "
          f"OMP_NUM_THREADS={m['OMP_NUM_THREADS']}; XLA_FLAGS={xla_flags!r}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items() if v))
    if (len(names) > 1 or want_cax) and (gone := _missing("jax", "optax")):
        result["skipped"].update({n: f"{gone} not installed" for n in names[1:] + ["cax"] * want_cax})
        names, want_cax = ["deqnca"], False
    result["variants"] = race(names, args.steps, args.warmup)
    if want_cax and (gone := _missing("cax", "flax")):
        result["skipped"]["cax"] = f"{gone} not installed (pip install cax==0.3.3)"
    elif want_cax:
        result["variants"]["cax"] = run_cax(args.steps, args.warmup)
    elif "cax" in args.variants:
        result["skipped"].setdefault("cax", "--skip-cax")
    m["loadavg_end"] = os.getloadavg()
    print(f"\n{_table(result)}\n")
    print(f"load average at end {_load(m['loadavg_end'])}; {args.steps} timed step(s) after "
          f"{args.warmup} warm-up step(s) per variant")
    return _finish(result, args.json_out)


if __name__ == "__main__":
    sys.exit(main())
