"""Helpers to run bundle configs in tests the way ``python -m monai.bundle run`` does."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from monai.bundle import ConfigWorkflow

from conftest import REPO_ROOT

BUNDLES = os.path.join(REPO_ROOT, "bundles")


def config_path(bundle: str, *names: str) -> list[str]:
    return [os.path.join(BUNDLES, bundle, "configs", name) for name in names]


def make_workflow(bundle: str, configs: list[str], workflow_type: str = "train", **override) -> ConfigWorkflow:
    """A ``ConfigWorkflow`` over ``configs`` of ``bundle`` with its metadata and logging, ``bundle_root`` set."""
    workflow = ConfigWorkflow(
        config_file=config_path(bundle, *configs),
        meta_file=os.path.join(BUNDLES, bundle, "configs", "metadata.json"),
        logging_file=os.path.join(BUNDLES, bundle, "configs", "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=os.path.join(BUNDLES, bundle),
        **override,
    )
    return workflow


def run_workflow(workflow: ConfigWorkflow) -> ConfigWorkflow:
    workflow.initialize()
    missing = workflow.check_properties()
    assert not missing, f"missing bundle properties: {missing}"
    workflow.run()
    workflow.finalize()
    return workflow


def run_torchrun(bundle: str, configs: list[str], nproc: int = 2, timeout: int = 300, **override) -> None:
    """``torchrun --standalone --nproc_per_node=nproc -m monai.bundle run`` in the bundle folder, on CPU (gloo)."""
    config_arg = "[" + ",".join(f"'configs/{c}'" for c in configs) + "]"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
               "monai.bundle", "run", "--config_file", config_arg]
    for key, value in override.items():
        command += [f"--{key}", json.dumps(value) if isinstance(value, (list, dict)) else str(value)]
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, OMP_NUM_THREADS="1")
    result = subprocess.run(command, cwd=os.path.join(BUNDLES, bundle), env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def error_chain(exc: BaseException) -> str:
    """Every message of an exception and its causes, to check that an error names the file."""
    parts = []
    while exc is not None:
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)
