"""The MNIST-1D models and the model registry."""

import pytest
import torch
from torch import nn

from polyak.bench.models import MODELS, describe, get_model
from polyak.bench.models.mnist1d import CNN, MLP


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_cnn_matches_the_papers_architecture():
    model = CNN()
    # conv 1->25 k5, 25->25 k3 (x2), BN (gamma, beta) after each, linear 25*5 -> 10:
    # lengths 40 -> (40+2-5)//2+1 = 19 -> (19+2-3)//2+1 = 10 -> (10+2-3)//2+1 = 5
    expected = (25 * 1 * 5 + 25) + 2 * (25 * 25 * 3 + 25) + 3 * 2 * 25 + (125 * 10 + 10)
    assert n_params(model) == expected
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == 3
    out = model(torch.randn(7, 1, 40))
    assert out.shape == (7, 10)
    assert model(torch.randn(7, 40)).shape == (7, 10)  # flat inputs are accepted too


def test_cnn_without_batchnorm_has_no_buffers():
    model = CNN(channels=4, batchnorm=False)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    assert list(model.buffers()) == []
    assert n_params(model) == (4 * 5 + 4) + 2 * (4 * 4 * 3 + 4) + (4 * 5 * 10 + 10)


def test_mlp_is_40_100_100_10():
    model = MLP()
    assert n_params(model) == (40 * 100 + 100) + (100 * 100 + 100) + (100 * 10 + 10)
    x = torch.randn(3, 1, 40)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    h = torch.relu(linears[0](x.flatten(1)))
    h = torch.relu(linears[1](h))
    torch.testing.assert_close(model(x), linears[2](h))


@pytest.mark.parametrize("cls,kwargs,name", [(CNN, {"channels": 0}, "channels"),
                                             (CNN, {"length": 2}, "length"),
                                             (MLP, {"hidden": -1}, "hidden")])
def test_invalid_sizes(cls, kwargs, name):
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        cls(**kwargs)


def test_registry():
    assert isinstance(get_model("mnist1d-cnn", channels=3), CNN)
    assert isinstance(get_model("mnist1d-mlp"), MLP)
    with pytest.raises(ValueError, match="mnist1d-cnn"):
        get_model("resnet-1000")
    assert {name for name, _ in describe()} == set(MODELS)
    assert all(text for _, text in describe())
