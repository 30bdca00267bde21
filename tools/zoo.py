"""Publish the bundles to a model zoo (a folder or a web server) and download them from it.

``publish`` writes ``<name>_v<version>.zip`` per bundle in MONAI's bundle archive layout (``<name>/configs``,
``<name>/docs``, ``<name>/models``, ``<name>/LICENSE``), with the part of ``custom_components`` that the bundle's
configs use copied in at ``<name>/custom_components`` so that the archive runs where only the pinned public packages
are installed. Weights over ``--max_file_mb`` (the model zoo's 25 MB cap per file) are not put in the archive: they
are written beside it and listed in the archive's ``large_files.json`` with their URL and SHA-256, for
``python -m monai.bundle download_large_files``. The zoo index ``model_info.json`` maps ``<name>_v<version>`` to the
archive's URL and SHA-256, like the MONAI model zoo's own index.

``download`` reads the index, downloads the archive, checks its SHA-256, refuses archives with entries outside
``<name>/`` (absolute paths, ``..``, links), extracts it into ``--bundle_dir`` and fetches its large files. It needs
only the standard library and MONAI, so this file can be copied on its own to any machine.

Examples (from the repository root)::

    # export every bundle to a zoo folder; serve it, e.g. python -m http.server 8000 --bind 127.0.0.1 --directory zoo
    python tools/zoo.py publish --zoo zoo --base_url http://127.0.0.1:8000
    # one bundle, into a zoo folder used as it is (file:// URLs)
    python tools/zoo.py publish bundles/glmae_btcv_segmentation --zoo /shared/zoo
    # download the newest version (or --version 0.6.0), check it, extract it into ./zoo_bundles
    python tools/zoo.py download --name glmae_btcv_segmentation --zoo http://127.0.0.1:8000 --bundle_dir zoo_bundles
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "custom_components"
INDEX_NAME = "model_info.json"
LARGE_FILES_NAME = "large_files.json"
BUNDLE_PARTS = ("LICENSE", "configs", "docs")
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed entry dates: the same bundle gives the same archive and checksum
SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


class ZooError(RuntimeError):
    """A bundle, archive or index that cannot be published or downloaded; the message names the file and why."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def version_key(version: str) -> tuple[int, int, int]:
    match = SEMVER.match(version)
    if match is None:
        raise ZooError(f"version {version!r} is not of the form MAJOR.MINOR.PATCH")
    return tuple(int(g) for g in match.groups())  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------- publish


def read_metadata(bundle: Path) -> dict:
    meta_file = bundle / "configs" / "metadata.json"
    if not meta_file.is_file():
        raise ZooError(f"{bundle}: no configs/metadata.json, so this is not a MONAI bundle folder")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise ZooError(f"{meta_file}: not valid JSON ({e})") from e
    version = meta.get("version")
    version_key(str(version))
    if str(version) not in meta.get("changelog", {}):
        raise ZooError(f"{meta_file}: version {version} has no entry in 'changelog'")
    vendored = {PACKAGE, "glmae-custom-components"} & set(meta.get("required_packages_version", {}))
    if vendored:
        raise ZooError(f"{meta_file}: required_packages_version lists {sorted(vendored)}, which the archive "
                       "carries itself and no package index has; remove it")
    return meta


def module_file(module: str) -> Path | None:
    """The source file of a dotted module name inside the package folder, or None."""
    base = REPO_ROOT.joinpath(*module.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def referenced_modules(text: str) -> set[str]:
    """The deepest existing package modules of every ``custom_components.a.b.C`` reference in ``text``."""
    modules = set()
    for ref in re.findall(rf"\b{PACKAGE}(?:\.\w+)*", text):
        parts = ref.split(".")
        while parts and module_file(".".join(parts)) is None:
            parts.pop()
        if parts:
            modules.add(".".join(parts))
    return modules


def imported_modules(module: str) -> set[str]:
    """The package modules that ``module`` imports (absolute or relative), from its source."""
    path = module_file(module)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name.split(".")[0] == PACKAGE and module_file(name) is not None}
    return found


