"""Tests for selfsup_lab.augment: shapes, reproducibility, and agreement with torchvision's own ops."""

import dataclasses

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from selfsup_lab.augment import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    AugmentConfig,
    Augmenter,
    TorchvisionAugmenter,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    augmentation_grid,
    cifar_preset,
    gaussian_blur,
    normalize,
    sample_crop_boxes,
    small_crop_preset,
    solarize,
)

# everything off: the augmenter reduces to "resample the whole image, normalise"
IDENTITY = AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0,
                         blur_p=0.0, solarize_p=0.0)


def _images(b=8, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- contract


def test_shape_dtype_device_and_size():
    x = _images(6, 40, 48)
    out = Augmenter(cifar_preset(size=24))(x, _gen(0))
    assert out.shape == (6, 3, 24, 24) and out.dtype == torch.float32 and out.device == x.device
    assert torch.isfinite(out).all()


def test_presets():
    cfg = cifar_preset()
    assert cfg.size == 32 and cfg.scale == (0.08, 1.0) and cfg.jitter_p == 0.8 and cfg.gray_p == 0.2
    assert cfg.blur_p == 0.0 and cfg.mean == CIFAR10_MEAN and cfg.std == CIFAR10_STD
    small = small_crop_preset(16, cfg)
    assert small.size == 16 and small.scale == (0.05, 0.4) and small.hue == cfg.hue


def test_bad_config_and_inputs_are_rejected():
    with pytest.raises(ValueError, match="jitter_p"):
        AugmentConfig(jitter_p=1.5)
    with pytest.raises(ValueError, match="uint8"):
        Augmenter(AugmentConfig())(torch.rand(2, 3, 8, 8))


def test_seed_reproducibility():
    x = _images()
    aug = Augmenter(dataclasses.replace(cifar_preset(), blur_p=0.5, solarize_p=0.5))
    a, b, c = aug(x, _gen(1)), aug(x, _gen(1)), aug(x, _gen(2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # a generator advances: two calls give two different views (as for the two views of SimCLR)
    g = _gen(1)
    assert not torch.allclose(aug(x, g), aug(x, g))


def test_identity_config_equals_plain_normalisation():
    x = _images()
    out = Augmenter(IDENTITY)(x, _gen(0))
    ref = normalize(x, IDENTITY.mean, IDENTITY.std)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_forced_flip_equals_torch_flip():
    x = _images()
    out = Augmenter(dataclasses.replace(IDENTITY, flip_p=1.0))(x, _gen(0))
    ref = torch.flip(normalize(x, IDENTITY.mean, IDENTITY.std), dims=[-1])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_channels_last_input_gives_same_values():
    x = _images()
    aug = Augmenter(cifar_preset())
    a = aug(x, _gen(3))
    b = aug(x.contiguous(memory_format=torch.channels_last), _gen(3))
    assert b.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_views_in_one_call_are_independent_views_of_each_image():
    x = _images(64)
    flip_only = dataclasses.replace(IDENTITY, flip_p=0.5)
    views = Augmenter(flip_only).views(x, 3, _gen(0))
    assert len(views) == 3 and all(v.shape == (64, 3, 32, 32) for v in views)
    plain = normalize(x, IDENTITY.mean, IDENTITY.std)
    flipped = torch.flip(plain, dims=[-1])
    # every view of every image is the image or its mirror, and the views flip independently of each other
    is_flipped = []
    for v in views:
        same = (v - plain).abs().amax(dim=(1, 2, 3)) < 1e-5
        mirrored = (v - flipped).abs().amax(dim=(1, 2, 3)) < 1e-5
        assert (same | mirrored).all()
        is_flipped.append(mirrored & ~same)
    assert 0 < (is_flipped[0] != is_flipped[1]).sum() < 64
    # seeded: the same generator state gives the same views
    aug = Augmenter(cifar_preset())
    again = aug.views(x, 2, _gen(4)), aug.views(x, 2, _gen(4))
    assert all(torch.equal(a, b) for a, b in zip(*again))
    assert not torch.allclose(again[0][0], again[0][1])
    with pytest.raises(ValueError, match="count"):
        aug.views(x, 0, _gen(0))


def test_views_keep_channels_last():
    x = _images().contiguous(memory_format=torch.channels_last)
    views = Augmenter(cifar_preset()).views(x, 2, _gen(0))
    assert all(v.is_contiguous(memory_format=torch.channels_last) for v in views)


def _aten_calls(fn) -> int:
    """How many aten operators `fn` dispatches (on a GPU, each is at least one kernel launch)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


def test_views_in_one_call_launch_about_half_the_ops_of_separate_calls():
    x, aug = _images(), Augmenter(cifar_preset())
    separate = _aten_calls(lambda: [aug(x, _gen(0)) for _ in range(2)])
    together = _aten_calls(lambda: aug.views(x, 2, _gen(0)))
    assert together < 0.6 * separate, (together, separate)


def test_generator_on_wrong_device_is_rejected():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    with pytest.raises(ValueError, match="generator"):
        Augmenter(AugmentConfig())(_images().cuda(), _gen(0))


# ---------------------------------------------------------------- crops


def test_crop_boxes_respect_scale_ratio_and_bounds():
    B, H, W = 4096, 32, 32
    for scale in [(0.08, 1.0), (0.05, 0.4)]:
        boxes = sample_crop_boxes(B, H, W, scale, (3 / 4, 4 / 3), _gen(0))
        top, left, h, w = boxes.unbind(1)
        area = h * w / (H * W)
        assert boxes.shape == (B, 4)
        assert (area >= scale[0] - 1e-5).all() and (area <= scale[1] + 1e-5).all()
        assert (w / h >= 3 / 4 - 1e-4).all() and (w / h <= 4 / 3 + 1e-4).all()
        assert (top >= 0).all() and (left >= 0).all()
        assert (top + h <= H + 1e-4).all() and (left + w <= W + 1e-4).all()
        assert area.std() > 0.05  # actually random, per sample


def test_crop_fallback_is_centred():
    # no attempt can fit a 2:1-wide box of the full area into a square: all samples fall back
    boxes = sample_crop_boxes(16, 32, 32, (1.0, 1.0), (2.0, 3.0), _gen(0))
    expected = torch.tensor([8.0, 0.0, 16.0, 32.0])  # full width, height W/2, vertically centred
    torch.testing.assert_close(boxes, expected.expand(16, 4))


# ---------------------------------------------------------------- colour ops vs torchvision


def _float_images(b=3, seed=0):
    return _images(b, 16, 16, seed).float() / 255


@pytest.mark.parametrize("ours, theirs, factors", [
    (adjust_brightness, TF.adjust_brightness, [0.6, 1.0, 1.4]),
    (adjust_contrast, TF.adjust_contrast, [0.6, 1.0, 1.4]),
    (adjust_saturation, TF.adjust_saturation, [0.0, 0.6, 1.4]),
])
def test_colour_ops_match_torchvision(ours, theirs, factors):
    x = _float_images(len(factors))
    out = ours(x, torch.tensor(factors))  # one factor per sample, in one call
    for i, f in enumerate(factors):
        torch.testing.assert_close(out[i], theirs(x[i], f), atol=1e-3, rtol=0)


def test_hue_matches_torchvision():
    shifts = [-0.5, -0.1, 0.0, 0.07, 0.3, 0.5]
    x = _float_images(len(shifts))
    x[0, :, :4, :4] = 0.5  # some gray pixels (zero chroma) too
    out = adjust_hue(x, torch.tensor(shifts))
    for i, s in enumerate(shifts):
        torch.testing.assert_close(out[i], TF.adjust_hue(x[i], s), atol=1e-2, rtol=0)
    torch.testing.assert_close(out[2], x[2], atol=1e-5, rtol=0)  # shift 0 is the identity


def test_blur_matches_torchvision_and_zero_sigma_is_identity():
    x = _float_images(2)
    sigma = torch.tensor([1.3, 0.0])
    out = gaussian_blur(x, sigma, radius=4)
    torch.testing.assert_close(out[0], TF.gaussian_blur(x[0], [9, 9], [1.3, 1.3]), atol=1e-4, rtol=0)
    torch.testing.assert_close(out[1], x[1], atol=1e-6, rtol=0)


def test_solarize_matches_torchvision():
    x = _float_images(2)
    out = solarize(x, torch.tensor([True, False]))
    torch.testing.assert_close(out[0], TF.solarize(x[0], 0.5))
    torch.testing.assert_close(out[1], x[1])


# ---------------------------------------------------------------- the pipeline's probabilistic ops


def test_gray_p1_gives_equal_channels():
    cfg = dataclasses.replace(cifar_preset(), gray_p=1.0, mean=(0.5,) * 3, std=(0.25,) * 3)
    out = Augmenter(cfg)(_images(), _gen(0))
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])


def test_jitter_p1_changes_every_image_and_p0_none():
    x = _images()
    plain = Augmenter(IDENTITY)(x, _gen(0))
    jittered = Augmenter(dataclasses.replace(IDENTITY, jitter_p=1.0))(x, _gen(0))
    assert ((jittered - plain).abs().flatten(1).amax(1) > 1e-3).all()


def test_solarize_p1_in_pipeline():
    x = _images()
    cfg = dataclasses.replace(IDENTITY, solarize_p=1.0, mean=(0.0,) * 3, std=(1.0,) * 3)
    out = Augmenter(cfg)(x, _gen(0))
    raw = x.float() / 255
    torch.testing.assert_close(out, torch.where(raw >= 0.5, 1 - raw, raw), atol=1e-5, rtol=0)
    assert (out <= 0.5 + 1e-5).all()  # nothing bright survives


def test_blur_p1_smooths():
    x = _images()
    cfg = dataclasses.replace(IDENTITY, blur_p=1.0, blur_sigma=(1.0, 2.0))
    plain, blurred = Augmenter(IDENTITY)(x, _gen(0)), Augmenter(cfg)(x, _gen(0))
    assert blurred.diff(dim=-1).abs().mean() < 0.5 * plain.diff(dim=-1).abs().mean()


def test_normalize_resizes():
    out = normalize(_images(2, 64, 64), CIFAR10_MEAN, CIFAR10_STD, size=32)
    assert out.shape == (2, 3, 32, 32)


# ---------------------------------------------------------------- picture


def test_augmentation_grid_figure():
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    fig = augmentation_grid(_images(3), Augmenter(cifar_preset()), n_views=4, generator=_gen(0))
    assert isinstance(fig, Figure) and len(fig.axes) == 3 * (4 + 1)
    plt.close(fig)


def test_autocast_does_not_change_the_result():
    x = _images()
    aug = Augmenter(dataclasses.replace(cifar_preset(), blur_p=1.0))
    ref = aug(x, _gen(5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = aug(x, _gen(5))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)


# ---------------------------------------------------------------- the torchvision reference pipeline


def test_torchvision_reference_is_seeded_by_the_generator_and_leaves_global_randomness_alone():
    images, aug = _images(16), TorchvisionAugmenter(cifar_preset())
    global_state = torch.get_rng_state()
    v1, v2 = aug.views(images, 2, _gen(0))
    assert torch.equal(torch.get_rng_state(), global_state)  # ran on a forked copy of the global generator
    assert v1.shape == (16, 3, 32, 32) and v1.dtype == torch.float32
    assert not torch.equal(v1, v2)  # two views differ ...
    w1, w2 = aug.views(images, 2, _gen(0))
    assert torch.equal(v1, w1) and torch.equal(v2, w2)  # ... and the same generator state repeats them
    g = _gen(0)
    assert not torch.equal(aug(images, g), aug(images, g))  # each call advances the generator


def test_torchvision_reference_with_everything_off_is_plain_normalisation_in_the_callers_format():
    images = _images(4)
    out = TorchvisionAugmenter(IDENTITY)(images.contiguous(memory_format=torch.channels_last), _gen(1))
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, normalize(images, IDENTITY.mean, IDENTITY.std), atol=1e-5, rtol=0)
    flipped = TorchvisionAugmenter(dataclasses.replace(IDENTITY, flip_p=1.0))(images, _gen(1))
    torch.testing.assert_close(flipped, normalize(images, IDENTITY.mean, IDENTITY.std).flip(-1), atol=1e-5, rtol=0)
    gray = TorchvisionAugmenter(dataclasses.replace(IDENTITY, gray_p=1.0))(images, _gen(1))
    assert torch.allclose(gray[:, 0] * IDENTITY.std[0] + IDENTITY.mean[0],
                          gray[:, 1] * IDENTITY.std[1] + IDENTITY.mean[1], atol=1e-5)


def test_torchvision_reference_rejects_what_augmenter_rejects():
    aug = TorchvisionAugmenter(cifar_preset())
    with pytest.raises(ValueError, match="uint8 batch"):
        aug(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="count must be 1 or more"):
        aug.views(_images(2), 0)


def test_torchvision_reference_views_do_not_depend_on_the_number_of_workers():
    images = _images(150)  # three chunks of REFERENCE_CHUNK, the last one short
    in_process = TorchvisionAugmenter(cifar_preset()).views(images, 2, _gen(3))
    pooled = TorchvisionAugmenter(cifar_preset(), workers=2)
    try:
        in_workers = pooled.views(images, 2, _gen(3))
    finally:
        pooled.close()
    for a, b in zip(in_process, in_workers):
        assert torch.equal(a, b)


def test_torchvision_reference_workers_run_from_a_script_without_a_main_guard(tmp_path):
    # A student's script rarely has `if __name__ == "__main__":`; spawned workers would re-run it.
    import subprocess
    import sys

    script = tmp_path / "views.py"
    script.write_text(
        "import torch\n"
        "from selfsup_lab.augment import TorchvisionAugmenter, cifar_preset\n"
        "images = torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8)\n"
        "augmenter = TorchvisionAugmenter(cifar_preset(), workers=2)\n"
        "views = augmenter.views(images, 2, torch.Generator().manual_seed(0))\n"
        "print('views', *views[0].shape)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["views", "100", "3", "32", "32"]


JITTER_ONLY = AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=1.0, gray_p=0.0,
                            brightness=0.1, contrast=0.2, saturation=0.6, hue=0.3)
COLOUR_OPS = ("adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue")


def _spy_on_colour_ops(monkeypatch) -> list:
    """Record (op name, factors) of every colour op the augmenter calls."""
    from selfsup_lab import augment

    calls = []
    for name in COLOUR_OPS:
        def spy(x, factor, _name=name, _real=getattr(augment, name)):
            calls.append((_name, factor.detach().clone()))
            return _real(x, factor)

        monkeypatch.setattr(augment, name, spy)
    return calls


def test_each_jitter_factor_is_drawn_from_its_own_symmetric_range(monkeypatch):
    calls = _spy_on_colour_ops(monkeypatch)
    Augmenter(JITTER_ONLY)(torch.randint(0, 256, (2000, 3, 4, 4), dtype=torch.uint8, generator=_gen(0)), _gen(1))
    factors = dict(calls)
    assert set(factors) == set(COLOUR_OPS)
    for name, (low, high) in {"adjust_brightness": (0.9, 1.1), "adjust_contrast": (0.8, 1.2),
                              "adjust_saturation": (0.4, 1.6), "adjust_hue": (-0.3, 0.3)}.items():
        f, width = factors[name], high - low
        assert f.min() >= low - 1e-6 and f.max() <= high + 1e-6, name
        assert f.min() < low + 0.02 * width and f.max() > high - 0.02 * width, name  # the whole range is used
        assert abs(float(f.mean()) - (low + high) / 2) < 0.05 * width, name


def test_the_colour_ops_run_in_a_random_order(monkeypatch):
    calls = _spy_on_colour_ops(monkeypatch)
    augmenter, images, g = Augmenter(JITTER_ONLY), _images(b=4, h=8, w=8), _gen(2)
    orders = set()
    for _ in range(30):
        calls.clear()
        augmenter(images, g)
        order = tuple(name for name, _ in calls)
        assert sorted(order) == sorted(COLOUR_OPS)
        orders.add(order)
    assert len(orders) > 3  # 24 possible orders; 30 calls see many of them
