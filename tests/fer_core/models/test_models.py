"""Backbones build and train at small inputs, heads are drawn right, weights load strictly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from fer_core.errors import FerError
from fer_core.models import BACKBONES, FerNet, build_model
from fer_core.models.backbones import NORMALISATIONS, backbone_spec

NAMES = ("tiny", "resnet18", "vgg_face", "inception_v3", "inception_resnet_v1")
# timm's own test models (a ViT and a ConvNeXt, 0.2-0.3 M parameters at 160 px): what
# `timm:convnext_tiny` or `timm:vit_small_patch16_224` run, small enough for a CPU
TIMM_NAMES = ("timm:test_vit", "timm:test_convnext")
SLOW = {"vgg_face", "inception_v3", "inception_resnet_v1"}


def backbone_params(names=NAMES):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


def non_head(model: FerNet) -> dict[str, torch.Tensor]:
    return {
        k: v.clone() for k, v in model.state_dict().items() if not k.startswith(model.head_prefixes)
    }


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # in case anything called set_dir
    return home


def test_backbone_table_is_complete():
    assert set(BACKBONES) == set(NAMES)
    assert BACKBONES["inception_v3"].input_size == 299
    assert BACKBONES["resnet18"].input_size == 224
    assert BACKBONES["vgg_face"].input_size == 224
    assert BACKBONES["inception_resnet_v1"].input_size == 160
    assert BACKBONES["tiny"].input_size == 48
    assert [n for n, s in BACKBONES.items() if s.has_aux] == ["inception_v3"]
    assert BACKBONES["inception_v3"].weights_file == "inception_v3_google-0cc3c7bd.pth"
    assert BACKBONES["resnet18"].weights_file == "resnet18-f37072fd.pth"


def test_every_backbone_entry_is_whole():
    """What FerNet, the weights pre-flight and the card read of a spec is there and consistent."""
    for name, spec in BACKBONES.items():
        assert spec.name == name and spec.input_norm in NORMALISATIONS
        assert 16 <= spec.min_input_size <= spec.input_size
        assert (spec.weights_file is None) == (spec.weights_cache is None), name
        assert (
            spec.weights_url is not None
            or spec.weights_command is not None
            or (spec.weights_file is None)
        ), f"{name}: a weights file nobody says how to get"


@pytest.mark.parametrize("name", [*backbone_params(), *TIMM_NAMES])
def test_builds_runs_and_trains_at_a_small_input(name):
    torch.manual_seed(0)
    model = build_model(name, 7)
    spec = backbone_spec(name)
    assert model.input_size == spec.input_size
    # the smallest input a grid may ask for (orchestrator.plan.grid checks it): the network must
    # run there, and it is small enough to keep this fast on a CPU
    size = spec.min_input_size
    x = torch.randn(2, 3, size, size)

    model.eval()
    with torch.no_grad():
        out = model(x)
        assert isinstance(out, torch.Tensor) and out.shape == (2, 7)
        # channels-last input gives the same logits (no reshape that depends on the layout)
        out_cl = model.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last)
        )
        assert torch.allclose(out, out_cl, atol=1e-4, rtol=1e-3)
    model.to(memory_format=torch.contiguous_format)

    model.train()
    out = model(x)
    if spec.has_aux:
        assert isinstance(out, tuple) and len(out) == 2
        assert out[0].shape == (2, 7) and out[1].shape == (2, 7)
        loss = out[0].sum() + 0.4 * out[1].sum()
    else:
        assert isinstance(out, torch.Tensor) and out.shape == (2, 7)
        loss = out.sum()

    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    loss.backward()
    optimiser.step()
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert "head.weight" in changed
    assert any(k.startswith("backbone.") and "AuxLogits.fc" not in k for k in changed)
    if spec.has_aux:
        assert "backbone.AuxLogits.fc.weight" in changed


def test_reset_head_redraws_only_the_heads():
    model = build_model("resnet18", 100)  # 512 x 100 weights: a tight estimate of the std
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    rest = non_head(model)
    model.reset_head(torch.Generator().manual_seed(3))
    weight = model.head.weight.detach()
    assert weight.std().item() == pytest.approx(0.001, rel=0.03)
    assert abs(weight.mean().item()) < 3e-5
    assert torch.count_nonzero(model.head.bias) == 0
    after = non_head(model)
    assert all(torch.equal(rest[k], after[k]) for k in rest)
    drawn = weight.clone()
    model.reset_head(torch.Generator().manual_seed(3))
    assert torch.equal(model.head.weight, drawn)  # the generator makes it reproducible
    model.reset_head()
    assert not torch.equal(model.head.weight, drawn)


def test_reset_head_includes_the_inception_aux_head():
    model = build_model("inception_v3", 7, fc_std=0.01)
    assert model.head_prefixes == ("head.", "backbone.AuxLogits.fc.")
    keys = model.state_dict().keys()
    assert {"head.weight", "head.bias", "backbone.AuxLogits.fc.weight"} <= set(keys)
    aux = model.backbone.AuxLogits.fc
    assert aux.out_features == 7
    with torch.no_grad():
        aux.weight.fill_(1.0)
        aux.bias.fill_(1.0)
    model.reset_head()
    assert aux.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert torch.count_nonzero(aux.bias) == 0


def test_heads_follow_fc_std_and_num_classes():
    model = build_model("tiny", 6, fc_std=0.05, dropout=0.2)
    assert model.head.out_features == 6
    assert model.dropout.p == 0.2
    assert model.head.weight.std().item() == pytest.approx(0.05, rel=0.2)
    assert model.head_prefixes == ("head.",)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"backbone": "resnet50"}, "unknown backbone 'resnet50'; known: inception_v3, "),
        ({"backbone": "timm:no_such_net"}, "timm:no_such_net is not a timm 1.0"),
        (
            {"backbone": "timm:test_vit.nope"},
            "no pretrained tag 'nope' for test_vit; it has r160_in1k",
        ),
        ({"num_classes": 1}, "num_classes: 1"),
        ({"dropout": 1.0}, "dropout: 1.0"),
        ({"fc_std": 0}, "fc_std: 0"),
        ({"weights": ""}, "weights: ''"),
        ({"weights": None}, "weights: None"),
    ],
)
def test_bad_arguments(kwargs, fragment):
    arguments = {"backbone": "tiny", "num_classes": 7, **kwargs}
    with pytest.raises(FerError, match=fragment):
        build_model(**arguments)


@pytest.mark.parametrize("name", ["resnet18", "inception_v3"])
def test_pretrained_missing_names_the_expected_path(name, empty_torch_home):
    expected = empty_torch_home / "hub" / "checkpoints" / BACKBONES[name].weights_file
    with pytest.raises(FerError) as info:
        build_model(name, 7, weights="pretrained")
    message = str(info.value)
    assert str(expected) in message
    assert BACKBONES[name].weights_url in message
    assert "\n" not in message


def test_timm_backbones_take_the_pretrained_configuration():
    """Input size, normalisation, feature size and classifier come from timm, per model."""
    vit = backbone_spec("timm:vit_small_patch16_224")
    assert (vit.input_size, vit.input_norm, vit.feature_dim) == (224, "inception", 384)
    assert vit.classifier_keys == ("head.",) and vit.fixed_input_size
    convnext = backbone_spec("timm:convnext_tiny")
    assert (convnext.input_size, convnext.input_norm, convnext.feature_dim) == (
        224,
        "imagenet",
        768,
    )
    assert convnext.classifier_keys == ("head.fc.",)
    # a tag chooses the pretrained configuration, hence the hub file
    assert "timm/convnext_tiny.fb_in1k/" in str(
        backbone_spec("timm:convnext_tiny.fb_in1k").weights_url
    )
    # a timm model whose statistics none of NORMALISATIONS holds is refused, not mis-fed
    with pytest.raises(FerError, match=r"timm:dpn68\.mx_in1k expects input mean"):
        backbone_spec("timm:dpn68.mx_in1k")


def test_pretrained_timm_missing_names_the_expected_path_and_the_hub_file(empty_torch_home):
    with pytest.raises(FerError) as info:
        build_model("timm:test_convnext", 7, weights="pretrained")
    message = str(info.value)
    expected = empty_torch_home / "hub" / "checkpoints" / "timm" / "test_convnext.safetensors"
    assert str(expected) in message
    hub = "https://huggingface.co/timm/test_convnext.r160_in1k/resolve/main/model.safetensors"
    assert hub in message and "\n" not in message


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_pretrained_timm_loads_from_the_local_file(empty_torch_home, suffix):
    """The hub file's layout (timm's classifier included) loads all but the classifier."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(2)
    reference = timm.create_model("test_convnext", pretrained=False)  # with its 1000-way head
    path = empty_torch_home / "hub" / "checkpoints" / "timm" / f"test_convnext{suffix}"
    path.parent.mkdir(parents=True)
    if suffix == ".safetensors":
        save_file(reference.state_dict(), path)
    else:
        torch.save(reference.state_dict(), path)
    model = build_model("timm:test_convnext", 7, weights="pretrained").eval()
    assert model.weights_source == str(path)
    reference.eval().reset_classifier(0)
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        features = reference(model.backbone_input(x))
        assert torch.equal(model.backbone(model.backbone_input(x)), features)