def vendored_files(bundle: Path) -> list[Path]:
    """Source files of every package module the bundle's configs use, with what they import and their parents."""
    text = "".join(p.read_text() for p in sorted((bundle / "configs").glob("*.json")))
    todo, seen = referenced_modules(text), set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo |= {".".join(parts[:i]) for i in range(1, len(parts))}  # parent packages run first on import
        todo |= imported_modules(module)
    return sorted(module_file(m) for m in seen)


def bundle_files(bundle: Path, weights: bool = True) -> list[Path]:
    """The bundle's own files that go into the archive: LICENSE, configs/, docs/ and the weights in models/."""
    files = []
    for part in BUNDLE_PARTS:
        path = bundle / part
        if not path.exists():
            raise ZooError(f"{bundle}: '{part}' is missing; a bundle needs LICENSE, configs/ and docs/")
        files += [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and
                                                     not any(s.startswith(".") or s == "__pycache__"
                                                             for s in p.relative_to(bundle).parts))
    models = bundle / "models"
    if weights and models.is_dir():  # published weights; training checkpoints (checkpoint_epoch=N.pt) stay behind
        files += sorted(p for p in models.iterdir() if p.is_file() and not p.name.startswith(("checkpoint", ".")))
    return files


def check_weights(bundle: Path) -> None:
    """``models/model.pt`` must load strictly into the network the bundle's configs build, or the archive is broken."""
    weights = bundle / "models" / "model.pt"
    if not weights.is_file():
        return
    from ignite.engine import Engine
    from monai.bundle import ConfigParser

    from custom_components.handlers import ModelCheckpointLoader

    configs = bundle / "configs"
    config = configs / ("inference.json" if (configs / "inference.json").is_file() else "train.json")
    parser = ConfigParser()
    parser.read_config(str(config))
    parser["bundle_root"] = str(bundle)
    network = parser.get_parsed_content("network_def")
    loader = ModelCheckpointLoader(load_path=str(weights), load_dict={"model": network}, map_location="cpu")
    try:  # the bundles' own loader: its error names the mismatching tensors and the size ids the file was trained with
        loader(Engine(lambda engine, batch: None))
    except ValueError as e:
        raise ZooError(f"{weights} does not fit the network configs/{config.name} builds: {e} To publish: set those "
                       "size ids in the bundle's configs, or pass --no_weights to publish the configs alone") from None


def check_doc_links(bundle: Path) -> None:
    """Relative links in the bundle's docs must stay inside the bundle, or they break once it is exported."""
    for doc in sorted((bundle / "docs").rglob("*.md")):
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"^[a-z][a-z0-9+.-]*:|^#", target):
                continue
            resolved = (doc.parent / target.split("#")[0]).resolve()
            if not resolved.is_relative_to(bundle.resolve()) or not resolved.exists():
                raise ZooError(f"{doc}: the link ({target}) points outside the bundle or to nothing; "
                               "an exported bundle would carry a broken link")


def write_zip(archive: Path, entries: dict[str, Path]) -> None:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(entries[name], "rb") as src, zf.open(info, "w") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


