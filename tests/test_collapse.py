"""The consistency branch: its stabilisers, its collapse monitors, and a pre-training run that keeps it alive."""

import csv
import logging
import math

import numpy as np
import pytest
import torch
from bundle_utils import make_workflow
from conftest import TINY
from ignite.engine import Engine, Events
from trainer_utils import make_trainer

from custom_components.collapse_metrics import cross_volume_cosine
from custom_components.handlers import TrainingLog
from custom_components.losses import DINOConsistencyLoss, GLMAELoss
from custom_components.networks import GLMAE, EMATeacher
from custom_components.synthetic import make_synthetic_ct


# ---------------------------------------------------------------- monitors


def test_cross_volume_cosine_ignores_views_of_the_same_volume():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    features = torch.stack([torch.stack([a, a]), torch.stack([b, b])])  # 2 volumes x 2 views
    assert cross_volume_cosine(features) == pytest.approx(0.0)
    assert cross_volume_cosine(torch.stack([torch.stack([a, b]), torch.stack([a, b])])) == pytest.approx(0.5)
    assert math.isnan(cross_volume_cosine(features[:1]))
    with pytest.raises(ValueError, match="features"):
        cross_volume_cosine(features[0])


def test_teacher_entropy_is_log_k_for_a_uniform_teacher_and_low_for_a_peaked_one():
    loss = DINOConsistencyLoss(16, teacher_temp=0.04)
    assert loss.teacher_entropy(torch.zeros(4, 16)).item() == pytest.approx(math.log(16))
    peaked = torch.zeros(4, 16)
    peaked[:, 3] = 1.0
    assert loss.teacher_entropy(peaked).item() < 0.01


def test_teacher_monitors_tell_a_live_teacher_from_both_collapse_modes():
    """Per-sample entropy alone misses the one-mode collapse; the marginal minus it (mutual information) is ~0 in
    both modes and ~log(number of inputs) when every input has its own sharp prototype."""
    loss = DINOConsistencyLoss(16, teacher_temp=0.04)

    def information(teacher):
        m = loss.teacher_monitors(teacher)
        marginal = m["teacher_marginal"]
        return -(marginal * marginal.log().clamp_min(-1e30)).sum().item() - m["teacher_entropy"].item(), m

    live = torch.eye(16)[:8]  # 8 inputs, each on its own prototype
    one_mode = torch.eye(16)[[3] * 8]  # every input on prototype 3
    uniform = torch.zeros(8, 16)
    mi_live, m_live = information(live)
    mi_one, m_one = information(one_mode)
    mi_uniform, m_uniform = information(uniform)
    assert mi_live == pytest.approx(math.log(8), abs=0.01) and m_live["teacher_entropy"] < 0.01
    assert mi_one == pytest.approx(0.0, abs=1e-4) and m_one["teacher_entropy"] < 0.01  # looks healthy per sample
    assert mi_uniform == pytest.approx(0.0, abs=1e-5) and m_uniform["teacher_entropy"] == pytest.approx(math.log(16))
    assert m_uniform["teacher_logit_spread"] == 0 and m_live["teacher_logit_spread"] > 1
    assert m_one["teacher_logit_spread"] > 1 and m_one["teacher_logit_spread_batch"] == 0  # sharp, same for all
    # the spread is in units of tau_t: entropy ~ log K - spread^2 / 2 for small spreads
    small = torch.randn(64, 16) * 0.01
    m_small = loss.teacher_monitors(small)
    assert m_small["teacher_entropy"].item() == pytest.approx(
        math.log(16) - m_small["teacher_logit_spread"].item() ** 2 / 2, abs=0.01)


