"""Data-aware pruning and weight sharing (``compress.reconstruct``) against the plain way."""

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import squeezenet
from squeezenet.compress.kmeans import quantize
from squeezenet.compress.prune import bake, layer_roles, prune
from squeezenet.compress.reconstruct import Calibration, LayerProblem, compress_layer


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
    (hessian,) = Calibration(obs, x).hessians([obs[0]])
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
    (hessian,) = Calibration(model, correlated_inputs(32, 16)).hessians([layer])
    compress_layer(layer, hessian, None, 3)
    shared = layer.parametrizations.weight[0]
    assert shared.codes[zeros].eq(0).all() and shared.codes[~zeros].gt(0).all()
    assert torch.equal(layer.weight, shared.codebook()[shared.codes])
    assert len(shared.centroids) == 7
    assert parametrize.is_parametrized(layer, "weight")


def test_block_by_block_inputs_are_the_whole_models():
    """Walking SqueezeNet block by block gives the Hessians a full forward per layer gives."""
    model = squeezenet.create_model("squeezenet1_1", num_classes=10)
    x = torch.rand(6, 3, 96, 96)
    roles = layer_roles(model)
    walked = Calibration(model, x, batch_size=4)
    whole = Calibration(nn.Sequential(model), x, batch_size=4)  # not a chain: one block
    assert len(walked.blocks) > 1 and len(whole.blocks) == 1
    for group in (["conv1"], ["fire3.expand1x1", "fire3.expand3x3"], ["conv10"]):
        modules = [roles[r] for r in group]
        for a, b in zip(walked.hessians(modules), whole.hessians(modules), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-6)
    torch.testing.assert_close(walked.outputs(5), model(x[:5]).detach())


def test_sharing_at_several_widths_in_one_sweep_equals_one_at_a_time():
    torch.manual_seed(2)
    layer = nn.Conv2d(16, 8, 3, padding=1)
    (hessian,) = Calibration(nn.Sequential(layer), correlated_inputs(32, 16)).hessians([layer])
    problem = LayerProblem.of(layer, hessian)
    pruned = problem.prune(0.5)
    together = problem.share_widths(pruned, [2, 5])
    for (w, centroids), bits in zip(together, [2, 5], strict=True):
        alone, alone_centroids = problem.share_widths(pruned, [bits])[0]
        torch.testing.assert_close(w, alone)
        assert torch.equal(centroids, alone_centroids) and len(centroids) == 2**bits - 1