def publish_bundle(bundle: Path, zoo: Path, index: dict, base_url: str, max_file_mb: float, force: bool,
                   weights: bool) -> dict:
    """Export one bundle folder into the zoo folder; return its entry for ``index`` (the zoo's index so far)."""
    bundle = bundle.resolve()
    meta = read_metadata(bundle)
    name, version = bundle.name, str(meta["version"])
    stem = f"{name}_v{version}"
    entries = {f"{name}/{p.relative_to(bundle).as_posix()}": p for p in bundle_files(bundle, weights)}
    entries |= {f"{name}/{p.relative_to(REPO_ROOT).as_posix()}": p for p in vendored_files(bundle)}
    large = []
    for entry, path in list(entries.items()):
        if entry.startswith(f"{name}/models/") and path.stat().st_size > max_file_mb * 2**20:
            hosted = zoo / f"{stem}_{path.name}"
            shutil.copyfile(path, hosted)
            large.append({"path": entry.split("/", 1)[1], "url": f"{base_url}/{hosted.name}",
                          "hash_val": sha256_of(hosted), "hash_type": "sha256"})
            del entries[entry]
    with tempfile.TemporaryDirectory() as tmp:
        if large:
            listing = Path(tmp, LARGE_FILES_NAME)
            listing.write_text(json.dumps({"large_files": large}, indent=4) + "\n")
            entries[f"{name}/{LARGE_FILES_NAME}"] = listing
        archive = zoo / f"{stem}.zip"
        staged = Path(tmp, archive.name)
        write_zip(staged, entries)
        checksum = sha256_of(staged)
        if stem in index and index[stem]["checksum"] != checksum and not force:
            raise ZooError(f"{zoo / INDEX_NAME}: {stem} is already published with other content; bump 'version' "
                           f"(and the changelog) in {bundle}/configs/metadata.json, or pass --force to replace it")
        shutil.move(staged, archive)
    entry = {"name": name, "version": version, "source": f"{base_url}/{archive.name}", "checksum": checksum,
             "hash_type": "sha256", "size": archive.stat().st_size, "monai_version": meta.get("monai_version"),
             "large_files": [item["path"] for item in large]}
    print(f"{archive}: {len(entries)} files, {archive.stat().st_size / 2**20:.1f} MB, sha256 {checksum[:16]}...",
          f"(+ {len(large)} large file(s) beside it)" if large else "")
    return entry


def publish(bundles: list[Path], zoo: Path, base_url: str | None = None, max_file_mb: float = 25.0,
            force: bool = False, weights: bool = True) -> Path:
    zoo.mkdir(parents=True, exist_ok=True)
    base_url = (base_url or zoo.resolve().as_uri()).rstrip("/")
    for bundle in bundles:  # every bundle is checked before anything is written
        read_metadata(bundle)
        check_doc_links(bundle.resolve())
        if weights:
            check_weights(bundle.resolve())
    index_file = zoo / INDEX_NAME
    index = read_index_file(index_file) if index_file.is_file() else {}
    for bundle in bundles:
        entry = publish_bundle(bundle, zoo, index, base_url, max_file_mb, force, weights)
        index[f"{entry['name']}_v{entry['version']}"] = entry
    index_file.write_text(json.dumps(dict(sorted(index.items())), indent=4) + "\n")
    print(f"{index_file}: {len(index)} archive(s)")
    return index_file


# -------------------------------------------------------------------------------------------------- download


def read_index_file(path: Path) -> dict:
    return check_index(path.read_bytes(), str(path))


def check_index(raw: bytes, where: str) -> dict:
    try:
        index = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ZooError(f"{where}: the zoo index is not valid JSON ({e})") from e
    if not isinstance(index, dict):
        raise ZooError(f"{where}: the zoo index must map '<name>_v<version>' to an entry")
    for key, entry in index.items():
        missing = {"name", "version", "source", "checksum"} - set(entry if isinstance(entry, dict) else ())
        if missing:
            raise ZooError(f"{where}: entry {key!r} lacks {sorted(missing)}")
    return index


def zoo_url(zoo: str) -> str:
    """A zoo given as a folder becomes a file:// URL; URLs stay as they are."""
    return zoo.rstrip("/") if re.match(r"^[a-z][a-z0-9+.-]*://", zoo) else Path(zoo).resolve().as_uri()


def fetch_index(zoo: str) -> dict:
    url = f"{zoo_url(zoo)}/{INDEX_NAME}"
    try:
        with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (http(s) or file URL of the zoo)
            return check_index(response.read(), url)
    except (urllib.error.URLError, OSError) as e:
        raise ZooError(f"{url}: cannot read the zoo index ({e})") from e


def pick_entry(index: dict, name: str, version: str | None) -> dict:
    versions = {entry["version"]: entry for entry in index.values() if entry["name"] == name}
    if not versions:
        names = sorted({entry["name"] for entry in index.values()})
        raise ZooError(f"bundle {name!r} is not in the zoo; it has: {', '.join(names) or 'nothing'}")
    if version is None:
        return versions[max(versions, key=version_key)]
    if version not in versions:
        raise ZooError(f"{name} version {version} is not in the zoo; it has {', '.join(sorted(versions))}")
    return versions[version]


