"""The MNIST recipe's parts: the strided encoder (the state on every second pixel) and the training
augmentation (random shifts and rotations, drawn so that a resumed run sees the same images)."""
import math

import pytest
import torch

from deqnca.core.configs import ConfigError
from deqnca.tasks.mnist.model import EquilibriumModel, count_parameters
from deqnca.tasks.mnist.task import MnistConfig, MnistTask, augment

EQ = {"rule": "contractive_tanh", "rule_kw": {"gamma": 0.9}, "solver": "fixed_point",
      "solver_kw": {"max_iter": 60, "tol": 1e-4}, "gradient": "implicit", "readout_norm": "batch"}


def _centre_of_mass(img):
    h, w = img.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    m = img.double().sum()
    return torch.stack([(img.double() * ys).sum() / m, (img.double() * xs).sum() / m])


def test_no_augmentation_is_the_identity_and_a_seed_gives_the_same_images():
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(augment(x, 0.0, 0.0, torch.Generator().manual_seed(0)), x, atol=1e-5)
    a = augment(x, 2.0, 10.0, torch.Generator().manual_seed(3))
    assert torch.equal(a, augment(x, 2.0, 10.0, torch.Generator().manual_seed(3)))
    assert not torch.allclose(a, augment(x, 2.0, 10.0, torch.Generator().manual_seed(4)))


def test_a_shift_moves_a_blob_by_at_most_the_bound_and_a_rotation_turns_it_by_at_most_its_angle():
    blob = torch.zeros(1, 1, 28, 28)
    blob[0, 0, 13:15, 19:21] = 1.0                   # 6 pixels right of the centre (13.5, 13.5)
    x = blob.expand(200, 1, 28, 28).contiguous()
    before = _centre_of_mass(blob[0, 0])
    shifted = augment(x, 2.0, 0.0, torch.Generator().manual_seed(0))
    moves = torch.stack([_centre_of_mass(s[0]) - before for s in shifted])
    assert moves.abs().max() <= 2.0 + 1e-3 and moves.abs().max() > 1.5      # the whole range is used
    turned = augment(x, 0.0, 20.0, torch.Generator().manual_seed(0))
    centre = torch.tensor([13.5, 13.5], dtype=torch.float64)
    angles = []
    for t in turned:
        dy, dx = (_centre_of_mass(t[0]) - centre).tolist()
        assert math.hypot(dy, dx) == pytest.approx(6.0, abs=0.05)            # a rotation about the centre
        angles.append(math.degrees(math.atan2(dy, dx)))
    assert max(abs(a) for a in angles) <= 20.0 + 0.5 and max(angles) > 15 and min(angles) < -15


def test_a_batch_is_the_same_images_when_drawn_again_as_a_resumed_run_draws_it(mnist_small):
    x, y, xt, yt = mnist_small
    cfg = MnistConfig(batch_size=16, augment_shift=2.0, augment_rotate=10.0, channels_last="off",
                      model=dict(EQ))
    task = MnistTask(cfg, (x[:64], y[:64], xt[:16], yt[:16]))
    task.device, task.rank, task.world = torch.device("cpu"), 0, 1
    task.setup()
    task.start_epoch(1)
    first = task.batch(1, 2, 6).data[0]
    task.batch(1, 3, 7)
    again = task.batch(1, 2, 6).data[0]
    assert torch.equal(first, again) and not torch.equal(first, x[task.perm[32:48]])


def test_a_strided_encoder_halves_the_grid_with_the_same_parameters_at_any_size():
    plain, strided = EquilibriumModel(dict(EQ)), EquilibriumModel({**EQ, "input_stride": 2})
    assert count_parameters(plain) == count_parameters(strided)
    strided.eval()
    for h, w in ((28, 28), (29, 31), (5, 4)):
        z, stats = strided.solve(torch.rand(3, 1, h, w))
        assert z.shape == (3, 32, (h + 1) // 2, (w + 1) // 2) and (stats.rel_residual <= 1e-4).all()
        assert strided(torch.rand(3, 1, h, w)).shape == (3, 10)


def test_a_strided_encoder_with_a_per_cell_read_out_or_on_the_live_page_is_refused():
    with pytest.raises(ConfigError, match="input_stride 1"):
        EquilibriumModel({**EQ, "readout": "cell", "input_stride": 2})
    from deqnca.web.export import mnist_spec

    with pytest.raises(ValueError, match="input_stride 2"):
        mnist_spec(EquilibriumModel({**EQ, "input_stride": 2}).eval(), "strided")


@pytest.mark.slow               # ~10 s: 300 test images solved from three starts
def test_the_shipped_strided_model_reaches_one_fixed_point_from_three_starts():
    """`mnist-strided`: at most 16,000 parameters, every image within the solver's tolerance (1e-4) of its fixed
    point from noise of two seeds and from zeros, the same predictions from all three."""
    import deqnca
    from deqnca.data.idx import load_mnist

    model, meta = deqnca.load("mnist-strided", kind="mnist")
    assert count_parameters(model) <= 16_000 and model.config.input_stride == 2
    x, y = load_mnist(split="test")
    x, y = x[:300], y[:300]
    predictions = []
    with torch.no_grad():
        for seed in (0, 1, None):
            z0 = model.initial_state(x, torch.Generator().manual_seed(seed or 0))
            logits = model(x, z0=torch.zeros_like(z0) if seed is None else z0, check_input=False)
            assert model.last_stats.rel_residual.max() <= 1e-4, seed
            predictions.append(logits.argmax(1))
    assert all(torch.equal(p, predictions[0]) for p in predictions)
    assert (predictions[0] == y).float().mean() >= 0.97
