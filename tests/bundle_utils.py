"""Helpers to run bundle configs in tests the way ``python -m monai.bundle run`` does."""

from __future__ import annotations

import os

from monai.bundle import ConfigWorkflow

from tools.bundle_run import BUNDLES, PRETRAINING_BUNDLE, run_bundle


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

#: pre-training model sizes that train in seconds on a CPU.
PRETRAINING_TINY = {"hidden_size": 48, "mlp_dim": 96, "num_heads": 4, "decoder_hidden_size": 48,
                    "decoder_num_layers": 1, "head_out_dim": 64, "head_hidden_dim": 64, "head_bottleneck_dim": 16}

#: UNETR sizes of the reference segmentation bundle that train in seconds on a CPU.
SEGMENTATION_SIZES = {"hidden_size": 48, "mlp_dim": 96, "num_heads": 4, "feature_size": 8, "roi_size": [32, 32, 32]}


def pretraining_workflow(tmp_path, **override) -> ConfigWorkflow:
    """The pre-training quickstart (``train.json`` + ``quickstart.json``) at :data:`PRETRAINING_TINY` sizes on 3 small
    synthetic volumes for 2 epochs, writing everything under ``tmp_path``, checkpoints and previews every epoch."""
    args = dict(synthetic_data_dir=str(tmp_path / "data"), ckpt_dir=str(tmp_path / "models"),
                output_dir=str(tmp_path / "runs"), num_volumes=3, volume_shape=[64, 64, 48], max_epochs=2, batch_size=2,
                checkpoint_interval=1, preview_interval=1, log_interval=1) | PRETRAINING_TINY | override
    return make_workflow(PRETRAINING_BUNDLE, ["train.json", "quickstart.json"], **args)


def segmentation_overrides(tmp_path, datalist, **extra) -> dict:
    """Overrides of the reference segmentation bundle's ``train.json`` for a 2-epoch CPU run on ``datalist`` (a
    synthetic BTCV-like dataset) at :data:`SEGMENTATION_SIZES`, writing under ``tmp_path``."""
    run = dict(datalist=datalist, dataset_dir=os.path.dirname(datalist), ckpt_dir=str(tmp_path / "models"),
               output_dir=str(tmp_path / "runs"), max_epochs=2, val_interval=1, warmup_epochs=1, num_samples=1,
               amp=False, num_workers=0, cache_rate=0.0, pixdim=[1.5, 1.5, 2.0], sw_batch_size=1)
    return run | SEGMENTATION_SIZES | extra
