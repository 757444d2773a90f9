"""Pruning profiles and masks, k-means weight sharing, centroid gradients."""

import numpy as np
import pytest
import torch
from torch import nn

import squeezenet
from squeezenet.compress import kmeans, prune
from squeezenet.errors import SqueezeNetError


def test_kmeans_finds_clusters_from_a_linear_start():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(c, 0.01, 500) for c in (-0.5, 0.1, 0.3)])
    centroids, assignment = kmeans.kmeans_1d(values, 3)
    np.testing.assert_allclose(np.sort(centroids), [-0.5, 0.1, 0.3], atol=0.005)
    nearest = np.abs(values[:, None] - centroids[None]).argmin(1)
    np.testing.assert_array_equal(assignment, nearest)


def test_magnitude_mask_keeps_the_largest():
    weight = torch.tensor([[0.1, -0.9, 0.3], [0.5, -0.2, 0.05]])
    mask = prune.magnitude_mask(weight, 0.5)
    assert mask.tolist() == [[False, True, True], [True, False, False]]


def test_profiles_and_their_errors():
    model = squeezenet.create_model("squeezenet1_1")
    roles = prune.layer_roles(model)
    assert len(roles) == 26 and list(roles)[:2] == ["conv1", "fire2.squeeze"]
    released = prune.resolve_profile("released", model)
    assert released["fire2.expand3x3"] == 0.33 and released["conv10"] == 0.2
    assert prune.resolve_profile("auto", model) == released  # a dense model
    custom = prune.resolve_profile("*.expand3x3=0.4,conv10=0.3", model)
    assert custom["fire9.expand3x3"] == 0.4 and custom["conv10"] == 0.3
    assert custom["fire9.squeeze"] == 1.0
    assert set(prune.resolve_profile("0.5", model).values()) == {0.5}
    for bad in ("lots", "conv10=2", "nosuch=0.5"):
        with pytest.raises(SqueezeNetError, match="--sparsity"):
            prune.resolve_profile(bad, model)


def test_pruning_is_iterative_and_keeps_earlier_zeros():
    model = squeezenet.create_model("squeezenet1_1")
    target = prune.resolve_profile("released", model)
    steps = prune.schedule(target, 3)
    for step in steps:
        before = {r: m.weight.detach() == 0 for r, m in prune.layer_roles(model).items()}
        prune.prune(model, step)
        for role, module in prune.layer_roles(model).items():
            zero = module.weight.detach() == 0
            assert zero[before[role]].all()
            assert prune.density(module.weight) == pytest.approx(step[role], abs=1e-3)
    prune.bake(model)
    assert prune.resolve_profile("auto", model) == pytest.approx(target, abs=1e-3)


def test_quantize_shares_weights_and_sums_cluster_gradients():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3)
    with torch.no_grad():
        conv.weight[conv.weight.abs() < 0.05] = 0
    zeros = conv.weight.detach() == 0
    model = nn.Sequential(conv)
    kmeans.quantize(model, 3)
    weight = conv.weight.detach()
    assert len(torch.unique(weight[~zeros])) <= 7 and (weight[zeros] == 0).all()
    shared = conv.parametrizations.weight[0]
    grad_out = torch.randn(2, 8, 6, 6)
    x = torch.randn(2, 4, 8, 8)
    model(x).mul(grad_out).sum().backward()
    w = weight.clone().requires_grad_()
    nn.functional.conv2d(x, w, conv.bias).mul(grad_out).sum().backward()
    expected = torch.zeros(8).index_add_(0, shared.codes.flatten(), w.grad.flatten())[1:]
    torch.testing.assert_close(shared.centroids.grad, expected)
    books = kmeans.codebooks(model)
    assert books["0.weight"][0] == 0 and len(books["0.weight"]) == 8
