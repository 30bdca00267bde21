"""The fast paths compute what the straightforward ones do: SDPA attention, one batched pass per view kind,
bf16 autocast, the patch embedding as a matrix product, fused AdamW."""

import torch
from conftest import TINY

from custom_components.engines import param_groups_weight_decay
from custom_components.losses import GLMAELoss
from custom_components.networks import GLMAE
from custom_components.networks.vit import MaskedViTEncoder, random_masking


def pair(**kwargs):
    torch.manual_seed(0)
    fast = GLMAE(img_size=32, use_flash_attention=True, **TINY, **kwargs)
    slow = GLMAE(img_size=32, use_flash_attention=False, **TINY, **kwargs)
    slow.load_state_dict(fast.state_dict())
    return fast, slow


def test_sdpa_attention_equals_the_explicit_attention():
    fast, slow = pair()
    views = torch.rand(3, 1, 64, 64, 64)
    torch.manual_seed(1)
    a = fast.forward_view(views, 0.75)
    torch.manual_seed(1)
    b = slow.forward_view(views, 0.75)
    assert torch.equal(a["mask"], b["mask"])
    assert torch.allclose(a["pred"], b["pred"], atol=1e-5) and torch.allclose(a["embedding"], b["embedding"], atol=1e-5)


def test_one_batched_pass_equals_one_pass_per_view():
    net = GLMAE(img_size=32, **TINY).eval()
    views = torch.rand(4, 1, 32, 32, 32)
    with torch.no_grad():
        batched = net.encoder(views, 0.0)[0]
        single = torch.cat([net.encoder(v[None], 0.0)[0] for v in views])
    assert torch.allclose(batched, single, atol=1e-5)


def test_bf16_autocast_loss_is_close_to_float32():
    net = GLMAE(img_size=32, **TINY)
    loss = GLMAELoss(patch_size=16, head_out_dim=32, loss_weights={"g2g": 0, "g2l": 0})
    g, l = torch.rand(2, 1, 64, 64, 64), torch.rand(4, 1, 32, 32, 32)
    torch.manual_seed(2)
    full = loss(net(g, l), None, g, l, batch_size=1)["loss"]
    torch.manual_seed(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = loss(net(g, l), None, g, l, batch_size=1)["loss"]
    assert half.dtype == torch.float32 and torch.allclose(full, half, rtol=5e-2)


def test_patch_embedding_as_a_matrix_product_equals_the_convolution():
    """Every patch, and only the visible ones, embedded by gathering voxels equals the stride-P convolution's output
    at those positions (two channels, a non-cubic view, per-sample visible sets)."""
    torch.manual_seed(0)
    enc = MaskedViTEncoder(in_channels=2, img_size=32, hidden_size=48, mlp_dim=96, num_layers=1, num_heads=4)
    x = torch.rand(3, 2, 32, 48, 64)
    grid = enc.token_grid(x.shape[2:])
    with torch.no_grad():
        conv = enc.patch_embedding.patch_embeddings(x).flatten(2).transpose(1, 2)  # [B, N, D] in token order
        ids_keep, _, _ = random_masking(3, conv.shape[1], 0.75, "cpu")
        visible = torch.gather(conv, 1, ids_keep.unsqueeze(-1).expand(-1, -1, conv.shape[-1]))
        assert torch.allclose(enc.embed_patches(x, grid), conv, atol=1e-5)
        assert torch.allclose(enc.embed_patches(x, grid, ids_keep), visible, atol=1e-5)


def test_fused_adamw_of_the_bundles_equals_the_foreach_one():
    """Both bundles use AdamW(fused=True): after a few steps on GL-MAE's parameter groups it holds the same weights
    as the multi-tensor implementation. (``eps`` is raised so that parameters whose true gradient is zero, such as
    the key bias, are not moved by float noise that Adam would scale up to full steps in either implementation.)"""
    torch.manual_seed(0)
    nets = [GLMAE(img_size=32, **TINY) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    optimizers = [torch.optim.AdamW(param_groups_weight_decay(net, 0.05), lr=1e-2, betas=(0.9, 0.95), eps=1e-4, **kw)
                  for net, kw in zip(nets, ({"fused": True}, {"foreach": True}))]
    views = torch.rand(2, 1, 32, 32, 32)
    for step in range(3):
        for net, optimizer in zip(nets, optimizers):
            optimizer.zero_grad()
            torch.manual_seed(step)
            net.forward_view(views, 0.75)["pred"].square().mean().backward()
            optimizer.step()
    fused, foreach = nets[0].state_dict(), nets[1].state_dict()
    assert not torch.equal(fused["decoder.pred.weight"], GLMAE(img_size=32, **TINY).state_dict()["decoder.pred.weight"])
    assert all(torch.allclose(fused[k], foreach[k], atol=1e-6) for k in fused)
