"""Write every segmentation task bundle from the reference bundle and the task's task file.

    python tools/generate_bundles.py            # (re)write the generated files of every task bundle
    python tools/generate_bundles.py --check    # write nothing; exit 1 listing the files that differ

``bundles/glmae_btcv_segmentation`` is the hand-written reference. Every other segmentation bundle is generated
from it and ONE task file, ``tools/bundle_tasks/<bundle>.json``, which holds only what differs. The generated files
are committed, so that each bundle stays self-contained (``python -m monai.bundle run``, the zoo archive, MONAI
Label); ``tests/test_generated_bundles.py`` fails when a committed copy differs from what this tool writes, so a fix
to the reference reaches every task through one command.

Generated, per task bundle:

- ``configs/{train,inference,evaluate,quickstart,multi_gpu_train,multi_gpu_evaluate}.json``: the reference's
  config, with the reference's bundle name replaced by the task's in every string (the quickstart's synthetic
  layout), then the task file's ids and variation points applied (below); written in the zoo's JSON format.
- ``configs/metadata.json``: the reference's, with the task's entries (name, task, description, data source,
  classes, references, ``network_data_format`` parts) and the task's changelog (the reference's entries from the
  task's first release on, the task's own entries replacing those of the same version).
- ``configs/logging.conf`` and ``LICENSE``: copies of the reference's (also for the classification reference
  ``glmae_ccccii_classification``, whose other files stay hand-written).
- ``docs/README.md``: the reference's README, whose task sections are marked ``<!-- task: NAME -->`` ...
  ``<!-- /task: NAME -->``; each marked section is replaced by the task file's ``readme`` entry NAME (the markers
  stay, so the next generation finds them). Text outside the markers is the skeleton every task shares.

Hand-written, per task bundle (owned by the task, not derivable): ``docs/data_license.txt``, ``models/``,
``large_files.yml``, and the task's data tools (e.g. ``custom_components.data.amos_ct_cases``,
``brats_label_mapping``). The pre-training bundle is not a task bundle and is not touched.

The task file is JSON, not Python: the values it holds are config fragments that paste unchanged into the
bundle's JSON, and a data file cannot run code or grow logic of its own. Its keys (every one optional but
``_comment``):

- ``_comment``: what the task is (not written anywhere).
- ``task_ids``: top-level ids that ``train.json`` and ``inference.json`` both hold with the same values (classes,
  channels, spacing, intensity, label mapping, ROI; their ``_comment_*`` documentation entries included).
- ``train.json``, ``inference.json``, ``evaluate.json``, ``quickstart.json``: top-level ids of that config only
  (data location, schedule, synthetic layout). An id the reference has is replaced; a new id is inserted before the
  next id of the same task-file entry that the config has, else after the previous one, else at the end.
- ``removed``: ``{"task_ids" | "<config>.json": [ids]}``: reference ids the task does not have.
- ``variation_points``: ``{"<config>.json: <path>": {"why": reason, "value": value}}``: replaces the value at a
  named place inside the reference (a ``#``-separated config path such as ``train#load_transforms``, the same way
  MONAI addresses it; list items by index). The place must exist in the reference, so a variation point cannot
  silently miss when the reference changes shape.
- ``metadata``: ``{path: value}`` into ``metadata.json``; ``changelog`` is merged as described above.
- ``readme``: ``{section: [lines]}``: the markdown of each task section of the README, one string a line.

Adding a task bundle: write ``tools/bundle_tasks/<bundle>.json`` (copy the closest task file), run
``python tools/generate_bundles.py``, then add by hand ``docs/data_license.txt``, a synthetic layout in
``custom_components.synthetic.SYNTHETIC_TASKS`` for the quickstart, and the task's tests; see
``docs/finetuning.md``, "Adding a task bundle".
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLES = REPO_ROOT / "bundles"
TASKS = Path(__file__).resolve().parent / "bundle_tasks"
REFERENCE = "glmae_btcv_segmentation"
#: configs written from the reference's config of the same name plus the task file.
CONFIGS = ("train.json", "inference.json", "evaluate.json", "quickstart.json", "multi_gpu_train.json",
           "multi_gpu_evaluate.json")
#: configs whose top-level ids include the task file's ``task_ids``.
TASK_ID_CONFIGS = ("train.json", "inference.json")
#: files copied byte for byte from the reference, also into these hand-written bundles.
COPIED = ("LICENSE", "configs/logging.conf")
COPIED_ALSO_TO = ("glmae_ccccii_classification",)
#: the entries a task file may have.
TASK_KEYS = {"_comment", "task_ids", *CONFIGS, "removed", "variation_points", "metadata", "readme"}
SECTION = re.compile(r"(<!-- task: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /task: (?P=name) -->)", re.DOTALL)

__all__ = ["generate", "render_config", "render_metadata", "render_readme", "task_files", "differing_files"]


def task_files(tasks_dir: Path = TASKS) -> dict[str, dict]:
    """Every task file in ``tasks_dir``: ``{bundle name: task}``."""
    tasks = {}
    for path in sorted(tasks_dir.glob("*.json")):
        with open(path) as f:
            try:
                tasks[path.stem] = task = json.load(f)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: not valid JSON ({error})") from None
        if not isinstance(task, dict):
            raise ValueError(f"{path}: a task file holds one JSON object, got {type(task).__name__}")
        places = [place.split(":", 1)[0].strip() for place in task.get("variation_points", {})]
        unknown = sorted(set(task) - TASK_KEYS) + sorted({n for n in places + list(task.get("removed", {}))
                                                          if n not in (*CONFIGS, "task_ids")})
        if unknown:
            raise ValueError(f"{path.name}: unknown entries or configs {unknown}")
    return tasks


def _container(config: dict, path: str, where: str) -> tuple[Any, str | int]:
    """The dict or list that holds the place ``path`` of ``config`` and the key of that place in it. A top-level key
    may itself hold ``#`` (overlays such as ``validate#postprocessing``): the longest one that starts the path wins."""
    parts = path.split("#")
    n = next((n for n in range(len(parts), 0, -1) if "#".join(parts[:n]) in config), None)
    if n is None:
        raise ValueError(f"{where}: the reference has no place {path!r}")
    rest = ["#".join(parts[:n]), *(int(p) if p.isdigit() else p for p in parts[n:])]
    node = config
    for key in rest:
        if not (key in node if isinstance(node, dict) else
                isinstance(node, list) and isinstance(key, int) and key < len(node)):
            raise ValueError(f"{where}: the reference has no place {path!r} (no {key!r})")
        parent, node = node, node[key]
    return parent, rest[-1]


