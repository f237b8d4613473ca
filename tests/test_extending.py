"""Extending deqnca from outside the package: a user's rule trains through the API and the CLI; a model
trained in a user's own loop evaluates right; every option is reachable; bad compositions fail clearly."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import deqnca
from deqnca.cli import main

PLUGIN = Path(__file__).parent / "plugins" / "leaky_rule.py"
SMALL = {"input_channels": 4, "state_channels": 8, "hidden": 16}


def _cli_train(tmp_path, *extra):
    return main(["train", "--train-subset", "128", "--test-subset", "32", "--epochs", "1", "--batch-size", "32",
                 "--device", "cpu", "--json", "--out", str(tmp_path), *extra])


def test_a_registered_user_rule_trains_through_the_api_and_the_cli(mnist_small, tmp_path, capsys):
    from deqnca.engine.commandline import load_plugins

    load_plugins([str(PLUGIN)])                       # registers "leaky_tanh", as --plugin does

    assert "leaky_tanh" in deqnca.RULES.names()
    model_config = {**SMALL, "rule": "leaky_tanh", "solver": "rollout", "solver_kw": {"max_iter": 4},
                    "gradient": "bptt"}
    x, y, xt, yt = mnist_small
    cfg = deqnca.MnistConfig(epochs=1, batch_size=32, lr=0.05, model=model_config)
    result = deqnca.fit(deqnca.MnistTask(cfg, (x[:256], y[:256], xt[:64], yt[:64])), tmp_path / "api",
                        log=lambda s: None, progress=False)
    assert type(result["model"].rule).__name__ == "LeakyTanhRule" and result["history"][-1]["train_loss"] > 0
    rc = _cli_train(tmp_path / "cli", "--plugin", str(PLUGIN), "--set", "rule=leaky_tanh", "--set", "rule_kw.leak=0.3",
                    *[a for k, v in SMALL.items() for a in ("--set", f"{k}={v}")], "--set", 'solver_kw={"max_iter": 3}')
    assert rc == 0, capsys.readouterr().err
    config = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert config["model"]["rule"] == "leaky_tanh" and config["model"]["rule_kw"] == {"leak": 0.3}
    model, _ = deqnca.load(tmp_path / "cli" / "last")
    assert type(model.rule).__name__ == "LeakyTanhRule"


def test_a_model_trained_in_a_plain_loop_evaluates_like_the_engine(mnist_small):
    # the read-out BatchNorm's running averages lag the weights; the model re-estimates its statistics
    # for the final weights itself when it first runs in eval mode (1 epoch of 3,000 images at 14x14:
    # 46.6% in eval mode against 46.7% by the engine's evaluation, 10.7% with the lagging averages)
    x, y, _, _ = mnist_small
    xt, yt = deqnca.load_mnist(split="test")
    x, xt, yt = F.avg_pool2d(x[:3000], 2), F.avg_pool2d(xt[:1000], 2), yt[:1000]
    torch.manual_seed(0)
    model = deqnca.EquilibriumModel({"rule": "contractive_tanh", "rule_kw": {"gamma": 0.9, "renormalize": True},
                                     "solver": "rollout", "solver_kw": {"max_iter": 8}, "gradient": "bptt",
                                     "readout_norm": "batch", "input_channels": 8, "state_channels": 16})
    opt = torch.optim.Adam(model.parameters(), lr=4e-3)
    for start in range(0, len(x), 32):
        loss = F.cross_entropy(model(x[start:start + 32]), y[start:start + 32])
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.after_update()                 # the rule's renormalisation, as the engine does
    lagging = {k: v.clone() for k, v in model.readout.norm.state_dict().items()}
    model.eval()
    with torch.no_grad():
        mine = (model(xt).argmax(1) == yt).float().mean().item()
    model.calibrate_readout_norm(x[:2000], seed=0)           # what the engine does before its evaluation
    engine = deqnca.evaluate(model, xt, yt)["accuracy"]
    assert engine > 0.35 and abs(mine - engine) <= 0.01, (mine, engine)
    model.readout.norm.load_state_dict(lagging)
    model._norm_stale = False
    assert deqnca.evaluate(model, xt, yt)["accuracy"] < engine - 0.2     # the trap this guards against


def test_every_option_is_reachable_and_wrong_keys_are_usage_errors(tmp_path, capsys):
    assert _cli_train(tmp_path / "a", "--preset", "equilibrium-fixed", "--set", "schedule=cosine",
                      "--set", "warmup_steps=2", "--set", "solver_kw.max_iter=3", "--set", "gradient_kw.b_max_iter=3",
                      *[a for k, v in SMALL.items() for a in ("--set", f"{k}={v}")]) == 0
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["train"]["schedule"] == "cosine" and config["train"]["warmup_steps"] == 2
    assert config["model"]["solver_kw"] == {"max_iter": 3}
    capsys.readouterr()
    assert _cli_train(tmp_path / "b", "--set", "shedule=cosine") == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "schedule" in err and "state_channels" in err
    assert _cli_train(tmp_path / "b", "--set", "schedule=sometimes") == 2
    (tmp_path / "cfg.json").write_text(json.dumps({"train": {"lr": "fast"}}))
    assert _cli_train(tmp_path / "b", "--config", str(tmp_path / "cfg.json")) == 2
    assert "expected float" in capsys.readouterr().err


def test_runs_are_never_overwritten_and_resume_keeps_the_run_as_it_was(tmp_path, capsys):
    tiny = [a for k, v in SMALL.items() for a in ("--set", f"{k}={v}")] + ["--set", 'solver_kw={"max_iter": 2}']
    assert _cli_train(tmp_path / "r", *tiny) == 0
    capsys.readouterr()
    assert _cli_train(tmp_path / "r", *tiny) == 2                       # a fresh run into a run folder
    assert "--resume" in capsys.readouterr().err
    assert _cli_train(tmp_path / "r", *tiny, "--resume", "--lr", "0.5") == 2   # would change the run
    assert "lr" in capsys.readouterr().err
    assert _cli_train(tmp_path / "r", *tiny, "--resume", "--epochs", "2") == 0  # how long it trains may change
    assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 2
    assert _cli_train(tmp_path / "r", *tiny, "--overwrite") == 0
    assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 1


def test_compositions_that_do_not_fit_say_what_does():
    with pytest.raises(ValueError, match="unknown rule 'growing'; choose one of contractive_tanh"):
        deqnca.EquilibriumModel({"rule": "growing", "rule_kw": {}})      # the growing NCA's rule is its own
    deqnca.RULES.register("no_bind_rule", torch.nn.Identity)
    try:
        with pytest.raises(ValueError, match="does not fit EquilibriumModel.*contractive_tanh"):
            deqnca.EquilibriumModel({"rule": "no_bind_rule"})
    finally:
        deqnca.RULES.unregister("no_bind_rule")
    with pytest.raises(ValueError, match="unknown solver 'newton'; choose one of anderson, broyden"):
        deqnca.EquilibriumModel({"solver": "newton"})
    with pytest.raises(ValueError, match="valid keys: rule, rule_kw"):
        deqnca.ModelConfig.from_dict({"rulez": "x"})
    from deqnca.tasks.maze import model as _maze_model  # noqa: F401  (registers the maze rules)

    assert all(callable(getattr(deqnca.RULES.get(n), "bind", None)) for n in deqnca.RULES), "one rule protocol"
    for registry in (deqnca.RULES, deqnca.CONDITIONINGS, deqnca.solvers.SOLVERS, deqnca.GRADIENTS, deqnca.READOUTS,
                     deqnca.TASKS, deqnca.MODELS):
        assert len(registry) >= 2 and registry.protocol
