import math

import pytest
import torch
from conftest import TINY

from custom_components.geometry import patchify, unpatchify
from custom_components.losses import CosineConsistencyLoss, DINOConsistencyLoss, GLMAELoss, MaskedReconstructionLoss
from custom_components.networks import GLMAE, EMATeacher


def test_patchify_roundtrip_and_token_order():
    x = torch.arange(2 * 1 * 4 * 6 * 8, dtype=torch.float32).reshape(2, 1, 4, 6, 8)
    p = patchify(x, 2)
    assert p.shape == (2, 2 * 3 * 4, 8)
    assert torch.equal(unpatchify(p, 2, (2, 3, 4), 1), x)
    # token order matches the conv patch embedding flattened over (H, W, D)
    conv = torch.nn.Conv3d(1, 1, 2, 2, bias=False)
    torch.nn.init.ones_(conv.weight)
    assert torch.allclose(conv(x).flatten(2)[:, 0], p.sum(-1))


def test_reconstruction_loss_hand_computed():
    # 2x2x2 patches of a 4x2x2 image: two patches, constant 1.0 and 3.0; prediction 0 everywhere
    image = torch.cat([torch.full((1, 1, 2, 2, 2), 1.0), torch.full((1, 1, 2, 2, 2), 3.0)], dim=2)
    pred = torch.zeros(1, 2, 8)
    loss = MaskedReconstructionLoss(patch_size=2)
    assert loss(pred, image, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(1.0)
    assert loss(pred, image, torch.tensor([[0.0, 1.0]])).item() == pytest.approx(9.0)
    assert loss(pred, image, torch.tensor([[1.0, 1.0]])).item() == pytest.approx(5.0)
    # normalised target of a constant patch is 0 -> zero loss
    assert MaskedReconstructionLoss(2, norm_pix_loss=True)(pred, image, torch.ones(1, 2)).item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="does not match"):
        loss(torch.zeros(1, 3, 8), image, torch.ones(1, 3))


def test_dino_consistency_hand_computed():
    teacher = torch.tensor([[[1.0, 0.0]]])  # B=1, p=1, K=2
    student = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])  # n=2
    loss = DINOConsistencyLoss(2, student_temp=1.0, teacher_temp=1.0)
    pt = torch.softmax(torch.tensor([1.0, 0.0]), 0)
    ce1 = -(pt * torch.log_softmax(torch.tensor([0.0, 1.0]), 0)).sum()
    ce2 = -(pt * torch.log_softmax(torch.tensor([1.0, 0.0]), 0)).sum()
    assert loss(teacher, student).item() == pytest.approx(((ce1 + ce2) / 2).item(), rel=1e-6)
    loss.update_center(teacher)
    assert torch.allclose(loss.center.flatten(), torch.tensor([0.1, 0.0]))
    with pytest.raises(ValueError, match="expected teacher"):
        loss(teacher[0], student)


def test_cosine_consistency_hand_computed():
    teacher = torch.tensor([[[1.0, 0.0]]])
    student = torch.tensor([[[0.0, 2.0], [3.0, 0.0]]])  # cos 0 and 1 -> losses 2 and 0
    assert CosineConsistencyLoss()(teacher, student).item() == pytest.approx(1.0)


def test_glmae_loss_terms_weights_and_teacher_gets_no_gradient():
    net = GLMAE(img_size=32, **TINY)
    teacher = EMATeacher(net)
    g, l = torch.rand(4, 1, 64, 64, 64), torch.rand(8, 1, 32, 32, 32)  # batch of 2 volumes, p=2, q=4
    loss_fn = GLMAELoss(patch_size=16, head_out_dim=32, loss_weights={"g2l": 0.5})
    out = loss_fn(net(g, l), teacher(g), g, l, batch_size=2)
    terms = {k: out[f"loss_{k}"] for k in ("rec_local", "rec_global", "g2g", "g2l")}
    assert all(v.item() > 0 for v in terms.values())
    expected = terms["rec_local"] + terms["rec_global"] + terms["g2g"] + 0.5 * terms["g2l"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    out["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert net.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert net.head.mlp[0].weight.grad.abs().sum() > 0


def test_glmae_loss_zero_weight_skips_term():
    loss_fn = GLMAELoss(patch_size=16, head_out_dim=32, loss_weights={"rec_global": 0, "g2g": 0, "g2l": 0})
    assert not loss_fn.needs("global") and not loss_fn.needs("teacher") and loss_fn.needs("local")
    assert not loss_fn.needs("local_embedding") and not loss_fn.needs("global_embedding")
    net = GLMAE(img_size=32, **TINY)
    l = torch.rand(2, 1, 32, 32, 32)
    student = net(None, l, embed=())
    assert "local_embedding" not in student and "local_pred" in student  # the projection head is skipped
    out = loss_fn(student, None, None, l, batch_size=1)
    assert out["loss_g2g"].item() == 0 and math.isclose(out["loss"].item(), out["loss_rec_local"].item())


@pytest.mark.parametrize("kwargs,match", [
    (dict(loss_weights={"rec": 1}), "unknown loss_weights"),
    (dict(loss_weights={"g2g": -1}), "non-negative"),
    (dict(loss_weights={"rec_local": 0, "rec_global": 0, "g2g": 0, "g2l": 0}), "positive"),
    (dict(consistency="mse"), "consistency"),
])
def test_glmae_loss_ill_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GLMAELoss(**kwargs)
