"""Training of a GL-MAE segmentation bundle from MONAI Label: fine-tunes the served weights on the saved labels."""

from __future__ import annotations

from typing import Any

from monailabel.tasks.train.bundle import BundleTrainTask

__all__ = ["GLMAEBundleTrainTask"]

#: writes the final weights as models/model.pt when a run has no validation case to pick the best epoch by.
#: Appended after the bundle's StatsHandler, whose exception handler re-raises first: a failed run leaves the served
#: weights as they were.
FINAL_WEIGHTS_SAVER = {
    "_target_": "custom_components.handlers.TrainingCheckpointSaver", "save_trainer": False,
    "save_dir": "@ckpt_dir", "save_dict": {"model": "@network"}, "save_final": True, "final_filename": "model.pt",
}


class GLMAEBundleTrainTask(BundleTrainTask):
    """MONAI Label's ``BundleTrainTask`` for the segmentation bundles of this collection.

    A run (``/train/<bundle>``) fine-tunes from ``models/model.pt`` (``pretrained``, the default; else from
    ``train.json``'s ``network``: the GL-MAE encoder given as ``pretrained_encoder``, or random weights) on the
    image/label pairs of the datastore, and writes the weights the infer task serves, ``models/model.pt``:
    the best validation epoch (the bundle's own checkpoint), or the last epoch when no case is left for validation.
    MONAI Label sets the trainer's epochs; the bundle's schedule follows: ``max_epochs`` (the cosine schedule's
    length) is the run's, warm-up is at most a tenth of it, and validation runs at least at the last epoch.
    """

    def _load_checkpoint(self, model_pytorch: str, pretrained: bool, train_handlers: list) -> None:
        # MONAI Label 0.8.5 calls os.path.exists(None) when pretrained is false.
        if pretrained:
            super()._load_checkpoint(model_pytorch, pretrained, train_handlers)

    def _update_overrides(self, overrides: dict[str, Any]) -> dict[str, Any]:
        epochs = int(overrides[self.const.key_train_trainer_max_epochs()])
        overrides["max_epochs"] = epochs
        overrides["warmup_epochs"] = min(int(self.bundle_config.get_parsed_content("warmup_epochs")), epochs // 10)
        overrides["val_interval"] = min(int(self.bundle_config.get_parsed_content("val_interval")), epochs)
        if overrides.get(self.const.key_validate_dataset_data()) == []:
            handlers = overrides[self.const.key_train_handlers()]
            overrides[self.const.key_train_handlers()] = [
                *(h for h in handlers if h.get("_target_") != "ValidationHandler"), FINAL_WEIGHTS_SAVER]
        return overrides
