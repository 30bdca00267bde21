"""Frozen-encoder probes (custom_components.probes) and their command-line tool (tools/probe_encoder.py)."""

import csv
import hashlib
import importlib.util
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, TINY
from PIL import Image

from custom_components import probes
from custom_components.networks import GLMAE, sincos_position_embedding
from custom_components.synthetic import (ORGAN_STRUCTURES, make_synthetic_ct, synthetic_ct_profile,
                                        write_synthetic_dataset)
from custom_components.weights import POS_KEY, encoder_state_dict, load_encoder, save_state_dict
from tools import crop_retrieval

spec = importlib.util.spec_from_file_location("probe_encoder", os.path.join(REPO_ROOT, "tools", "probe_encoder.py"))
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)

TINY_SIZE = probes.EncoderSize(TINY["hidden_size"], TINY["mlp_dim"], TINY["num_layers"], TINY["num_heads"])


def _tokens(labels: np.ndarray, width: int, noise: float, seed: int) -> np.ndarray:
    """Features ``[M, width]``: the label's one-hot (when ``noise`` is finite) plus gaussian noise."""
    rng = np.random.default_rng(seed)
    features = rng.normal(0.0, 1.0, (len(labels), width))
    if np.isfinite(noise):
        features = np.eye(width)[labels] + noise * features
    return features.astype(np.float32)


@pytest.mark.parametrize("probe", ["knn", "linear"])
def test_token_probes_find_separable_classes_and_nothing_in_noise(probe):
    num_classes, rng = 4, np.random.default_rng(0)
    train_y, test_y = rng.integers(0, num_classes, 400), rng.integers(0, num_classes, 400)
    scores, ious = {}, {}
    for kind, noise in (("separable", 0.2), ("random", np.inf)):
        train_x, test_x = _tokens(train_y, 16, noise, 1), _tokens(test_y, 16, noise, 2)
        if probe == "knn":
            tensors = [torch.from_numpy(a) for a in (train_x, train_y, test_x)]
            predicted = probes.knn_classify(*tensors, num_classes).numpy()
        else:
            predicted = probes.linear_classify(train_x, train_y, test_x)
        scores[kind], ious[kind] = probes.token_scores(test_y, predicted, num_classes)
    assert scores["separable"] > 0.97 and np.all(ious["separable"] > 0.9)
    assert abs(scores["random"] - 1 / num_classes) < 0.08 and np.all(ious["random"] < 0.3)


def test_knn_votes_are_weighted_by_similarity():
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, 0.6]])  # one very close token of class 0, two of class 1
    predicted = probes.knn_classify(train, torch.tensor([0, 1, 1]), torch.tensor([[1.0, 0.05]]), 2, k=3)
    assert predicted.tolist() == [0]  # exp(1/0.07) outweighs 2·exp(0.8/0.07); a plain majority would say 1
    assert probes.knn_classify(train, torch.tensor([0, 1, 1]), torch.tensor([[1.0, 0.05]]), 2, k=3,
                               temperature=10.0).tolist() == [1]


def test_token_labels_and_positions_on_a_hand_made_volume():
    labels = torch.zeros(1, 32, 32, 16, dtype=torch.long)  # grid 2 x 2 x 1
    labels[0, :16, :16, :] = 2  # token 0: organ 2 fills it
    labels[0, :16, 16:20, :] = 1  # token 1: organ 1 fills a quarter
    labels[0, 16:, :16, :8] = 1  # token 2: organs 1 and 3 half each (1 counted first on a tie)
    labels[0, 16:, :16, 8:] = 3
    assert probes.token_labels(labels, 4, min_fraction=0.5).tolist() == [[2, 0, 1, 0]]
    assert probes.token_labels(labels, 4, min_fraction=0.2).tolist() == [[2, 1, 1, 0]]
    # between the fractions a token holds a sliver of an organ: neither organ nor background, left out (IGNORE)
    assert probes.token_labels(labels, 4, 0.5, background_fraction=0.2).tolist() == [[2, probes.IGNORE, 1, 0]]
    with pytest.raises(ValueError, match="background_fraction <= min_fraction"):
        probes.token_labels(labels, 4, 0.2, background_fraction=0.5)
    expected = [[-0.5, -0.5, 0.0], [-0.5, 0.5, 0.0], [0.5, -0.5, 0.0], [0.5, 0.5, 0.0]]
    assert probes.token_positions((2, 2, 1)).tolist() == expected


