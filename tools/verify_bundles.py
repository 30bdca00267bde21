"""Run the MONAI model-zoo checks on bundle folders, offline, and print a pass / fail table.

    python tools/verify_bundles.py                                  # every bundle in bundles/, at its own sizes
    python tools/verify_bundles.py --sizes quickstart               # the network at configs/quickstart.json sizes
    python tools/verify_bundles.py --bundle glmae_btcv_segmentation --export-dir exported/btcv   # keep model.ts/.onnx
    python tools/verify_bundles.py --fix-json                       # rewrite configs/*.json in the zoo's format first

Checks, per bundle (MONAI's own functions where MONAI has one):

- ``files``: ``LICENSE``, ``configs/metadata.json``, ``configs/inference.json``, ``docs/README.md`` and
  ``docs/data_license.txt`` exist.
- ``changelog``: the metadata's ``version`` has an entry in its ``changelog``.
- ``schema``: ``monai.bundle.verify_metadata`` against the copy of the schema the metadata names, kept in
  ``tools/schemas/`` (the published file is not reachable offline; the metadata must name that copy's file).
- ``pins``: ``monai_version``, ``pytorch_version``, ``numpy_version`` and every ``required_packages_version`` entry
  equal the pins in the repository's ``requirements.txt``.
- ``json format``: every ``configs/*.json`` is exactly what the zoo's ``pretty-format-json --autofix --no-sort-keys
  --indent=4`` writes (4-space indent, keys in file order, ASCII with ``\\uXXXX`` escapes, newline at the end).
- ``properties``: the ids of MONAI's bundle properties (``ConfigWorkflow.properties``): every required id is in
  ``train.json`` (train) and ``inference.json`` (infer), optional ones are referenced under their standard ids.
  Building them (``check_properties`` after ``initialize``) needs data; the bundle tests do that on synthetic data.
- ``net in/out``: ``monai.bundle.verify_net_in_out`` on ``network_def`` with a random input of the metadata's shape.
- ``torchscript``: ``monai.bundle.ckpt_export`` (``torch.jit.script``), then ``torch.jit.load``; output compared
  with PyTorch's.
- ``onnx``: ``monai.bundle.onnx_export`` (input ``image``, output ``pred``, batch 1), then onnxruntime on CPU;
  output compared with PyTorch's.

Both comparisons run a new random input through the exported file and the PyTorch network with the same weights and
pass when ``max |exported - pytorch| <= TOLERANCE * max |pytorch|``.

Weights: ``models/model.pt`` of the bundle when it exists (or ``--ckpt``); otherwise the freshly initialised
network (seed 0) is saved to a temporary file and exported: the checks then say that the network exports, not what
trained weights predict. ``--sizes quickstart`` takes the ROI and the model sizes from ``configs/quickstart.json``
(what ``tools/quickstart.py`` trains), so a quickstart ``models/model.pt`` fits. The pre-training bundle's inference
network is its encoder (``GLMAEFeatureEncoder``, features per patch); its output channels follow ``hidden_size``.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from ignite.engine import Engine
from monai.apps.utils import check_hash
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, onnx_export, verify_metadata, verify_net_in_out
from monai.bundle.properties import BundleProperty, BundlePropertyConfig

from custom_components.handlers import ModelCheckpointLoader
from tools.bundle_run import BUNDLES

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the copy of the metadata schema the bundles name (``"schema"`` in metadata.json ends with its file name).
SCHEMA = os.path.join(REPO_ROOT, "tools", "schemas", "meta_schema_20240725.json")
#: md5 of the published schema file (the value MONAI's own tests pin); the copy must be that file.
SCHEMA_MD5 = "06954cad2cc5d3784e72077ac76f0fc8"
REQUIREMENTS = os.path.join(REPO_ROOT, "requirements.txt")
#: files every bundle has (the model zoo's required and preferred files, less the weights, which git does not hold).
REQUIRED_FILES = ("LICENSE", "configs/metadata.json", "configs/inference.json", "docs/README.md",
                  "docs/data_license.txt")
#: metadata keys that pin a package, and the package.
VERSION_KEYS = {"monai_version": "monai", "pytorch_version": "torch", "numpy_version": "numpy"}
#: config ids that set the network's size; ``--sizes quickstart`` takes those quickstart.json sets.
SIZE_IDS = ("roi_size", "feature_size", "hidden_size", "mlp_dim", "num_layers", "num_heads")
NET_ID = "network_def"
#: the largest difference allowed between an exported model's output and PyTorch's, relative to the largest
#: PyTorch output magnitude (float32 rounding in another kernel order; measured differences are far below it).
TOLERANCE = 1e-4
CHECKS = ("files", "changelog", "schema", "pins", "json format", "properties", "net in/out", "torchscript", "onnx")
NETWORK_CHECKS = ("net in/out", "torchscript", "onnx")
#: an output of this format is one vector per patch, ``num_channels`` a multiple of the encoder's ``hidden_size``
#: (twice it with the CLS token): ``--sizes quickstart`` scales it with the hidden size.
FEATURE_FORMAT = "embedding"

__all__ = ["CHECKS", "FEATURE_FORMAT", "TOLERANCE", "CheckResult", "compare_outputs", "format_json",
           "onnx_output", "verify_bundle"]


@dataclass
class CheckResult:
    """One check of one bundle: ``status`` is ``pass`` or ``fail``; ``detail`` says what was found."""

    bundle: str
    check: str
    status: str
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Bundle:
    """What the checks read: the folder, its metadata and, for the network checks, how to build the network."""

    folder: str
    overrides: dict = field(default_factory=dict)
    ckpt: str | None = None
    export_dir: str = ""

    @property
    def name(self) -> str:
        return os.path.basename(os.path.normpath(self.folder))

    def path(self, relative: str) -> str:
        return os.path.join(self.folder, relative)

    @property
    def meta_file(self) -> str:
        return self.path("configs/metadata.json")

    @property
    def inference_config(self) -> str:
        return self.path("configs/inference.json")

    def read_json(self, relative: str) -> dict:
        try:
            with open(self.path(relative), encoding="utf-8") as f:
                return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{relative} is not valid JSON: {e}") from None

    def metadata(self) -> dict:
        return self.read_json("configs/metadata.json")


def format_json(text: str) -> str:
    """``text`` as the model zoo's ``pretty-format-json --no-sort-keys --indent=4`` writes it."""
    return json.dumps(json.loads(text), indent=4) + "\n"


