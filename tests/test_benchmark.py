"""tools/benchmark.py at tiny sizes: every figure runs and the JSON has its keys."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time

import pytest
import torch
from conftest import REPO_ROOT, TINY

from custom_components.precision import native_bf16

spec = importlib.util.spec_from_file_location("benchmark", os.path.join(REPO_ROOT, "tools", "benchmark.py"))
benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark)

TINY_PRESET = {
    "pretrain": {
        "vit": {k: TINY[k] for k in ("hidden_size", "mlp_dim", "num_layers", "num_heads")},
        "decoder": {k: TINY[k] for k in ("decoder_hidden_size", "decoder_num_layers", "decoder_num_heads")},
        "head": {k: TINY[k] for k in ("head_out_dim", "head_hidden_dim", "head_bottleneck_dim")},
        "patch_size": 16, "img_size": 32, "global_size": 48, "local_size": 32, "num_global": 2, "num_local": 2,
        "batch_size": 1, "mask_ratio": 0.75, "step_iterations": 2,
    },
    "mae": {"vit": {k: TINY[k] for k in ("hidden_size", "mlp_dim", "num_layers", "num_heads")},
            "decoder": {k: TINY[k] for k in ("decoder_hidden_size", "decoder_num_layers", "decoder_num_heads")},
            "patch_size": 16, "local_size": 32, "mask_ratio": 0.75, "num_views": 2},
    "data": {"volume_shape": (1, 40, 40, 36), "num_volumes": 2, "batches_per_epoch": 2},
    "inference": {"volume_shape": (1, 1, 32, 32, 16), "roi_size": [16, 16, 16], "feature_size": 8, "sw_batch_size": 2,
                   "hidden_size": 48, "mlp_dim": 96, "num_heads": 4},
    "finetune": {"batch": 2, "roi_size": [16, 16, 16], "feature_size": 8, "hidden_size": 48, "mlp_dim": 96,
                 "num_heads": 4},
}


@pytest.mark.slow
def test_benchmark_tiny(tmp_path, monkeypatch):
    monkeypatch.setitem(benchmark.PRESETS, "quick", TINY_PRESET)
    out = tmp_path / "results.json"
    benchmark.main(["--device", "cpu", "--preset", "quick", "--repeats", "1", "--threads", "2",
                    "--num-workers", "0", "--out", str(out)])
    results = json.loads(out.read_text())
    for key in benchmark.TARGETS:
        assert isinstance(results[key], float) and math.isfinite(results[key]) and results[key] > 0, key
    assert results["targets"] == benchmark.TARGETS
    details = results["details"]
    assert {"step", "mae", "data", "inference", "finetune", "gpu_vit_b_step", "machine"} <= set(details)
    assert details["finetune"]["ours_precision"] == ("bf16 autocast" if native_bf16("cpu") else "fp32")
    assert details["machine"]["torch"] and details["machine"]["monai"]
    assert details["inference"]["ours_inferer_mode"] == "gaussian"
    mae = details["mae"]
    assert mae["tokens_per_view"] == 8 and mae["visible_per_view"] == 2 and mae["fp32_ratio"] > 0
    # ours runs in the bundle's precision; MONAI's model is tried under the same autocast and falls back with a reason
    assert mae["ours_precision"] == ("bf16 autocast" if native_bf16("cpu") else "fp32")
    assert (mae["monai_precision"] == mae["ours_precision"]) == (mae["monai_autocast_error"] is None)


def test_benchmark_one_figure_on_another_volume(tmp_path, monkeypatch):
    monkeypatch.setitem(benchmark.PRESETS, "quick", TINY_PRESET)
    out = tmp_path / "results.json"
    results = benchmark.main(["--device", "cpu", "--figures", "inference", "--inference-shape", "24", "40", "16",
                              "--repeats", "1", "--threads", "2", "--out", str(out)])
    assert set(results) == {"inference_vs_monai_ratio", "targets", "details"}
    assert results["details"]["inference"]["volume_shape"] == (1, 1, 24, 40, 16)
    assert json.loads(out.read_text())["inference_vs_monai_ratio"] == results["inference_vs_monai_ratio"]


def test_step_flops_vit_b():
    """The analytic count is in the expected range for the paper step (a few TFLOP per batch of 4 volumes)."""
    flops = benchmark.glmae_step_flops(benchmark.PAPER_PRETRAIN)
    assert 1e12 < flops < 1e14


def test_peak_memory_on_cpu_sees_a_freed_allocation_every_time():
    """The CPU measure (RSS after malloc_trim, polled) sees a 200 MB tensor that lives 50 ms, also on the second
    run when the first run's memory could have been reused unseen."""
    cpu = torch.device("cpu")
    for _ in range(2):
        with benchmark.PeakMemory(cpu) as peak:
            x = torch.ones(50 * 2**20)  # 200 MB
            time.sleep(0.05)
            del x
        assert peak.peak_bytes is not None and 150 * 2**20 < peak.peak_bytes < 400 * 2**20
    with benchmark.PeakMemory(cpu) as idle:
        time.sleep(0.01)
    assert idle.peak_bytes < 50 * 2**20