def test_feature_token_order_is_monai_vits():
    """Labels, raw features and positions list tokens in the order MONAI's patch embedding flattens them."""
    images = torch.arange(3 * 2 * 1, dtype=torch.float32).view(1, 1, 3, 2, 1).repeat_interleave(16, 2)
    images = images.repeat_interleave(16, 3).repeat_interleave(16, 4)  # each patch one distinct value
    vit = probes.build_vit(TINY_SIZE, images.shape[2:])
    torch.nn.init.ones_(vit.patch_embedding.patch_embeddings.weight)
    torch.nn.init.zeros_(vit.patch_embedding.patch_embeddings.bias)
    torch.nn.init.zeros_(vit.patch_embedding.position_embeddings)
    embedded = vit.patch_embedding(images)[0, :, 0] / 16**3  # each token: its patch's mean, in MONAI's order
    raw = probes.raw_position_features(images)[0]
    assert torch.allclose(raw[:, :64].mean(1), embedded)
    assert probes.token_labels(images[:, 0].long(), 6, 0.5)[0].tolist() == [int(v) for v in embedded]
    assert torch.equal(raw[:, 64:], probes.token_positions((3, 2, 1)))


def test_init_baseline_is_the_pre_training_initialisation_and_loads_completely():
    shape = (32, 32, 16)
    state = probes.init_encoder_state(TINY_SIZE, shape, seed=3)
    torch.manual_seed(3)
    net = GLMAE(img_size=shape, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=4, weight_init="mae")
    assert all(torch.equal(state[k], v) for k, v in encoder_state_dict(net).items())
    assert not torch.equal(state["blocks.0.attn.qkv.weight"],
                           probes.init_encoder_state(TINY_SIZE, shape, seed=4)["blocks.0.attn.qkv.weight"])
    report = load_encoder(probes.build_vit(TINY_SIZE, shape), state, target_grid=probes.token_grid(shape))
    assert report.missing == [] and report.unexpected == []
    vit = probes.load_frozen_encoder(state, (48, 48, 32), num_heads=4)  # another grid: position embeddings resized
    assert probes.vit_size(vit) == TINY_SIZE
    assert probes.encoder_features(vit, torch.rand(2, 1, 48, 48, 32)).shape == (2, 18, 48)


def test_probe_grid_gets_the_sin_cos_table_pre_training_uses_and_learned_tables_are_resized():
    """A GL-MAE encoder (fixed sin-cos table of its stored grid) sees a probe volume of another size with the sin-cos
    table of that grid, as pre-training gives its views of every size; a learned table is interpolated."""
    state = probes.init_encoder_state(TINY_SIZE, (32, 32, 32), seed=0)
    assert probes.has_sincos_positions(state)
    vit = probes.load_frozen_encoder(state, (64, 64, 48), num_heads=4)
    table = vit.patch_embedding.position_embeddings
    assert torch.allclose(table, sincos_position_embedding((4, 4, 3), 48), atol=1e-6)
    learned = {**state, POS_KEY: torch.randn_like(state[POS_KEY])}
    assert not probes.has_sincos_positions(learned)
    table = probes.load_frozen_encoder(learned, (64, 64, 48), num_heads=4).patch_embedding.position_embeddings
    assert not torch.allclose(table, sincos_position_embedding((4, 4, 3), 48), atol=1e-2)


