"""Data-parallel training through torchrun + DDP (gloo on CPU): two processes train exactly what
one process trains with the same global batch."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from deqnca import load

# deterministic: zero initial state, so the two half-batch gradients average to the full-batch one
ARGS = ["-m", "deqnca.cli", "train", "--preset", "essay", "--device", "cpu", "--epochs", "1",
        "--train-subset", "256", "--test-subset", "64", "--batch-size", "32", "--lr", "0.05", "--seed", "3",
        "--set", "noise_std=0", "--set", 'solver_kw={"max_iter": 3}', "--set", "state_channels=8",
        "--set", "input_channels=4", "--json"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_torchrun_two_processes_match_single_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, *ARGS, "--out", str(tmp_path / "single")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          "--master_addr=127.0.0.1", f"--master_port={_free_port()}", *ARGS,
                          "--out", str(tmp_path / "ddp")], env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    summary = json.loads(ddp.stdout.strip().splitlines()[-1])      # printed by rank 0 only
    assert summary["epoch"] == 1
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["world_size"] == 2
    a, _ = load(tmp_path / "single" / "last")
    b, _ = load(tmp_path / "ddp" / "last")
    for (k, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(p, q, atol=1e-5, rtol=1e-4), k
