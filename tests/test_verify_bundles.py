"""The model-zoo checks of ``tools/verify_bundles.py`` pass on every bundle (the network checks at tiny sizes, with
freshly initialised and with saved weights), and each check fails on a broken input with a message naming the file
and the problem."""

import json
import os
import shutil

import numpy as np
import onnx
import pytest
import torch
from bundle_utils import BUNDLES, all_bundles

from tools import verify_bundles as vb

#: bundle runs and subprocesses: `pytest -m "not slow"` skips this module
pytestmark = pytest.mark.slow

#: network sizes that keep the exports of the eight inference networks near a minute on two cores (UNETR's depth is
#: fixed at 12 blocks; its export time hardly depends on the widths).
TINY_UNETR = {"roi_size": [16, 16, 16], "feature_size": 8, "hidden_size": 48, "mlp_dim": 96, "num_heads": 4}
TINY_CLASSIFIER = {"roi_size": [32, 32, 16], "hidden_size": 48, "mlp_dim": 96, "num_layers": 2, "num_heads": 4}
TINY_ENCODER = {"roi_size": [32, 32, 32], "hidden_size": 48, "mlp_dim": 96, "num_layers": 2, "num_heads": 4}
CLASSIFIER = "glmae_ccccii_classification"
REFERENCE = "glmae_btcv_segmentation"
PRETRAINING = "glmae_pretraining"


def tiny(bundle: str) -> dict:
    if bundle == PRETRAINING:
        return TINY_ENCODER
    return TINY_CLASSIFIER if bundle.endswith("_classification") else TINY_UNETR


def copy_bundle(bundle: str, tmp_path) -> str:
    """A copy of the bundle's tracked files to break."""
    folder = str(tmp_path / bundle)
    shutil.copytree(os.path.join(BUNDLES, bundle), folder,
                    ignore=shutil.ignore_patterns("models", "runs", "synthetic_data", "eval"))
    return folder


def edit_json(folder: str, name: str, change) -> None:
    path = os.path.join(folder, "configs", name)
    with open(path) as f:
        content = json.load(f)
    change(content)
    with open(path, "w") as f:
        f.write(vb.format_json(json.dumps(content)))


def results_of(folder: str, **kwargs) -> dict[str, vb.CheckResult]:
    return {r.check: r for r in vb.verify_bundle(folder, **kwargs)}


def shares_the_reference_network(bundle: str) -> bool:
    """Whether the bundle's inference network is BTCV's but for the number of classes (its ROI is overridden by the
    tiny sizes): its exports would repeat BTCV's."""
    if bundle == REFERENCE:
        return False
    mine, reference = (json.load(open(os.path.join(BUNDLES, b, "configs", "inference.json"))) for b in (bundle, REFERENCE))
    return mine["network_def"] == reference["network_def"] and mine["in_channels"] == reference["in_channels"]


@pytest.mark.parametrize("bundle", all_bundles())
def test_every_bundle_passes_the_zoo_checks(bundle, tmp_path):
    """Files, changelog, schema, pins, JSON format and properties as committed; net in/out, TorchScript and ONNX
    (outputs within TOLERANCE of PyTorch's) with the bundle's network at tiny sizes, once per distinct network."""
    folder = copy_bundle(bundle, tmp_path)
    if shares_the_reference_network(bundle):
        checked = vb.Bundle(folder)
        for check in (vb.check_files, vb.check_changelog, vb.check_schema, vb.check_pins, vb.check_json_format,
                      vb.check_properties):
            check(checked)  # raises with the file and the problem
        return
    results = vb.verify_bundle(folder, overrides=tiny(bundle))  # without local weights
    assert [r.check for r in results] == list(vb.CHECKS)
    failed = [f"{r.check}: {r.detail}" for r in results if r.status == "fail"]
    assert not failed, f"{bundle}: {failed}"
    assert {r.status for r in results if r.check in vb.NETWORK_CHECKS} == {"pass"}


def test_exports_the_bundles_own_weights_at_quickstart_sizes(tmp_path):
    """A models/model.pt of the quickstart's sizes is the one exported, and both exported files reproduce it; the same
    file against the full-size network fails with a sentence naming it and the fix."""
    folder = copy_bundle(CLASSIFIER, tmp_path)
    bundle = vb.Bundle(folder, overrides=vb.network_overrides(vb.Bundle(folder), "quickstart", {"num_layers": 2}))
    network = vb.NetworkSetup(bundle, str(tmp_path)).network
    with torch.no_grad():
        for p in network.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # weights far from the initial ones (whose logits are near 0)
    os.makedirs(os.path.join(folder, "models"))
    torch.save(network.state_dict(), os.path.join(folder, "models", "model.pt"))

    export = tmp_path / "export"
    results = results_of(folder, sizes="quickstart", overrides={"num_layers": 2}, export_dir=str(export))
    assert {r.status for r in results.values()} == {"pass"}, results
    assert "weights: models/model.pt" in results["net in/out"].detail
    assert results["net in/out"].detail.startswith("input [1, 1, 64, 64, 16]")  # quickstart.json's roi_size
    x = torch.rand(1, 1, 64, 64, 16)
    with torch.no_grad():
        expected = network.eval()(x).numpy()
        torchscript = torch.jit.load(str(export / "model.ts"))(x).numpy()
    assert np.abs(expected).max() > 0.1
    vb.compare_outputs("TorchScript", expected, torchscript)
    vb.compare_outputs("ONNX", expected, vb.onnx_output(str(export / "model.onnx"), x.numpy()))

    mismatch = results_of(folder)  # the ViT-B classifier inference.json builds
    for check in vb.NETWORK_CHECKS:
        assert mismatch[check].status == "fail"
        assert "models/model.pt' does not fit the network" in mismatch[check].detail
        assert "--sizes quickstart" in mismatch[check].detail