def test_glmae_loss_reports_kl_per_branch_as_cross_entropy_minus_teacher_entropy():
    torch.manual_seed(0)
    loss = GLMAELoss(head_out_dim=8, loss_weights={"rec_local": 0, "rec_global": 0, "g2l": 0})
    teacher = torch.randn(2, 8)  # 2 volumes x 1 global view
    # a student whose distribution equals the teacher's: KL 0, cross-entropy = teacher entropy
    student = {"global_embedding": teacher * loss.consistency.student_temp / loss.consistency.teacher_temp}
    out = loss(student, teacher, None, None, batch_size=2)
    assert out["kl_g2g"].item() == pytest.approx(0.0, abs=1e-5) and "kl_g2l" not in out
    assert out["loss_g2g"].item() == pytest.approx(out["teacher_entropy"].item(), abs=1e-5)
    out = loss({"global_embedding": torch.randn(2, 8)}, teacher, None, None, batch_size=2)
    assert out["kl_g2g"].item() > 0.1 and out["teacher_marginal"].shape == (8,)


def test_centred_cosine_separates_volumes_that_the_raw_cosine_calls_identical():
    torch.manual_seed(0)
    common = torch.full((16,), 10.0)
    per_volume = torch.randn(4, 1, 16)
    features = common + per_volume + 0.01 * torch.randn(4, 2, 16)  # 4 volumes x 2 views, views of a volume agree
    assert cross_volume_cosine(features) > 0.95
    assert cross_volume_cosine(features, centred=True) == pytest.approx(-1 / 3, abs=0.02)  # the floor -1/(B-1)
    no_volume_information = common + torch.randn(4, 2, 16)
    assert cross_volume_cosine(no_volume_information, centred=True) > -0.25  # about -1/(Bn-1) = -0.14


def test_teacher_temperature_warms_up_linearly():
    loss = DINOConsistencyLoss(8, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_epochs=3)
    temps = []
    for epoch in range(5):
        loss.set_epoch(epoch)
        temps.append(loss.teacher_temp)
    assert temps == pytest.approx([0.04, 0.05, 0.06, 0.07, 0.07])
    with pytest.raises(ValueError, match="temperatures"):
        DINOConsistencyLoss(8, warmup_teacher_temp=0.0)


def fake_run(tmp_path, outputs_per_epoch, features=None, marginal=None, **kwargs):
    """An Ignite engine that replays ``outputs_per_epoch`` (a list of lists of output dicts) through TrainingLog;
    ``features`` and ``marginal`` give ``state.glmae_features`` and ``state.teacher_marginal`` of each iteration."""
    epochs = iter(outputs_per_epoch)
    state = {}

    def step(engine, _):
        if engine.state.iteration % len(outputs_per_epoch[0]) == 1 or len(outputs_per_epoch[0]) == 1:
            state["epoch"] = iter(next(epochs))
        engine.state.glmae_features = features(engine) if features else None
        engine.state.teacher_marginal = marginal(engine) if marginal else None
        return [next(state["epoch"])]  # GLMAETrainer's output: a list of one dict

    engine = Engine(step)
    log = TrainingLog(tmp_path, **kwargs)
    log.attach(engine)
    engine.run(range(len(outputs_per_epoch[0])), max_epochs=len(outputs_per_epoch))
    return engine, list(csv.DictReader(open(tmp_path / "train_log.csv")))


def output(entropy, cosine, g2g=1.0, spread=3.0):
    return {"loss": 2.0, "loss_rec_local": 0.1, "loss_rec_global": 0.1, "loss_g2g": g2g, "loss_g2l": g2g,
            "teacher_entropy": entropy, "teacher_logit_spread": spread, "teacher_logit_spread_batch": 0.5,
            "kl_g2g": g2g - entropy, "kl_g2l": g2g - entropy,
            "log_k": math.log(64), "student_cls_cosine": cosine, "teacher_cls_cosine": cosine,
            "learning_rate": 3e-4, "ema_momentum": 0.99, "teacher_temp": 0.04}


