import pytest
import torch
from conftest import TINY
from monai.networks.blocks import PatchEmbeddingBlock
from monai.networks.nets import UNETR

from custom_components.networks import GLMAE, EMATeacher, MaskedViTEncoder, random_masking, sincos_position_embedding


def tiny_encoder(img_size=32):
    return MaskedViTEncoder(img_size=img_size, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=4)


@pytest.mark.parametrize("num_tokens,ratio,visible", [(216, 0.75, 54), (1000, 0.75, 250), (8, 0.75, 2), (64, 0.0, 64)])
def test_random_masking_keeps_exact_visible_count(num_tokens, ratio, visible):
    ids_keep, mask, ids_restore = random_masking(3, num_tokens, ratio, "cpu")
    assert ids_keep.shape == (3, visible)
    assert torch.equal(mask.sum(1), torch.full((3,), float(num_tokens - visible)))
    # visible tokens are exactly the unmasked ones, and restore inverts the shuffle
    for b in range(3):
        assert set(ids_keep[b].tolist()) == set(torch.nonzero(mask[b] == 0).flatten().tolist())
    assert not torch.equal(ids_keep[0], ids_keep[1]) or ratio == 0.0  # per-sample masks


def test_random_masking_rejects_bad_ratio():
    with pytest.raises(ValueError, match="mask_ratio"):
        random_masking(1, 8, 1.0, "cpu")


@pytest.mark.parametrize("view,tokens,visible", [(160, 1000, 250), (96, 216, 54)])
def test_encoder_token_counts_for_global_and_local_views(view, tokens, visible):
    enc = MaskedViTEncoder(img_size=96, hidden_size=48, mlp_dim=96, num_layers=1, num_heads=4)
    latent, mask, ids_restore = enc(torch.rand(2, 1, view, view, view), mask_ratio=0.75)
    assert latent.shape == (2, 1 + visible, 48)
    assert mask.shape == ids_restore.shape == (2, tokens)


def test_position_embeddings_for_two_grids():
    ref = PatchEmbeddingBlock(1, 96, 16, 48, 4, pos_embed_type="sincos").position_embeddings.data
    assert torch.allclose(sincos_position_embedding((6, 6, 6), 48), ref)
    big = sincos_position_embedding((10, 10, 10), 48)
    assert big.shape == (1, 1000, 48)
    # the first axis-row of the 6³ grid is the same position as in the 10³ grid (same coordinates, same formula)
    assert torch.allclose(big[0, 0], ref[0, 0])
    assert not torch.allclose(big[0, 5], big[0, 6])
    dec = sincos_position_embedding((6, 6, 6), 512)  # 512 is not divisible by 6: zero-padded
    assert dec.shape == (1, 216, 512) and torch.all(dec[..., 510:] == 0)


def test_encoder_uses_stored_grid_and_generated_grid():
    enc = tiny_encoder(img_size=32)
    assert enc.position_embedding((2, 2, 2), torch.device("cpu"), torch.float32) is \
        enc.patch_embedding.position_embeddings
    assert enc.position_embedding((4, 4, 4), torch.device("cpu"), torch.float32).shape == (1, 64, 48)


@pytest.mark.parametrize("kwargs,match", [
    (dict(hidden_size=50, num_heads=5), "divisible by 6"),
    (dict(hidden_size=48, num_heads=5), "divisible by num_heads"),
    (dict(img_size=40), "multiple of patch_size"),
])
def test_encoder_ill_arguments(kwargs, match):
    args = dict(img_size=32, hidden_size=48, mlp_dim=96, num_layers=1, num_heads=4) | kwargs
    with pytest.raises(ValueError, match=match):
        MaskedViTEncoder(**args)


def test_encoder_rejects_view_not_multiple_of_patch():
    with pytest.raises(ValueError, match="multiples of patch_size"):
        tiny_encoder()(torch.rand(1, 1, 40, 32, 32))


