"""The task bundles are what ``tools/generate_bundles.py`` writes from the reference bundle and their task files: a
committed copy that differs fails, and a change to the reference reaches every task bundle through the tool."""

import json
import shutil

import pytest
from bundle_utils import REFERENCE_BUNDLE, segmentation_bundles

from tools import generate_bundles
from tools.generate_bundles import BUNDLES

TASK_BUNDLES = sorted(generate_bundles.task_files())


def copy_bundles(tmp_path):
    """The reference and the generated bundles' folders (configs, docs, LICENSE) under ``tmp_path/bundles``."""
    for bundle in [REFERENCE_BUNDLE, *TASK_BUNDLES, *generate_bundles.COPIED_ALSO_TO]:
        shutil.copytree(BUNDLES / bundle, tmp_path / "bundles" / bundle,
                        ignore=shutil.ignore_patterns("models", "runs", "synthetic_data*", "__pycache__"))
    return tmp_path / "bundles"


def replace_once(path, old: str, new: str) -> None:
    """Replace the one occurrence of ``old`` in the file ``path`` by ``new``."""
    text = path.read_text()
    assert text.count(old) == 1, f"{path}: {old!r} occurs {text.count(old)} times"
    path.write_text(text.replace(old, new))


def test_the_committed_task_bundles_are_what_the_tool_writes():
    differing = generate_bundles.differing_files()
    assert not differing, f"run python tools/generate_bundles.py: {[str(p) for p in differing]} differ"


def test_every_segmentation_bundle_but_the_reference_has_a_task_file():
    assert TASK_BUNDLES == sorted(b for b in segmentation_bundles() if b != REFERENCE_BUNDLE)


def test_a_one_line_change_to_the_reference_reaches_every_task_bundle(tmp_path, capsys):
    bundles = copy_bundles(tmp_path)
    train = bundles / REFERENCE_BUNDLE / "configs" / "train.json"
    replace_once(train, '"sw_overlap": 0.5,', '"sw_overlap": 0.625,')
    readme = bundles / REFERENCE_BUNDLE / "docs" / "README.md"
    replace_once(readme, "## Memory\n", "## Memory\n\nA new shared line.\n")
    expected = sorted(f"{b}/{name}" for b in TASK_BUNDLES for name in ("configs/train.json", "docs/README.md"))

    assert generate_bundles.main(["--check", "--bundles", str(bundles)]) == 1
    listed = sorted(line.rsplit(": ", 1)[1] for line in capsys.readouterr().out.splitlines())
    assert listed == expected

    assert generate_bundles.main(["--bundles", str(bundles)]) == 0
    written = sorted(line.removeprefix("wrote ") for line in capsys.readouterr().out.splitlines())
    assert written == expected
    for bundle in TASK_BUNDLES:
        assert json.loads((bundles / bundle / "configs" / "train.json").read_text())["sw_overlap"] == 0.625
        assert "## Memory\n\nA new shared line.\n" in (bundles / bundle / "docs" / "README.md").read_text()
    assert generate_bundles.main(["--check", "--bundles", str(bundles)]) == 0


def test_a_hand_edit_of_a_generated_copy_fails_the_check(tmp_path, capsys):
    bundles = copy_bundles(tmp_path)
    inference = bundles / "glmae_spleen_segmentation" / "configs" / "inference.json"
    replace_once(inference, '"sw_batch_size": 4,', '"sw_batch_size": 8,')
    assert generate_bundles.main(["--check", "--bundles", str(bundles)]) == 1
    assert capsys.readouterr().out.split(": ")[-1].strip() == "glmae_spleen_segmentation/configs/inference.json"


def test_a_variation_point_must_name_a_place_of_the_reference():
    reference = json.loads((BUNDLES / REFERENCE_BUNDLE / "configs" / "train.json").read_text())
    task = {"variation_points": {"train.json: train#load_transform": {"why": "a typo", "value": []}}}
    with pytest.raises(ValueError, match=r"glmae_x: variation point 'train.json: train#load_transform'"):
        generate_bundles.render_config(reference, "train.json", "glmae_x", task)


def test_task_ids_replace_the_reference_and_new_ids_go_before_the_next_known_one():
    reference = {"a": 1, "b": 2, "c": {"d": [1, 2]}}
    task = {"task_ids": {"new": 0, "b": 3}, "train.json": {"a": 4, "last": 6}, "removed": {"task_ids": ["c"]},
            "variation_points": {"train.json: b": {"why": "test", "value": [5]}, "train.json: b#0": {"value": 7}}}
    config = generate_bundles.render_config(reference, "train.json", "glmae_x", task)
    assert list(config.items()) == [("a", 4), ("last", 6), ("new", 0), ("b", [7])]
    assert generate_bundles.render_config(reference, "quickstart.json", "glmae_x", task) == reference


def test_a_malformed_task_file_is_one_sentence_naming_it(tmp_path, capsys):
    tasks = tmp_path / "tasks"
    shutil.copytree(generate_bundles.TASKS, tasks)
    (tasks / "glmae_spleen_segmentation.json").write_text('{"task_ids": {"num_classes": 2,}}')
    assert generate_bundles.main(["--check", "--tasks", str(tasks)]) == 2
    error = capsys.readouterr().err
    assert "glmae_spleen_segmentation.json: not valid JSON" in error and "Traceback" not in error
    (tasks / "glmae_spleen_segmentation.json").write_text("[]")
    with pytest.raises(ValueError, match="glmae_spleen_segmentation.json: a task file holds one JSON object, got list"):
        generate_bundles.task_files(tasks)