def test_training_log_writes_epoch_means_and_warns_on_collapse(tmp_path, caplog):
    log_k = math.log(64)
    live = [[output(1.0, 0.1), output(2.0, 0.3)]] * 2
    collapsed = [[output(log_k, 0.999, g2g=log_k)] * 2] * 3
    with caplog.at_level(logging.WARNING, logger="custom_components"):
        engine, rows = fake_run(tmp_path, live + collapsed, patience=3, check_after=1, tensorboard=False)
    assert list(rows[0]) == ["epoch", "loss", "loss_rec_local", "loss_rec_global", "loss_g2g", "loss_g2l",
                             "teacher_entropy", "teacher_marginal_entropy", "teacher_mutual_information", "kl_g2g",
                             "kl_g2l", "teacher_logit_spread", "teacher_logit_spread_batch", "log_k", "student_cls_cosine",
                             "teacher_cls_cosine",
                             "student_cls_cosine_centred", "teacher_cls_cosine_centred", "learning_rate",
                             "ema_momentum", "teacher_temp"]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    assert float(rows[0]["teacher_entropy"]) == pytest.approx(1.5) and float(rows[0]["student_cls_cosine"]) == \
        pytest.approx(0.2)
    assert "looks collapsed for the last 3 epochs" in caplog.text and engine.state.consistency == "COLLAPSED?"
    assert (tmp_path / "train_curves.png").stat().st_size > 0


def per_iteration_marginals(*vectors):
    """``state.teacher_marginal`` of iteration i: ``vectors[(i - 1) % len(vectors)]``."""
    return lambda engine: vectors[(engine.state.iteration - 1) % len(vectors)]


def test_training_log_stays_quiet_on_a_live_run(tmp_path, caplog):
    live = per_iteration_marginals(*torch.eye(64)[:2])  # two inputs, two prototypes: 1 bit of information
    with caplog.at_level(logging.INFO, logger="custom_components"):
        engine, rows = fake_run(tmp_path, [[output(0.0, 0.1), output(0.0, 0.1)]] * 6, marginal=live, patience=2,
                                tensorboard=False)
    assert "collapsed" not in caplog.text and engine.state.consistency == "ok"
    assert float(rows[0]["teacher_mutual_information"]) == pytest.approx(math.log(2), abs=1e-4)
    assert "step 0: teacher logit spread 3.00 tau_t around the centre, 0.50 tau_t across the batch's inputs" in \
        caplog.text and "go." in caplog.text


def test_training_log_warns_on_the_one_mode_collapse_that_per_sample_entropy_misses(tmp_path, caplog):
    """Every input on the same prototype: per-sample entropy 0 (far from log K, the old check passed), raw cosine
    0.1, but the marginal is the same sharp distribution, so the mutual information is 0."""
    one_mode = per_iteration_marginals(torch.eye(64)[5])
    with caplog.at_level(logging.WARNING, logger="custom_components"):
        engine, rows = fake_run(tmp_path, [[output(0.0, 0.1)] * 2] * 4, marginal=one_mode, patience=3,
                                tensorboard=False)
    assert float(rows[-1]["teacher_mutual_information"]) == pytest.approx(0.0, abs=1e-6)
    assert "one mode: the teacher puts every input on the same few prototypes" in caplog.text
    assert engine.state.consistency == "COLLAPSED?"


def test_training_log_says_no_go_when_the_teacher_starts_near_uniform(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="custom_components"):
        fake_run(tmp_path, [[output(4.12, 0.1, spread=0.28)]], tensorboard=False)
    assert "step 0: teacher logit spread 0.28 tau_t around the centre" in caplog.text
    assert "(teacher entropy 4.120 of log K 4.159): NO-GO" in caplog.text


def test_training_log_pools_the_cosine_over_the_epoch_with_one_volume_per_batch(tmp_path):
    one_volume = {**output(1.0, math.nan), "student_cls_cosine": math.nan, "teacher_cls_cosine": math.nan}
    vectors = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])]
    _, rows = fake_run(tmp_path, [[one_volume, one_volume]],
                       features=lambda e: {"student": vectors[e.state.iteration - 1], "teacher": None},
                       tensorboard=False)
    assert float(rows[0]["student_cls_cosine"]) == pytest.approx(0.0) and rows[0]["teacher_cls_cosine"] == ""


# ---------------------------------------------------------------- stabilisers


