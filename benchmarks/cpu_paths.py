"""Which CPU path runs the rule fastest on this machine: layout, threads, precision, kernel library.

Times the rule's 32→32 3×3 convolution at the shapes deqnca uses — evaluation batches of 50 (what
`deqnca eval` uses on a CPU) and 500 (training's per-epoch evaluation) at 28×28, forward; a training
batch of 64, forward and backward — across NCHW / channels-last, 1 thread / all cores, float32 /
bfloat16 autocast, and the kernel libraries torch can be switched between: oneDNN (its default),
NNPACK (what it picks with oneDNN switched off) and its native im2col + BLAS path (both off). Then a
torch.compile'd rule step (time-boxed, in a child process), one whole evaluation batch of each
shipped MNIST model on each viable path, and the path `deqnca.engine.hardware.choose_cpu_path` picks.

    python benchmarks/cpu_paths.py --json-out /tmp/cpu_paths.json
    python benchmarks/cpu_paths.py --quick            # < 20 s: fewer paths, one round

GFLOP/s count the convolution only (2·C_in·C_out·9 per output cell; forward + backward = 3×) and
"% peak" divides by the estimated float32 peak of the threads used (deqnca.engine.hardware.peak_fp32:
FMA width from the ISA × the clock /proc/cpuinfo reports; the assumption is printed). Every cell is
a median over interleaved rounds (each round times every path once, so that a change in load hits
all alike), and the load average is recorded with each workload.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

from deqnca.core.resources import models_dir
from deqnca.engine import hardware
from deqnca.tasks.mnist.evaluate import as_layout

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("mnist-essay", "mnist-equilibrium")
# (name, batch, backward): the evaluation batches of `deqnca eval` on a CPU (50) and of training's
# per-epoch evaluation (500), and the training batch (64)
WORKLOADS = (("eval b50 fwd", 50, False), ("eval b500 fwd", 500, False), ("train b64 fwd+bwd", 64, True))
BACKENDS = ("oneDNN", "NNPACK", "native")
MAX_CALL_S = 1.0          # a path slower than this per call is timed once, not every round


def backend_flags(backend: str):
    """The context that makes torch's convolution take `backend` (where that backend applies)."""
    stack = contextlib.ExitStack()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")    # torch warns about TF32 on oneDNN whenever the flags are set
        stack.enter_context(torch.backends.mkldnn.flags(enabled=backend == "oneDNN"))
        stack.enter_context(torch.backends.nnpack.flags(enabled=backend == "NNPACK"))
    return stack


def selected_kernel(x, w, backend, amp):
    """The convolution backend torch selects for these tensors (a private call: '?' where missing)."""
    try:
        dtype = torch.bfloat16 if amp == "bf16" else x.dtype
        with backend_flags(backend):
            b = torch._C._select_conv_backend(x.to(dtype), w.to(dtype), None, [1, 1], [1, 1], [1, 1],
                                              False, [0, 0], 1, None)
        return str(b).split(".")[-1]
    except Exception:
        return "?"


def conv_call(batch, channels_last, amp, backend, backward, size=28, channels=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, channels, size, size, generator=gen).contiguous(memory_format=fmt)
    w = (0.05 * torch.randn(channels, channels, 3, 3, generator=gen)).contiguous(memory_format=fmt)
    x.requires_grad_(backward)
    w.requires_grad_(backward)
    kernel = selected_kernel(x.detach(), w.detach(), backend, amp)
    grad = {}

    def run():
        with backend_flags(backend), torch.set_grad_enabled(backward), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
            y = F.conv2d(x, w, padding=1)
            if backward:
                if "g" not in grad:
                    grad["g"] = torch.randn_like(y)
                y.backward(grad["g"])
                x.grad = w.grad = None
    flops = 2 * channels * channels * 9 * size * size * batch * (3 if backward else 1)
    return run, flops, kernel


def interleaved(cells: dict, rounds: int, max_call_s: float = MAX_CALL_S, warmup: bool = True) -> dict:
    """{key: (threads, fn)} -> {key: {"median_s", "n", "load", "slow"}}: one untimed warm-up call each
    (unless not `warmup`), then `rounds` rounds timing every cell once; a cell whose warm-up and first
    timed call both took > max_call_s is timed once (a first call can be slow for one-off reasons)."""
    out, previous = {}, torch.get_num_threads()

    def call(key):
        threads, fn = cells[key]
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)       # outside the timed call: a switch costs milliseconds
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    order = sorted(cells, key=lambda k: cells[k][0])
    samples, loads, slow = {}, {}, set()
    for key in order:
        samples[key] = []
        if warmup and call(key) > max_call_s:
            second = call(key)
            if second > max_call_s:
                samples[key], slow = [second], slow | {key}
        loads[key] = [os.getloadavg()[0]]
    for _ in range(rounds):
        for key in order:
            if key not in slow:
                samples[key].append(call(key))
                loads[key].append(os.getloadavg()[0])
    torch.set_num_threads(previous)
    for key in order:
        out[key] = {"median_s": statistics.median(samples[key]), "n": len(samples[key]),
                    "load": round(statistics.mean(loads[key]), 2), "slow": key in slow}
    return out