def test_shuffle_layout_keeps_default_datasets_and_moves_organs():
    # digests of volumes made before shuffle_layout existed: the default stream must not change
    pinned = {
        (14, 3, False, False): "e4282dbcb63bea00", (7, 5, True, False): "6da3ffc3b89851dd",
        (2, 1, True, True): "926836ad048adc6f",
    }
    for (num_classes, seed, varied, lesions), digest in pinned.items():
        image, label = make_synthetic_ct((48, 48, 32), num_classes, seed, varied, lesions)
        assert hashlib.sha256(image.tobytes() + label.tobytes()).hexdigest()[:16] == digest
    fixed = make_synthetic_ct((48, 48, 32), 7, 5, varied=True)[1]
    shuffled = make_synthetic_ct((48, 48, 32), 7, 5, varied=True, shuffle_layout=True)[1]
    assert np.array_equal(shuffled, make_synthetic_ct((48, 48, 32), 7, 5, varied=True, shuffle_layout=True)[1])
    centres = [[np.argwhere(lab == k).mean(0) for k in (3, 4, 5, 6)] for lab in (fixed, shuffled)]
    assert not np.allclose(centres[0], centres[1], atol=3.0)
    assert np.array_equal(np.unique(fixed), np.unique(shuffled))  # the same organs, elsewhere


def test_organ_texture_paints_each_structure_inside_its_organ_and_nothing_else():
    plain = make_synthetic_ct((96, 96, 80), 7, 11, varied=True, shuffle_layout=True)
    image, label = make_synthetic_ct((96, 96, 80), 7, 11, varied=True, shuffle_layout=True, organ_texture=True)
    assert np.array_equal(label, plain[1])  # the same organs in the same places
    changed = image != plain[0]
    assert changed.any() and (label[changed] > 0).all()  # structure only inside organs
    for k in np.unique(label)[1:]:
        inside, was = image[label == k], plain[0][label == k]
        structure = ORGAN_STRUCTURES[(k - 1) % len(ORGAN_STRUCTURES)]
        if structure == "homogeneous":
            assert np.array_equal(inside, was)
        elif structure == "gas":
            assert (inside < -600).mean() > 0.02  # gas pockets
        elif structure == "lobulated":
            assert (inside < -50).mean() > 0.05  # fat clefts
        else:  # vessels, cortex, fluid: a second intensity mode beside the organ's own
            assert np.abs(inside.astype(float) - np.median(was)).max() > 60
    with pytest.raises(ValueError, match="brain_mri=True writes brain MRI"):
        write_synthetic_dataset("unused", num_classes=4, brain_mri=True, organ_texture=True)


@pytest.mark.slow
def test_oracle_shows_the_probe_data_can_rank_encoders_only_with_structured_organs():
    """The positive control scores far above chance on the default probe data, and near chance when organs differ by
    HU alone (which the contrast phase scrambles): the reason the probe data structure their organs."""
    def linear_score(features, labels):  # 6 labelled volumes, 6 held out, organ tokens only
        organ = labels > 0
        train_x, test_x = probes._standardise(features[:6][organ[:6]], features[6:][organ[6:]])
        predicted = probes.linear_classify(train_x.numpy(), labels[:6][organ[:6]].numpy(), test_x.numpy())
        return probes.token_scores(labels[6:][organ[6:]].numpy(), predicted, 7)[0]

    scores = {}
    for texture in (True, False):
        data = probes.synthetic_probe_data(12, (128, 128, 96), num_classes=7, organ_texture=texture)
        labels = probes.token_labels(data.labels, 7, 0.25)
        scores[texture] = linear_score(probes.organ_oracle_features(data.images, data.labels, 7, 0.25), labels)
    assert scores[True] > 0.45 and scores[False] < 0.3, scores  # chance: 1/6 organs
    assert linear_score(probes.position_features(12, probes.token_grid(data.volume_shape)), labels) < 0.3