def config_files(bundle: Bundle) -> list[str]:
    return sorted(glob.glob(bundle.path("configs/*.json")))


def check_files(bundle: Bundle) -> str:
    missing = [f for f in REQUIRED_FILES if not os.path.isfile(bundle.path(f))]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    weights = "models/model.pt present" if os.path.isfile(bundle.path("models/model.pt")) else "no models/model.pt"
    return f"{len(REQUIRED_FILES)} files; {weights}"


def check_changelog(bundle: Bundle) -> str:
    metadata = bundle.metadata()
    version = metadata.get("version")
    if version not in metadata.get("changelog", {}):
        raise ValueError(f"configs/metadata.json: version {version!r} has no entry in 'changelog'")
    return f"version {version}"


def check_schema(bundle: Bundle, schema: str = SCHEMA) -> str:
    url = bundle.metadata().get("schema", "")
    if os.path.basename(url) != os.path.basename(schema):
        raise ValueError(f"configs/metadata.json names the schema {url!r}; the copy kept offline is "
                         f"{os.path.relpath(schema, REPO_ROOT)}")
    if not os.path.isfile(schema):  # verify_metadata would try to download it
        raise FileNotFoundError(f"schema copy not found: {schema}")
    published = os.path.basename(schema) == os.path.basename(SCHEMA)
    if published and not check_hash(schema, SCHEMA_MD5, "md5"):  # verify_metadata would download it again
        raise ValueError(f"{schema} is not the published schema (md5 {SCHEMA_MD5})")
    try:
        verify_metadata(meta_file=bundle.meta_file, filepath=schema, hash_val=SCHEMA_MD5 if published else None)
    except ValueError as e:
        raise ValueError(f"configs/metadata.json: {e}") from None
    return os.path.basename(schema)


