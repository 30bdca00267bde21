"""The BTCV bundle, the reference segmentation bundle: encoder loading, bad inputs, torchrun (train / evaluate /
infer of every segmentation bundle: test_segmentation_bundles.py)."""

import csv
import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_utils import error_chain, make_workflow, run_torchrun, segmentation_overrides

from custom_components.networks import GLMAE
from custom_components.synthetic import write_synthetic_dataset
from custom_components.weights import encoder_state_dict, save_state_dict

#: bundle runs and subprocesses: `pytest -m "not slow"` skips this module
pytestmark = pytest.mark.slow

BUNDLE = "glmae_btcv_segmentation"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("btcv_data")
    return write_synthetic_dataset(root, num_volumes=4, shape=(48, 48, 32), num_folds=2, num_test=1, seed=3)


def write_encoder(path, hidden_size, num_layers):
    """A small GL-MAE student of the given width and depth, and its encoder.pt at ``path``."""
    glmae = GLMAE(img_size=32, hidden_size=hidden_size, mlp_dim=96, num_layers=num_layers, num_heads=4,
                  decoder_hidden_size=48, decoder_num_layers=1, decoder_num_heads=4, head_out_dim=16,
                  head_hidden_dim=32, head_bottleneck_dim=8)
    save_state_dict(encoder_state_dict(glmae), str(path))
    return glmae, path


def test_finetune_starts_from_the_pretrained_encoder(tmp_path, dataset):
    glmae, encoder = write_encoder(tmp_path / "encoder.pt", hidden_size=48, num_layers=12)
    overrides = segmentation_overrides(tmp_path, dataset, pretrained_encoder=str(encoder))
    workflow = make_workflow(BUNDLE, ["train.json"], **overrides)
    workflow.initialize()
    network = workflow.parser.get_parsed_content("network")
    assert torch.equal(network.vit.blocks[5].attn.qkv.weight, glmae.encoder.blocks[5].attn.qkv.weight)
    assert torch.equal(network.vit.patch_embedding.patch_embeddings.weight,
                       glmae.encoder.patch_embedding.patch_embeddings.weight)
    scratch = make_workflow(BUNDLE, ["train.json"], **segmentation_overrides(tmp_path, dataset))
    scratch.initialize()
    assert not torch.equal(scratch.parser.get_parsed_content("network").vit.blocks[5].attn.qkv.weight,
                           glmae.encoder.blocks[5].attn.qkv.weight)


def test_the_optimiser_decays_the_encoder_rate_by_layer_only_when_fine_tuning(tmp_path, dataset):
    """layer_decay defaults to 0.75 with a pretrained_encoder (patch embedding at 0.75^13 of the rate, block 12 at
    0.75, the decoder at learning_rate) and to 1 from scratch; encoder_learning_rate moves the encoder's rates."""
    _, encoder = write_encoder(tmp_path / "encoder.pt", hidden_size=48, num_layers=12)
    for pretrained, extra, patch, top in ((str(encoder), {}, 1e-3 * 0.75**13, 1e-3 * 0.75), (None, {}, 1e-3, 1e-3),
                                          (str(encoder), {"encoder_learning_rate": 1e-4}, 1e-4 * 0.75**13, 1e-4 * 0.75)):
        workflow = make_workflow(BUNDLE, ["train.json"], **segmentation_overrides(
            tmp_path, dataset, pretrained_encoder=pretrained, learning_rate=1e-3, **extra))
        workflow.initialize()
        network, optimizer = (workflow.parser.get_parsed_content(k) for k in ("network", "optimizer"))

        def lr(param, groups=optimizer.param_groups):
            return next(g["lr"] for g in groups if any(p is param for p in g["params"]))
        assert lr(network.vit.patch_embedding.patch_embeddings.weight) == pytest.approx(patch)
        assert lr(network.vit.blocks[11].attn.qkv.weight) == pytest.approx(top)
        assert lr(network.out.conv.conv.weight) == pytest.approx(1e-3)


