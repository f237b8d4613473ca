"""MNIST classification: the essay's model (eqs. 1-2) and its equilibrium sibling, as a task.

The presets (`PRESETS`: essay, essay-broyden, equilibrium, equilibrium-fast, -fixed, -v0) and the task's
options (`MnistConfig`) live in the torch-free `config.py`; docs/mnist.md has their numbers.
"""
from __future__ import annotations

import math

import torch

from deqnca.data.provenance import tensors_record
from deqnca.engine.trainer import TASKS, Batch, Task, epoch_order
from deqnca.tasks.mnist.config import PRESETS, MnistConfig, preset  # noqa: F401  (re-exported)
from deqnca.tasks.mnist.evaluate import as_layout, evaluate, residual_summary
from deqnca.tasks.mnist.model import EquilibriumModel, ModelConfig


def train(model_config: dict, cfg, out, data, device: str = "cpu", resume: bool = False, log=print, **fit_kw) -> dict:
    """Train an `EquilibriumModel` of `model_config` on `data` = (x, y, x_test, y_test) through the engine.

    Examples:
        >>> train(preset("essay").model, MnistConfig(epochs=1), "runs/try", data)  # doctest: +SKIP
    """
    from deqnca.engine.trainer import fit

    cfg = cfg if isinstance(cfg, MnistConfig) else MnistConfig.from_dict(cfg)
    cfg.model = ModelConfig.from_dict(model_config).to_dict()
    return fit(MnistTask(cfg, data), out, device=device, resume=resume, log=log, **fit_kw)


def check_same_images(data) -> None:
    """One-line errors for training data (x, y, x_test, y_test) the task cannot use as one data set: an empty
    split, or test images of another size (or channel count) than the training images."""
    x, _, xt, _ = data
    for name, images in (("training", x), ("test", xt)):
        if len(images) == 0:
            raise ValueError(f"the {name} set holds no images; pass --data-dir to a folder with the MNIST IDX files")
    if tuple(x.shape[1:]) != tuple(xt.shape[1:]):
        size = lambda t: f"{t.shape[-2]}×{t.shape[-1]}" + (f" ({t.shape[1]} channels)" if t.shape[1] != 1 else "")
        raise ValueError(f"the test images are {size(xt)} pixels, the training images {size(x)}: one data set "
                         "has one image size; pass --data-dir to a folder whose four files belong together")