def read_pins(requirements: str = REQUIREMENTS) -> dict[str, str]:
    """``{normalised package name: version}`` of the ``name==version`` lines of ``requirements``."""
    pins = {}
    with open(requirements) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if "==" in line:
                name, version = line.split("==", 1)
                pins[normalise(name)] = version.strip()
    return pins


def normalise(name: str) -> str:
    """A package name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower().strip()


def check_pins(bundle: Bundle, requirements: str = REQUIREMENTS) -> str:
    metadata, pins = bundle.metadata(), read_pins(requirements)
    wanted = {package: metadata.get(key) for key, package in VERSION_KEYS.items()}
    wanted |= metadata.get("required_packages_version", {})
    req = os.path.basename(requirements)
    problems = [f"{name} {version} (not pinned in {req})" if normalise(name) not in pins else
                f"{name} {version} ({req}: {pins[normalise(name)]})"
                for name, version in wanted.items() if pins.get(normalise(name)) != version]
    if problems:
        raise ValueError(f"configs/metadata.json pins differ from {req}: {'; '.join(problems)}")
    return f"{len(wanted)} pins equal {req}"


def check_json_format(bundle: Bundle) -> str:
    files = config_files(bundle)
    wrong = []
    for path in files:
        name = os.path.relpath(path, bundle.folder)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            expected = format_json(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{name} is not valid JSON: {e}") from None
        if text != expected:
            line = next(i for i, (a, b) in enumerate(zip(text.splitlines() + [""], expected.splitlines() + [""]), 1)
                        if a != b)
            wrong.append(f"{name} (from line {line})")
    if wrong:
        raise ValueError(f"not in the zoo's JSON format (4-space indent, one item a line, keys in order, newline at "
                         f"the end): {', '.join(wrong)}; rewrite with --fix-json")
    return f"{len(files)} files"


def fix_json_format(bundle: Bundle) -> list[str]:
    """Rewrite the bundle's ``configs/*.json`` in the zoo's format (same content); returns the files changed."""
    changed = []
    for path in config_files(bundle):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if format_json(text) != text:
            with open(path, "w", encoding="utf-8") as f:
                f.write(format_json(text))
            changed.append(path)
    return changed


def missing_properties(config: str, meta_file: str, workflow_type: str) -> list[str]:
    """The properties of a MONAI ``workflow_type`` workflow that ``config`` lacks (required ids absent, or optional
    ones the config references under another id), without building anything."""
    workflow = ConfigWorkflow(config_file=config, meta_file=meta_file, logging_file=False, workflow_type=workflow_type)
    workflow.parser.parse(reset=True)  # what initialize() does first: references in the '::' form MONAI compares
    properties = workflow.properties or {}
    missing = [name for name, prop in properties.items()
               if prop.get(BundleProperty.REQUIRED) and prop[BundlePropertyConfig.ID] not in workflow.parser]
    return missing + [name for name, prop in properties.items()
                      if not prop.get(BundleProperty.REQUIRED) and not workflow._check_optional_id(name, prop)]


def check_properties(bundle: Bundle) -> str:
    kinds = [("configs/train.json", "train"), ("configs/inference.json", "infer")]
    problems = []
    for config, kind in kinds:
        missing = missing_properties(bundle.path(config), bundle.meta_file, kind)
        if missing:
            problems.append(f"{config} ({kind}) lacks {missing}")
    if problems:
        raise ValueError("; ".join(problems))
    return ", ".join(f"{kind} ok" for _, kind in kinds)


def network_overrides(bundle: Bundle, sizes: str, overrides: Mapping | None) -> dict:
    """Config overrides for the network checks: the size ids of quickstart.json (``sizes="quickstart"``), then
    ``overrides``; a new ``roi_size`` also becomes the metadata's input (and same-shaped output) spatial shape."""
    if sizes not in ("config", "quickstart"):
        raise ValueError(f"sizes must be 'config' or 'quickstart', got {sizes!r}.")
    result: dict = {}
    if sizes == "quickstart":
        quickstart, inference = bundle.read_json("configs/quickstart.json"), bundle.read_json("configs/inference.json")
        result = {k: quickstart[k] for k in SIZE_IDS if k in quickstart and k in inference}
    result |= dict(overrides or {})
    io, prefix = bundle.metadata()["network_data_format"], "_meta_#network_data_format"
    if "roi_size" in result:
        result[f"{prefix}#inputs#image#spatial_shape"] = result["roi_size"]
        if io["outputs"]["pred"].get("spatial_shape") == io["inputs"]["image"]["spatial_shape"]:
            result[f"{prefix}#outputs#pred#spatial_shape"] = result["roi_size"]
    if "hidden_size" in result and io["outputs"]["pred"].get("format") == FEATURE_FORMAT:
        per_unit = io["outputs"]["pred"]["num_channels"] // bundle.read_json("configs/inference.json")["hidden_size"]
        result[f"{prefix}#outputs#pred#num_channels"] = per_unit * result["hidden_size"]
    return result


