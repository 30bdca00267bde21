import pytest
import torch
from monai.data import MetaTensor

from custom_components.transforms import GlobalLocalViewsd


def views(image, seed=0, **kwargs):
    args = dict(global_size=32, local_size=16, num_global_views=2, num_local_views=4) | kwargs
    return GlobalLocalViewsd("image", **args).set_random_state(seed)({"image": image})


def test_view_shapes_and_keys():
    out = views(MetaTensor(torch.rand(1, 40, 48, 36)))
    assert set(out) == {"global_views", "local_views"}  # the full image is dropped
    assert out["global_views"].shape == (2, 1, 32, 32, 32) and out["local_views"].shape == (4, 1, 16, 16, 16)
    assert type(out["global_views"]) is torch.Tensor


def test_views_are_crops_of_the_image_at_independent_places():
    image = torch.arange(40 * 48 * 36, dtype=torch.float32).reshape(1, 40, 48, 36)
    out = views(image)
    for view in [*out["global_views"], *out["local_views"]]:
        corner = int(view[0, 0, 0, 0])
        i, j, k = corner // (48 * 36), corner // 36 % 48, corner % 36
        size = view.shape[-1]
        assert torch.equal(view[0], image[0, i:i + size, j:j + size, k:k + size])
    corners = {int(v[0, 0, 0, 0]) for v in out["local_views"]}
    assert len(corners) > 1


def test_small_volume_is_padded_not_rejected():
    out = views(torch.ones(1, 10, 20, 8))
    assert out["global_views"].shape == (2, 1, 32, 32, 32)
    assert out["global_views"].sum() == 2 * 10 * 20 * 8  # the whole volume, zero padding around it


def test_same_seed_same_views_and_flips_change_them():
    image = torch.rand(1, 40, 40, 40)
    assert torch.equal(views(image, seed=3)["local_views"], views(image, seed=3)["local_views"])
    assert not torch.equal(views(image, seed=3)["local_views"], views(image, seed=4)["local_views"])
    flipped = views(image, seed=3, flip_prob=1.0)["global_views"]
    assert not torch.equal(flipped, views(image, seed=3)["global_views"])


def test_intensity_jitter_scales_and_shifts_each_view_on_its_own():
    image = torch.full((1, 40, 40, 40), 0.5)
    plain = views(image, seed=5)["local_views"]
    jittered = views(image, seed=5, intensity_prob=1.0, intensity_scale=0.2, intensity_shift=0.1)["local_views"]
    assert torch.all(plain == 0.5)
    levels = jittered.flatten(1)
    assert torch.all(levels == levels[:, :1])  # one scale and one shift per view, not per voxel
    assert len(set(levels[:, 0].tolist())) == 4  # drawn for every view
    assert torch.all((levels - 0.5).abs() <= 0.5 * 0.2 + 0.1 + 1e-6)


def test_zero_views_of_a_kind():
    out = views(torch.rand(1, 40, 40, 40), num_global_views=0)
    assert out["global_views"].shape == (0, 1, 32, 32, 32)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_global_views=0, num_local_views=0), "at least one"),
    (dict(flip_prob=2.0), "flip_prob"),
    (dict(intensity_prob=1.5), "intensity_prob"),
    (dict(intensity_shift=-0.1), "intensity_shift"),
])
def test_ill_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GlobalLocalViewsd("image", **kwargs)


def test_non_3d_image_is_an_error():
    with pytest.raises(ValueError, match="channel-first 3D"):
        views(torch.rand(40, 40, 40))
