"""Architectures: parameter counts, torchvision key layout, variants, classifier reset."""

import pytest
import torch

from squeezenet.errors import SqueezeNetError
from squeezenet.models import build_model, list_models
from squeezenet.models.stats import model_stats

# torchvision's squeezenet1_1 state-dict keys for one Fire module and the classifier.
TV_KEYS_1_1 = {
    "features.0.weight", "features.0.bias",
    "features.3.squeeze.weight", "features.3.squeeze.bias",
    "features.3.expand1x1.weight", "features.3.expand1x1.bias",
    "features.3.expand3x3.weight", "features.3.expand3x3.bias",
    "features.12.expand3x3.weight", "classifier.1.weight", "classifier.1.bias",
}  # fmt: skip


@pytest.mark.parametrize(
    "arch,params,macs,size",
    [("squeezenet1_0", 1_248_424, 0.819e9, 224), ("squeezenet1_1", 1_235_496, 0.349e9, 224)],
)
def test_parameter_counts_and_macs_match_torchvision(arch, params, macs, size):
    stats = model_stats(build_model(arch), size)
    assert stats["params"] == params
    assert abs(stats["macs"] - macs) / macs < 0.002


def test_state_dict_keys_are_torchvisions():
    keys = set(build_model("squeezenet1_1").state_dict())
    assert TV_KEYS_1_1 <= keys
    assert len(keys) == 52  # 26 convolutions, weight + bias each
    assert max(int(k.split(".")[1]) for k in keys if k.startswith("features")) == 12


def test_caffe_conv10_padding_gives_15x15_map():
    model = build_model("squeezenet1_0", classifier_padding=1).eval()
    features = model.forward_features(torch.zeros(1, 3, 227, 227))
    assert features.shape == (1, 512, 13, 13)
    assert model.classifier[1](features).shape == (1, 1000, 15, 15)


@pytest.mark.parametrize("arch", list_models())
def test_every_arch_runs_on_several_sizes_and_class_counts(arch):
    model = build_model(arch, num_classes=7).eval()
    # The Chainer net's fixed 13x13 average window needs a map of at least 13x13.
    for size in (224, 227) if arch.endswith("chainer") else (224, 227, 160):
        assert model(torch.randn(2, 3, size, size)).shape == (2, 7)


def test_bypass_variants_add_the_papers_connections():
    simple = build_model("squeezenet1_0_bypass")
    complex_ = build_model("squeezenet1_0_complex_bypass")
    fires = [m for m in simple.features if hasattr(m, "bypass")]
    n_simple = sum(isinstance(m.bypass, torch.nn.Identity) for m in fires)
    fires = [m for m in complex_.features if hasattr(m, "bypass")]
    n_conv = sum(isinstance(m.bypass, torch.nn.Conv2d) for m in fires)
    assert n_simple == 4  # fire3, 5, 7, 9 have equal in/out channels
    assert n_conv == 4  # fire2, 4, 6, 8 get a 1x1 projection
    # Simple bypass adds no parameters, so v1.0 weights load into it unchanged.
    simple.load_state_dict(build_model("squeezenet1_0").state_dict())


def test_batchnorm_and_dense_head_variant():
    model = build_model("squeezenet1_0_bn", num_classes=10)
    names = set(model.state_dict())
    assert "features.3.bn.running_mean" in names and "fc.weight" in names
    assert model.classifier[1].out_channels == 1000 and model.fc.out_features == 10


def test_forward_features_head_and_reset_classifier():
    model = build_model("squeezenet1_1").eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model.forward_head(model.forward_features(x)), model(x))
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (1, 512)
    model.reset_classifier(10)
    assert model(x).shape == (1, 10)
    assert model.get_classifier().weight.std().item() == pytest.approx(0.01, rel=0.2)
    alex = build_model("alexnet")
    alex.reset_classifier(3)
    assert alex(torch.randn(1, 3, 224, 224)).shape == (1, 3)


def test_unknown_arch_is_a_clear_error():
    with pytest.raises(SqueezeNetError, match="unknown architecture 'squeezenet2'"):
        build_model("squeezenet2")


@pytest.mark.parametrize("arch", ["squeezenet1_0", "squeezenet1_1", "squeezenet1_1_bn"])
def test_a_new_squeezenet_starts_with_every_class_map_alive(arch):
    """conv10's biases start at 1, so its ReLU passes at least 90% of the positions at first; at
    torchvision's 0, half the positions of every class map start dead."""
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10).eval()
    with torch.no_grad():
        before_relu = model.classifier[1](model.features(torch.randn(4, 3, 128, 128)))
    assert (before_relu > 0).float().mean() > 0.9
