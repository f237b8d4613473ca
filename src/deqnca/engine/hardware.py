"""Which CPU path to run on: the machine's features, and a measured choice of layout, threads and precision.

The same rule runs at very different speeds on the CPUs these models meet: bfloat16 autocast is 1.66×
faster per training epoch on a Xeon with AMX-BF16 and several times slower on a CPU without bfloat16
units, channels-last is faster on some and not on others, and on a shared machine one thread can beat
two (docs/speed.md, "Which CPU path, measured"). So the choice is made per machine: the CPU's flags
say which paths are allowed, and a short measurement of the rule's own convolution step decides.

torch is imported inside the functions, so that reading the CPU's features does not load it.
"""
from __future__ import annotations

import os
import time

CPUINFO = "/proc/cpuinfo"
FLAGS_OF_INTEREST = ("fma", "avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
BF16_UNITS = ("amx_bf16", "avx512_bf16")      # instructions that compute in bfloat16 natively

_cache: dict = {}


def _read_cpuinfo(path: str = CPUINFO) -> tuple[dict, int]:
    """(fields of the first processor entry, number of processor entries); ({}, 0) where unreadable."""
    try:
        text = open(path).read()
    except OSError:
        return {}, 0
    blocks = [b for b in text.split("\n\n") if b.strip()]
    first = {}
    for line in blocks[0].splitlines() if blocks else []:
        key, sep, value = line.partition(":")
        if sep:
            first.setdefault(key.strip(), value.strip())
    return first, sum(1 for b in blocks if b.lstrip().startswith("processor"))


def cpu_info(path: str = CPUINFO) -> dict:
    """The CPU model, its flags of interest, cores and clock, and what torch makes of it."""
    import platform

    import torch

    fields, entries = _read_cpuinfo(path)
    flags = set(fields.get("flags", "").split())
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception as e:      # older torch: the call is missing
        capability = f"unknown ({type(e).__name__})"

    def number(key, kind):
        try:
            return kind(fields[key])
        except (KeyError, ValueError):
            return None

    return {
        "model": fields.get("model name") or platform.processor() or platform.machine(),
        "vendor": fields.get("vendor_id", ""),
        "family": number("cpu family", int),
        "model_number": number("model", int),
        "flags": {f: f in flags for f in FLAGS_OF_INTEREST},
        "cores": entries or os.cpu_count() or 1,      # logical CPUs listed in /proc/cpuinfo
        "usable_cores": usable,                       # those this process may run on
        "mhz": number("cpu MHz", float),
        "capability": capability,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "nnpack": bool(torch.backends.nnpack.is_available()),
    }


def has_bf16_units(info: dict) -> bool:
    return any(info["flags"].get(f) for f in BF16_UNITS)


def peak_fp32(info: dict) -> dict:
    """Estimated peak float32 FLOP/s per core: FMA width from the ISA × the clock in /proc/cpuinfo.

    An estimate, stated as such: the clock is "cpu MHz" of the first processor entry, which under a
    hypervisor is the nominal (TSC) clock, not the boost clock, so measured fractions can exceed 1."""
    flags, vendor, family = info["flags"], info.get("vendor", ""), info.get("family")
    if flags.get("avx512f") and vendor == "AuthenticAMD" and family == 25:
        per_cycle, isa = 32, "AVX-512 on Zen 4 (two 256-bit FMA pipes) = 2 x 8 fp32 x 2"
    elif flags.get("avx512f"):
        per_cycle, isa = 64, "AVX-512 = 2 FMA units x 16 fp32 x 2 (CPUs with one 512-bit FMA unit: half)"
    elif flags.get("avx2") and flags.get("fma"):
        per_cycle, isa = 32, "AVX2 = 2 FMA units x 8 fp32 x 2"
    else:
        per_cycle, isa = 8, "no AVX2/FMA: 2 x 4 fp32 SSE (a rough guess)"
    mhz = info.get("mhz")
    gflops = per_cycle * mhz / 1e3 if mhz else None
    clock = f"{mhz:.0f} MHz from /proc/cpuinfo 'cpu MHz' (nominal under a hypervisor; boost not counted)" \
        if mhz else "unknown clock"
    return {"flop_per_cycle": per_cycle, "mhz": mhz, "gflops_per_core": gflops,
            "assumption": f"{isa} FLOP/cycle x {clock}"}


def _short_model(info: dict) -> str:
    return " ".join(info["model"].replace("(R)", "").replace("(TM)", "").split()) or "unknown CPU"


def _features(info: dict) -> str:
    flags = info["flags"]
    units = [f for f in ("amx_bf16", "avx512_bf16") if flags.get(f)]
    if units:
        return "/".join(units)
    return "no AMX/AVX512-BF16"


def _time_candidates(candidates: dict, budget_s: float) -> dict:
    """Median seconds per call of each candidate, {key: (threads, zero-argument callable)} in order
    of priority, within about `budget_s` in all (one call's overshoot at most).

    The first round is a warm-up (oneDNN creates its primitives on the first call) and a first
    sample; it stops when the budget is spent, so the candidates it did not reach are left out of
    the result (the first one is always timed). Then rounds interleave the candidates, so that a
    change in the machine's load hits all alike; one more than 2x the fastest after the warm-up, or
    1.5x after two rounds, is dropped and keeps its times so far. The thread count is set outside
    the timed call (a switch costs milliseconds, as much as a small call)."""
    import statistics

    import torch

    def call(k):
        threads, fn = candidates[k]
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    start, previous = time.perf_counter(), torch.get_num_threads()
    samples = {}
    try:
        for k in candidates:
            if samples and time.perf_counter() - start >= budget_s:
                break
            samples[k] = [call(k)]
        fastest = min(v[0] for v in samples.values())
        alive = sorted((k for k in samples if samples[k][0] <= 2 * fastest), key=lambda k: candidates[k][0])
        rounds = 0
        while time.perf_counter() - start < budget_s and len(alive) > 1:
            for k in alive:
                if rounds == 0:
                    samples[k] = []            # the close ones' warm-up call is not kept
                samples[k].append(call(k))
                if rounds > 0 and time.perf_counter() - start >= budget_s:
                    break
            rounds += 1
            if rounds >= 2:
                best = min(statistics.median(samples[k]) for k in alive)
                alive = [k for k in alive if statistics.median(samples[k]) <= 1.5 * best]
    finally:
        torch.set_num_threads(previous)
    return {k: statistics.median(v) for k, v in samples.items()}


def _label(channels_last: bool, threads: int, amp: str) -> str:
    return f"{'channels-last' if channels_last else 'NCHW'} {threads}t {'bf16' if amp == 'bf16' else 'fp32'}"


def rule_step(channels_last: bool, amp: str, batch: int = 50, size: int = 28, channels: int = 32,
              train: bool = False, seed: int = 0, shared: dict | None = None):
    """(a zero-argument callable that runs one step of the essay-sized rule, tanh(W_z * z + injected),
    on the given path — forward, or forward and backward for training —, its convolution FLOPs).
    The caller sets the thread count; callers timing several paths pass one `shared` dict so that
    paths of the same layout reuse one set of tensors."""
    import torch
    import torch.nn.functional as F

    key = (channels_last, batch, size, channels, train, seed)
    shared = {} if shared is None else shared
    if key not in shared:
        gen = torch.Generator().manual_seed(seed)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        z = torch.randn(batch, channels, size, size, generator=gen).contiguous(memory_format=fmt)
        w = (0.05 * torch.randn(channels, channels, 3, 3, generator=gen)).contiguous(memory_format=fmt)
        injected = torch.randn(batch, channels, size, size, generator=gen).contiguous(memory_format=fmt)
        shared[key] = (z.requires_grad_(train), w.requires_grad_(train), injected)
    z, w, injected = shared[key]
    flops = 2 * channels * channels * 9 * size * size * batch * (3 if train else 1)

    def run():
        with torch.set_grad_enabled(train), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
            out = torch.tanh(F.conv2d(z, w, padding=1) + injected)
        if train:
            out.backward(torch.ones_like(out))
            z.grad = w.grad = None
    return run, flops


def choose_cpu_path(device="cpu", *, measure: bool = True, allow_bf16: bool = True, train: bool = False,
                    budget_s: float = 0.8, refresh: bool = False) -> dict:
    """Layout, threads and precision for `device`, decided once per process (cached per arguments).

    Allowed paths: NCHW or channels-last; 1 thread or all usable cores; float32, and bfloat16 autocast
    only where the CPU has bfloat16 units (AMX-BF16 or AVX512-BF16) and `allow_bf16` (pass False
    for tolerance-solved models, whose solves need more steps under bfloat16 rounding; docs/speed.md).
    With `measure`, one step of the essay-sized rule (batch 50 forward, or batch 32 forward and
    backward with `train`) is timed on each allowed path within about `budget_s` seconds and the
    fastest is taken; bfloat16 only when it is ≥ 1.1× faster than the best float32 path. The float32
    NCHW path at the current thread count is always among those timed, so the choice is never slower
    than it by measurement. The thread count follows the load at that moment (on a shared machine
    one thread can be several times faster than two) and is kept for the process.
    Without `measure`: float32, channels-last (the trainer's CPU default), the current thread count.

    Returns {"device", "channels_last" (bool), "threads", "amp" ("off" or "bf16"), "reason",
    "measured" (median seconds per path), "speedup" (over float32 NCHW), "gflops",
    "fraction_of_peak", "loadavg", "cpu"}; "threads" is None off the CPU."""
    import torch

    dev = torch.device(device)
    key = (dev.type, measure, allow_bf16, train)
    if not refresh and key in _cache:
        return dict(_cache[key])
    if dev.type != "cpu":
        choice = {"device": str(dev), "channels_last": False, "threads": None, "amp": "off",
                  "reason": f"{dev.type}: float32, layout as the trainer's default (only CPUs are measured here)",
                  "measured": {}, "speedup": None, "gflops": None, "fraction_of_peak": None,
                  "loadavg": None, "cpu": None}
        _cache[key] = choice
        return dict(choice)

    info = cpu_info()
    name = f"{_short_model(info)} ({_features(info)})"
    current = torch.get_num_threads()
    bf16_ok = allow_bf16 and has_bf16_units(info)
    why_not_bf16 = ("" if bf16_ok else
                    "bf16 not tried (the caller asked for float32)" if allow_bf16 is False and has_bf16_units(info)
                    else "no bfloat16 units → float32")
    if not measure:
        choice = {"device": "cpu", "channels_last": True, "threads": current, "amp": "off",
                  "reason": f"{name}: float32, channels-last, {current} threads (not measured)",
                  "measured": {}, "speedup": None, "gflops": None, "fraction_of_peak": None,
                  "loadavg": _loadavg(), "cpu": info["model"]}
        _cache[key] = choice
        return dict(choice)

    thread_options = sorted({1, current, info["usable_cores"]})
    amps = ["off", "bf16"] if bf16_ok else ["off"]
    baseline = (False, current, "off")
    # the float32 NCHW path at the current thread count first: it is always timed
    paths = [baseline] + [(cl, t, a) for a in amps for t in [current] + [t for t in thread_options if t != current]
                          for cl in (False, True) if (cl, t, a) != baseline]
    batch = 32 if train else 50         # training's batch is 64; 32 keeps the measurement within ~1 s
    runs, flops, shared = {}, 0, {}
    for cl, t, a in paths:
        fn, flops = rule_step(cl, a, batch=batch, train=train, shared=shared)
        runs[(cl, t, a)] = (t, fn)
    load_before = _loadavg()
    times = _time_candidates(runs, budget_s)
    timed = [p for p in paths if p in times]
    best = best32 = min((p for p in timed if p[2] == "off"), key=times.get)
    timed16 = [p for p in timed if p[2] == "bf16"]
    best16 = min(timed16, key=times.get) if timed16 else None
    if best16 and times[best16] * 1.1 <= times[best32]:     # bf16 changes the numbers: only for a clear gain
        best = best16
    cl, threads, amp = best
    peak = peak_fp32(info)
    gflops = flops / times[best] / 1e9
    fraction = gflops / (peak["gflops_per_core"] * threads) if peak["gflops_per_core"] else None

    def faster(other, text):
        return f"{times[other] / times[best]:.2f}× faster than {text}" if other in times else f"{text} not timed"
    if amp == "bf16":
        parts = [f"bf16 autocast {times[best32] / times[best]:.2f}× faster than float32 measured"]
    elif best16:
        parts = [f"float32 (bf16 autocast {times[best16] / times[best32]:.2f}× float32's time measured)"]
    else:
        parts = [why_not_bf16 or "bf16 not timed (budget)"]
    other_layout = "NCHW" if cl else "channels-last"
    parts.append(f"{'channels-last' if cl else 'NCHW'} " + faster((not cl, threads, amp), other_layout))
    others = [t for t in thread_options if t != threads]
    if others:
        parts.append(f"{threads} thread{'s' if threads > 1 else ''} "
                     + ", ".join(faster((cl, t, amp), f"{t}") for t in others))
    load = _loadavg()
    parts.append(f"{times[baseline] / times[best]:.2f}× float32 NCHW {current}t; "
                 f"{gflops:.0f} GFLOP/s{f' = {fraction:.0%} of fp32 peak' if fraction else ''}; "
                 f"load {load[0]:.1f}")
    choice = {
        "device": "cpu", "channels_last": cl, "threads": threads, "amp": amp,
        "reason": f"{name}: " + "; ".join(parts),
        "measured": {_label(*p): times[p] for p in timed}, "speedup": times[baseline] / times[best],
        "gflops": gflops, "fraction_of_peak": fraction, "peak": peak,
        "loadavg": [round(x, 2) for x in load], "loadavg_before": [round(x, 2) for x in load_before],
        "workload": f"rule step 32→32 3×3, batch {batch}, 28×28, {'forward+backward' if train else 'forward'}",
        "cpu": info["model"],
    }
    _cache[key] = choice
    return dict(choice)


def _loadavg() -> tuple:
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


MMAP_THRESHOLD = 4 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3      # glibc's mallopt parameters (malloc.h)


def _mallopt(*settings: tuple[int, int]) -> bool:
    """Set glibc malloc parameters ((parameter, value) pairs, in order); True where every one was set, False off
    glibc or where the user set one of them in the environment (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_:
    the user's choice wins)."""
    names = {_M_MMAP_THRESHOLD: "MALLOC_MMAP_THRESHOLD_", _M_TRIM_THRESHOLD: "MALLOC_TRIM_THRESHOLD_"}
    if any(names[param] in os.environ for param, _ in settings):
        return False
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
        return all(bool(mallopt(param, int(value))) for param, value in settings)
    except (OSError, AttributeError, TypeError):
        return False


def fix_mmap_threshold(nbytes: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at `nbytes`. The dynamic threshold rises to the largest block freed, after which
    the large per-step buffers of a long solve (a 201×201 geodesic maze) come from the heap and fragment it until
    the process is killed (docs/mazes.md, "Evaluation"). True where it was set; False off glibc, or where
    MALLOC_MMAP_THRESHOLD_ is set (the user's choice wins)."""
    return _mallopt((_M_MMAP_THRESHOLD, nbytes))


def retain_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of handing it back to the kernel. A BPTT training
    step frees its saved states (hundreds of MB) at every backward pass; by default glibc returns much of them,
    and the next step takes a page fault per 4 kB page again (docs/speed.md counts them). Blocks up
    to 32 MB (the most glibc allows) then come from the heap, whose freed top is kept up to 1 GB. True where set;
    False off glibc, or where MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ is set (the user's choice wins).
    Process-wide: training calls it for tasks whose `retain_freed_memory` is True (not the maze task, whose long
    solves of varying size fragment the heap; `fix_mmap_threshold`)."""
    # both: setting one turns glibc's dynamic thresholds off
    return _mallopt((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30))