def conv_table(threads_options, rounds, workloads, backends, amps, peak_core, quick=False):
    rows = []
    small = {}          # GFLOP/s at the first workload, to skip hopeless paths at the larger ones
    for name, batch, backward in workloads:
        cells, meta = {}, {}
        for cl in (False, True):
            for amp in amps:
                for backend in backends:
                    if backend == "NNPACK" and amp == "bf16":
                        continue            # NNPACK is float32 only: torch falls back to the native path
                    if quick and backend != "oneDNN" and (amp == "bf16" or backward):
                        continue
                    for t in threads_options:
                        key = (cl, amp, backend, t)
                        run, flops, kernel = conv_call(batch, cl, amp, backend, backward)
                        if key in small and flops / (small[key] * 1e9) > 3 * MAX_CALL_S:
                            rows.append(dict(workload=name, batch=batch, layout="channels-last" if cl else "NCHW",
                                             amp=amp, backend=backend, kernel=kernel, threads=t, gflops=None,
                                             note=f"skipped: ~{flops / small[key] / 1e9:.0f} s per call "
                                                  f"predicted from {small[key]:.1f} GFLOP/s at {workloads[0][0]}"))
                            continue
                        cells[key], meta[key] = (t, run), (flops, kernel)
        load0 = os.getloadavg()
        timed = interleaved(cells, rounds, warmup=not quick)     # --quick: no warm-up call, first calls included
        for key, r in timed.items():
            cl, amp, backend, t = key
            flops, kernel = meta[key]
            gflops = flops / r["median_s"] / 1e9
            if name == workloads[0][0]:
                small[key] = gflops
            rows.append(dict(workload=name, batch=batch, layout="channels-last" if cl else "NCHW", amp=amp,
                             backend=backend, kernel=kernel, threads=t, ms=1e3 * r["median_s"], gflops=gflops,
                             frac_peak=gflops / (peak_core * t) if peak_core else None, n=r["n"], load=r["load"],
                             load_start=round(load0[0], 2),
                             note="timed once (slow)" if r["slow"] else ""))
    return rows


COMPILE_WORKER = r"""
import json, os, statistics, sys, time, torch, torch.nn.functional as F
threads = [int(t) for t in sys.argv[1].split(",")]
rounds = int(sys.argv[2])
z = torch.randn(50, 32, 28, 28).contiguous(memory_format=torch.channels_last)
w = (0.05 * torch.randn(32, 32, 3, 3)).contiguous(memory_format=torch.channels_last)
inj = torch.randn_like(z)
def step(z):
    return torch.tanh(F.conv2d(z, w, padding=1) + inj)
t = time.time()
compiled = torch.compile(step)
with torch.no_grad():
    compiled(z)
    out = {"compile_s": time.time() - t, "max_abs_diff": (compiled(z) - step(z)).abs().max().item(), "rows": []}
    samples = {(n, th): [] for n in ("eager", "compiled") for th in threads}
    for th in threads:
        torch.set_num_threads(th)
        step(z), compiled(z)
    for _ in range(rounds):
        for (n, th) in samples:
            torch.set_num_threads(th)
            f = step if n == "eager" else compiled
            t = time.perf_counter(); f(z); samples[(n, th)].append(time.perf_counter() - t)
    for (n, th), v in samples.items():
        out["rows"].append({"path": n, "threads": th, "median_s": statistics.median(v), "n": len(v),
                            "load": os.getloadavg()[0]})
print("RESULT " + json.dumps(out))
"""


