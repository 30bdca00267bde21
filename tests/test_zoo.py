"""tools/zoo.py: publish a bundle to a zoo served on 127.0.0.1, download it and run it where only the public packages
are installed; archives that do not match the index or would write outside their folder are refused."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_utils import REFERENCE_BUNDLE
from monai.bundle import ConfigParser

from custom_components.synthetic import write_synthetic_dataset
from tools import zoo
from tools.bundle_run import BUNDLES, REPO_ROOT

NAME = REFERENCE_BUNDLE
SIZES = {"hidden_size": 48, "mlp_dim": 96, "num_heads": 4, "feature_size": 8, "roi_size": [32, 32, 32]}
RUN_ENV = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def small_bundle(root: Path) -> Path:
    """A copy of the BTCV bundle whose configs build a small UNETR, with a model.pt of that network."""
    bundle = root / NAME
    bundle.mkdir(parents=True)
    for part in ("LICENSE", "configs", "docs"):
        src = Path(BUNDLES, NAME, part)
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, bundle / part)
    for name in ("train.json", "inference.json"):
        config = json.loads((bundle / "configs" / name).read_text())
        (bundle / "configs" / name).write_text(json.dumps(config | SIZES, indent=4) + "\n")
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    (bundle / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    return bundle


def public_python(root: Path) -> str:
    """A Python environment that has this environment's installed packages but not this project's: a fresh venv
    whose only site entry lists the site-packages folders (their .pth files, and so the editable install of
    custom_components, are not processed from there)."""
    env_dir = root / "public-env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    site = Path(sysconfig.get_paths(vars={"base": str(env_dir), "platbase": str(env_dir)})["purelib"])
    paths = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site / "public_packages.pth").write_text("\n".join(paths) + "\n")
    return str(env_dir / "bin" / "python")


def run(command: list[str], cwd: Path, timeout: int = 300) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | RUN_ENV
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{command} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """An HTTP server on 127.0.0.1 serving an empty zoo folder; stopped by its PID."""
    folder = tmp_path_factory.mktemp("zoo")
    proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                             "--directory", str(folder)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()  # "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        port = int(line.split(" port ")[1].split()[0])
        yield folder, f"http://127.0.0.1:{port}"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def published(server, tmp_path_factory):
    folder, url = server
    bundle = small_bundle(tmp_path_factory.mktemp("src"))
    zoo.publish([bundle], folder, base_url=url)
    return bundle, folder, url


@pytest.fixture(scope="module")
def test_images(tmp_path_factory):
    root = write_synthetic_dataset(tmp_path_factory.mktemp("data"), num_volumes=1, shape=(48, 48, 32), num_folds=1,
                                   num_test=1)
    return Path(root).parent / "imagesTs"


def infer_command(python: str, images: Path, out: Path) -> list[str]:
    return [python, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--dataset_dir",
            str(images), "--output_dir", str(out), "--device", "cpu", "--save_overlays", "False"]


def label_maps(folder: Path) -> dict[str, np.ndarray]:
    maps = {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(folder.rglob("*.nii.gz"))}
    assert maps, f"no label maps in {folder}"
    return maps


@pytest.mark.slow
def test_downloaded_bundle_runs_with_public_packages_only(published, test_images, tmp_path):
    bundle, _, url = published
    index = zoo.fetch_index(url)
    assert index[f"{NAME}_v{index[next(iter(index))]['version']}"]["source"].startswith(url)
    target = zoo.download(NAME, url, tmp_path / "downloaded")
    assert (target / "custom_components" / "networks" / "__init__.py").is_file()
    assert not (target / "models" / "checkpoint_epoch=1.pt").exists()
    python = public_python(tmp_path)

    # the public environment has MONAI but not this project: only the archive's copy is importable, from its folder
    where = "import importlib.util as u; s = u.find_spec('custom_components'); print(s and s.origin)"
    assert run([python, "-c", "import monai; " + where], tmp_path).strip() == "None"
    origin = run([python, "-c", where], target).strip()
    assert Path(origin).resolve() == (target / "custom_components" / "__init__.py").resolve()

    run(infer_command(python, test_images, tmp_path / "public"), target)
    run(infer_command(sys.executable, test_images, tmp_path / "repo"), bundle)  # the same model, this checkout
    public, repo = label_maps(tmp_path / "public"), label_maps(tmp_path / "repo")
    assert public.keys() == repo.keys()
    for name in public:
        np.testing.assert_array_equal(public[name], repo[name], err_msg=name)

    # monai.bundle.load builds the network from the bundle's configs and loads models/model.pt into it
    loaded = run([python, "-c", f"import monai; net = monai.bundle.load({NAME!r}, bundle_dir={str(target.parent)!r}, "
                  "device='cpu'); print(type(net).__name__, sum(p.numel() for p in net.parameters()))"], target)
    expected = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert loaded.split()[-2:] == ["UNETR", str(sum(v.numel() for k, v in expected.items()
                                                   if "running" not in k and "num_batches" not in k))]


@pytest.mark.slow
def test_monai_download_command_takes_the_index_url(published, tmp_path):
    _, _, url = published
    entry = zoo.pick_entry(zoo.fetch_index(url), NAME, None)
    run([sys.executable, "-m", "monai.bundle", "download", "--name", NAME, "--url", entry["source"],
         "--bundle_dir", str(tmp_path)], tmp_path)
    assert (tmp_path / NAME / "configs" / "inference.json").is_file()
    assert hashlib.sha256((tmp_path / f"{NAME}.zip").read_bytes()).hexdigest() == entry["checksum"]


def test_archives_are_reproducible(published, tmp_path):
    bundle, folder, url = published
    zoo.publish([bundle], tmp_path, base_url=url)
    assert (tmp_path / zoo.INDEX_NAME).read_text() == (folder / zoo.INDEX_NAME).read_text()


def test_large_weights_are_hosted_beside_the_archive_and_checked(published, tmp_path):
    bundle = published[0]
    zoo.publish([bundle], tmp_path / "zoo", max_file_mb=0.001)
    stem = f"{NAME}_v{zoo.read_metadata(bundle)['version']}"
    with zipfile.ZipFile(tmp_path / "zoo" / f"{stem}.zip") as zf:
        assert f"{NAME}/models/model.pt" not in zf.namelist()
        listing = json.loads(zf.read(f"{NAME}/{zoo.LARGE_FILES_NAME}"))["large_files"]
    assert [item["path"] for item in listing] == ["models/model.pt"]
    target = zoo.download(NAME, str(tmp_path / "zoo"), tmp_path / "ok")
    assert (target / "models" / "model.pt").read_bytes() == (bundle / "models" / "model.pt").read_bytes()

    hosted = tmp_path / "zoo" / f"{stem}_model.pt"
    data = bytearray(hosted.read_bytes())
    data[-1] ^= 0xFF
    hosted.write_bytes(bytes(data))
    with pytest.raises(Exception, match="hash"):
        zoo.download(NAME, str(tmp_path / "zoo"), tmp_path / "tampered")
    assert not (tmp_path / "tampered" / NAME).exists()


def test_tampered_archive_is_refused(published, tmp_path):
    zoo.publish([published[0]], tmp_path / "zoo")
    archive = next((tmp_path / "zoo").glob("*.zip"))
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(zoo.ZooError, match=r"download refused: .*hash check"):
        zoo.download(NAME, str(tmp_path / "zoo"), tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def zoo_with_archive(root: Path, members: dict[str, bytes], links: tuple[str, ...] = ()) -> str:
    """A zoo folder whose index lists one hand-made archive of ``members`` under its true checksum."""
    root.mkdir()
    archive = root / f"{NAME}_v9.9.9.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for member, data in members.items():
            info = zipfile.ZipInfo(member)
            if member in links:
                info.external_attr = 0o120777 << 16
            zf.writestr(info, data)
    entry = {"name": NAME, "version": "9.9.9", "source": archive.as_uri(), "hash_type": "sha256",
             "checksum": hashlib.sha256(archive.read_bytes()).hexdigest()}
    (root / zoo.INDEX_NAME).write_text(json.dumps({f"{NAME}_v9.9.9": entry}))
    return str(root)


@pytest.mark.parametrize("evil", [f"{NAME}/../../evil.txt", "/tmp/glmae_zoo_evil.txt", "evil.txt",
                                  f"{NAME}/../{NAME}_evil.txt", f"{NAME}/link"])
def test_entries_outside_the_bundle_folder_are_refused(tmp_path, evil):
    members = {f"{NAME}/configs/metadata.json": b"{}", evil: b"/etc/passwd" if evil.endswith("link") else b"x"}
    source = zoo_with_archive(tmp_path / "zoo", members, links=(f"{NAME}/link",))
    out = tmp_path / "deep" / "out"
    with pytest.raises(zoo.ZooError, match=rf"refused, entries outside '{NAME}/'.*{evil.split('/')[-1]}"):
        zoo.download(NAME, source, out)
    assert list(out.iterdir()) == []
    assert sorted(p.name for p in tmp_path.rglob("*evil*")) == []
    assert not Path("/tmp/glmae_zoo_evil.txt").exists()


def test_download_errors_name_the_problem(published, tmp_path):
    _, _, url = published
    with pytest.raises(zoo.ZooError, match="'glmae_nothing' is not in the zoo; it has: glmae_btcv"):
        zoo.download("glmae_nothing", url, tmp_path)
    with pytest.raises(zoo.ZooError, match="version 0.0.1 is not in the zoo"):
        zoo.download(NAME, url, tmp_path, version="0.0.1")
    with pytest.raises(zoo.ZooError, match="model_info.json: cannot read the zoo index"):
        zoo.download(NAME, str(tmp_path / "nowhere"), tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / zoo.INDEX_NAME).write_text("{not json")
    with pytest.raises(zoo.ZooError, match="not valid JSON"):
        zoo.download(NAME, str(tmp_path / "bad"), tmp_path)
    (tmp_path / NAME).mkdir()
    with pytest.raises(zoo.ZooError, match=f"{NAME} exists; remove it"):
        zoo.download(NAME, url, tmp_path)


def test_publish_refuses_what_would_break_the_archive(published, tmp_path):
    bundle = published[0]
    copy = tmp_path / NAME
    shutil.copytree(bundle, copy)
    meta_file = copy / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())

    with pytest.raises(zoo.ZooError, match=r"model.pt does not fit the network configs/inference.json builds: .* "
                                           r"tensors have other shapes"):
        shutil.copyfile(Path(BUNDLES, NAME, "configs", "inference.json"), copy / "configs" / "inference.json")
        zoo.publish([copy], tmp_path / "zoo")
    shutil.copyfile(bundle / "configs" / "inference.json", copy / "configs" / "inference.json")

    (copy / "docs" / "README.md").write_text("See [the benchmark](../../../docs/benchmark.md).\n")
    with pytest.raises(zoo.ZooError, match=r"README.md: the link \(../../../docs/benchmark.md\) points outside"):
        zoo.publish([copy], tmp_path / "zoo")
    shutil.copyfile(bundle / "docs" / "README.md", copy / "docs" / "README.md")

    meta_file.write_text(json.dumps(meta | {"version": "9.0.0"}))
    with pytest.raises(zoo.ZooError, match="metadata.json: version 9.0.0 has no entry in 'changelog'"):
        zoo.publish([copy], tmp_path / "zoo")
    meta_file.write_text(json.dumps(meta | {"required_packages_version": {"glmae-custom-components": "0.5.0"}}))
    with pytest.raises(zoo.ZooError, match="lists \\['glmae-custom-components'\\], which the archive carries"):
        zoo.publish([copy], tmp_path / "zoo")
    meta_file.write_text(json.dumps(meta))

    zoo.publish([copy], tmp_path / "zoo")
    (copy / "docs" / "README.md").write_text("changed\n")
    with pytest.raises(zoo.ZooError, match="already published with other content; bump 'version'"):
        zoo.publish([copy], tmp_path / "zoo")
    zoo.publish([copy], tmp_path / "zoo", force=True)


def test_every_bundle_vendors_what_its_configs_use(tmp_path):
    for name in sorted(os.listdir(BUNDLES)):
        files = {p.relative_to(REPO_ROOT).as_posix() for p in zoo.vendored_files(Path(BUNDLES, name))}
        assert "custom_components/__init__.py" in files
        assert "custom_components/config_checks.py" in files, name
    ccccii = {p.name for p in zoo.vendored_files(Path(BUNDLES, "glmae_ccccii_classification"))}
    assert "classifier.py" in ccccii and "slices.py" in ccccii
