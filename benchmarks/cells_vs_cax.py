"""Self-classifying MNIST: the article's model per training step in deqnca and in CAX, and peak training
memory against rollout length for deqnca's two trainers (BPTT vs equilibrium).

    PYTHONPATH=src python benchmarks/cells_vs_cax.py                       # both parts, 1 thread each
    PYTHONPATH=src python benchmarks/cells_vs_cax.py --steps 5 --horizons 10 20 --batch-memory 4   # short

Speed: one training step of the article's recipe (a batch of 16 28×28 digits from a pool of 160 with 4
fresh and 4 mutated, 20 CA steps with autograd, the L2 loss, the backward pass, the optimiser step, the
pool write-back), timed over `--steps` steps after `--warmup` (CAX: after its JIT compilation), on the
same machine in one run with the same thread count (torch.set_num_threads and XLA's intra-op threads).
The architecture is the same on both sides (20 channels with the grey one, a 3×3 convolution to 80 with
ReLU, 1×1 to 80, ReLU, 1×1 to the channels with zero initialisation, fire rate 0.5); what differs is each
library's own recipe: deqnca runs the article's notebook (residual noise 0.02, alive = grey > 0.1,
per-parameter gradient normalisation, Adam), CAX runs its example notebook (44_self_classifying_mnist:
its NCAUpdate's alive mask is a 3×3 max-pool of the grey channel, dropout scales updates by 2, no noise,
global-norm clipping then Adam). Skipped, with a message, when cax or jax is not installed.

Memory: the growth of peak memory over one training step (each configuration in a fresh subprocess on
random binary 28×28 inputs: peak RSS − RSS before the step on CPU, the peak mark reset just before it
through /proc/self/clear_refs where Linux allows; max_memory_allocated on CUDA) at rollout lengths N: BPTT
differentiates N steps of the article's rule; the equilibrium model runs N steps of its contraction
without autograd (solver `rollout`, no early stop) and takes the implicit (IFT) gradient at the end.
A BPTT length whose memory, extrapolated linearly from the measured shorter ones, exceeds --max-gib is
not run (the machine is shared); the table says so.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

GIB = 1024 ** 3
BATCH, POOL, ROLLOUT, SIZE = 16, 160, 20, 28


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_bytes(reset: bool) -> int:
    if reset:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _digits(n: int, synthetic: bool = False):
    import torch

    if synthetic:       # the memory part: what a step allocates does not depend on which digits
        g = torch.Generator().manual_seed(0)
        return (torch.rand(n, 1, SIZE, SIZE, generator=g) > 0.75).float(), torch.randint(10, (n,), generator=g)
    from deqnca.data.idx import load_mnist

    x, y = load_mnist(split="train")
    return x[:n].clone(), y[:n].clone()


def _task(model: str, batch: int, rollout: int, images: int, synthetic: bool = False, **kw):
    """A cells task built as the engine builds it, without a run folder."""
    import torch

    from deqnca.engine.trainer import make_optimizer
    from deqnca.tasks.cells.config import preset
    from deqnca.tasks.cells.task import CellsTask

    x, y = _digits(images, synthetic)
    cfg = preset(model, batch_size=batch, rollout_steps=rollout, eval_images=1, fresh=batch // 4, mutate=batch // 4,
                 **kw)
    task = CellsTask(cfg, (x, y, x[:1], y[:1]))
    task.setup()
    torch.manual_seed(cfg.seed)
    task.model = task.build_model()
    opt = make_optimizer(task.model.parameters(), cfg)
    return task, opt


def _train_step(task, opt, step: int):
    """One step exactly as the engine takes it (batch, loss, backward, gradients, optimiser, bookkeeping)."""
    batch = task.batch(0, step, step)
    loss, out = task.loss(batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    task.prepare_gradients()
    opt.step()
    task.model.after_update()
    task.after_step(batch, out, True, step + 1)
    return loss


def time_deqnca(steps: int, warmup: int, device: str) -> dict:
    import torch

    task, opt = _task("article", BATCH, ROLLOUT, 1024)
    task.model.to(device)
    for i in range(warmup):
        _train_step(task, opt, i)
    t = time.perf_counter()
    for i in range(warmup, warmup + steps):
        loss = _train_step(task, opt, i)
    float(loss.detach())
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    s = (time.perf_counter() - t) / steps
    params = sum(p.numel() for p in task.model.parameters())
    return {"library": "deqnca", "s_per_step": s, "parameters": params, "torch_threads": torch.get_num_threads()}


def time_cax(steps: int, warmup: int) -> dict:
    """CAX's example 44 (self-classifying MNIST): its system, pool, loss and train step, timed after JIT."""
    import jax
    import jax.numpy as jnp
    import optax
    from cax.core import ComplexSystem
    from cax.core.perceive import ConvPerceive
    from cax.core.update import NCAUpdate
    from cax.nn.pool import Pool
    from flax import nnx

    x_np, y_np = (t.numpy() for t in _digits(1024))
    x_train = jnp.asarray(x_np[:, 0, :, :, None])
    y_int = jnp.asarray(y_np, dtype=jnp.int32)
    y_train = jnp.where(x_train >= 0.1, jax.nn.one_hot(y_int, 10)[:, None, None, :], 0.0)
    channels = 20

    class SelfClassifyingNCA(ComplexSystem):
        def __init__(self, *, rngs):
            self.perceive = ConvPerceive(channel_size=channels, perception_size=80, use_bias=True,
                                         activation_fn=nnx.relu, rngs=rngs)
            self.update = NCAUpdate(channel_size=channels, perception_size=80, hidden_layer_sizes=(80,),
                                    cell_dropout_rate=0.5, zeros_init=True, rngs=rngs)

        def _step(self, state, input=None, *, sow=False):
            x = state[..., -1:]
            next_state = self.update(state, self.perceive(state), input)
            return next_state.at[..., -1:].set(x)

    cs = SelfClassifyingNCA(rngs=nnx.Rngs(0))
    params = sum(p.size for p in jax.tree.leaves(nnx.state(cs, nnx.Param)))

    def sample_state(key):
        i = jax.random.choice(key, x_train.shape[0])
        return jnp.zeros((SIZE, SIZE, channels)).at[..., -1:].set(x_train[i]), i

    key = jax.random.key(0)
    state, idx = jax.vmap(sample_state)(jax.random.split(key, POOL))
    pool = Pool.create({"state": state, "x_idx": idx})
    optimizer = nnx.Optimizer(cs, optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)), wrt=nnx.Param)

    @nnx.jit
    def loss_fn(cs, state, y):
        axes = nnx.StateAxes({nnx.RngState: 0, nnx.Intermediate: 0, ...: None})
        state = nnx.split_rngs(splits=BATCH)(nnx.vmap(lambda cs, s: cs(s, num_steps=ROLLOUT),
                                                      in_axes=(axes, 0)))(cs, state)
        return jnp.mean(jnp.sum(jnp.square(state[..., :10] - y), axis=(-1, -2, -3)) / 2), state

    @nnx.jit
    def train_step(cs, optimizer, pool, key):
        k1, k2 = jax.random.split(key)
        pool_idx, batch = pool.sample(k1, batch_size=BATCH)
        new_state, new_idx = sample_state(k2)
        state = batch["state"].at[:BATCH // 4].set(new_state)
        x_idx = batch["x_idx"].at[:BATCH // 4].set(new_idx)
        (loss, state), grad = nnx.value_and_grad(loss_fn, has_aux=True)(cs, state, y_train[x_idx])
        optimizer.update(cs, grad)
        return loss, pool.update(pool_idx, {"state": state, "x_idx": x_idx})

    t0 = time.perf_counter()
    for _ in range(max(1, warmup)):
        key, sub = jax.random.split(key)
        loss, pool = train_step(cs, optimizer, pool, sub)
    jax.block_until_ready(loss)
    compile_s = time.perf_counter() - t0
    t = time.perf_counter()
    for _ in range(steps):
        key, sub = jax.random.split(key)
        loss, pool = train_step(cs, optimizer, pool, sub)
    jax.block_until_ready(loss)
    from importlib.metadata import version

    s = (time.perf_counter() - t) / steps
    return {"library": f"CAX {version('cax')}", "s_per_step": s, "parameters": int(params),
            "jax": jax.__version__, "warmup_and_compile_s": compile_s}


def memory_one(model: str, length: int, batch: int, device: str) -> dict:
    """Peak memory of one training step at rollout length `length` (run in a fresh process)."""
    import torch

    kw = {} if model == "article" else {"solver": "rollout", "solver_iter": length, "gradient": "implicit"}
    task, opt = _task(model, batch, length if model == "article" else ROLLOUT, 256, synthetic=True, **kw)
    task.model.to(device)
    warm_kw = {} if model == "article" else {"solver": "rollout", "solver_iter": 2}
    warm, warm_opt = _task(model, 2, 2, 16, synthetic=True, **warm_kw)
    _train_step(warm, warm_opt, 0)                                # load the kernels first
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        reset = _reset_peak()
        before = _rss_bytes()
    t = time.perf_counter()
    _train_step(task, opt, 0)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = _peak_bytes(reset) - before
    return {"trainer": "bptt (article)" if model == "article" else "implicit (equilibrium)", "length": length,
            "batch": batch, "device": device, "peak_gib": peak / GIB, "seconds": time.perf_counter() - t}


def _set_threads(n: int) -> None:
    os.environ.setdefault("XLA_FLAGS", f"--xla_cpu_multi_thread_eigen={'true' if n > 1 else 'false'} "
                          f"intra_op_parallelism_threads={n}")
    import torch

    torch.set_num_threads(n)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for torch and XLA (default 1)")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per library")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (CAX: includes JIT compilation)")
    ap.add_argument("--horizons", type=int, nargs="*", default=[20, 80, 200],
                    help="rollout lengths of the memory part (none: skip it)")
    ap.add_argument("--batch-memory", type=int, default=BATCH, help="batch of the memory part")
    ap.add_argument("--max-gib", type=float, default=4.0, help="CPU: skip BPTT lengths predicted above this")
    ap.add_argument("--skip-cax", action="store_true", help="time deqnca only")
    ap.add_argument("--out", default="out/cells_vs_cax.json")
    ap.add_argument("--memory-one", nargs=2, metavar=("MODEL", "LENGTH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    _set_threads(args.threads)
    if args.memory_one:
        print(json.dumps(memory_one(args.memory_one[0], int(args.memory_one[1]), args.batch_memory, args.device)))
        return 0
    load = os.getloadavg()
    result = {"machine": {"cpus": os.cpu_count(), "loadavg": load, "threads": args.threads, "device": args.device},
              "speed": [], "memory": []}
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs; {args.threads} thread(s)")
    result["speed"].append(time_deqnca(args.steps, args.warmup, args.device))
    try:
        if args.skip_cax:
            raise ImportError("--skip-cax", name="cax (--skip-cax)")
        import cax  # noqa: F401
        import jax  # noqa: F401
    except ImportError as e:
        print(f"CAX skipped: {e.name} is not installed (pip install cax jax to compare)", file=sys.stderr)
        result["cax_skipped"] = f"{e.name} not installed"
    else:
        result["speed"].append(time_cax(args.steps, args.warmup))
    print(f"\n| library | s / training step ({args.steps} timed) | parameters |\n|---|---|---|")
    for r in result["speed"]:
        print(f"| {r['library']} | {r['s_per_step']:.3f} | {r['parameters']:,} |")
    if len(result["speed"]) > 1:
        print("(CAX's last layer also writes the grey channel, which its step then overwrites: 81 parameters more)")
    for model in ("article", "equilibrium"):
        for length in sorted(args.horizons or []):
            done = [r for r in result["memory"] if r["trainer"].startswith("bptt") and r.get("peak_gib")]
            if model == "article" and args.device == "cpu" and done:
                predicted = done[-1]["peak_gib"] * length / done[-1]["length"]
                if predicted > args.max_gib:
                    result["memory"].append({"trainer": "bptt (article)", "length": length, "peak_gib": None,
                                             "note": f"not run: ~{predicted:.1f} GiB predicted > --max-gib"})
                    continue
            cmd = [sys.executable, __file__, "--memory-one", model, str(length), "--device", args.device,
                   "--batch-memory", str(args.batch_memory), "--threads", str(args.threads)]
            p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])})
            if p.returncode:
                raise SystemExit(f"memory run {model} {length} failed:\n{p.stderr[-2000:]}")
            result["memory"].append(json.loads(p.stdout.strip().splitlines()[-1]))
    if result["memory"]:
        print(f"\n| trainer | rollout length | peak GiB (batch {args.batch_memory}) | s |\n|---|---|---|---|")
        for r in result["memory"]:
            gib = f"{r['peak_gib']:.3f}" if r.get("peak_gib") is not None else r.get("note", "—")
            print(f"| {r['trainer']} | {r['length']} | {gib} | {r.get('seconds', float('nan')):.2f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
