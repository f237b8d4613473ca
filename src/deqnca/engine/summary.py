"""A checkpoint's record in a few lines for people (`deqnca info`); `deqnca info --json` prints all of it."""
from __future__ import annotations

import textwrap

from deqnca.core.fileio import strict_json
from deqnca.data.provenance import describe as describe_data

# the training options worth a glance, in this order (the rest is in --json)
_TRAIN_KEYS = ("trainer", "variant", "target", "optimizer", "lr", "momentum", "batch_size", "epochs", "steps",
               "time_budget", "schedule", "train_size", "amp", "seed")
_METRIC_KEYS = ("test_acc", "train_acc", "train_loss", "loss", "test_rel_median", "test_frac_below_1e-3",
                "test_nstep", "val_solved_9", "loss_grown", "skipped_steps", "restored", "divergences", "extinctions")


def _value(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "(" + ", ".join(f"{k}={_value(x)}" for k, x in v.items()) + ")" if v else ""
    return str(v)


def _kind(meta: dict) -> str:
    """What the checkpoint holds, as its model kind describes it (`CellularModel.describe_config`); a kind
    with no model class registered (e.g. the CNN baseline's) is named by itself."""
    from deqnca.core.configs import load_dataclass
    from deqnca.engine.checkpoint import checkpoint_kind, model_class

    kind = checkpoint_kind(meta)
    try:
        cls = model_class(kind)
        return cls.describe_config(load_dataclass(cls.Config, meta.get("model_config"), what="model config"))
    except (TypeError, ValueError):     # no such kind, or a config it cannot read: `deqnca info` still prints
        return f"{kind} checkpoint"


def _model_line(config: dict) -> str:
    """`rule residual_tanh(state_init_scale=0.1), solver rollout(max_iter=16), ...`: each part with its options."""
    parts, used = [], set()
    for part in ("rule", "conditioning", "solver", "gradient", "readout"):
        if part in config:
            parts.append(f"{part} {config[part]}{_value(config.get(part + '_kw', {}))}")
            used |= {part, part + "_kw"}
    rest = [f"{k} {_value(v)}" for k, v in config.items() if k not in used and _value(v) != ""]
    return ", ".join(parts + rest)


def _last_metrics(meta: dict) -> dict:
    for history in (meta.get("history"), meta.get("maze", {}).get("history")):
        if history:
            return history[-1]
    if meta.get("metrics"):
        return meta["metrics"]
    return {k: v for k, v in meta.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def describe_checkpoint(meta: dict, name: str) -> str:
    """A few lines: what `name` is, its size, its configuration, its last metrics and where it came from.

    Examples:
        >>> print(describe_checkpoint({"kind": "cnn", "parameters": 15410, "model_config": {"width": 16}}, "x"))
        x: cnn checkpoint, 15,410 parameters
          model     width 16
    """
    kind, data = _kind(meta), meta.get("data") if isinstance(meta.get("data"), dict) else None
    if data and data.get("name") not in (None, "mnist") and kind.startswith("MNIST "):
        kind = f"{data['name']} {kind[len('MNIST '):]}"          # an MNIST-layout classifier of other data
    lines = [f"{name}: {kind}" + (f", {meta['parameters']:,} parameters" if "parameters" in meta else "")]
    if data:
        lines.append(f"  data      trained on {describe_data(data)}")
    if isinstance(meta.get("model_config"), dict):
        lines.append(f"  model     {_model_line(meta['model_config'])}")
    train = meta.get("train_config") or {}
    picked = [f"{k} {_value(train[k])}" for k in _TRAIN_KEYS
              if train.get(k) not in (None, "") and not (k == "time_budget" and not train[k])]
    if picked:
        lines.append(f"  training  {', '.join(picked)}")
    metrics = _last_metrics(meta)
    shown = [f"{k} {_value(metrics[k])}" for k in _METRIC_KEYS if k in metrics]
    if meta.get("counters"):
        shown += [f"{k} {v}" for k, v in meta["counters"].items() if f"{k} " not in " ".join(shown)]
    if shown:
        where = next((f"{k} {_value(metrics[k])}" for k in ("epoch", "global_step", "step") if k in metrics), "")
        if not where and "step" in meta:
            where = f"step {meta['step']}"
        lines.append(f"  metrics   {', '.join(shown)}" + (f" (at {where})" if where else ""))
    prov = meta.get("provenance") or {k: meta[k] for k in ("machine", "date") if isinstance(meta.get(k), str)}
    if prov.get("machine") or prov.get("date"):
        machine, date = prov.get("machine", ""), prov.get("date", "")
        lines.append(f"  trained   {machine}" + (f", {date}" if date and date not in machine else ""))
    if prov.get("command"):
        lines.append(f"  command   {prov['command'].replace('experiments/', 'scripts/')}")   # moved there
    if meta.get("weights_file"):
        digest = meta.get("weights_sha256", "")
        lines.append(f"  weights   {meta['weights_file']}" + (f" (sha256 {digest[:12]}…)" if digest else ""))
    # wrap between the comma-separated items only (a no-break space holds each item together)
    lines = [line[:12] + ", ".join(item.replace(" ", "\xa0") for item in line[12:].split(", "))
             if line[2:12].strip() in ("model", "training", "metrics") else line for line in lines]
    return "\n".join(textwrap.fill(line, 110, subsequent_indent=" " * 12, break_on_hyphens=False)
                     for line in lines).replace("\xa0", " ")


def record_json(meta: dict) -> str:
    """The whole record as indented JSON, without the optimizer's state; strict JSON: a NaN or infinite number
    in the record (a diverged run's loss, say) is written as null, never as NaN or Infinity."""
    return strict_json({k: v for k, v in meta.items() if k != "optimizer"}, indent=1)