@pytest.mark.slow
def test_position_alone_predicts_organs_only_in_the_fixed_layout():
    scores = {}
    for shuffle in (False, True):
        data = probes.synthetic_probe_data(20, (64, 64, 48), num_classes=7, shuffle_layout=shuffle)
        labels = probes.token_labels(data.labels, 7, 0.02)
        organ = labels > 0
        position = probes.position_features(20, probes.token_grid(data.volume_shape))
        train_x, test_x = position[:8][organ[:8]], position[8:][organ[8:]]
        predicted = probes.knn_classify(train_x, labels[:8][organ[:8]], test_x, 7)
        scores[shuffle] = probes.token_scores(labels[8:][organ[8:]].numpy(), predicted.numpy(), 7)[0]
    assert scores[False] > 0.5
    assert scores[True] < 0.3  # 6 organs: chance 1/6
    assert scores[True] < scores[False] - 0.3


def test_synthetic_ct_profile_is_the_volumes():
    for seed in range(4):
        profile = synthetic_ct_profile(seed, 7)
        image, label = make_synthetic_ct((48, 48, 32), 7, seed, varied=True)
        present = [k in label for k in range(1, 7)]
        assert present == profile["present"].tolist()
        lung_voxels = ((image > -880) & (image < -720)).sum()  # lungs are -800 ± 30 HU, air -1000, fat -130
        assert profile["lungs"] == bool(lung_voxels > 100)


def test_segmentation_head_learns_what_the_features_hold():
    data = probes.synthetic_probe_data(4, (64, 64, 48), num_classes=3, shuffle_layout=False)
    one_hot = torch.nn.functional.one_hot(data.labels, 3).permute(0, 4, 1, 2, 3).float()
    oracle = probes._to_tokens(torch.nn.functional.avg_pool3d(one_hot, 4), 4).flatten(2)  # labels at stride 4
    dice = probes.segmentation_probe(oracle, data.labels, oracle, data.labels, 3, steps=60, lr=0.05, stride=4)
    noise = probes.segmentation_probe(torch.randn_like(oracle), data.labels, torch.randn_like(oracle), data.labels, 3,
                                      steps=60, lr=0.05, stride=4)
    assert dice.shape == (2,) and np.nanmean(dice) > 0.6
    assert np.nanmean(noise) < 0.3


@pytest.mark.slow
def test_segmentation_head_does_not_answer_background_everywhere_when_organs_are_rare():
    # Organs are 2 % of the voxels of the probe volumes: with unweighted cross-entropy the head answered
    # background everywhere and scored 0 Dice for every organ, whatever the features held.
    data = probes.synthetic_probe_data(8, (128, 128, 96), num_classes=7)
    assert (data.labels > 0).float().mean() < 0.03
    raw = probes.raw_position_features(data.images)
    dice = probes.segmentation_probe(raw[:5], data.labels[:5], raw[5:], data.labels[5:], 7)
    assert (dice > 0).sum() >= 3, dice


def test_class_balance_weights_are_the_inverse_square_root_shares_with_mean_one():
    weight = probes.class_balance_weights(torch.tensor([0.9, 0.1, 0.0]))
    assert torch.allclose(weight.mean(), torch.tensor(1.0))
    assert torch.isclose(weight[1] / weight[0], torch.tensor(3.0)) and weight[2] == weight.max()


def test_context_probe_reads_attributes_from_features():
    rng = np.random.default_rng(0)
    attributes = {"phase": rng.integers(0, 3, 30), "organs": rng.integers(0, 2, (30, 4))}
    informative = np.concatenate([np.eye(3)[attributes["phase"]], attributes["organs"]], 1)
    informative += rng.normal(0, 0.1, (30, 7))
    scores = probes.context_probe(informative, attributes)
    assert scores["phase"] > 0.95 and scores["organs"] > 0.95
    noise = probes.context_probe(rng.normal(size=(30, 7)), attributes)
    assert noise["phase"] < 0.65 and noise["organs"] < 0.75