def _set_ids(config: dict, ids: dict) -> dict:
    """``config`` with the top-level ``ids`` replaced; a new one goes before the next of ``ids`` that the config has,
    else after the previous one, else at the end."""
    names = list(ids)
    for i, name in enumerate(names):
        if name in config:
            config[name] = ids[name]
            continue
        keys = list(config)
        following = next((n for n in names[i + 1:] if n in config), None)
        preceding = next((n for n in reversed(names[:i]) if n in config), None)
        at = keys.index(following) if following else keys.index(preceding) + 1 if preceding else len(keys)
        items = list(config.items())
        config = dict(items[:at] + [(name, ids[name])] + items[at:])
    return config


def _rename(value: Any, old: str, new: str) -> Any:
    """``value`` with ``old`` replaced by ``new`` in every string it holds."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, dict):
        return {k: _rename(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_rename(v, old, new) for v in value]
    return value


def render_config(reference: dict, name: str, bundle: str, task: dict) -> dict:
    """The task bundle's config ``name``: the reference's ``reference`` with the task's ids, removals and variation
    points applied."""
    config = _rename(reference, REFERENCE, bundle)
    if name in TASK_ID_CONFIGS:
        config = _set_ids(config, task.get("task_ids", {}))
    config = _set_ids(config, task.get(name, {}))
    removed = task.get("removed", {}).get("task_ids", []) if name in TASK_ID_CONFIGS else []
    for key in removed + task.get("removed", {}).get(name, []):
        if key not in config:
            raise ValueError(f"{bundle}: removed id {key!r} is not in the reference's {name}")
        del config[key]
    for place, point in task.get("variation_points", {}).items():
        config_name, path = (part.strip() for part in place.split(":", 1))
        if config_name == name:
            node, key = _container(config, path, f"{bundle}: variation point {place!r}")
            node[key] = point["value"]
    return config


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def render_metadata(reference: dict, bundle: str, task: dict) -> dict:
    """The task bundle's ``metadata.json``: the reference's with the task's entries; the changelog keeps the
    reference's entries from the task's first release on, the task's own replacing those of the same version."""
    metadata = copy.deepcopy(reference)
    entries = dict(task.get("metadata", {}))
    if "changelog" in entries:
        own = entries.pop("changelog")
        first = min(_version(v) for v in own)
        changelog = {v: text for v, text in reference["changelog"].items() if _version(v) >= first} | own
        metadata["changelog"] = dict(sorted(changelog.items(), key=lambda item: _version(item[0]), reverse=True))
    for path, value in entries.items():
        node, key = _container(metadata, path, f"{bundle}: metadata entry {path!r}")
        node[key] = value
    return metadata