def check_members(archive: zipfile.ZipFile, name: str, where: str) -> None:
    """Refuse any entry that would land outside ``<name>/``: absolute paths, ``..``, drive letters, links."""
    bad = []
    for info in archive.infolist():
        path = PurePosixPath(info.filename.replace("\\", "/"))
        mode = info.external_attr >> 16
        if (path.is_absolute() or re.match(r"^[A-Za-z]:", info.filename) or ".." in path.parts
                or path.parts[:1] != (name,) or stat.S_ISLNK(mode)):
            bad.append(info.filename)
    if bad:
        shown = ", ".join(repr(b) for b in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ZooError(f"{where}: refused, entries outside '{name}/' (absolute paths, '..' or links): {shown}; "
                       "nothing was extracted")


def download(name: str, zoo: str, bundle_dir: Path, version: str | None = None) -> Path:
    """Download ``name`` from the zoo into ``bundle_dir/name``, checked against the index; return that folder."""
    from monai.apps.utils import download_url
    from monai.bundle import download_large_files

    entry = pick_entry(fetch_index(zoo), name, version)
    bundle_dir.mkdir(parents=True, exist_ok=True)
    target = bundle_dir / name
    if target.exists():
        raise ZooError(f"{target} exists; remove it or choose another --bundle_dir (nothing was downloaded)")
    with tempfile.TemporaryDirectory(dir=bundle_dir, prefix=f".{name}-download-") as tmp:
        archive = Path(tmp, f"{name}_v{entry['version']}.zip")
        try:
            download_url(entry["source"], archive, hash_val=entry["checksum"],
                         hash_type=entry.get("hash_type", "sha256"), progress=False)
        except Exception as e:  # MONAI raises HashCheckError, RuntimeError or URLError
            raise ZooError(f"{entry['source']}: download refused: {e}".replace("\n", " ")) from e
        try:
            with zipfile.ZipFile(archive) as zf:
                check_members(zf, name, entry["source"])
                zf.extractall(Path(tmp, "x"))
        except zipfile.BadZipFile as e:
            raise ZooError(f"{entry['source']}: not a zip archive ({e})") from e
        staged = Path(tmp, "x", name)
        if any(staged.glob("large_files.*")):
            download_large_files(bundle_path=str(staged))
        os.replace(staged, target)
    print(f"{target}: {name} {entry['version']}, sha256 checked")
    return target


# ------------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    pub = sub.add_parser("publish", help="export bundles to <zoo>/<name>_v<version>.zip and update the index")
    pub.add_argument("bundles", nargs="*", type=Path,
                     help="bundle folders (default: every folder in the repository's bundles/)")
    pub.add_argument("--zoo", type=Path, required=True, help="zoo folder to write archives and model_info.json to")
    pub.add_argument("--base_url", default=None,
                     help="URL the zoo folder will be served at (default: its file:// URL)")
    pub.add_argument("--max_file_mb", type=float, default=25.0,
                     help="weights larger than this go beside the archive, listed in its large_files.json")
    pub.add_argument("--force", action="store_true", help="replace an already published version")
    pub.add_argument("--no_weights", action="store_true", help="publish configs and docs without models/")
    down = sub.add_parser("download", help="download a bundle from a zoo, check it and extract it")
    down.add_argument("--name", required=True, help="bundle name, e.g. glmae_btcv_segmentation")
    down.add_argument("--version", default=None, help="version (default: the newest in the index)")
    down.add_argument("--zoo", required=True, help="zoo URL (http(s)://, file://) or folder holding model_info.json")
    down.add_argument("--bundle_dir", type=Path, default=Path("."), help="folder to extract <name>/ into")
    args = parser.parse_args(argv)
    try:
        if args.command == "publish":
            bundles = args.bundles or sorted(p for p in (REPO_ROOT / "bundles").iterdir()
                                             if (p / "configs" / "metadata.json").is_file())
            publish(bundles, args.zoo, args.base_url, args.max_file_mb, args.force, not args.no_weights)
        else:
            download(args.name, args.zoo, args.bundle_dir, args.version)
    except ZooError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