def test_crop_retrieval_finds_crops_of_one_volume_only_when_the_embeddings_keep_them_together():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(10), 2)
    centres = rng.normal(size=(10, 32))
    together = centres[groups] + 0.1 * rng.normal(size=(20, 32)) + 5.0  # a common offset: centring removes it
    result = probes.crop_retrieval(together, groups)
    assert result["retrieval"] == 1.0 and result["same"] > 0.9 and abs(result["different"]) < 0.2
    assert result["raw_different"] > 0.9  # the offset alone makes every raw cosine high
    assert result["chance"] == pytest.approx(1 / 19)
    noise = probes.crop_retrieval(rng.normal(size=(20, 32)), groups)
    assert noise["retrieval"] < 0.3 and abs(noise["margin"]) < 0.2
    with pytest.raises(ValueError, match=r"crops per group \[2, 1\]"):
        probes.crop_retrieval(rng.normal(size=(3, 4)), [0, 0, 1])


@pytest.mark.slow
def test_crop_retrieval_tool_measures_a_bundle_encoder_against_its_initialisation(tmp_path, capsys):
    """tools/crop_retrieval.py end to end at tiny sizes: crops on disk with their own affine, the bundle's inference
    run for the encoder given and for the 0-step control, a table of both."""
    sizes = {"hidden_size": 48, "mlp_dim": 96, "num_layers": 2, "num_heads": 4}
    encoder = probes.init_encoder_state(probes.EncoderSize(**sizes), (32, 32, 32), seed=7)
    (tmp_path / "models").mkdir()
    torch.save(encoder, tmp_path / "models" / "model.pt")
    report = crop_retrieval.main(["--ckpt_dir", str(tmp_path / "models"), "--num_volumes", "3", "--volume_shape", "48",
                             "48", "32", "--crop", "32", "32", "32", "--out", str(tmp_path / "out"),
                             *[f"--override={k}={v}" for k, v in sizes.items()]])
    assert set(report["results"]) == {"pre-trained, mean", "pre-trained, cls", "init (0 steps), mean",
                                      "init (0 steps), cls"}
    assert report["results"]["pre-trained, mean"]["chance"] == pytest.approx(1 / 5)
    assert report["results"]["pre-trained, mean"] != report["results"]["init (0 steps), mean"]  # two encoders
    assert "| init (0 steps), cls |" in (tmp_path / "out" / "crop_retrieval.md").read_text()
    crop = nib.load(tmp_path / "out" / "crops" / "volume001_crop1.nii.gz")
    volume = nib.load(tmp_path / "out" / "volumes" / "imagesTr" / "case_0001.nii.gz")
    start = np.rint(np.linalg.solve(volume.affine, crop.affine @ [0, 0, 0, 1])[:3]).astype(int)
    np.testing.assert_array_equal(np.asarray(crop.dataobj),
                                  np.asarray(volume.dataobj)[start[0]:start[0] + 32, start[1]:start[1] + 32,
                                                             start[2]:start[2] + 32])


def test_crop_retrieval_tool_names_a_missing_model(tmp_path):
    with pytest.raises(SystemExit, match=r"models/model.pt does not exist: pre-train first"):
        crop_retrieval.main(["--ckpt_dir", str(tmp_path / "models"), "--out", str(tmp_path / "out")])


def test_datalist_probe_data_reads_the_synthetic_dataset_as_made(tmp_path):
    datalist = write_synthetic_dataset(tmp_path, num_volumes=2, shape=(32, 32, 16), num_classes=3, num_folds=1,
                                       num_test=0, seed=7, varied=True, label_values=(0, 205, 420),
                                       organ_texture=True)
    data = probes.datalist_probe_data(datalist, (32, 32, 16))
    made = probes.synthetic_probe_data(2, (32, 32, 16), num_classes=3, seed=7, shuffle_layout=False)
    assert torch.allclose(data.images, made.images)
    assert torch.equal(data.labels, made.labels)  # 205 -> 1, 420 -> 2
    assert data.class_names[0] == "background" and data.num_classes == 3
    assert np.array_equal(data.attributes["organs"], made.attributes["organs"])
    cropped = probes.datalist_probe_data(datalist, (16, 48, 16))  # centre-cropped and padded with air
    assert cropped.images.shape == (2, 1, 16, 48, 16) and cropped.images[:, :, :, :8].max() == 0.0