def test_encoder_keys_are_unetr_vit_keys():
    enc = MaskedViTEncoder(img_size=32, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=4)
    vit = UNETR(1, 3, (32, 32, 32), hidden_size=48, mlp_dim=96, num_heads=4, qkv_bias=True).vit
    vit.blocks = vit.blocks[:2]
    enc_sd, vit_sd = enc.state_dict(), vit.state_dict()
    assert set(enc_sd) - {"cls_token"} == set(vit_sd)
    assert all(enc_sd[k].shape == vit_sd[k].shape for k in vit_sd)
    missing, unexpected = vit.load_state_dict({k: v for k, v in enc_sd.items() if k != "cls_token"}, strict=True)
    assert not missing and not unexpected


@pytest.mark.parametrize("consistency", ["dino", "byol"])
def test_glmae_output_shapes(consistency):
    net = GLMAE(img_size=32, consistency=consistency, **TINY)
    out = net(torch.rand(4, 1, 64, 64, 64), torch.rand(8, 1, 32, 32, 32), mask_ratio=0.75)
    assert out["global_pred"].shape == (4, 64, 16**3)
    assert out["global_mask"].shape == (4, 64)
    assert out["local_pred"].shape == (8, 8, 16**3)
    assert out["global_embedding"].shape == (4, 32) and out["local_embedding"].shape == (8, 32)


def test_glmae_skips_missing_kind_and_rejects_unknown_consistency():
    net = GLMAE(img_size=32, **TINY)
    assert set(net(None, torch.rand(2, 1, 32, 32, 32))) == {"local_pred", "local_mask", "local_features",
                                                             "local_embedding"}
    for name in ("consistency", "embedding", "weight_init"):
        with pytest.raises(ValueError, match=name):
            GLMAE(img_size=32, **{name: "simclr"}, **TINY)


def test_ema_teacher_update_math_and_no_grad():
    student = GLMAE(img_size=32, **TINY)
    teacher = EMATeacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    before = teacher.encoder.blocks[0].attn.qkv.weight.clone()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    teacher.update(student, momentum=0.9)
    expected = 0.9 * before + 0.1 * student.encoder.blocks[0].attn.qkv.weight
    assert torch.allclose(teacher.encoder.blocks[0].attn.qkv.weight, expected, atol=1e-6)
    teacher.update(student, momentum=1.0)
    assert torch.allclose(teacher.encoder.blocks[0].attn.qkv.weight, expected, atol=1e-6)
    teacher.train()
    assert not teacher.training
    with pytest.raises(ValueError, match="momentum"):
        teacher.update(student, 1.5)


def test_a_batch_normalised_head_removes_what_every_input_shares():
    """head_batch_norm: hidden units standardised across the batch in the student's head and in the teacher's, which
    stays in eval mode except for those norms; a shared offset of the inputs no longer reaches the logits."""
    student = GLMAE(img_size=32, head_batch_norm=True, **TINY)
    norms = [m for m in student.head.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(norms) == 2  # after each hidden layer of the 3-layer MLP
    teacher = EMATeacher(student)
    teacher.train()
    assert not teacher.training and not teacher.encoder.training
    assert all(m.training for m in teacher.head.modules() if isinstance(m, torch.nn.BatchNorm1d))
    features = torch.randn(6, 48)
    with torch.no_grad():
        logits = teacher.head(features)
        assert torch.allclose(teacher.head(features + 25.0), logits, atol=1e-4)  # the shared part is gone
        plain = GLMAE(img_size=32, **TINY).head
        assert not torch.allclose(plain(features + 25.0), plain(features), atol=1e-2)  # control: it is not, without
    with pytest.raises(ValueError, match="head_batch_norm"):
        GLMAE(img_size=32, consistency="byol", head_batch_norm=True, **TINY)


def test_sync_batch_norm_only_on_cuda():
    from custom_components.distributed import sync_batch_norm

    head = GLMAE(img_size=32, head_batch_norm=True, **TINY)
    assert sync_batch_norm(head, "cpu") is head
    converted = sync_batch_norm(GLMAE(img_size=32, head_batch_norm=True, **TINY), "cuda:0")  # conversion needs no GPU
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules())
