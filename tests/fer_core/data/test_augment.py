import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from bench.throughput import pil_train_transform
from fer_core.data import augment
from fer_core.data.augment import (
    MEAN,
    STD,
    AugmentParams,
    apply_affine,
    sample_params,
    test_transform,
    train_transform,
)
from fer_core.errors import FerError

NO_AUG = {"p_hflip": 0.0, "p_vflip": 0.0, "max_degrees": 0.0}


def _batch(n: int = 4, size: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=_gen(seed))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _quadrants(size: int = 32) -> torch.Tensor:
    """A frame whose four quadrants differ, so every flip is recognisable."""
    x = torch.zeros(1, 3, size, size, dtype=torch.uint8)
    h = size // 2
    x[..., :h, :h], x[..., :h, h:], x[..., h:, :h], x[..., h:, h:] = 30, 90, 160, 230
    return x


def test_shape_dtype_and_normalisation():
    x = _batch()
    out = train_transform(x, 24, _gen(1))
    assert out.shape == (4, 3, 24, 24) and out.dtype == torch.float32
    plain = test_transform(x, (20, 28))
    assert plain.shape == (4, 3, 20, 28) and plain.dtype == torch.float32
    white = test_transform(torch.full((1, 3, 8, 8), 255, dtype=torch.uint8), 8)
    expected = torch.tensor([(1 - m) / s for m, s in zip(MEAN, STD, strict=True)])
    assert torch.allclose(white[0, :, 0, 0], expected)


def test_float_input_on_the_same_scale_as_uint8():
    x = _batch()
    assert torch.equal(train_transform(x, 24, _gen(3)), train_transform(x.float(), 24, _gen(3)))


def test_grey_input_is_repeated_to_three_channels():
    grey = _batch()[:, :1]
    assert torch.equal(test_transform(grey, 16), test_transform(grey.expand(-1, 3, -1, -1), 16))


def test_identity_when_disabled_equals_plain_resize():
    x = _batch()
    for size in (40, 24, 64):  # same size, shrink, enlarge
        assert torch.allclose(train_transform(x, size, _gen(0), **NO_AUG), test_transform(x, size),
                              atol=1e-5)  # fmt: skip
    resized = F.interpolate(x.float() / 255, size=24, mode="bilinear", antialias=True)
    assert torch.allclose(test_transform(x, 24), augment.normalize(resized), atol=1e-6)


def test_flips_are_exact():
    x = _batch()
    plain = test_transform(x, 40)
    hflip = train_transform(x, 40, _gen(0), p_hflip=1.0, p_vflip=0.0, max_degrees=0.0)
    vflip = train_transform(x, 40, _gen(0), p_hflip=0.0, p_vflip=1.0, max_degrees=0.0)
    both = train_transform(x, 40, _gen(0), p_hflip=1.0, p_vflip=1.0, max_degrees=0.0)
    assert torch.allclose(hflip, torch.flip(plain, dims=[3]), atol=1e-5)
    assert torch.allclose(vflip, torch.flip(plain, dims=[2]), atol=1e-5)
    assert torch.allclose(both, torch.flip(plain, dims=[2, 3]), atol=1e-5)


def test_angles_stay_within_ten_degrees():
    params = sample_params(20000, _gen(0))
    assert params.angle.abs().max() <= 10.0
    assert params.angle.min() < -9.9 and params.angle.max() > 9.9
    assert abs(params.angle.std().item() - 20 / math.sqrt(12)) < 0.1  # uniform on [-10, 10]
    assert abs(params.hflip.float().mean().item() - 0.5) < 0.02
    assert abs(params.vflip.float().mean().item() - 0.5) < 0.02


