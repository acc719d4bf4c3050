"""Augmentation: statistics of standardization, crop offsets and flips, against loops."""

import numpy as np
import pytest
import torch

from polyak.bench.data.augment import Augment, channel_stats, hflip, random_crop, standardize


def distinct_images(n, c=2, h=6, w=5):
    """Images whose pixels are all distinct and nonzero, so a window identifies its offset."""
    return torch.arange(1, n * c * h * w + 1, dtype=torch.float32).view(n, c, h, w)


def window_offsets(image, out, padding):
    """Every (row, col) offset at which ``out`` is a window of the zero-padded ``image``."""
    C, H, W = image.shape
    padded = torch.zeros(C, H + 2 * padding, W + 2 * padding)
    for i in range(H):
        for j in range(W):
            padded[:, i + padding, j + padding] = image[:, i, j]
    return [(a, b) for a in range(2 * padding + 1) for b in range(2 * padding + 1)
            if torch.equal(padded[:, a:a + H, b:b + W], out)]


def crop_offset(image, out, padding):
    found = window_offsets(image, out, padding)
    assert len(found) == 1
    return found[0]


def test_channel_stats_and_standardize_match_numpy():
    x = torch.rand(50, 3, 8, 8) * torch.tensor([1.0, 0.5, 0.2]).view(1, 3, 1, 1)
    mean, std = channel_stats(x, batch=7)
    ref = x.numpy().astype(np.float64).transpose(1, 0, 2, 3).reshape(3, -1)
    np.testing.assert_allclose(mean.numpy(), ref.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(std.numpy(), ref.std(axis=1), rtol=1e-5)
    z = standardize(x, mean, std).numpy().astype(np.float64).transpose(1, 0, 2, 3).reshape(3, -1)
    np.testing.assert_allclose(z.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=1), 1, rtol=1e-5)


def test_random_crop_is_a_window_of_the_padded_image_at_uniform_offsets():
    x = distinct_images(900, c=1, h=4, w=4)
    out = random_crop(x, padding=1, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    counts = np.zeros((3, 3))
    for n in range(len(x)):
        a, b = crop_offset(x[n], out[n], 1)
        counts[a, b] += 1
    expected = len(x) / 9  # 100 per cell, binomial sd ~ 9.4
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected * 8 / 9))


def test_random_crop_padding_four_and_channels_move_together():
    x = distinct_images(40, c=3, h=8, w=8)
    out = random_crop(x, padding=4, generator=torch.Generator().manual_seed(1))
    offsets = {crop_offset(x[n], out[n], 4) for n in range(len(x))}
    assert len(offsets) > 10 and all(0 <= a <= 8 and 0 <= b <= 8 for a, b in offsets)


def test_hflip_flips_about_half_and_only_mirrors():
    x = distinct_images(4000, c=1, h=2, w=3)
    out = hflip(x, generator=torch.Generator().manual_seed(0))
    mirrored = x[:, :, :, [2, 1, 0]]
    flipped = 0
    for n in range(len(x)):
        if torch.equal(out[n], mirrored[n]):
            flipped += 1
        else:
            assert torch.equal(out[n], x[n])
    assert abs(flipped - 2000) < 5 * np.sqrt(4000 * 0.25)


def test_seeded_generator_reproduces_and_seeds_differ():
    x = torch.rand(64, 3, 32, 32)
    aug = Augment(*channel_stats(x))
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    c = aug(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augment_is_crop_flip_then_standardize():
    x = distinct_images(60, c=3, h=8, w=8)  # integers; mean and std below keep arithmetic exact
    mean, std = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0.5, 1.0, 2.0])
    aug = Augment(mean, std, padding=2)
    out = aug(x, torch.Generator().manual_seed(0))
    back = out * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)  # undo the standardization
    mirror = list(range(7, -1, -1))
    plain = flipped = 0
    for n in range(len(x)):
        as_is = window_offsets(x[n], back[n], 2)
        mirrored = window_offsets(x[n], back[n][:, :, mirror], 2)
        assert len(as_is) + len(mirrored) >= 1  # a crop of the black-padded image, maybe mirrored
        plain += bool(as_is)
        flipped += bool(mirrored)
    assert plain > 10 and flipped > 10
    expected_eval = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    assert torch.equal(aug.eval(x), expected_eval)


def test_no_flip_option_and_state_dict_round_trip():
    x = distinct_images(200, c=1, h=3, w=3)
    aug = Augment(torch.zeros(1), torch.ones(1), padding=0, flip=False)
    assert torch.equal(aug(x, torch.Generator().manual_seed(0)), x)
    twin = Augment(torch.ones(1), torch.ones(1) * 2)
    twin.load_state_dict(aug.state_dict())
    assert twin.state_dict()["flip"] is False and twin.padding == 0
    assert torch.equal(twin.mean, aug.mean)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="padding"):
        random_crop(torch.zeros(1, 1, 4, 4), padding=-1)
    with pytest.raises(ValueError, match="std"):
        Augment(torch.zeros(3), torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="p"):
        hflip(torch.zeros(1, 1, 2, 2), p=1.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_the_batch_device():
    x = torch.rand(16, 3, 32, 32, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    out = Augment(*channel_stats(x))(x, g)
    assert out.device == x.device
    cpu = random_crop(x.cpu(), 4, torch.Generator().manual_seed(0))
    assert cpu.shape == out.shape


def test_fused_augment_equals_the_separate_steps():
    x = torch.rand(32, 3, 8, 8)
    mean, std = torch.tensor([0.3, 0.4, 0.5]), torch.tensor([0.2, 0.3, 0.4])
    fused = Augment(mean, std, padding=3)(x, torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    steps = standardize(hflip(random_crop(x, 3, g), 0.5, g), mean, std)
    torch.testing.assert_close(fused, steps, rtol=0, atol=1e-6)
