"""A whole training step — rollout, loss, BPTT, optimiser step — replayed as one CUDA graph.

At the essay's batch of 64 a 16-step rollout with BPTT is ~250 tiny kernels per step: the GPU waits
on Python launching them (docs/speed.md). Captured once, the step replays with one launch and the
same arithmetic. What the graph fixes, and how the trainer keeps its guarantees:

* Tensors are static: each step copies its batch and its state noise into the captured input
  buffers (noise from the same per-batch generator as the eager loop, so resumes stay exact).
* SGD's learning rate is baked in: only a constant schedule is captured with SGD. Adam runs in
  its `capturable` mode with the learning rate as a device tensor, which the trainer's schedule
  fills in place every step (`engine.step.GuardedStep.set_lr`), so schedules work.
* The optimiser state is captured too (SGD momentum buffers, updated in place). Capturing needs a
  few warm-up steps on a side stream; they change the weights, so weights and buffers are
  snapshotted before and written back (in place: the graph holds their addresses) after.
* A non-finite step has already been applied when the host sees it: `restore` writes the last good
  weights back in place and zeroes the momentum, the graph's counterpart of the eager restore.

* The model's `after_update` (the contractive rule's renormalisation, device-only) is captured after
  the optimiser step.

What can be captured: a fixed-length forward pass (the `rollout` solver) with BPTT, the phantom
gradient, or the implicit gradient with a fixed-length adjoint (`b_solver="rollout"`): no
data-dependent loop, no host read. Used by the engine's step (`engine.step`) when `TrainConfig.cuda_graph` is "auto"
(on CUDA, one process) or "on".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def graph_unsupported_reason(model, cfg, device: str, world: int) -> str | None:
    """None when the step can be captured, else why not (one line)."""
    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return "CUDA graphs need a CUDA device"
    if world > 1:
        return "CUDA-graph capture is single-process here (DDP runs eagerly)"
    return step_unsupported_reason(model, cfg)


def step_unsupported_reason(model, cfg) -> str | None:
    """The device-independent part: None when the model's step has a fixed shape, else why not."""
    c = model.config
    if c.solver != "rollout":
        return (f"only a fixed-length forward pass (solver 'rollout') can be captured, not {c.solver!r} "
                "(its stopping test reads the host)")
    if c.gradient == "implicit" and (c.gradient_kw or {}).get("b_solver") != "rollout":
        return "the implicit gradient is captured only with a fixed-length adjoint (b_solver 'rollout')"
    if c.gradient not in ("bptt", "phantom", "implicit"):
        return f"gradient {c.gradient!r} is not captured"
    if c.readout != "global":
        return "only the global read-out is captured"
    if cfg.optimizer == "sgd" and cfg.schedule != "constant":
        return "SGD is captured only at a constant learning rate (the rate is baked into the graph)"
    if cfg.optimizer not in ("sgd", "adam"):
        return f"optimizer {cfg.optimizer!r} is not captured"
    if cfg.grad_clip:
        return "gradient clipping is not captured"
    if getattr(cfg, "amp", "off") == "bf16":       # "auto" is float32 on a GPU (trainer.resolve_amp)
        return "bfloat16 autocast is not captured (not yet measured on a GPU)"
    return None


class CapturedStep:
    def __init__(self, model, optimizer, x_example, warmup: int = 3):
        self.model, self.optimizer = model, optimizer
        device = x_example.device
        self.batch = x_example.shape[0]
        self.x = torch.zeros_like(x_example)
        self.y = torch.zeros(self.batch, dtype=torch.long, device=device)
        self.z0 = torch.zeros(self.batch, model.config.state_channels, *x_example.shape[2:], device=device,
                              dtype=x_example.dtype)
        params = [p for p in model.parameters()]
        if isinstance(optimizer, torch.optim.Adam):
            # capturable Adam: step counters and the learning rate live on the device, so a replay
            # reads the current values (a float lr would be baked in at capture)
            for group in optimizer.param_groups:
                group["capturable"] = True
                group["lr"] = torch.tensor(float(group["lr"]), device=device)
            for state in optimizer.state.values():
                if torch.is_tensor(state.get("step")):
                    state["step"] = state["step"].to(device=device, dtype=torch.float32)
        # parameters and buffers (read-out statistics, power-iteration vectors): the warm-up moves both
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        # a resumed run arrives with momentum buffers: they are updated in place by the warm-up
        # and the capture, so keep their values to write back
        saved_state = {id(p): {k: v.detach().clone() for k, v in optimizer.state[p].items() if torch.is_tensor(v)}
                       for p in params if p in optimizer.state}

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                optimizer.zero_grad(set_to_none=True)
                loss, _ = self._step_body()
                loss.backward()
                self._update()
            del loss        # a live autograd graph from the side stream would follow us into the capture
        torch.cuda.current_stream().wait_stream(stream)

        self.graph = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            loss, logits = self._step_body()
            loss.backward()
            self._update()
            grads = [p.grad for p in params if p.grad is not None]
            # one flag for the host: loss, gradients and the updated weights all finite
            finite = torch.isfinite(loss)
            for t in grads + params:
                finite = finite & torch.isfinite(t).all()
        self.loss, self.logits, self.finite = loss, logits, finite
        self.stats = model.last_stats
        with torch.no_grad():
            own = model.state_dict()
            for k, v in saved.items():
                own[k].copy_(v)
            self.zero_momentum()
            for p in params:
                for k, v in saved_state.get(id(p), {}).items():
                    optimizer.state[p][k].copy_(v)

    def _update(self):
        self.optimizer.step()
        self.model.after_update()

    def _step_body(self):
        logits = self.model(self.x, z0=self.z0, check_input=False)
        return F.cross_entropy(logits, self.y), logits

    @torch.no_grad()
    def zero_momentum(self):
        """SGD momentum, or Adam's moments and step counts, back to zero — in place."""
        for state in self.optimizer.state.values():
            for v in state.values():
                if torch.is_tensor(v) and v.is_floating_point():
                    v.zero_()

    def __call__(self, xb, yb, z0):
        if xb.shape[0] != self.batch:
            raise ValueError("captured step replayed with a different batch size")
        self.x.copy_(xb)
        self.y.copy_(yb)
        self.z0.copy_(z0)
        self.graph.replay()
        return self.loss, self.logits, self.stats

    @torch.no_grad()
    def restore(self, good_state: dict):
        """The last good weights back into the captured parameters, momentum reset."""
        own = self.model.state_dict()
        for k, v in good_state.items():
            own[k].copy_(v)
        self.zero_momentum()
