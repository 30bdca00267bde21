"""The fast paths compute what the straightforward ones do: SDPA attention, one batched pass per view kind,
bf16 autocast."""

import torch
from conftest import TINY

from custom_components.losses import GLMAELoss
from custom_components.networks import GLMAE


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
