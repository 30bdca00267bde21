"""The commands the quickstart prints after fine-tuning run on the model it trained (configs as printed; sizes and
folders made tiny for the test)."""

import json
import os

import nibabel as nib
import pytest
from bundle_utils import make_workflow, run_workflow

from tools.quickstart import CONFIGS, NEXT_STEPS, next_steps_text, per_class_text

#: bundle runs and subprocesses: `pytest -m "not slow"` skips this module
pytestmark = pytest.mark.slow

BUNDLE = "glmae_btcv_segmentation"


def test_printed_next_steps_evaluate_and_segment_with_the_quickstart_model(tmp_path):
    tiny = dict(synthetic_data_dir=str(tmp_path / "data"), num_volumes=4, volume_shape=[48, 48, 32], num_folds=2,
                ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "runs"), max_epochs=1, val_interval=1,
                num_samples=1, hidden_size=48, mlp_dim=96, num_heads=4, feature_size=8, sw_batch_size=1,
                device="cpu")
    run_workflow(make_workflow(BUNDLE, CONFIGS, **tiny))
    assert (tmp_path / "models" / "model.pt").exists()
    best = json.load(open(tmp_path / "runs" / "best_metric.json"))
    assert list(best["per_class"])[:2] == ["spleen", "right kidney"] and len(best["per_class"]) == 13
    assert "  spleen  " in per_class_text(best)
    evaluate, inference = (configs for _, configs in NEXT_STEPS)
    run_workflow(make_workflow(BUNDLE, evaluate, **tiny))
    assert (tmp_path / "runs" / "eval" / "metrics.csv").exists()
    run_workflow(make_workflow(BUNDLE, inference, workflow_type="infer",
                               **tiny | {"output_dir": str(tmp_path / "inference")}))
    predictions = sorted(p for p in os.listdir(tmp_path / "inference") if p.endswith("_seg.nii.gz"))
    assert predictions == ["test_0000_seg.nii.gz", "test_0001_seg.nii.gz"]
    assert nib.load(tmp_path / "inference" / predictions[0]).shape == (48, 48, 32)
    text = next_steps_text(BUNDLE)
    for _, configs in NEXT_STEPS:
        assert "[" + ",".join(f"'configs/{c}'" for c in configs) + "]" in text


def test_per_class_lines_flag_missed_and_undefined_classes():
    text = per_class_text({"per_class": {"liver": 0.91234, "gallbladder": 0.0, "lesion": None}})
    assert text.splitlines() == [
        "per class (mean over the validation cases):",
        "  liver        0.9123",
        "  gallbladder  0.0000  <- missed: 0 in every validation case",
        "  lesion       undefined (NaN): absent from every reference, left out",
    ]