def _tiny_encoder(path) -> str:
    torch.manual_seed(1)
    save_state_dict(encoder_state_dict(GLMAE(img_size=32, **TINY)), path)
    return str(path)


@pytest.mark.slow
def test_cli_end_to_end_writes_csv_markdown_and_png(tmp_path, capsys):
    encoder = _tiny_encoder(tmp_path / "encoder.pt")
    out = tmp_path / "probe"
    table = tool.main(["--encoder", f"tiny={encoder}", "--num_heads", "4", "--num_volumes", "6", "--num_test", "3",
                       "--volume_shape", "32", "32", "32", "--num_classes", "4", "--budgets", "1", "2",
                       "--splits", "2", "--seg_steps", "5", "--out", str(out)])
    with open(out / "probe_results.csv") as f:
        rows = list(csv.DictReader(f))
    encoders = ["tiny", "init", "raw+pos", "oracle", "pos"]
    assert [r["encoder"] for r in rows[::18]] == encoders  # per encoder: 2 splits x (2 budgets x 3 probes + 3 context)
    assert {r["probe"] for r in rows} == {"knn", "linear", "segmentation", "context:lungs", "context:phase",
                                          "context:organs"}
    assert {"class_0", "class_3"} <= set(rows[0]) and rows[0]["metric"] == "balanced_accuracy"
    assert list(table["segmentation"]) == encoders
    markdown = (out / "probe_results.md").read_text()
    assert markdown.count("| pos |") == 4 and "| init |" in markdown and "2 labelled" in markdown
    assert markdown.count("| oracle |") == 4 and "chance balanced accuracy 1/3" in markdown  # organ tokens only
    assert Image.open(out / "probe_results.png").size[0] > 900
    printed = capsys.readouterr().out
    assert "[5/5] pos, split 2/2" in printed and "probe_results.{csv,md,png}" in printed


@pytest.mark.parametrize("argv, message", [
    (["--encoder", "missing.pt"], "checkpoint file not found: missing.pt"),
    (["--budgets", "1", "3"], "budgets [1, 3] must be between 1 and the 2 volumes left for training"),
    (["--volume_shape", "64", "64", "40"], "must be three positive multiples of 16"),
    (["--hidden_size", "48", "--num_heads", "5"], "5 attention heads do not divide the encoder's width 48"),
    (["--hidden_size", "48"], "give num_heads (--num_heads) for this 48-wide encoder"),
    (["--encoder", "a.pt", "--name", "x", "--name", "y"], "2 --name values for 1 unnamed --encoder paths"),
])
def test_cli_bad_input_is_one_sentence(tmp_path, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tool.cli(["--num_volumes", "4", "--num_test", "2", "--budgets", "1", "2", "--volume_shape", "32", "32", "32",
                  "--out", str(tmp_path), *argv])
    assert message in str(exit_info.value) and str(exit_info.value).startswith("probe_encoder: error: ")
    assert not (tmp_path / "probe_results.csv").exists()


def test_encoder_width_the_heads_do_not_divide(tmp_path):
    encoder = _tiny_encoder(tmp_path / "encoder.pt")
    with pytest.raises(ValueError, match="7 attention heads do not divide the encoder's width 48"):
        probes.load_frozen_encoder(encoder, (32, 32, 32), num_heads=7)
    with pytest.raises(ValueError, match="give num_heads"):
        probes.load_frozen_encoder(encoder, (32, 32, 32))
