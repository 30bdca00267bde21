"""The fine-tuning recipe: layer-wise learning-rate decay over the ViT encoder, the encoder's own rate, weight decay
on weight matrices only, and a frozen encoder that does not move."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from monai.networks.nets import UNETR

from custom_components.engines import encoder_layer_id, param_groups_layer_decay
from custom_components.networks import ViTClassifier
from custom_components.weights import load_pretrained_encoder

NUM_LAYERS = 12  # MONAI's UNETR always has 12 transformer blocks (its skips read blocks 3, 6 and 9)


def small_unetr() -> UNETR:
    torch.manual_seed(0)
    return UNETR(1, 3, 32, feature_size=8, hidden_size=48, mlp_dim=96, num_heads=4, qkv_bias=True)


def rate_of(groups: list[dict], param: nn.Parameter) -> tuple[float, float]:
    """(lr, weight_decay) of the one group that holds ``param``."""
    holding = [g for g in groups if any(p is param for p in g["params"])]
    assert len(holding) == 1
    return holding[0]["lr"], holding[0]["weight_decay"]


@pytest.mark.parametrize("name,layer_id", [
    ("vit.patch_embedding.position_embeddings", 0), ("vit.patch_embedding.patch_embeddings.weight", 0),
    ("vit.cls_token", 0), ("vit.blocks.0.attn.qkv.weight", 1), ("vit.blocks.11.mlp.linear2.bias", 12),
    ("vit.norm.weight", 13), ("encoder2.blocks.0.conv.weight", 13), ("decoder5.transp_conv.conv.weight", 13),
    ("out.conv.conv.weight", 13), ("head.weight", 13), ("module.vit.blocks.2.norm1.weight", 3),
])
def test_layer_ids_follow_mae_numbering(name, layer_id):
    assert encoder_layer_id(name, NUM_LAYERS) == layer_id


def test_every_block_gets_its_decayed_rate_and_the_decoder_the_base_rate():
    net = small_unetr()
    groups = param_groups_layer_decay(net, learning_rate=1e-3, weight_decay=0.05, layer_decay=0.5,
                                      encoder_learning_rate=4e-4)
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == len(list(net.parameters()))
    vit = net.vit
    assert rate_of(groups, vit.patch_embedding.patch_embeddings.weight) == pytest.approx((4e-4 * 0.5**13, 0.05))
    assert rate_of(groups, vit.patch_embedding.position_embeddings) == pytest.approx((4e-4 * 0.5**13, 0.0))
    for i, block in enumerate(vit.blocks):  # block i (0-based) is layer i + 1: 0.5 ** (L - i)
        assert rate_of(groups, block.attn.qkv.weight) == pytest.approx((4e-4 * 0.5 ** (NUM_LAYERS - i), 0.05))
        assert rate_of(groups, block.norm1.weight) == pytest.approx((4e-4 * 0.5 ** (NUM_LAYERS - i), 0.0))
        assert rate_of(groups, block.attn.qkv.bias)[1] == 0.0
    for param in (vit.norm.weight, net.out.conv.conv.bias):
        assert rate_of(groups, param) == pytest.approx((1e-3, 0.0))
    assert rate_of(groups, net.decoder2.transp_conv.conv.weight) == pytest.approx((1e-3, 0.05))


def test_without_decay_every_group_trains_at_the_learning_rate():
    groups = param_groups_layer_decay(small_unetr(), learning_rate=2e-3, weight_decay=1e-5)
    assert {g["lr"] for g in groups} == {2e-3}


def test_the_scheduler_scales_every_group_alike():
    net = small_unetr()
    optimizer = torch.optim.AdamW(param_groups_layer_decay(net, 1e-3, 0.0, layer_decay=0.75), lr=1e-3)
    before = [g["lr"] for g in optimizer.param_groups]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.1)
    optimizer.step()  # no gradients: a no-op, in the order the scheduler expects
    scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.1 * lr for lr in before])


def test_a_frozen_encoder_does_not_move_and_the_decoder_trains():
    net = load_pretrained_encoder(small_unetr(), None, freeze=True)
    groups = param_groups_layer_decay(net, 1e-2, 0.05, layer_decay=0.75)
    assert all(g["layer_id"] == NUM_LAYERS + 1 for g in groups)  # only the decoder's groups remain
    vit_before = {k: v.clone() for k, v in net.vit.state_dict().items()}
    out_before = net.out.conv.conv.weight.detach().clone()
    optimizer = torch.optim.AdamW(groups, lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        net(torch.randn(1, 1, 32, 32, 32)).square().mean().backward()
        optimizer.step()
    assert all(torch.equal(net.vit.state_dict()[k], v) for k, v in vit_before.items())
    assert all(p.grad is None for p in net.vit.parameters())
    assert not torch.equal(net.out.conv.conv.weight, out_before)


def test_a_frozen_classifier_encoder_is_a_linear_probe():
    net = load_pretrained_encoder(ViTClassifier(1, 3, 32, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=4),
                                  None, freeze=True)
    trainable = sorted(name for name, p in net.named_parameters() if p.requires_grad)
    assert trainable == ["head.bias", "head.weight", "norm.bias", "norm.weight"]
    groups = param_groups_layer_decay(net, 1e-3, 0.0, layer_decay=0.75)
    assert sum(len(g["params"]) for g in groups) == 4


@pytest.mark.parametrize("kwargs,message", [
    (dict(layer_decay=0.0), "0 < layer_decay <= 1"), (dict(layer_decay=1.5), "0 < layer_decay <= 1"),
    (dict(encoder_learning_rate=-1.0), "learning rates > 0"), (dict(encoder="backbone"), "no ViT encoder"),
])
def test_bad_settings_are_one_sentence(kwargs, message):
    with pytest.raises(ValueError, match=message):
        param_groups_layer_decay(small_unetr(), 1e-3, 0.0, **kwargs)


def test_freezing_a_network_without_an_encoder_is_an_error():
    with pytest.raises(ValueError, match="Linear has no .vit encoder"):
        load_pretrained_encoder(nn.Linear(2, 2), None, freeze=True)
