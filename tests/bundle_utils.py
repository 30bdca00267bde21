"""Helpers to run bundle configs in tests the way ``python -m monai.bundle run`` does."""

from __future__ import annotations

import os

from monai.bundle import ConfigWorkflow

import conftest  # noqa: F401  (puts the repository root on sys.path for `tools`)
from tools.bundle_run import BUNDLES, run_bundle


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
    """``torchrun --standalone --nproc_per_node=nproc -m monai.bundle run`` in the bundle folder, on CPU (gloo), one
    thread per process; fails the test with the tail of the output when it exits non-zero or runs past ``timeout``."""
    try:
        run_bundle(bundle, configs, override, nproc=nproc, timeout=timeout, env={"OMP_NUM_THREADS": "1"}, capture=True)
    except RuntimeError as error:
        raise AssertionError(str(error)) from None


def error_chain(exc: BaseException) -> str:
    """Every message of an exception and its causes, to check that an error names the file."""
    parts = []
    while exc is not None:
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


def all_bundles() -> list[str]:
    """Every bundle folder, sorted by name."""
    return sorted(name for name in os.listdir(BUNDLES) if os.path.isdir(os.path.join(BUNDLES, name)))


def run_error(workflow: ConfigWorkflow) -> str:
    """Initialise and run ``workflow``, which must fail; every message of the error and its causes."""
    workflow.initialize()
    try:
        workflow.run()
    except Exception as error:  # noqa: BLE001 (the messages are what the caller checks)
        return error_chain(error)
    raise AssertionError("the run did not fail")


def tracked(folder) -> dict:
    """Overrides that make a run log to MLflow as ``--tracking mlflow`` does, with the executed config written to
    ``folder/config_executed.json`` (MONAI records it only when ``output_dir`` is an expression or this is given)."""
    return {"tracking": "mlflow", "save_execute_config": str(folder / "config_executed.json")}


def mlflow_run(output_dir) -> tuple[dict, dict[str, list[float]], list[str]]:
    """The one MLflow run that ``--tracking mlflow`` left in ``output_dir/mlruns.db``: its parameters, the history
    of every metric and its artifact paths."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{os.path.abspath(output_dir)}/mlruns.db")
    runs = [run for exp in client.search_experiments() for run in client.search_runs([exp.experiment_id])]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED", [(r.info.run_name, r.info.status) for r in runs]
    run_id = runs[0].info.run_id
    history = {key: [m.value for m in client.get_metric_history(run_id, key)] for key in runs[0].data.metrics}
    return runs[0].data.params, history, [a.path for a in client.list_artifacts(run_id)]


def segmentation_bundles() -> list[str]:
    """Every bundle folder that fine-tunes a segmentation network (``*_segmentation``), BTCV first."""
    names = sorted(name for name in os.listdir(BUNDLES) if name.endswith("_segmentation"))
    return sorted(names, key=lambda name: name != REFERENCE_BUNDLE)


def classification_bundles() -> list[str]:
    """Every bundle folder that fine-tunes a classifier (``*_classification``)."""
    return sorted(name for name in os.listdir(BUNDLES) if name.endswith("_classification"))


#: the segmentation bundle the others are copies of.
REFERENCE_BUNDLE = "glmae_btcv_segmentation"