def render_readme(reference: str, bundle: str, task: dict) -> str:
    """The task bundle's README: the reference's with each ``<!-- task: NAME -->`` section replaced by the task
    file's ``readme`` entry NAME."""
    sections = task.get("readme", {})
    found = {m["name"] for m in SECTION.finditer(reference)}
    unknown = sorted(set(sections) - found)
    missing = sorted(found - set(sections))
    if unknown or missing:
        raise ValueError(f"{bundle}: readme sections {unknown} are not marked in the reference README, "
                         f"{missing} are missing from the task file")
    return SECTION.sub(lambda m: m[1] + "".join(line + "\n" for line in sections[m["name"]]) + m[4], reference)


def _json(value: Any) -> str:
    """``value`` in the model zoo's JSON format (``tools/verify_bundles.py --fix-json``)."""
    return json.dumps(value, indent=4) + "\n"


def _read(path: Path) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def generate(bundles_dir: Path = BUNDLES, tasks_dir: Path = TASKS) -> dict[Path, str]:
    """Every generated file under ``bundles_dir`` with the text the reference and the task files give it."""
    reference = bundles_dir / REFERENCE
    tasks = task_files(tasks_dir)
    files = {}
    for bundle, task in tasks.items():
        target = bundles_dir / bundle
        for name in CONFIGS:
            config = json.loads(_read(reference / "configs" / name))
            files[target / "configs" / name] = _json(render_config(config, name, bundle, task))
        metadata = json.loads(_read(reference / "configs" / "metadata.json"))
        files[target / "configs" / "metadata.json"] = _json(render_metadata(metadata, bundle, task))
        files[target / "docs" / "README.md"] = render_readme(_read(reference / "docs" / "README.md"), bundle, task)
    for bundle in [*tasks, *COPIED_ALSO_TO]:
        for name in COPIED:
            files[bundles_dir / bundle / name] = _read(reference / name)
    return files


def _differing(files: dict[Path, str]) -> list[Path]:
    """The paths of ``files`` whose text on disk differs from the generated one (or that are missing)."""
    return [path for path, text in files.items() if not path.is_file() or _read(path) != text]


def differing_files(bundles_dir: Path = BUNDLES, tasks_dir: Path = TASKS) -> list[Path]:
    """The generated files whose committed text differs from what :func:`generate` writes (or that are missing)."""
    return _differing(generate(bundles_dir, tasks_dir))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 listing the files that differ")
    parser.add_argument("--bundles", type=Path, default=BUNDLES, help="the bundles folder")
    parser.add_argument("--tasks", type=Path, default=TASKS, help="the folder of the task files")
    args = parser.parse_args(argv)
    try:
        files = generate(args.bundles, args.tasks)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    differing = _differing(files)
    if args.check:
        for path in differing:
            print(f"differs from the reference and its task file: {path.relative_to(args.bundles)}")
        if differing:
            print("run: python tools/generate_bundles.py", file=sys.stderr)
        return 1 if differing else 0
    for path in differing:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(files[path])
        print(f"wrote {path.relative_to(args.bundles)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
