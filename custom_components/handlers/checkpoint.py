"""Resumable training checkpoints: save and load the trainer together with the objects it trains."""

from __future__ import annotations

import glob
import os
import pickle
import re

import torch
from ignite.engine import Engine
from ignite.handlers import DiskSaver
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointLoader, CheckpointSaver

__all__ = [
    "CPUSaveHandler", "ModelCheckpointLoader", "TrainingCheckpointLoader", "TrainingCheckpointSaver",
    "latest_checkpoint", "to_cpu",
]


def to_cpu(obj):
    """``obj`` with every tensor in it (nested dicts, lists, tuples) moved to the CPU; other values unchanged."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return type(obj)((k, to_cpu(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


class CPUSaveHandler(BaseSaveHandler):
    """Wraps an Ignite save handler so every tensor is moved to the CPU before it is written: checkpoints of a GPU
    run load on a machine without one, with or without ``map_location``."""

    def __init__(self, handler: BaseSaveHandler) -> None:
        self.handler = handler

    def __call__(self, checkpoint, filename: str, metadata=None) -> None:
        self.handler(to_cpu(checkpoint), filename, metadata)

    def remove(self, filename: str) -> None:
        self.handler.remove(filename)


class TrainingCheckpointSaver(CheckpointSaver):
    """MONAI ``CheckpointSaver`` whose files hold CPU tensors, whose interval checkpoints are written atomically,
    and which can save the trainer (epoch, iteration) it is attached to, so the run can resume.

    A bundle config cannot put ``@train#trainer`` into ``save_dict`` of a handler that the trainer itself is built
    with (a circular reference), so with ``save_trainer`` the trainer joins the saved objects when the handler is
    attached. The interval checkpoints (the ones a run resumes from) go to a temporary file that is then renamed
    (MONAI's saver writes in place), so a kill during a save leaves the previous checkpoint intact.

    Args:
        save_trainer: add the engine under ``"trainer"`` (and its AMP grad scaler under ``"scaler"`` when it has
            one), True for resumable checkpoints, False for ``model.pt``.
        other arguments: those of ``CheckpointSaver``.
    """

    def __init__(self, *args, save_trainer: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.save_trainer = save_trainer
        if self._interval_checkpoint is not None:
            self._interval_checkpoint.save_handler = DiskSaver(self.save_dir, atomic=True, require_empty=False)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler = CPUSaveHandler(checkpoint.save_handler)

    def attach(self, engine: Engine) -> None:
        if self.save_trainer:
            self.save_dict["trainer"] = engine
            if getattr(engine, "scaler", None) is not None:  # the AMP grad scaler of a GPU run
                self.save_dict["scaler"] = engine.scaler
        super().attach(engine)


def _unreadable(err: BaseException) -> str:
    """Why ``torch.load`` / ``load_state_dict`` failed on a checkpoint, in words (truncated, not a torch file, objects
    that ``weights_only`` refuses to unpickle, weights that do not fit), with the error's first line."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if isinstance(err, pickle.UnpicklingError):
        reason = "it holds objects other than tensors, which torch.load(weights_only=True) refuses to unpickle"
    elif "state_dict" in text:
        reason = "its weights do not fit the network this config builds"
    else:
        reason = "it is truncated or corrupt, or torch.save did not write it"
    return f"{reason} ({type(err).__name__}: {text})."


def latest_checkpoint(ckpt_dir: str, prefix: str = "checkpoint") -> str | None:
    """The ``{prefix}_*.pt`` file of ``ckpt_dir`` with the highest epoch/iteration number, or None if there is none."""
    paths = glob.glob(os.path.join(ckpt_dir, f"{prefix}_*.pt"))

    def step(path: str) -> tuple[int, float]:
        numbers = re.findall(r"=(\d+)", os.path.basename(path))
        return (int(numbers[-1]) if numbers else -1, os.path.getmtime(path))

    return max(paths, key=step) if paths else None


class TrainingCheckpointLoader(CheckpointLoader):
    """Resume a run: load a :class:`TrainingCheckpointSaver` checkpoint into ``load_dict`` and into the trainer
    it is attached to (which then continues from the saved iteration), when the trainer starts.

    Args:
        ckpt_dir: folder searched for the newest ``{prefix}_*.pt`` when ``load_path`` is None.
        load_dict: the objects to restore (network, EMA teacher, loss state, optimizer, scheduler, ...).
        load_path: a specific checkpoint instead of the newest one.
        map_location: passed to ``torch.load`` (which runs with ``weights_only=True``).
        prefix: checkpoint file prefix.

    Raises:
        FileNotFoundError: no checkpoint to resume from.
        ValueError: the checkpoint cannot be read or does not hold plain tensors (the file is named).
    """

    def __init__(self, ckpt_dir: str | None, load_dict: dict, load_path: str | None = None,
                 map_location=None, prefix: str = "checkpoint") -> None:
        path = load_path or (latest_checkpoint(ckpt_dir, prefix) if ckpt_dir else None)
        if path is None or not os.path.isfile(path):
            raise FileNotFoundError(
                f"resume was requested but there is no checkpoint to resume from: "
                f"{path or os.path.join(str(ckpt_dir), prefix + '_*.pt')} (set resume to false to start afresh)."
            )
        super().__init__(path, load_dict, map_location=map_location)

    def attach(self, engine: Engine) -> None:
        self.load_dict["trainer"] = engine
        if getattr(engine, "scaler", None) is not None:
            self.load_dict["scaler"] = engine.scaler
        super().attach(engine)

    def __call__(self, engine: Engine) -> None:
        try:
            super().__call__(engine)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:
            raise ValueError(f"cannot resume from checkpoint '{self.load_path}': {_unreadable(err)}") from err
        self.logger.info(f"resumed from {self.load_path} at epoch {engine.state.epoch}, "
                         f"iteration {engine.state.iteration}")



#: size ids of the segmentation configs and the weight whose shape shows each: (id, key, dim).
SIZE_IDS = (("hidden_size", "patch_embedding.patch_embeddings.weight", 0),
            ("in_channels", "patch_embedding.patch_embeddings.weight", 1),
            ("mlp_dim", "blocks.0.mlp.linear1.weight", 0),
            ("feature_size", "encoder1.layer.conv1.conv.weight", 0),
            ("num_classes", "out.conv.conv.weight", 0))  # (size id, key or key suffix, dim): UNETR's keys start vit.
MAX_LISTED_TENSORS = 3


class ModelCheckpointLoader(CheckpointLoader):
    """MONAI ``CheckpointLoader`` for a trained ``model.pt`` whose errors say what is wrong in one sentence.

    A missing file names the path and what writes it; weights whose shapes do not fit the network the config builds
    (a model trained with other size ids, e.g. the quickstart's small UNETR loaded into the ViT-B default) name the
    file, the first mismatching tensors with both shapes, the size ids the checkpoint was trained with, and the fix.

    Args: those of ``CheckpointLoader`` (``load_path``, ``load_dict``, ``map_location``, ...).

    Raises:
        FileNotFoundError: ``load_path`` does not exist.
        ValueError: the checkpoint does not fit the network (sizes, or keys missing / unexpected).
    """

    def __call__(self, engine: Engine) -> None:
        if not os.path.isfile(self.load_path):
            raise FileNotFoundError(
                f"model checkpoint '{self.load_path}' does not exist: train first (configs/train.json saves the best "
                f"model as models/model.pt), or point --checkpoint / --ckpt_dir at it."
            )
        try:
            super().__call__(engine)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:
            if isinstance(err, RuntimeError) and "Error(s) in loading state_dict" in str(err):
                raise ValueError(self._mismatch(err)) from None
            raise ValueError(f"model checkpoint '{self.load_path}' cannot be loaded: {_unreadable(err)}") from err

    def _mismatch(self, err: RuntimeError) -> str:
        """One paragraph on why the checkpoint does not fit the (first) network of ``load_dict``."""
        network = next(iter(self.load_dict.values()))
        wanted = getattr(network, "module", network).state_dict()
        state = torch.load(self.load_path, map_location="cpu", weights_only=True, mmap=True)
        state = state.get("model", state) if isinstance(state, dict) else state
        shapes = [f"{k} {list(v.shape)} in the file, {list(wanted[k].shape)} in the network"
                  for k, v in state.items() if k in wanted and v.shape != wanted[k].shape]
        trained = {}
        for name, suffix, dim in SIZE_IDS:
            key = next((k for k in state if k in wanted and (k == suffix or k.endswith(f".{suffix}"))), None)
            if key is not None and state[key].shape[dim] != wanted[key].shape[dim]:
                trained[name] = int(state[key].shape[dim])
        missing, unexpected = sorted(wanted.keys() - state.keys()), sorted(state.keys() - wanted.keys())
        if shapes:
            more = f"; and {len(shapes) - MAX_LISTED_TENSORS} more" if len(shapes) > MAX_LISTED_TENSORS else ""
            what = (f"its tensors have other shapes than the network this config builds "
                    f"({'; '.join(shapes[:MAX_LISTED_TENSORS])}{more})")
        else:
            what = (f"its keys do not match the network's ({len(missing)} missing, e.g. "
                    f"{missing[:MAX_LISTED_TENSORS]}; {len(unexpected)} unexpected, e.g. "
                    f"{unexpected[:MAX_LISTED_TENSORS]})")
        sizes = ", ".join(f"--{k} {v}" for k, v in trained.items())
        first_line = str(err).splitlines()[0]
        return (f"model checkpoint '{self.load_path}' does not fit the network: {what}. It was trained with other size "
                f"ids{f' ({sizes})' if sizes else ''}: give the run the ids it was trained with; a model trained with "
                f"configs/quickstart.json needs that overlay too, e.g. --config_file "
                f"\"['configs/inference.json','configs/quickstart.json']\". (load_state_dict: {first_line})")
