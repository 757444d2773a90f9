"""Data-aware pruning and weight sharing (``compress.reconstruct``) against the plain way."""

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from squeezenet.compress.kmeans import quantize
from squeezenet.compress.prune import bake, prune
from squeezenet.compress.reconstruct import compress_layer, input_hessian


def correlated_inputs(n: int, channels: int, seed: int = 0) -> torch.Tensor:
    """Non-negative, correlated feature maps, like a ReLU network's."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(channels, channels, generator=g)
    x = torch.einsum("nchw,dc->ndhw", torch.randn(n, channels, 9, 9, generator=g), mix)
    return x.relu()


@pytest.mark.parametrize("kernel", [1, 3])
def test_obs_beats_magnitude_and_kmeans_on_the_layers_output(kernel):
    torch.manual_seed(0)
    layer = nn.Conv2d(24, 40, kernel, padding=kernel // 2)
    x = correlated_inputs(64, 24)
    with torch.no_grad():
        reference = layer(x)
    plain, obs = nn.Sequential(copy.deepcopy(layer)), nn.Sequential(copy.deepcopy(layer))
    prune(plain, {"0": 0.4})  # role names of a bare Sequential are its module names
    quantize(plain, 4)
    hessian = input_hessian(obs, obs[0], x)
    compress_layer(obs[0], hessian, 0.4, 4)
    for model in (plain, obs):
        bake(model)
    weight = obs[0].weight.detach()
    assert (weight != 0).float().mean().item() == pytest.approx(0.4, abs=0.01)
    assert len(np.unique(weight[weight != 0].numpy())) <= 15
    with torch.no_grad():
        plain_error = (plain(x) - reference).square().mean()
        obs_error = (obs(x) - reference).square().mean()
    assert obs_error < 0.75 * plain_error  # measured: 0.55-0.60x


def test_layers_own_zeros_stay_zero_and_codes_index_the_centroids():
    torch.manual_seed(1)
    layer = nn.Conv2d(16, 8, 1)
    with torch.no_grad():
        layer.weight[layer.weight.abs() < 0.1] = 0.0
    zeros = layer.weight.detach() == 0
    model = nn.Sequential(layer)
    compress_layer(layer, input_hessian(model, layer, correlated_inputs(32, 16)), None, 3)
    shared = layer.parametrizations.weight[0]
    assert shared.codes[zeros].eq(0).all() and shared.codes[~zeros].gt(0).all()
    assert torch.equal(layer.weight, shared.codebook()[shared.codes])
    assert len(shared.centroids) == 7
    assert parametrize.is_parametrized(layer, "weight")
