import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def mnist_small():
    """First 3000 training and 500 test images of the vendored MNIST."""
    from deqnca.data.idx import load_mnist

    x, y = load_mnist(split="train")
    xt, yt = load_mnist(split="test")
    return x[:3000].clone(), y[:3000].clone(), xt[:500].clone(), yt[:500].clone()