def test_timm_state_dict_file_round_trip(tmp_path):
    """`weights: PATH` for a timm backbone: a saved backbone loads back to the same outputs."""
    torch.manual_seed(3)
    first = build_model("timm:test_vit", 7).eval()
    path = tmp_path / "vit.pth"
    torch.save(first.backbone.state_dict(), path)
    torch.manual_seed(4)
    second = build_model("timm:test_vit", 7, weights=path).eval()
    second.head.load_state_dict(first.head.state_dict())
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(first(x), second(x))


def test_pretrained_facenet_missing_names_its_cache(empty_torch_home):
    with pytest.raises(FerError) as info:
        build_model("inception_resnet_v1", 7, weights="pretrained")
    expected = empty_torch_home / "checkpoints" / "20180402-114759-vggface2.pt"
    assert str(expected) in str(info.value)


def test_pretrained_without_a_cache_file_asks_for_a_path(empty_torch_home):
    with pytest.raises(FerError, match="backbone tiny has no pre-trained cache file.*none"):
        build_model("tiny", 7, weights="pretrained")


def test_pretrained_vgg_face_missing_names_the_path_and_the_import_command(empty_torch_home):
    with pytest.raises(FerError) as info:
        build_model("vgg_face", 7, weights="pretrained")
    message = str(info.value)
    assert str(empty_torch_home / "hub" / "checkpoints" / "vgg_face-vgg16-bgr.pth") in message
    assert "`python -m orchestrator weights import vgg_face FILE`" in message
    assert "\n" not in message


