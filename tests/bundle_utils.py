"""Helpers to run bundle configs in tests the way ``python -m monai.bundle run`` does."""

from __future__ import annotations

import os

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


def error_chain(exc: BaseException) -> str:
    """Every message of an exception and its causes, to check that an error names the file."""
    parts = []
    while exc is not None:
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)