def test_rotation_matches_torchvision_geometry():
    x = torch.rand(2, 3, 30, 44, generator=_gen(0))  # non-square: no shearing either
    for angle, hflip, vflip in [(10.0, False, False), (-7.5, True, False), (4.0, True, True)]:
        params = AugmentParams(torch.tensor([hflip] * 2), torch.tensor([vflip] * 2),
                               torch.tensor([angle] * 2))  # fmt: skip
        ref = TF.hflip(x) if hflip else x
        ref = TF.vflip(ref) if vflip else ref
        ref = TF.rotate(ref, angle, interpolation=InterpolationMode.BILINEAR)
        assert torch.allclose(apply_affine(x, params), ref, atol=1e-4)


def test_deterministic_for_a_seeded_generator():
    x = _batch(8)
    assert torch.equal(train_transform(x, 32, _gen(5)), train_transform(x, 32, _gen(5)))
    assert not torch.equal(train_transform(x, 32, _gen(5)), train_transform(x, 32, _gen(6)))


def test_bad_input_shape():
    with pytest.raises(FerError, match="N x 3 x H x W"):
        train_transform(torch.zeros(3, 8, 8), 8, _gen(0))
    with pytest.raises(FerError, match="out_size"):
        test_transform(torch.zeros(1, 3, 8, 8), 0)


def _flip_kind(image: torch.Tensor) -> tuple[bool, bool]:
    """(hflipped, vflipped) of a transformed `_quadrants` frame, from its top-left value."""
    corner = image[0, 2:6, 2:6].mean().item() * STD[0] + MEAN[0]  # back to 0..1
    nearest = min([30, 90, 160, 230], key=lambda v: abs(v / 255 - corner))
    return {30: (False, False), 90: (True, False), 160: (False, True), 230: (True, True)}[nearest]


def test_same_flip_distribution_as_the_torchvision_pipeline():
    n = 400
    frame = _quadrants()
    ours = train_transform(frame.expand(n, -1, -1, -1), 32, _gen(0), max_degrees=0.0)
    torch.manual_seed(0)
    pil = Image.fromarray(frame[0].permute(1, 2, 0).numpy())
    usual = pil_train_transform(32, degrees=0.0)
    theirs = [usual(pil) for _ in range(n)]
    for batch in (list(ours), theirs):
        kinds = np.array([_flip_kind(img) for img in batch])
        assert abs(kinds[:, 0].mean() - 0.5) < 0.08 and abs(kinds[:, 1].mean() - 0.5) < 0.08


def test_agrees_with_the_torchvision_pipeline_when_forced():
    """Flips forced, no rotation: the batched and the per-image pipelines give the same image
    (up to the two resizers' rounding)."""
    frame = torch.from_numpy(np.asarray(Image.open(_smooth_png()).convert("RGB")).copy())
    x = frame.permute(2, 0, 1).unsqueeze(0)  # 1 x 3 x 64 x 64
    ours = train_transform(x, 48, _gen(0), p_hflip=1.0, p_vflip=1.0, max_degrees=0.0)[0]
    usual = pil_train_transform(48, p_hflip=1.0, p_vflip=1.0, degrees=0.0)
    theirs = usual(Image.fromarray(frame.numpy()))
    diff = (ours - theirs).abs()
    assert diff.mean() < 0.02 and diff.max() < 0.1  # normalised units: ~0.005 and ~0.02 of 1


def _smooth_png():
    import io

    yy, xx = np.mgrid[0:64, 0:64]
    rgb = np.stack([xx * 4, yy * 4, (xx + yy) * 2], axis=-1).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG")
    buffer.seek(0)
    return buffer


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_runs_on_the_gpu_like_on_the_cpu():
    x = _batch(16, 64)
    params = sample_params(16, _gen(0))
    cpu = augment.normalize(apply_affine(augment.resize(x.float() / 255, 48), params))
    gpu_x = x.cuda()
    gpu = augment.normalize(apply_affine(augment.resize(gpu_x.float() / 255, 48), params))
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-4)
    generator = torch.Generator(device="cuda").manual_seed(0)
    out = train_transform(gpu_x, 48, generator)
    assert out.device.type == "cuda" and out.shape == (16, 3, 48, 48)