class NetworkSetup:
    """The inference network at the checked sizes with the checked weights, the random input and the overrides that
    MONAI's functions get. Builds the network once for all network checks."""

    def __init__(self, bundle: Bundle, scratch: str) -> None:
        self.bundle = bundle
        parser = ConfigParser()
        parser.read_config(bundle.inference_config)
        parser.read_meta(bundle.meta_file)
        for key, value in bundle.overrides.items():
            parser[key] = value
        image = parser.get("_meta_#network_data_format#inputs#image")
        if not all(isinstance(s, int) for s in image["spatial_shape"]):
            raise ValueError(f"configs/metadata.json: input spatial_shape {image['spatial_shape']} is not a list of "
                             f"ints; give the network's ROI")
        self.input_shape = (1, image["num_channels"], *image["spatial_shape"])
        torch.manual_seed(0)
        self.network = parser.get_parsed_content(NET_ID, instantiate=True)
        if bundle.ckpt:
            self.ckpt, self.weights = bundle.ckpt, bundle.ckpt
        elif os.path.isfile(bundle.path("models/model.pt")):
            self.ckpt, self.weights = bundle.path("models/model.pt"), "models/model.pt"
        else:
            self.ckpt, self.weights = os.path.join(scratch, "model.pt"), "fresh initialisation"
            torch.save(self.network.state_dict(), self.ckpt)
        self.load_weights()
        self.network.eval()
        self.generator = torch.Generator().manual_seed(1)

    def load_weights(self) -> None:
        """Load the checkpoint with the inference bundle's loader, whose error names what does not fit."""
        loader = ModelCheckpointLoader(load_path=self.ckpt, load_dict={"model": self.network}, map_location="cpu")
        try:
            loader(Engine(lambda engine, batch: None))
        except ValueError as e:
            raise ValueError(f"{e} With this tool: --sizes quickstart for a quickstart model.") from None

    def random_input(self) -> torch.Tensor:
        return torch.rand(self.input_shape, generator=self.generator)

    def pytorch_output(self, x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return self.network(x).numpy()

    def export_kwargs(self) -> dict:
        return dict(net_id=NET_ID, ckpt_file=self.ckpt, meta_file=self.bundle.meta_file,
                    config_file=self.bundle.inference_config, **self.bundle.overrides)


def compare_outputs(what: str, expected: np.ndarray, actual: np.ndarray, tolerance: float = TOLERANCE) -> str:
    """Pass when ``max |actual - expected| <= tolerance * max |expected|``; returns the measured figures.

    Raises:
        ValueError: shapes differ, the difference is larger (or not finite), or ``expected`` is all zeros.
    """
    if actual.shape != expected.shape:
        raise ValueError(f"{what}: output shape {list(actual.shape)}, PyTorch's {list(expected.shape)}")
    scale = float(np.abs(expected).max())
    if scale == 0:
        raise ValueError(f"{what}: the PyTorch output is all zeros, a comparison would say nothing")
    diff = float(np.abs(actual.astype(np.float64) - expected).max())
    if not diff <= tolerance * scale:
        raise ValueError(f"{what}: max |difference| {diff:.3g} is above {tolerance:g} x max |PyTorch output| "
                         f"({tolerance * scale:.3g})")
    return f"max |diff| {diff:.2g} = {diff / scale:.2g} x max |output| {scale:.3g}"


def check_net_in_out(bundle: Bundle, net: NetworkSetup) -> str:
    verify_net_in_out(net_id=NET_ID, meta_file=bundle.meta_file, config_file=bundle.inference_config, device="cpu",
                      **bundle.overrides)
    return f"input {list(net.input_shape)}; weights: {net.weights}"


def check_torchscript(bundle: Bundle, net: NetworkSetup) -> str:
    path = os.path.join(bundle.export_dir, "model.ts")
    ckpt_export(filepath=path, **net.export_kwargs())
    x = net.random_input()
    with torch.no_grad():
        exported = torch.jit.load(path, map_location="cpu")(x).numpy()
    return compare_outputs("TorchScript", net.pytorch_output(x), exported)


def onnx_output(path: str, x: np.ndarray) -> np.ndarray:
    """The output ``pred`` of the ONNX model at ``path`` for the input ``image`` ``x``, on onnxruntime's CPU."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(["pred"], {"image": x})[0]


def check_onnx(bundle: Bundle, net: NetworkSetup) -> str:
    import onnx
    import onnxruntime

    path = os.path.join(bundle.export_dir, "model.onnx")
    onnx_export(filepath=path, converter_kwargs={"input_names": ["image"], "output_names": ["pred"]},
                **net.export_kwargs())
    x = net.random_input()
    measured = compare_outputs("ONNX", net.pytorch_output(x), onnx_output(path, x.numpy()))
    opsets = onnx.load(path, load_external_data=False).opset_import
    opset = next(o.version for o in opsets if o.domain in ("", "ai.onnx"))
    return f"{measured}; opset {opset}, onnxruntime {onnxruntime.__version__}"


@contextlib.contextmanager
def quiet(verbose: bool) -> Iterator[None]:
    """Hide the libraries' progress logs, prints and warnings unless ``verbose`` (errors still surface)."""
    if verbose:
        yield
        return
    with open(os.devnull, "w") as devnull, warnings.catch_warnings(), contextlib.redirect_stdout(devnull), \
            contextlib.redirect_stderr(devnull):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def timed(bundle: Bundle, check: str, run: Callable[[], str], verbose: bool) -> CheckResult:
    start = time.perf_counter()
    try:
        with quiet(verbose):
            detail = run()
        status = "pass"
    except Exception as e:  # noqa: BLE001 - every failure is reported in the table, with its message
        status, detail = "fail", f"{type(e).__name__}: {e}"
    return CheckResult(bundle.name, check, status, detail, time.perf_counter() - start)


def verify_bundle(folder: str, sizes: str = "config", overrides: Mapping | None = None, ckpt: str | None = None,
                  export_dir: str | None = None, requirements: str = REQUIREMENTS, schema: str = SCHEMA,
                  verbose: bool = False) -> list[CheckResult]:
    """
    Run :data:`CHECKS` on the bundle in ``folder``.

    Args:
        folder: the bundle's folder (the one holding ``configs/``).
        sizes: ``"config"``: the network as ``inference.json`` builds it; ``"quickstart"``: with the size ids of
            ``configs/quickstart.json``.
        overrides: more ``inference.json`` overrides for the network checks (e.g. tiny sizes in tests); a
            ``roi_size`` also sets the metadata's input shape.
        ckpt: the weights to export; default ``models/model.pt`` of the bundle, else the initialised network.
        export_dir: where ``model.ts`` and ``model.onnx`` are written and kept; default a temporary folder.
        requirements: the ``requirements.txt`` whose pins the metadata must equal.
        schema: the local copy of the metadata schema.
        verbose: show the libraries' logs and warnings.

    Returns:
        one :class:`CheckResult` per check, in the order of :data:`CHECKS`.
    """
    bundle = Bundle(folder)
    if not os.path.isdir(bundle.path("configs")):
        raise ValueError(f"not a bundle folder (no configs/): {folder}")
    results = [timed(bundle, name, run, verbose) for name, run in (
        ("files", lambda: check_files(bundle)),
        ("changelog", lambda: check_changelog(bundle)),
        ("schema", lambda: check_schema(bundle, schema)),
        ("pins", lambda: check_pins(bundle, requirements)),
        ("json format", lambda: check_json_format(bundle)),
        ("properties", lambda: check_properties(bundle)),
    )]
    with tempfile.TemporaryDirectory(prefix="verify_bundle_") as scratch:
        bundle.export_dir = export_dir or scratch
        os.makedirs(bundle.export_dir, exist_ok=True)
        bundle.ckpt = ckpt
        net: list[NetworkSetup] = []

        def build() -> str:
            bundle.overrides = network_overrides(bundle, sizes, overrides)
            net.append(NetworkSetup(bundle, scratch))
            return ""

        setup = timed(bundle, "net in/out", build, verbose)
        if not net:
            return results + [CheckResult(bundle.name, c, "fail", f"network not built: {setup.detail}")
                              for c in NETWORK_CHECKS]
        for name, check in (("net in/out", check_net_in_out), ("torchscript", check_torchscript),
                            ("onnx", check_onnx)):
            results.append(timed(bundle, name, lambda check=check: check(bundle, net[0]), verbose))
        results[-3].seconds += setup.seconds
    return results


def print_table(results: list[CheckResult], file=None) -> None:
    """One line per check: bundle, check, result, seconds, detail."""
    width = max(len(r.bundle) for r in results)
    print(f"{'bundle':<{width}}  {'check':<11}  {'result':<8}  {'time':>6}  detail", file=file)
    for r in results:
        print(f"{r.bundle:<{width}}  {r.check:<11}  {r.status:<8}  {r.seconds:5.1f}s  {r.detail}", file=file)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--bundle", action="append", default=None,
                        help="bundle folder name under bundles/, or a path to a bundle folder; repeat for several "
                        "(default: every bundle in bundles/)")
    parser.add_argument("--sizes", choices=("config", "quickstart"), default="config",
                        help="network sizes: inference.json's own, or those of configs/quickstart.json")
    parser.add_argument("--ckpt", default=None,
                        help="weights to export (one bundle); default models/model.pt, else the initialised network")
    parser.add_argument("--export-dir", default=None,
                        help="keep model.ts and model.onnx here (one sub-folder per bundle); default: not kept")
    parser.add_argument("--fix-json", action="store_true",
                        help="first rewrite configs/*.json in the zoo's JSON format (content unchanged)")
    parser.add_argument("--verbose", action="store_true", help="show MONAI's and PyTorch's logs and warnings")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = args.bundle or sorted(n for n in os.listdir(BUNDLES) if os.path.isdir(os.path.join(BUNDLES, n)))
    folders = [n if os.path.isdir(os.path.join(n, "configs")) else os.path.join(BUNDLES, n) for n in names]
    if args.ckpt and len(folders) != 1:
        raise SystemExit("error: --ckpt needs exactly one --bundle")
    results, start = [], time.perf_counter()
    for folder in folders:
        if args.fix_json:
            for path in fix_json_format(Bundle(folder)):
                print(f"reformatted {os.path.relpath(path)}")
        export_dir = os.path.join(args.export_dir, os.path.basename(os.path.normpath(folder))) if args.export_dir \
            else None
        results += verify_bundle(folder, sizes=args.sizes, ckpt=args.ckpt, export_dir=export_dir,
                                 verbose=args.verbose)
    print_table(results)
    failed = [r for r in results if r.status == "fail"]
    print(f"{len(results) - len(failed)} of {len(results)} checks passed, {len(failed)} failed, "
          f"{len(folders)} bundles in {time.perf_counter() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