def test_last_layer_is_frozen_only_in_the_first_epochs():
    trainer, net, _ = make_trainer(max_epochs=2, freeze_last_layer_epochs=1)
    prototypes = net.head.last_layer.parametrizations.weight.original1
    snapshots = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: snapshots.append(prototypes.detach().clone()))
    before = prototypes.detach().clone()
    trainer.run()
    assert torch.equal(snapshots[0], before) and not torch.equal(snapshots[1], before)
    assert not torch.equal(net.head.mlp[0].weight, GLMAE(img_size=32, **TINY).head.mlp[0].weight)


def test_drop_path_acts_in_training_only_and_not_in_the_teacher():
    torch.manual_seed(0)
    net = GLMAE(img_size=32, drop_path_rate=0.5, **TINY)
    x = torch.rand(4, 1, 32, 32, 32)
    net.eval()
    torch.manual_seed(1)
    a = net.encoder(x)[0]
    torch.manual_seed(1)
    assert torch.equal(a, net.encoder(x)[0])
    net.train()
    torch.manual_seed(1)
    assert not torch.allclose(a, net.encoder(x, 0.0)[0])
    teacher = EMATeacher(net)
    assert torch.equal(teacher(x), teacher(x))
    with pytest.raises(ValueError, match="drop_path_rate"):
        GLMAE(img_size=32, drop_path_rate=1.0, **TINY)


def test_mae_init_widens_linear_layers_and_keeps_the_dino_head_narrow():
    mae, monai = GLMAE(img_size=32, **TINY), GLMAE(img_size=32, weight_init="monai", **TINY)
    qkv = mae.encoder.blocks[0].attn.qkv.weight
    fan_in, fan_out = qkv.shape[1], qkv.shape[0]
    assert qkv.std().item() == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.15)  # xavier
    assert monai.encoder.blocks[0].attn.out_proj.weight.std() < 0.7 * mae.encoder.blocks[0].attn.out_proj.weight.std()
    assert mae.head.mlp[0].weight.std().item() == pytest.approx(0.02, rel=0.15)
    assert torch.all(mae.encoder.blocks[0].mlp.linear1.bias == 0)
    assert mae.encoder.cls_token.std().item() == pytest.approx(0.02, rel=0.5)


def test_heads_run_in_fp32_under_autocast_and_mean_embedding_pools_patch_tokens():
    net = GLMAE(img_size=32, embedding="mean", **TINY)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(torch.rand(2, 1, 32, 32, 32), None, 0.75)
        teacher_features, teacher = EMATeacher(net)(torch.rand(2, 1, 32, 32, 32), return_features=True)
    assert out["global_embedding"].dtype == torch.float32 and teacher.dtype == torch.float32
    latent = net.encoder(torch.rand(2, 1, 32, 32, 32), 0.0)[0]
    from custom_components.networks.glmae import pool_tokens

    assert torch.equal(pool_tokens(latent, "mean"), latent[:, 1:].mean(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = GLMAE(img_size=32, head_fp32=False, **TINY)(torch.rand(2, 1, 32, 32, 32), None, 0.75)
    assert low["global_embedding"].dtype == torch.bfloat16


def test_glmae_loss_reports_teacher_entropy_for_dino_only():
    assert GLMAELoss(head_out_dim=32).log_k == pytest.approx(math.log(32))
    assert math.isnan(GLMAELoss(consistency="byol").log_k)


def test_varied_synthetic_volumes_differ_more_than_the_fine_tuning_layout():
    def spread(varied):
        images = [make_synthetic_ct((48, 48, 32), seed=s, varied=varied)[0].astype(np.float32) for s in range(6)]
        return np.std([img.mean() for img in images])

    assert spread(True) > 3 * spread(False)
    a, b = make_synthetic_ct((32, 32, 16), seed=2, varied=True)[0], make_synthetic_ct((32, 32, 16), seed=2, varied=True)[0]
    assert np.array_equal(a, b)


# ---------------------------------------------------------------- the branch stays alive


#: the negative controls stop here: their 150-epoch schedules (learning rate, EMA, teacher temperature) are the live
#: run's, and by this epoch the live run already passes every assertion (mutual information 0.84 nats of the 0.3
#: asked, entropy 1.6 of the 4.2 allowed); stopping saves 90 of the 150 epochs of each control.
CONTROL_EPOCHS = 60


def quickstart_pretraining(tmp_path, stop_after: int | None = None, **override):
    """The quickstart pre-training preset (train.json + quickstart.json) into ``tmp_path``, stopped after epoch
    ``stop_after`` of its schedule when given; its train_log rows."""
    args = dict(synthetic_data_dir=str(tmp_path / "data"), ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "runs"),
                preview_interval=10**6, checkpoint_interval=10**6) | override
    workflow = make_workflow("glmae_pretraining", ["train.json", "quickstart.json"], **args)
    workflow.initialize()
    if stop_after is not None:
        trainer = workflow.parser.get_parsed_content("train#trainer")
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=stop_after), lambda engine: engine.terminate())
    workflow.run()
    workflow.finalize()
    return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(open(tmp_path / "runs" / "train_log.csv"))]