def test_a_frozen_encoder_stays_the_pretrained_one(tmp_path, dataset):
    """--freeze_encoder True: after training, model.pt holds the pre-trained encoder unchanged and a trained decoder."""
    glmae, encoder = write_encoder(tmp_path / "encoder.pt", hidden_size=48, num_layers=12)
    overrides = segmentation_overrides(tmp_path, dataset, pretrained_encoder=str(encoder), freeze_encoder=True,
                                       max_epochs=1)
    workflow = make_workflow(BUNDLE, ["train.json"], **overrides)
    workflow.initialize()
    network = workflow.parser.get_parsed_content("network")
    decoder_before = network.out.conv.conv.weight.detach().clone()
    workflow.run()
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    for key in ("blocks.5.attn.qkv.weight", "blocks.0.mlp.linear1.weight", "patch_embedding.patch_embeddings.weight"):
        assert torch.equal(state[f"vit.{key}"], glmae.encoder.state_dict()[key]), key
    assert not torch.equal(state["out.conv.conv.weight"], decoder_before)


def test_encoder_of_another_width_is_a_clear_error(tmp_path, dataset):
    _, encoder = write_encoder(tmp_path / "wide_encoder.pt", hidden_size=96, num_layers=1)
    overrides = segmentation_overrides(tmp_path, dataset, pretrained_encoder=str(encoder))
    workflow = make_workflow(BUNDLE, ["train.json"], **overrides)
    workflow.initialize()
    with pytest.raises(Exception) as info:
        workflow.parser.get_parsed_content("network")
    assert "wide_encoder.pt" in error_chain(info.value) and "96" in error_chain(info.value)


def write_case(folder, name, image, label, affine=None):
    affine = np.diag([1.5, 1.5, 2.0, 1.0]) if affine is None else affine
    image_path, label_path = folder / f"{name}_img.nii.gz", folder / f"{name}_lab.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), str(image_path))
    if label is not None:
        nib.save(nib.Nifti1Image(label, affine), str(label_path))
    return {"image": str(image_path), "label": str(label_path)}


def run_with_cases(tmp_path, cases, **extra):
    datalist = tmp_path / "cases.json"
    datalist.write_text(json.dumps({"training": cases, "validation": cases[:1]}))
    overrides = segmentation_overrides(tmp_path, str(datalist), max_epochs=1, **extra)
    workflow = make_workflow(BUNDLE, ["train.json"], **overrides)
    workflow.initialize()
    workflow.run()
    return workflow


def ct(shape=(40, 40, 24)):
    return np.full(shape, 40, np.int16)


def organ(shape=(40, 40, 24), value=1):
    label = np.zeros(shape, np.uint8)
    label[10:30, 10:30, 6:18] = value
    return label


@pytest.mark.parametrize("make_case,message", [
    (lambda d: write_case(d, "a", ct(), organ(value=20)), "outside 0..13"),
    (lambda d: write_case(d, "b", ct(), organ(shape=(40, 40, 20))), "shape"),
    (lambda d: write_case(d, "c", ct((40, 40, 24, 2)), organ()), "has 2 channels"),  # 4D: read as channels
    (lambda d: write_case(d, "d", ct(), None), "_lab.nii.gz"),
])
def test_bad_cases_name_the_file_and_the_problem(tmp_path, make_case, message):
    case = make_case(tmp_path)
    with pytest.raises(Exception) as info:
        run_with_cases(tmp_path, [case])
    chain = error_chain(info.value)
    assert message in chain and os.path.basename(case["image"]).split("_")[0] in chain


def test_image_smaller_than_the_crop_is_padded(tmp_path):
    case = write_case(tmp_path, "small", ct((16, 16, 8)), organ((16, 16, 8)) * 0 + 1)
    workflow = run_with_cases(tmp_path, [case])
    assert workflow.parser.get_parsed_content("train#trainer").state.epoch == 1


def test_multi_gpu_overlay_runs_under_torchrun_with_gloo(tmp_path, dataset):
    """Two CPU processes (gloo): each trains on its partition, validation metrics are gathered, rank 0 saves; the
    device comes as a string from the command line (``--device cpu``)."""
    run_torchrun(BUNDLE, ["train.json", "multi_gpu_train.json"],
                 **segmentation_overrides(tmp_path, dataset, max_epochs=1, device="cpu"))
    assert (tmp_path / "models" / "model.pt").exists()
    rows = list(csv.DictReader(open(tmp_path / "runs" / "val_metrics.csv")))
    assert len(rows) == 1  # rank 0 alone writes
