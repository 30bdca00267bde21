"""The pre-training bundle's feature extraction parts: GLMAEFeatureEncoder, FeatureWriter, PadToWindowd."""

import csv
import logging

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from custom_components.handlers import FeatureWriter, read_embeddings
from custom_components.handlers.features import feature_affine
from custom_components.networks import GLMAE, GLMAEFeatureEncoder
from custom_components.transforms import PadToWindowd
from custom_components.weights import encoder_state_dict

SIZES = {"hidden_size": 48, "mlp_dim": 96, "num_layers": 2, "num_heads": 4}


def test_feature_encoder_loads_encoder_pt_strictly_and_gives_the_student_encoders_tokens(tmp_path):
    torch.manual_seed(0)
    student = GLMAE(img_size=32, **SIZES, decoder_hidden_size=48, decoder_num_layers=1, decoder_num_heads=4,
                    head_out_dim=64).eval()
    torch.save(encoder_state_dict(student), tmp_path / "encoder.pt")
    network = GLMAEFeatureEncoder(img_size=32, **SIZES).eval()
    network.load_state_dict(torch.load(tmp_path / "encoder.pt", weights_only=True), strict=True)
    x = torch.rand(2, 1, 32, 32, 32)
    with torch.no_grad():
        latent, _, _ = student.encoder(x, mask_ratio=0.0)
        features = network(x)
        scripted = torch.jit.script(network)(x)
    assert features.shape == (2, 96, 2, 2, 2)
    tokens = latent[:, 1:].transpose(1, 2).reshape(2, 48, 2, 2, 2)  # token order: H, W, D as the patch grid
    torch.testing.assert_close(features[:, :48], tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(features[:, 48:], latent[:, 0, :, None, None, None].expand(-1, -1, 2, 2, 2),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scripted, features)
    assert GLMAEFeatureEncoder(img_size=32, **SIZES, with_cls=False)(x).shape == (2, 48, 2, 2, 2)


def test_feature_encoder_names_a_window_of_another_size():
    network = GLMAEFeatureEncoder(img_size=32, **SIZES)
    with pytest.raises(ValueError, match=r"windows of 1 channel\(s\) and size \[32, 32, 32\].*got \[1, 1, 48, 32, 32\]"):
        network(torch.rand(1, 1, 48, 32, 32))
    with pytest.raises(ValueError, match="must be three positive multiples of patch_size 16"):
        GLMAEFeatureEncoder(img_size=(32, 32, 24), **SIZES)


def test_feature_writer_writes_embeddings_their_index_and_maps_on_the_patch_grid(tmp_path):
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    affine[:3, 3] = (-40.0, -30.0, -20.0)
    writer = FeatureWriter(tmp_path, hidden_size=4, patch_size=16, save_maps=True)
    preds = [torch.arange(8 * 24, dtype=torch.float32).reshape(8, 2, 3, 4) + k for k in range(2)]
    for k, pred in enumerate(preds):
        image = MetaTensor(torch.zeros(1, 32, 48, 64), affine=torch.as_tensor(affine),
                           meta={"filename_or_obj": f"/data/case_{k}.nii.gz"})
        writer.add(pred, image)
    writer.write()

    embeddings, rows = read_embeddings(tmp_path)
    np.testing.assert_allclose(embeddings, np.stack([p[:4].mean(dim=(1, 2, 3)).numpy() for p in preds]))
    cls, _ = read_embeddings(tmp_path, cls=True)
    np.testing.assert_allclose(cls, np.stack([p[4:].mean(dim=(1, 2, 3)).numpy() for p in preds]))
    assert [(r["image"], r["case"], r["grid"], r["feature_map"]) for r in rows] == [
        ("/data/case_0.nii.gz", "case_0", "2x3x4", "case_0_features.nii.gz"),
        ("/data/case_1.nii.gz", "case_1", "2x3x4", "case_1_features.nii.gz")]
    saved = nib.load(tmp_path / "case_1_features.nii.gz")
    assert saved.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(saved.get_fdata(), np.moveaxis(preds[1][:4].numpy(), 0, -1))
    # map voxel (1, 0, 2) is the centre of image voxels 16..31, 0..15, 32..47
    centre = feature_affine(affine, 16) @ [1, 0, 2, 1]
    np.testing.assert_allclose(saved.affine @ [1, 0, 2, 1], centre)
    np.testing.assert_allclose(centre[:3], affine[:3, :3] @ [23.5, 7.5, 39.5] + affine[:3, 3])

    with pytest.raises(ValueError, match="output has 6 channels; FeatureWriter expects hidden_size \\(4\\)"):
        writer.add(torch.zeros(6, 1, 1, 1))


def test_read_embeddings_names_a_missing_file_and_files_of_different_runs(tmp_path):
    with pytest.raises(FileNotFoundError, match="embeddings.npy' does not exist: run the pre-training bundle"):
        read_embeddings(tmp_path)
    writer = FeatureWriter(tmp_path, hidden_size=2, patch_size=16)
    writer.add(torch.zeros(2, 1, 1, 1))
    writer.write()
    with open(tmp_path / "embeddings.csv", "a", newline="") as f:
        csv.writer(f).writerow([1, "/other.nii.gz", "other", "1x1x1", ""])
    with pytest.raises(ValueError, match="lists 2 volumes but .* holds 1 embeddings"):
        read_embeddings(tmp_path)


def test_pad_to_window_pads_to_the_window_and_the_patch_grid_and_names_a_small_image(caplog):
    pad = PadToWindowd("image", window=(32, 32, 32), divisor=16)
    big = MetaTensor(torch.ones(1, 40, 64, 33), meta={"filename_or_obj": "/data/big.nii.gz"})
    with caplog.at_level(logging.WARNING, logger="custom_components"):
        assert pad({"image": big})["image"].shape == (1, 48, 64, 48)
    assert not caplog.text
    small = MetaTensor(torch.ones(1, 20, 64, 64), meta={"filename_or_obj": "/data/small.nii.gz"})
    with caplog.at_level(logging.WARNING, logger="custom_components"):
        assert pad({"image": small})["image"].shape == (1, 32, 64, 64)
    assert "image '/data/small.nii.gz' is [20, 64, 64] voxels after preprocessing, smaller than the window" in \
        caplog.text
