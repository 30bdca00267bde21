"""Tests for custom_components.weights: encoder export and loading every supported layout into UNETR.vit."""

from __future__ import annotations

import argparse
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import UNETR, MaskedAutoEncoderViT, ViT

from custom_components.networks import GLMAE, EMATeacher
from custom_components.weights import (
    encoder_state_dict, load_encoder, load_pretrained_encoder, load_state_dict_file, save_state_dict,
    to_vit_state_dict,
)

WIDTH = dict(hidden_size=48, mlp_dim=96, num_heads=4)
POS = "patch_embedding.position_embeddings"
TIMM_NAMES = {
    "patch_embedding.patch_embeddings.": "patch_embed.proj.", ".attn.out_proj.": ".attn.proj.",
    ".mlp.linear1.": ".mlp.fc1.", ".mlp.linear2.": ".mlp.fc2.",
}


class NotATensor:
    """A custom object that weights_only loading must refuse."""


def randomized(module: torch.nn.Module) -> torch.nn.Module:
    """Fill every parameter with noise so a copied tensor cannot equal a freshly initialised one by chance."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    return module


def make_glmae(img_size=32, num_layers=12, in_channels=1, hidden_size=48) -> GLMAE:
    torch.manual_seed(0)
    net = GLMAE(
        in_channels, img_size, 16, hidden_size, 2 * hidden_size, num_layers, 4, decoder_hidden_size=48,
        decoder_num_layers=1, decoder_num_heads=4, head_out_dim=32, head_hidden_dim=32, head_bottleneck_dim=16,
    )
    return randomized(net)


def make_unetr(img_size=32, in_channels=1, qkv_bias=True) -> UNETR:
    return UNETR(in_channels, 2, img_size, feature_size=16, qkv_bias=qkv_bias, **WIDTH)


def encoder_keys(state: dict) -> list[str]:
    return [k for k in state if k.startswith(("patch_embedding.", "blocks.", "norm."))]


def assert_loaded(vit: torch.nn.Module, reference: dict, report, skip=(POS,)) -> None:
    """Every encoder tensor of ``reference`` arrived unchanged and is listed as loaded."""
    target = vit.state_dict()
    for key in encoder_keys(reference):
        if key not in skip:
            assert key in report.loaded, key
            assert torch.equal(target[key], reference[key]), key


def only_harmless(missing: list[str]) -> bool:
    return all(".norm_cross_attn." in k for k in missing)


def test_encoder_pt_round_trip(tmp_path, caplog):
    net = make_glmae()
    state = encoder_state_dict(SimpleNamespace(module=net))  # DDP-style wrapper
    assert state["position_grid"].dtype == torch.int64 and state["position_grid"].tolist() == [2, 2, 2]
    assert all(v.device.type == "cpu" and v.is_contiguous() and not v.requires_grad for v in state.values())
    unetr = make_unetr()
    assert set(net.encoder.state_dict()) - {"cls_token"} <= set(unetr.vit.state_dict())
    save_state_dict(state, tmp_path / "encoder.pt")
    with caplog.at_level("INFO", logger="custom_components"):
        report = load_encoder(unetr, tmp_path / "encoder.pt")
    assert "Loaded 173/173 encoder tensors" in caplog.text
    assert report.source_format == "glmae-encoder" and not report.interpolated and report.channels_repeated == 1
    assert report.missing == [] and report.unexpected == []
    assert_loaded(unetr.vit, state, report, skip=())


def test_model_pt_and_checkpoint_saver(tmp_path):
    net = make_glmae()
    reference = net.encoder.state_dict()
    report = load_encoder(make_unetr(), net.state_dict())
    assert report.source_format == "glmae-model" and report.missing == [] and report.unexpected == []

    optimizer = torch.optim.AdamW(net.parameters())
    saved = {"model": net.state_dict(), "teacher": EMATeacher(net).state_dict(), "optimizer": optimizer.state_dict()}
    torch.save(saved, tmp_path / "checkpoint.pt")
    unetr = make_unetr()
    report = load_encoder(unetr, tmp_path / "checkpoint.pt")
    assert report.source_format == "glmae-model" and report.missing == []
    assert_loaded(unetr.vit, reference, report, skip=())

    report = load_encoder(make_unetr(qkv_bias=False), net.state_dict())  # MONAI UNETR's default drops qkv biases
    assert sum(k.endswith("attn.qkv.bias") for k in report.unexpected) == 12


def official_checkpoint(net: GLMAE) -> dict:
    """The released layout: DINO ``student`` dict of a DDP ``MultiCropWrapper`` with a timm backbone."""
    backbone = {}
    for key, value in net.encoder.state_dict().items():
        if ".norm_cross_attn." in key:
            continue
        if key == POS:
            key, value = "pos_embed", torch.cat([torch.zeros(1, 1, value.shape[-1]), value], dim=1)
        for monai_name, timm_name in TIMM_NAMES.items():
            key = key.replace(monai_name, timm_name)
        backbone[key] = value
    backbone.update({"decoder_embed.weight": torch.ones(48, 48), "mask_token": torch.zeros(1, 1, 48),
                     "decoder_pos_embed": torch.zeros(1, 9, 48), "decoder_pred.weight": torch.ones(4096, 48)})
    student = {f"module.backbone.{k}": v for k, v in backbone.items()}
    student["module.head.mlp.0.weight"] = torch.ones(32, 48)
    return {"student": student, "teacher": dict(student), "epoch": 1599, "args": argparse.Namespace(lr=1e-3)}


def test_official_glmae_release(tmp_path):
    net = make_glmae()
    torch.save(official_checkpoint(net), tmp_path / "checkpoint-1599.pth")
    vit_state, cls_token, fmt = to_vit_state_dict(load_state_dict_file(tmp_path / "checkpoint-1599.pth"))
    assert fmt == "glmae-official" and torch.equal(cls_token, net.encoder.cls_token.detach())
    assert vit_state[POS].shape == (1, 8, 48)
    unetr = make_unetr()
    report = load_encoder(unetr, tmp_path / "checkpoint-1599.pth")
    assert report.missing and only_harmless(report.missing) and report.unexpected == []
    assert_loaded(unetr.vit, net.encoder.state_dict(), report, skip=[*report.missing, POS])
    assert torch.equal(unetr.vit.state_dict()[POS], net.encoder.state_dict()[POS])


def test_monai_masked_autoencoder():
    torch.manual_seed(0)
    mae = randomized(MaskedAutoEncoderViT(
        1, 32, 16, num_layers=12, qkv_bias=True, decoder_hidden_size=48, decoder_mlp_dim=96, decoder_num_layers=1,
        decoder_num_heads=4, **WIDTH,
    ))
    unetr = make_unetr()
    report = load_encoder(unetr, mae.state_dict())
    assert report.source_format == "monai-mae" and report.missing == [] and report.unexpected == []
    assert torch.equal(unetr.vit.norm.weight, mae.blocks[12].weight)
    assert torch.equal(unetr.vit.norm.bias, mae.blocks[12].bias)
    assert torch.equal(unetr.vit.blocks[11].attn.qkv.weight, mae.blocks[11].attn.qkv.weight)

    classifier = ViT(1, 32, 16, num_layers=12, classification=True, qkv_bias=True, **WIDTH)
    report = load_encoder(classifier, mae.state_dict())
    assert "cls_token" in report.loaded and torch.equal(classifier.cls_token, mae.cls_token)


def test_monai_vit_and_unetr_state_dicts():
    torch.manual_seed(0)
    source = randomized(make_unetr())
    for state, fmt in ((source.state_dict(), "monai-unetr"), (source.vit.state_dict(), "monai-vit")):
        unetr = make_unetr()
        report = load_encoder(unetr, state)
        assert report.source_format == fmt and report.missing == [] and report.unexpected == []
        assert_loaded(unetr.vit, source.vit.state_dict(), report, skip=())


@pytest.mark.parametrize("source_img, target_img", [(64, 96), ((64, 64, 32), (96, 96, 48))])
def test_position_embedding_interpolation(tmp_path, source_img, target_img):
    net = make_glmae(img_size=source_img, num_layers=1)
    save_state_dict(encoder_state_dict(net), tmp_path / "encoder.pt")
    unetr = make_unetr(img_size=target_img)
    report = load_encoder(unetr, tmp_path / "encoder.pt")
    source_grid, target_grid = net.encoder.grid_size, unetr.feat_size
    expected = F.interpolate(
        net.encoder.patch_embedding.position_embeddings.detach().reshape(1, *source_grid, 48).permute(0, 4, 1, 2, 3),
        size=target_grid, mode="trilinear",
    ).permute(0, 2, 3, 4, 1).reshape(1, -1, 48)
    loaded = unetr.vit.patch_embedding.position_embeddings
    assert report.interpolated and loaded.shape == (1, 216 if target_img == 96 else 108, 48)
    torch.testing.assert_close(loaded.detach(), expected)


def test_channel_repeat():
    net = make_glmae(num_layers=1)
    unetr = make_unetr(in_channels=4)
    report = load_encoder(unetr, encoder_state_dict(net))
    assert report.channels_repeated == 4
    weight = unetr.vit.patch_embedding.patch_embeddings.weight
    for c in range(4):
        assert torch.equal(weight[:, c : c + 1], net.encoder.patch_embedding.patch_embeddings.weight)
    with pytest.raises(ValueError, match="not a multiple"):
        load_encoder(make_unetr(in_channels=3), encoder_state_dict(make_glmae(num_layers=1, in_channels=2)))


def test_width_mismatch_names_file_and_shapes(tmp_path):
    path = tmp_path / "wide.pt"
    save_state_dict(encoder_state_dict(make_glmae(num_layers=1, hidden_size=96)), path)
    with pytest.raises(ValueError, match=r"wide\.pt: \S+ has shape \(1, 8, 96\) in the checkpoint but \(1, 8, 48\)"):
        load_encoder(make_unetr(), path)
    with pytest.raises(ValueError, match=r"wide\.pt: no encoder key matched"):
        load_encoder(make_unetr(), path, strict_width=False)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_state_dict_file(tmp_path / "absent.pt")
    torch.save({"weight": torch.ones(2), "extra": NotATensor()}, tmp_path / "object.pt")
    with pytest.raises(ValueError, match=r"object\.pt holds non-tensor objects .*weights_only=True\) refused"):
        load_state_dict_file(tmp_path / "object.pt")
    save_state_dict(encoder_state_dict(make_glmae(num_layers=1)), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated\.pt is not a readable PyTorch checkpoint"):
        load_encoder(make_unetr(), tmp_path / "truncated.pt")
    with pytest.raises(ValueError, match="unknown checkpoint layout.*conv.weight"):
        to_vit_state_dict({"conv.weight": torch.ones(1)})
    with pytest.raises(ValueError, match="exactly one of"):
        to_vit_state_dict({"epoch": 3, "optimizer": {}})


def test_finetune_starts_from_pretrained_encoder(tmp_path):
    net = make_glmae()
    save_state_dict(encoder_state_dict(net), tmp_path / "encoder.pt")
    unetr = make_unetr()
    assert load_pretrained_encoder(unetr, None) is unetr and load_pretrained_encoder(unetr, "") is unetr
    qkv = net.encoder.blocks[0].attn.qkv.weight
    assert not torch.equal(unetr.vit.blocks[0].attn.qkv.weight, qkv)
    assert load_pretrained_encoder(unetr, str(tmp_path / "encoder.pt")) is unetr
    assert torch.equal(unetr.vit.blocks[0].attn.qkv.weight, qkv)


def test_save_state_dict_is_atomic_and_tensor_only(tmp_path):
    path = tmp_path / "a" / "b" / "encoder.pt"
    save_state_dict({"w": torch.arange(3)}, path)
    assert os.listdir(path.parent) == ["encoder.pt"]
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(3))
    with pytest.raises(TypeError, match="'epoch'"):
        save_state_dict({"w": torch.ones(1), "epoch": 3}, tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists() and os.listdir(tmp_path) == ["a"]
