"""The authors' released GL-MAE weights (``checkpoint-1599.pth``) against a second implementation of the released
architecture (tests/released_vit_utils.py): a random checkpoint in the released layout, loaded by
``custom_components.weights.load_encoder`` into each bundle's network at that bundle's ROI and channels, must give
the patch-token features of the released forward. The negative controls show that the comparison catches a
wrong qkv order, wrong MLP names and a CLS slot taken from the wrong end."""

from __future__ import annotations

import pytest
import torch
from bundle_utils import make_workflow
from monai.networks.nets import ViT
from released_vit_utils import ReleasedViT3D, released_checkpoint

import custom_components.weights as weights
from custom_components.weights import load_encoder

#: a narrower width than ViT-B keeps the large-ROI cases fast; the layout and the grids are the bundles' own
NARROW = {"hidden_size": 96, "mlp_dim": 192, "num_heads": 4}
#: largest difference allowed, relative to the features' standard deviation. What remains is LayerNorm's epsilon
#: (1e-6 in the release, PyTorch's 1e-5 in MONAI's ViT) and float rounding; a wrong mapping gives O(1).
TOLERANCE = 1e-3


def bundle_network(bundle: str, **override) -> torch.nn.Module:
    """The bundle's ``network_def`` (UNETR, or the CC-CCII classifier) as its train.json builds it."""
    workflow = make_workflow(bundle, ["train.json"], **override)
    torch.manual_seed(1)
    return workflow.parser.get_parsed_content("network_def")


def feature_difference(network: torch.nn.Module, released: ReleasedViT3D, checkpoint: str, in_channels: int,
                       roi: tuple[int, ...]):
    """Load ``checkpoint`` into ``network`` and return (max |difference| / std of the released features, report)."""
    report = load_encoder(network, checkpoint)
    x = torch.randn(1, in_channels, *roi, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = network.vit(x)[0]
        reference = released(x)
    assert ours.shape == reference.shape
    return ((ours - reference).abs().max() / reference.std()).item(), report


def write_release(tmp_path, **sizes) -> tuple[ReleasedViT3D, str]:
    released = ReleasedViT3D(**sizes).randomise().eval()
    path = str(tmp_path / "checkpoint-1599.pth")
    torch.save(released_checkpoint(released), path)
    return released, path


@pytest.mark.slow
def test_the_released_vit_b_loads_into_btcv_unetr(tmp_path):
    """ViT-B/16 at the released 96³ (6x6x6 tokens), the BTCV bundle's default UNETR: no interpolation."""
    released, path = write_release(tmp_path)
    difference, report = feature_difference(bundle_network("glmae_btcv_segmentation"), released, path, 1, (96,) * 3)
    assert difference < TOLERANCE, difference
    assert report.source_format == "glmae-official" and not report.interpolated and report.channels_repeated == 1
    assert report.unexpected == [] and all(".norm_cross_attn." in k for k in report.missing)
    assert report.dropped == 8 and report.cls_dropped  # 6 MAE-decoder and 2 head tensors; UNETR has no CLS token
    assert len(report.loaded) == 2 + 12 * 12 + 2 + 1  # patch conv (w, b), 12 blocks x 12 tensors, norm, positions


@pytest.mark.parametrize("bundle,in_channels,roi", [
    ("glmae_btcv_segmentation", 1, (96, 96, 96)),
    ("glmae_brats_segmentation", 4, (224, 224, 144)),
    ("glmae_covid19_20_segmentation", 1, (192, 192, 32)),
    ("glmae_ccccii_classification", 1, (384, 384, 32)),
])
def test_the_released_layout_gives_the_released_features_at_every_bundle_roi(tmp_path, bundle, in_channels, roi):
    """Position grid interpolated from 6x6x6 to each bundle's grid, BraTS's 4 channels repeated from 1."""
    released, path = write_release(tmp_path, dim=96, num_heads=4, mlp_dim=192)
    network = bundle_network(bundle, **NARROW)
    assert network.vit.patch_embedding.patch_embeddings.weight.shape[1] == in_channels
    difference, report = feature_difference(network, released, path, in_channels, roi)
    assert difference < TOLERANCE, difference
    assert report.interpolated == (roi != (96, 96, 96)) and report.channels_repeated == in_channels
    assert report.unexpected == []


def test_the_cls_token_takes_its_position_slot(tmp_path):
    """A target with a CLS token (MONAI's ViT with classification=True) computes the released forward with CLS:
    the slot ``pos_embed[:, 0]`` is folded into the token, the patch positions are ``pos_embed[:, 1:]``."""
    released, path = write_release(tmp_path, dim=96, num_heads=4, mlp_dim=192, depth=2)
    vit = ViT(1, 96, 16, hidden_size=96, mlp_dim=192, num_layers=2, num_heads=4, proj_type="conv",
              classification=True, spatial_dims=3, qkv_bias=True)
    load_encoder(vit, path)
    x = torch.randn(1, 1, 96, 96, 96)
    with torch.no_grad():
        ours = vit(x)[1][-1]  # the last block's tokens, CLS first, before the final norm
        reference = released(x, use_cls=True, final_norm=False)
    assert ((ours - reference).abs().max() / reference.std()).item() < TOLERANCE
    with torch.no_grad():
        vit.cls_token -= released.pos_embed[:, :1]  # control: the CLS token without its slot
        assert ((vit(x)[1][-1] - reference).abs().max() / reference.std()).item() > 0.05


def wrong_qkv_order(convert):
    """A loader that reads qkv rows as (heads, 3, head_dim) instead of timm's (3, heads, head_dim)."""
    def convert_wrongly(state):
        out = convert(state)
        for key, value in out.items():
            if key.endswith(("attn.qkv.weight", "attn.qkv.bias")):
                heads = NARROW["num_heads"]
                out[key] = value.reshape(3, heads, -1, *value.shape[1:]).transpose(0, 1).reshape(value.shape)
        return out
    return convert_wrongly


@pytest.mark.parametrize("mistake", ["qkv order", "mlp names", "cls slot at the end"])
def test_the_comparison_fails_on_a_wrong_mapping(tmp_path, monkeypatch, mistake):
    released, path = write_release(tmp_path, dim=96, num_heads=4, mlp_dim=192)
    if mistake == "qkv order":
        monkeypatch.setattr(weights, "_from_timm", wrong_qkv_order(weights._from_timm))
    elif mistake == "mlp names":  # fc1 / fc2 left unrenamed: the MLPs keep their random initialisation
        monkeypatch.setattr(weights, "TIMM_RENAMES", tuple(r for r in weights.TIMM_RENAMES if ".mlp." not in r[0]))
    else:
        original = weights._from_timm

        def slot_at_the_end(state):
            state = dict(state)
            pos = state["pos_embed"]
            state["pos_embed"] = torch.cat([pos[:, 1:], pos[:, :1]], dim=1)  # reads the CLS slot as the last one
            return original(state)
        monkeypatch.setattr(weights, "_from_timm", slot_at_the_end)
    difference, _ = feature_difference(bundle_network("glmae_btcv_segmentation", **NARROW), released, path, 1,
                                       (96, 96, 96))
    assert difference > 100 * TOLERANCE, (mistake, difference)