def test_pretrained_loads_from_the_torchvision_cache(empty_torch_home):
    reference = torchvision.models.resnet18(weights=None)
    cache = empty_torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / BACKBONES["resnet18"].weights_file)
    model = build_model("resnet18", 7, weights="pretrained")
    assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)
    assert model.weights_source == str(cache / BACKBONES["resnet18"].weights_file)


def test_pretrained_loads_from_the_facenet_cache(empty_torch_home):
    from facenet_pytorch import InceptionResnetV1

    # the published file's layout: the VGGFace2 identity classifier (8631 classes) included
    reference = InceptionResnetV1(classify=True, num_classes=8631)
    cache = empty_torch_home / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / "20180402-114759-vggface2.pt")
    model = build_model("inception_resnet_v1", 7, weights="pretrained")
    assert torch.equal(model.backbone.conv2d_1a.conv.weight, reference.conv2d_1a.conv.weight)
    assert torch.equal(model.backbone.last_bn.running_var, reference.last_bn.running_var)


def test_state_dict_file_loads_all_but_the_classifier(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)  # 1000-way ImageNet fc included
    with torch.no_grad():
        reference.bn1.running_mean.normal_()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = build_model("resnet18", 7, weights=str(path))
    assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert torch.equal(model.backbone.bn1.running_mean, reference.bn1.running_mean)
    assert model.head.weight.shape == (7, 512)
    assert model.head.weight.std().item() == pytest.approx(0.001, rel=0.2)
    assert torch.count_nonzero(model.head.bias) == 0
    # a pathlib.Path and a FerNet checkpoint (as train.py writes: {"model": state_dict}) work too
    again = build_model("resnet18", 7, weights=path)
    assert torch.equal(again.backbone.conv1.weight, reference.conv1.weight)
    wrapped = tmp_path / "best.pt"
    torch.save({"model": model.state_dict(), "epoch": 3}, wrapped)
    from_fernet = build_model("resnet18", 7, weights=wrapped)
    assert torch.equal(
        from_fernet.backbone.layer1[0].conv1.weight, reference.layer1[0].conv1.weight
    )


