import numpy as np
import pytest
import torch
from conftest import TINY
from ignite.engine import Events
from trainer_utils import make_trainer

from custom_components.engines import cosine_momentum, param_groups_weight_decay, scaled_learning_rate
from custom_components.networks import GLMAE


def run_with_history(trainer):
    history = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: history.append(e.state.output[0]))
    trainer.run()
    return history


def test_cosine_momentum_schedule():
    assert cosine_momentum(0, 100) == pytest.approx(0.996)
    assert cosine_momentum(50, 100) == pytest.approx(0.998)
    assert cosine_momentum(100, 100) == pytest.approx(1.0)


def test_learning_rate_is_absolute_up_to_the_reference_batch_then_linear():
    assert scaled_learning_rate(3e-4, 4, world_size=1, reference_batch=32) == pytest.approx(3e-4)
    assert scaled_learning_rate(3e-4, 4, accumulation_steps=8, world_size=1, reference_batch=32) == pytest.approx(3e-4)
    assert scaled_learning_rate(3e-4, 4, accumulation_steps=8, world_size=2, reference_batch=32) == \
        pytest.approx(3e-4 * 64 / 32)
    with pytest.raises(ValueError, match="base_lr"):
        scaled_learning_rate(0.0, 4)


def test_weight_decay_groups_skip_bias_norm_tokens_and_frozen():
    net = GLMAE(img_size=32, **TINY)
    decay, no_decay = param_groups_weight_decay(net, 0.05)
    decay_ids = {id(p) for p in decay["params"]}
    assert id(net.encoder.blocks[0].attn.qkv.weight) in decay_ids
    assert id(net.encoder.cls_token) not in decay_ids and id(net.encoder.norm.weight) not in decay_ids
    frozen = net.encoder.patch_embedding.position_embeddings
    assert all(p is not frozen for p in decay["params"] + no_decay["params"])



def test_head_learning_rate_scale_gives_the_head_its_own_groups_that_the_schedule_scales_alike():
    net = GLMAE(img_size=32, **TINY)
    assert len(param_groups_weight_decay(net, 0.05, lr_scales={"head.": 1.0}, base_lr=1e-3)) == 2  # 1.0: no split
    groups = param_groups_weight_decay(net, 0.05, lr_scales={"head.": 10.0}, base_lr=1e-3)
    head_ids = {id(p) for p in net.head.parameters()}
    assert [len(g["params"]) > 0 for g in groups] == [True] * 4
    assert [g.get("lr") for g in groups] == [None, None, pytest.approx(1e-2), pytest.approx(1e-2)]
    assert all(id(p) in head_ids for g in groups[2:] for p in g["params"])
    assert not any(id(p) in head_ids for g in groups[:2] for p in g["params"])
    assert sum(len(g["params"]) for g in groups) == sum(len(g["params"]) for g in param_groups_weight_decay(net, 0.05))
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)  # sets every group to 0.5 x its own rate
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([5e-4, 5e-4, 5e-3, 5e-3])
    with pytest.raises(ValueError, match="no parameter of GLMAE starts with 'heads.'"):
        param_groups_weight_decay(net, 0.05, lr_scales={"heads.": 10.0}, base_lr=1e-3)
    with pytest.raises(ValueError, match="need base_lr"):
        param_groups_weight_decay(net, 0.05, lr_scales={"head.": 10.0})

def test_trainer_outputs_every_term_and_updates_teacher():
    trainer, net, teacher = make_trainer(max_epochs=1)
    before = teacher.encoder.blocks[0].attn.qkv.weight.clone()
    trainer.run()
    out = trainer.state.output[0]
    assert set(out) == {"loss", "loss_rec_local", "loss_rec_global", "loss_g2g", "loss_g2l", "ema_momentum",
                        "teacher_entropy", "teacher_logit_spread", "teacher_logit_spread_batch", "kl_g2g", "kl_g2l",
                        "log_k", "student_cls_cosine", "teacher_cls_cosine", "student_cls_cosine_centred",
                        "teacher_cls_cosine_centred", "learning_rate", "teacher_temp"}
    assert trainer.state.teacher_marginal.shape == (32,)
    assert trainer.state.teacher_marginal.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert all(np.isfinite(v) for v in out.values())
    assert out["log_k"] == pytest.approx(np.log(32)) and 0 < out["teacher_entropy"] <= out["log_k"] + 1e-6
    assert out["learning_rate"] == pytest.approx(2e-3) and -1 <= out["teacher_cls_cosine"] <= 1
    assert not torch.equal(before, teacher.encoder.blocks[0].attn.qkv.weight)


def mean_of(history, key):
    return np.mean([h[key] for h in history])


@pytest.mark.parametrize("consistency", ["dino", "byol"])
def test_loss_decreases_over_a_short_run(consistency):
    history = run_with_history(make_trainer(max_epochs=20, consistency=consistency)[0])
    first, last = history[:3], history[-3:]
    for key in ("loss_rec_local", "loss_rec_global"):
        assert mean_of(last, key) < 0.7 * mean_of(first, key), key
    if consistency == "byol":
        assert mean_of(last, "loss") < 0.2 * mean_of(first, "loss")
    else:
        # DINO cross-entropy is bounded by log K once the centre has warmed up (no blow-up, no NaN)
        assert all(h["loss_g2g"] <= np.log(32) + 0.05 and h["loss_g2l"] <= np.log(32) + 0.05 for h in history)


def test_gradient_accumulation_steps_the_optimizer_every_n_iterations():
    trainer, net, _ = make_trainer(max_epochs=3, accumulation_steps=2)  # one iteration per epoch
    steps = []
    trainer.optimizer.step = (lambda step: lambda *a, **k: (steps.append(trainer.state.iteration), step(*a, **k)))(
        trainer.optimizer.step)
    trainer.run()
    assert steps == [2, 3]  # every second iteration, and the last one flushes the remainder


def test_trainer_bf16_autocast_on_cpu_runs():
    trainer, _, _ = make_trainer(max_epochs=1, amp=True)
    trainer.run()
    assert np.isfinite(trainer.state.output[0]["loss"])


@pytest.mark.parametrize("native", [True, False])
def test_amp_warns_where_bf16_is_emulated(monkeypatch, caplog, native):
    import custom_components.engines.glmae_trainer as trainer_module

    monkeypatch.setattr(trainer_module, "native_bf16", lambda device: native)
    with caplog.at_level("WARNING"):
        make_trainer(max_epochs=1, amp=True)
    assert ("bf16 autocast is emulated on cpu" in caplog.text) != native


def test_non_finite_loss_stops_with_clear_error():
    trainer, net, _ = make_trainer(max_epochs=1)
    with torch.no_grad():
        net.decoder.pred.bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="not finite at epoch 1, iteration 1"):
        trainer.run()


def test_ablation_without_teacher_skips_global_views_and_teacher():
    trainer, _, teacher = make_trainer(max_epochs=1, loss_weights={"rec_global": 0, "g2g": 0, "g2l": 0})
    teacher.forward = None  # would raise if called
    trainer.run()
    assert trainer.state.output[0]["loss"] == pytest.approx(trainer.state.output[0]["loss_rec_local"])