def augment(x, shift: float, degrees: float, generator: torch.Generator):
    """Images x (B, C, H, W) each moved by up to `shift` pixels and rotated by up to `degrees` about the centre
    (bilinear, zeros outside), drawn from `generator`: the same generator state gives the same images.

    Examples:
        >>> x = torch.rand(2, 1, 28, 28)
        >>> torch.allclose(augment(x, 0.0, 0.0, torch.Generator().manual_seed(0)), x, atol=1e-5)
        True
    """
    import torch.nn.functional as F

    B, _, H, W = x.shape
    r = torch.rand(B, 3, generator=generator, device=generator.device).to(x.device) * 2 - 1
    angle = r[:, 0] * math.radians(degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(B, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin * H / W, sin * W / H, cos
    theta[:, 0, 2], theta[:, 1, 2] = r[:, 1] * shift * 2 / W, r[:, 2] * shift * 2 / H   # pixels -> [-1, 1] units
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False).to(x.dtype)


@TASKS.register("mnist")
class MnistTask(Task):
    """Classify MNIST digits with an `EquilibriumModel`; `data` = (x_train, y_train, x_test, y_test), `data_record`
    their identity (`deqnca.data.provenance.idx_data` gives both for an IDX folder; None: the tensors' hash)."""

    name = "mnist"
    Config = MnistConfig
    presets = PRESETS

    def __init__(self, cfg: MnistConfig, data, data_record: dict | None = None):
        super().__init__(cfg)
        check_same_images(data)
        self.data, self.data_record = data, data_record
        self.counters = {"fallback": 0}
        self.channels_last = cfg.channels_last      # "auto": the trainer's CPU path measures both (cpu_path.py)

    @property
    def chunk_candidates(self) -> tuple:
        """Rows per rollout chunk the CPU path times beside the whole batch (engine/cpu_path.py): a rollout
        solver only, whose map can be restricted to part of its batch."""
        model = getattr(self, "model", None)
        return (16,) if model is not None and model.solver_name == "rollout" and self.cfg.batch_size > 16 else ()

    @property
    def rows_per_chunk(self):
        """The rollout's chunk (`solver_kw.rows_per_chunk`; None: the whole batch at once)."""
        return self.model.solver_kw.get("rows_per_chunk")

    @rows_per_chunk.setter
    def rows_per_chunk(self, rows):
        if rows:
            self.model.solver_kw["rows_per_chunk"] = rows
        else:
            self.model.solver_kw.pop("rows_per_chunk", None)

    def setup(self):
        c, (x, y, xt, yt) = self.cfg, self.data
        if self.data_record is None:
            self.data_record = tensors_record(x, y, xt, yt)
        x, y = (x[:c.train_subset], y[:c.train_subset]) if c.train_subset else (x, y)
        self.test = (xt[:c.test_subset], yt[:c.test_subset]) if c.test_subset else (xt, yt)
        self.x, self.y = x.to(self.device), y.to(self.device)
        self.gen = torch.Generator(device=self.device)

    def build_model(self):
        return EquilibriumModel(self.cfg.model)

    def steps_per_epoch(self):
        return math.ceil(len(self.x) / self.cfg.batch_size)

    def start_epoch(self, epoch):
        self.perm = epoch_order(len(self.x), self.cfg.seed, epoch)

    def batch(self, epoch, index, global_step):
        c = self.cfg
        # state noise seeded per batch: a resumed run draws exactly the noise it would have drawn
        self.gen.manual_seed(c.seed * 1_000_003 + epoch * 10_007 + index + 7_919 * self.rank)
        rows = self.perm[index * c.batch_size:(index + 1) * c.batch_size]
        idx = rows[self.rank::self.world].to(self.device)
        xb = self.x[idx]
        if c.augment_shift or c.augment_rotate:
            xb = augment(xb, c.augment_shift, c.augment_rotate, self.gen)
        return Batch((as_layout(xb, self.channels_last, self.device), self.y[idx]), len(idx), len(rows), index)

    def loss(self, batch):
        xb, yb = batch.data
        loss, logits = self.model.loss(xb, yb, generator=self.gen, check_input=False)
        return loss, (loss, logits, self.model.last_stats)

    def capture(self, optimizer, batch):
        from deqnca.engine.graphs import CapturedStep, graph_unsupported_reason

        why_not = graph_unsupported_reason(self.model, self.cfg, self.device, self.world) \
            if self.cfg.cuda_graph != "off" else "cuda_graph is off"
        if why_not and self.cfg.cuda_graph == "on":
            raise ValueError(f"cuda_graph='on' but {why_not}; use cuda_graph='auto' or 'off'")
        if why_not:
            return None
        try:
            step = CapturedStep(self.model, optimizer, batch.data[0])
        except Exception as e:     # capture is an optimisation: fall back to eager steps
            self.log(f"CUDA-graph capture failed ({type(e).__name__}: {e}); training eagerly")
            optimizer.zero_grad(set_to_none=True)
            return None
        self.log(f"training step captured as a CUDA graph (batch {self.cfg.batch_size})")

        def replay(b):
            xb, yb = b.data
            loss, logits, stats = step(xb, yb, self.model.initial_state(xb, self.gen))
            return loss, (loss, logits, stats), bool(step.finite)
        replay.restore = step.restore
        return replay

    def after_step(self, batch, out, ok, step):
        loss, logits, stats = out
        self.counters["fallback"] += stats.fallback
        if ok:
            yb, rel = batch.data[1], stats.rel_residual
            self.meter.add("loss", loss.item() * len(yb), len(yb))
            self.meter.add("acc", (logits.argmax(1) == yb).sum().item(), len(yb))
            self.meter.add("rel", rel[torch.isfinite(rel)].mean().item() if torch.isfinite(rel).any() else 0)
            self.meter.add("nstep", stats.nstep)

    def end_epoch(self, epoch, global_step, elapsed):
        c, m, model = self.cfg, self.meter, self.model
        model.calibrate_readout_norm(as_layout(self.x[:2000], self.channels_last, self.device), c.eval_batch_size,
                                     seed=math.ceil(epoch) - 1)
        ev = evaluate(model, *self.test, c.eval_batch_size, seed=12345, channels_last=self.channels_last)
        rec = {"epoch": epoch, "train_loss": m.mean("loss", 0.0), "train_acc": m.mean("acc", 0.0),
               "train_rel_mean": m.mean("rel", 0.0), "train_nstep": m.mean("nstep", 0.0),
               "test_acc": ev["accuracy"], "test_nstep": ev["nstep_mean"],
               **{f"test_{k}": v for k, v in residual_summary(ev["rel_residual"]).items()},
               "elapsed_s": elapsed, **self.counters}
        self.log(f"epoch {epoch:g}: loss {rec['train_loss']:.4f} train {rec['train_acc']:.4f} test "
                 f"{rec['test_acc']:.4f} rel median {rec['test_rel_median']:.2e} nstep {rec['test_nstep']:.1f}")
        return rec