def compile_rows(threads_options, rounds, timeout_s, peak_core):
    """torch.compile of one rule step (eval batch 50, channels-last, float32) in a child process, so that
    a hang or a crash costs at most `timeout_s`: ([rows], note)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    try:
        p = subprocess.run([sys.executable, "-c", COMPILE_WORKER, ",".join(map(str, threads_options)), str(rounds)],
                           capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return [], f"failed: no result within {timeout_s} s"
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if p.returncode or line is None:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return [], f"failed: {tail[:200]}"
    res = json.loads(line[len("RESULT "):])
    flops = 2 * 32 * 32 * 9 * 28 * 28 * 50
    rows = [dict(path=r["path"], threads=r["threads"], ms=1e3 * r["median_s"], gflops=flops / r["median_s"] / 1e9,
                 frac_peak=flops / r["median_s"] / 1e9 / (peak_core * r["threads"]) if peak_core else None,
                 n=r["n"], load=round(r["load"], 2)) for r in res["rows"]]
    return rows, (f"compiled in {res['compile_s']:.0f} s; max |compiled - eager| = {res['max_abs_diff']:.1e}")


def model_rows(paths, rounds, batch, models):
    """One evaluation batch (the first `batch` test images, fixed state noise) of each shipped model per path."""
    from deqnca import load
    from deqnca.data.idx import load_mnist

    x, _ = load_mnist(split="test")
    x = x[:batch]
    rows = []
    for name in models:
        path = models_dir() / name
        if not path.with_suffix(".safetensors").exists():
            rows.append(dict(model=name, note="not found"))
            continue
        model, _ = load(path, "cpu")
        model.eval()
        cells, stats = {}, {}
        for cl, t, amp, backend in paths:
            xb = as_layout(x.contiguous(), "on" if cl else "off", "cpu")   # one channel: the channels-last strides

            def run(xb=xb, amp=amp, backend=backend, key=(cl, t, amp, backend), model=model, stats=stats):
                gen = torch.Generator().manual_seed(0)
                with torch.no_grad(), backend_flags(backend), \
                        torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
                    model(xb, generator=gen)
                stats[key] = model.last_stats.nstep
            cells[(cl, t, amp, backend)] = (t, run)
        timed = interleaved(cells, rounds, max_call_s=10.0, warmup=False)   # one batch is long: no warm-up
        for (cl, t, amp, backend), r in timed.items():
            rows.append(dict(model=name, batch=batch, layout="channels-last" if cl else "NCHW", threads=t, amp=amp,
                             backend=backend, s=r["median_s"], img_s=batch / r["median_s"],
                             s_per_10k=r["median_s"] * 10000 / batch, nstep=stats.get((cl, t, amp, backend)),
                             n=r["n"], load=r["load"]))
    return rows


def fmt(v, spec=".1f", none="–"):
    return none if v is None else format(v, spec)


def markdown(result) -> str:
    info, peak = result["cpu"], result["peak"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in info["flags"].items())
    lines = [f"CPU: {info['model']} ({info['vendor']} family {info['family']} model {info['model_number']}), "
             f"{info['cores']} logical CPUs ({info['usable_cores']} usable); flags: {flags}",
             f"torch {info['torch']}, capability {info['capability']}, oneDNN {info['mkldnn']}, "
             f"NNPACK {info['nnpack']}; {result['date']}; load average at start {result['load_start']}, "
             f"at end {result['load_end']}",
             f"Peak estimate: {fmt(peak['gflops_per_core'])} GFLOP/s per core fp32 = {peak['assumption']}", ""]
    threads = result["threads"]
    head = "| workload | layout | precision | library (kernel) | " + " | ".join(
        f"{t} thread{'s' if t > 1 else ''}: GFLOP/s (% peak)" for t in threads) + " | load |"
    lines += ["Convolution 32→32 3×3, 28×28 (median over rounds):", "", head,
              "|" + "---|" * (5 + len(threads))]
    groups = {}
    for r in result["conv"]:
        groups.setdefault((r["workload"], r["layout"], r["amp"], r["backend"]), {})[r["threads"]] = r
    for (wl, layout, amp, backend), by_t in groups.items():
        kernel = next(iter(by_t.values()))["kernel"]
        cells = []
        for t in threads:
            r = by_t.get(t)
            if r is None:
                cells.append("–")
            elif r.get("gflops") is None:
                cells.append(r["note"])
            else:
                pct = f" ({100 * r['frac_peak']:.0f}%)" if r.get("frac_peak") is not None else ""
                cells.append(f"{r['gflops']:.1f}{pct}{' †' if r['note'] else ''}")
        loads = [r["load"] for r in by_t.values() if r.get("load") is not None]
        lines.append(f"| {wl} | {layout} | {'bf16 autocast' if amp == 'bf16' else 'fp32'} | {backend} ({kernel}) | "
                     + " | ".join(cells) + f" | {fmt(max(loads) if loads else None)} |")
    lines.append("")
    lines.append("† timed once (a call took > 1 s). Kernel: what torch selects for these tensors "
                 "(NNPACK and native fall back to Slow2d for bf16).")
    c = result["compile"]
    lines += ["", f"torch.compile, rule step tanh(W_z * z + injected), eval batch 50, channels-last fp32: {c['note']}"]
    if c["rows"]:
        lines += ["", "| path | threads | ms | GFLOP/s (% peak) | load |", "|---|---|---|---|---|"]
        for r in c["rows"]:
            lines.append(f"| {r['path']} | {r['threads']} | {r['ms']:.1f} | {r['gflops']:.1f} "
                         f"({100 * r['frac_peak']:.0f}%) | {r['load']:.1f} |")
    lines += ["", f"Whole evaluation batch ({result['model_batch']} test images) of each shipped model, "
                  "oneDNN paths, and NNPACK / native float32 where "
                  f"their eval-b50 convolution is ≥ 0.8× oneDNN's (median of {result['model_rounds']}, "
                  "no warm-up):", "",
              "| model | layout | threads | precision | library | s per batch | img/s | s per 10,000 | steps | load |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["models"]:
        if "s" not in r:
            lines.append(f"| {r['model']} | {r.get('note', '')} | | | | | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['layout']} | {r['threads']} | {'bf16' if r['amp'] == 'bf16' else 'fp32'} | "
                     f"{r['backend']} | {r['s']:.3f} | {r['img_s']:.0f} | {r['s_per_10k']:.0f} | "
                     f"{fmt(r['nstep'], '.0f')} | {r['load']:.1f} |")
    for k in ("choice_eval", "choice_train"):
        ch = result[k]
        if ch is None:
            continue
        lines += ["", f"choose_cpu_path({'train=True' if k.endswith('train') else 'eval'}): "
                      f"{'channels-last' if ch['channels_last'] else 'NCHW'}, {ch['threads']} thread(s), "
                      f"amp {ch['amp']} — {ch['reason']}"]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="< 20 s: 1 thread, no batch 500, fewer paths, one round, 10-image model batches")
    ap.add_argument("--rounds", type=int, help="timed rounds per convolution cell (default 4, --quick 1)")
    ap.add_argument("--model-batch", type=int, default=50, help="images per timed model batch (default 50)")
    ap.add_argument("--compile-timeout", type=float, default=150, help="seconds for the torch.compile child (0: skip)")
    ap.add_argument("--json-out", help="write all rows and the machine description here")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*TF32.*")

    t_start, phase = time.time(), {}
    info = hardware.cpu_info()
    peak = hardware.peak_fp32(info)
    peak_core = peak["gflops_per_core"]
    load_start = [round(v, 2) for v in os.getloadavg()]
    if args.quick:
        # one thread: on a shared machine it is the least noisy; oneDNN and native only
        threads, rounds, workloads, backends = [1], args.rounds or 1, (WORKLOADS[0], WORKLOADS[2]), ("oneDNN", "native")
        model_rounds, compile_timeout, model_batch = 1, 0, min(args.model_batch, 10)
    else:
        threads = sorted({1, info["usable_cores"]})
        rounds, workloads, backends = args.rounds or 4, WORKLOADS, BACKENDS
        model_rounds, compile_timeout, model_batch = 2, args.compile_timeout, args.model_batch

    conv = conv_table(threads, rounds, workloads, backends, ["off", "bf16"], peak_core, quick=args.quick)
    if compile_timeout:
        crow, cnote = compile_rows(threads, max(3, rounds), compile_timeout, peak_core)
    else:
        crow, cnote = [], "not run (--quick or --compile-timeout 0)"

    # model paths: every oneDNN path (torch's default library), and NNPACK / native float32 where their
    # eval-batch convolution is at least 0.8x oneDNN's on the same layout and threads
    first = {(r["layout"] == "channels-last", r["threads"], r["amp"], r["backend"]): r["gflops"]
             for r in conv if r["workload"] == workloads[0][0] and r.get("gflops")}
    if args.quick:
        paths = [(True, 1, "off", "oneDNN")]
    else:
        paths = [k for k, g in first.items()
                 if k[3] == "oneDNN" or (k[2] == "off" and g >= 0.8 * first.get(k[:3] + ("oneDNN",), float("inf")))]
    phase["conv+compile"] = time.time() - t_start
    models = model_rows(paths, model_rounds, model_batch, MODELS)
    phase["models"] = time.time() - t_start - phase["conv+compile"]
    choice_eval = hardware.choose_cpu_path("cpu", refresh=True)
    choice_train = None if args.quick else hardware.choose_cpu_path("cpu", train=True, refresh=True)
    command = "python benchmarks/cpu_paths.py " + " ".join(argv or sys.argv[1:])
    result = {"date": date.today().isoformat(), "command": command,
              "cpu": info, "peak": peak, "threads": threads, "rounds": rounds, "load_start": load_start,
              "conv": conv, "compile": {"rows": crow, "note": cnote}, "model_batch": model_batch,
              "model_rounds": model_rounds,
              "models": models, "choice_eval": choice_eval, "choice_train": choice_train,
              "load_end": [round(v, 2) for v in os.getloadavg()], "seconds": time.time() - t_start, "phase_s": phase}
    print(markdown(result))
    print(f"\n({result['seconds']:.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in phase.items()) + ")")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