def test_wrong_shape_names_the_file_and_key(tmp_path):
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(FerError) as info:
        build_model("resnet18", 7, weights=str(path))
    message = str(info.value)
    assert str(path) in message
    assert "conv1.weight (64, 3, 5, 5) vs (64, 3, 7, 7)" in message
    assert "torchvision resnet18 key layout" in message


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = torchvision.models.resnet18(weights=None).state_dict()
    del state["layer1.0.conv1.weight"]
    state["layer9.weight"] = torch.zeros(1)
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    with pytest.raises(FerError, match="missing layer1.0.conv1.weight; unexpected layer9.weight"):
        build_model("resnet18", 7, weights=str(path))


def test_missing_weights_file_is_named(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(FerError, match=f"weights: '{path}' is not an existing file"):
        build_model("tiny", 7, weights=str(path))
    with pytest.raises(FerError, match="'pretrainde' is not an existing file .*none, pretrained"):
        build_model("tiny", 7, weights="pretrainde")


class Payload:
    """An arbitrary Python object: unpickling it would run code of the file's choosing."""

    def __init__(self) -> None:
        self.weight = torch.zeros(3)


def test_pickle_payload_is_refused(tmp_path):
    path = tmp_path / "payload.pt"
    torch.save({"conv1.weight": Payload()}, path)
    with pytest.raises(
        FerError, match=f"weights: {path} holds pickled Python objects besides tensors .*Payload"
    ):
        build_model("tiny", 7, weights=str(path))


@pytest.mark.parametrize(
    ("content", "fragment"), [([torch.zeros(2)], "holds a list"), (b"not torch", "cannot be read")]
)
def test_not_a_state_dict(tmp_path, content, fragment):
    path = tmp_path / "other.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(FerError, match=fragment):
        build_model("tiny", 7, weights=str(path))


def test_tiny_state_dict_round_trip(tmp_path):
    source = build_model("tiny", 7)
    path = tmp_path / "tiny.pt"
    torch.save(source.backbone.state_dict(), path)
    model = build_model("tiny", 5, weights=os.fspath(path))
    assert torch.equal(model.backbone.features[0].weight, source.backbone.features[0].weight)


@pytest.mark.slow
def test_inception_input_scaling_matches_torchvision_transform_input(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.inception_v3(
        weights=None, aux_logits=True, transform_input=True, init_weights=False
    )
    path = tmp_path / "inception.pth"
    torch.save(reference.state_dict(), path)
    model = build_model("inception_v3", 7, weights=str(path)).eval()
    reference.fc = nn.Identity()
    reference.eval()
    x = torch.randn(2, 3, 80, 80)
    with torch.no_grad():
        expected = reference(x)
        got = model.backbone(x * model.input_scale + model.input_shift)
    assert torch.allclose(got, expected, atol=1e-5)


def test_inception_aux_is_the_original_at_paper_size():
    from torchvision.models.inception import InceptionAux

    from fer_core.models.torchvision_backbones import InceptionAuxAnySize

    torch.manual_seed(0)
    ours = InceptionAuxAnySize(768, 7).eval()
    original = InceptionAux(768, 7).eval()
    original.load_state_dict(ours.state_dict())
    x = torch.randn(2, 768, 17, 17)  # Mixed_6e's map at 299 px
    with torch.no_grad():
        assert torch.equal(ours(x), original(x))
        assert ours(torch.randn(2, 768, 3, 3)).shape == (2, 7)  # 75 px input


def test_pretrained_urls_match_torchvisions_weight_enums():
    from torchvision.models import Inception_V3_Weights, ResNet18_Weights

    from fer_core.models.backbones import INCEPTION_V3_URL, RESNET18_URL

    assert Inception_V3_Weights.IMAGENET1K_V1.url == INCEPTION_V3_URL
    assert ResNet18_Weights.IMAGENET1K_V1.url == RESNET18_URL