def assert_consistency_branch_alive(rows):
    """What a live branch looks like at the end of the quickstart preset (means over its last 10 epochs): the
    teacher's output says something about its input in the way neither collapse can fake (mutual information,
    ~0 in both modes), it is sharp, both consistency terms are well below their trivial value, distinct volumes get
    distinct embeddings, and reconstruction learns."""
    tail = rows[-10:]

    def mean(name):
        return float(np.mean([r[name] for r in tail]))

    log_k = rows[-1]["log_k"]
    assert mean("teacher_mutual_information") > 0.3, f"mutual information {mean('teacher_mutual_information'):.3f}"
    assert mean("teacher_entropy") < 0.6 * log_k, f"teacher entropy {mean('teacher_entropy'):.3f} of {log_k:.3f}"
    assert mean("loss_g2g") < 0.6 * log_k and mean("loss_g2l") < 0.7 * log_k, (mean("loss_g2g"), mean("loss_g2l"))
    assert mean("teacher_cls_cosine") < 0.9 and mean("student_cls_cosine") < 0.9
    assert mean("loss_rec_local") < 0.5 * rows[0]["loss_rec_local"]


@pytest.mark.slow
def test_quickstart_pretraining_ends_with_a_live_consistency_branch(tmp_path):
    """The quickstart preset (16 varied volumes, 150 epochs, about 3 min on 2 CPU cores) must end with a live branch,
    and be live by CONTROL_EPOCHS already, where the negative controls are judged. With the earlier settings
    (learning rate 3.1e-3, PyTorch-default init, EMA 0.996, no frozen last layer, near-identical volumes at batch 2)
    the same run ends at log K with cosine 0.9999, and this test fails."""
    rows = quickstart_pretraining(tmp_path)
    assert len(rows) == 150
    assert_consistency_branch_alive(rows)
    assert_consistency_branch_alive(rows[:CONTROL_EPOCHS])


#: the quickstart preset with one change that collapses the branch; the same assertions must then fail
COLLAPSING = {
    "near-identical volumes": {"datalist": "$custom_components.synthetic.ensure_synthetic_dataset("
                               "@synthetic_data_dir, num_volumes=@num_volumes, shape=@volume_shape, labelled=False, "
                               "num_folds=1, num_test=0)"},
    "teacher at the student's temperature": {"teacher_temp": 0.1, "warmup_teacher_temp": 0.1},
}


@pytest.mark.slow
@pytest.mark.parametrize("change", list(COLLAPSING))
def test_the_live_branch_assertions_fail_on_a_collapsed_run(tmp_path, change):
    """Negative controls: the assertions that pass the quickstart (at CONTROL_EPOCHS of the same schedule) must catch
    a run that collapses."""
    rows = quickstart_pretraining(tmp_path, stop_after=CONTROL_EPOCHS, **COLLAPSING[change])
    assert len(rows) == CONTROL_EPOCHS
    with pytest.raises(AssertionError, match="mutual information"):
        assert_consistency_branch_alive(rows)