def test_onnx_output_beyond_the_tolerance_fails(tmp_path, monkeypatch):
    """An ONNX model whose head weights are scaled by 1 + 1e-3 is caught; by 1 + 1e-6 it is within the tolerance."""
    folder = copy_bundle(CLASSIFIER, tmp_path)
    export = tmp_path / "export"
    results_of(folder, overrides=TINY_CLASSIFIER, export_dir=str(export))
    model = onnx.load(str(export / "model.onnx"))
    x = np.random.default_rng(0).random((1, 1, 32, 32, 16), dtype=np.float32)

    def scaled_output(factor: float) -> np.ndarray:
        changed = onnx.ModelProto()
        changed.CopyFrom(model)
        head = next(t for t in changed.graph.initializer if t.name == "head.weight")
        head.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(head) * factor, head.name))
        path = str(tmp_path / f"scaled_{factor}.onnx")
        onnx.save(changed, path)
        return vb.onnx_output(path, x)

    original = vb.onnx_output(str(export / "model.onnx"), x)
    vb.compare_outputs("ONNX", original, scaled_output(1 + 1e-6))
    with pytest.raises(ValueError, match=r"ONNX: max \|difference\| .* is above 0.0001 x max \|PyTorch output\|"):
        vb.compare_outputs("ONNX", original, scaled_output(1 + 1e-3))

    # the check reports it: onnxruntime's output 0.1 % off
    onnx_output = vb.onnx_output
    monkeypatch.setattr(vb, "onnx_output", lambda path, x: onnx_output(path, x) * 1.001)
    result = results_of(folder, overrides=TINY_CLASSIFIER)["onnx"]
    assert result.status == "fail" and "ONNX: max |difference|" in result.detail, result


def test_check_failures_name_the_file_and_the_problem(tmp_path):
    folder = copy_bundle(REFERENCE, tmp_path)
    bundle = vb.Bundle(folder)

    edit_json(folder, "metadata.json", lambda m: m.update(monai_version="1.5.2"))
    edit_json(folder, "metadata.json", lambda m: m["required_packages_version"].update({"itk": "5.4.0"}))
    with pytest.raises(ValueError, match=r"configs/metadata.json pins differ from requirements.txt: monai 1.5.2 "
                                         r"\(requirements.txt: 1.6.1\); itk 5.4.0 \(not pinned in requirements.txt\)"):
        vb.check_pins(bundle)

    edit_json(folder, "metadata.json", lambda m: m.pop("task"))
    with pytest.raises(ValueError, match="configs/metadata.json: 'task' is a required property"):
        vb.check_schema(bundle)
    altered = tmp_path / vb.SCHEMA.split(os.sep)[-1]  # the published schema with one byte changed
    altered.write_bytes(open(vb.SCHEMA, "rb").read().replace(b"bundle was", b"bundlewas"))
    with pytest.raises(ValueError, match=f"is not the published schema \\(md5 {vb.SCHEMA_MD5}\\)"):
        vb.check_schema(bundle, schema=str(altered))
    edit_json(folder, "metadata.json", lambda m: m.update(schema="https://example.org/meta_schema_20220324.json"))
    with pytest.raises(ValueError, match="names the schema 'https://example.org/meta_schema_20220324.json'"):
        vb.check_schema(bundle)

    edit_json(folder, "metadata.json", lambda m: m.update(version="9.9.9"))
    with pytest.raises(ValueError, match="configs/metadata.json: version '9.9.9' has no entry in 'changelog'"):
        vb.check_changelog(bundle)

    edit_json(folder, "inference.json", lambda c: c.pop("inferer"))
    with pytest.raises(ValueError, match=r"configs/inference.json \(infer\) lacks \['inferer'\]"):
        vb.check_properties(bundle)

    os.remove(os.path.join(folder, "docs", "data_license.txt"))
    with pytest.raises(ValueError, match="missing docs/data_license.txt"):
        vb.check_files(bundle)


def test_json_format_check_and_fix(tmp_path):
    folder = copy_bundle(REFERENCE, tmp_path)
    bundle = vb.Bundle(folder)
    path = os.path.join(folder, "configs", "evaluate.json")
    with open(path) as f:
        content = json.load(f)
    with open(path, "w") as f:
        json.dump(content, f, indent=2)  # another indent, no newline at the end
    with pytest.raises(ValueError, match=r"not in the zoo's JSON format .*: configs/evaluate.json \(from line 2\); "
                                         r"rewrite with --fix-json"):
        vb.check_json_format(bundle)
    assert vb.fix_json_format(bundle) == [path]
    assert vb.check_json_format(bundle) == "7 files"
    with open(path) as f:
        assert json.load(f) == content

    with open(os.path.join(folder, "configs", "metadata.json"), "a") as f:
        f.write("}")
    with pytest.raises(ValueError, match="configs/metadata.json is not valid JSON: Extra data"):
        vb.check_json_format(bundle)
    with pytest.raises(ValueError, match="configs/metadata.json is not valid JSON"):
        vb.check_changelog(bundle)


def test_command_line_prints_the_table_and_fails_on_a_failed_check(tmp_path, capsys):
    """The pre-training bundle's feature network at quickstart sizes passes the network checks (its output channels
    follow hidden_size); a wrong pin fails the run."""
    folder = copy_bundle(PRETRAINING, tmp_path)
    edit_json(folder, "metadata.json", lambda m: m.update(numpy_version="2.0.0"))
    assert vb.main(["--bundle", folder, "--sizes", "quickstart"]) == 1
    out = capsys.readouterr().out
    assert "pins         fail" in out and "onnx         pass" in out and "torchscript  pass" in out
    assert "8 of 9 checks passed, 1 failed, 1 bundles" in out
