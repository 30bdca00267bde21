"""MONAI Label app serving the GL-MAE bundles of this repository from their folders (no download, no network).

Every segmentation bundle (``*_segmentation``) is an auto-segmentation model that can also be trained on the
labels saved in the datastore; the classification bundle (``*_classification``) returns class probabilities.
Start it from the repository root, in the environment the README's "MONAI Label" section installs::

    monailabel start_server --app monailabel_app --studies /path/to/images --host 127.0.0.1 --port 8000

Options (``--conf KEY VALUE``):
    bundles_dir: the folder holding the bundle folders; default: the repository's ``bundles/``.
    models: comma-separated bundle folder names to serve; default: every segmentation and classification bundle.
    skip_trainers: ``true`` serves inference only.
    preload: ``true`` loads every model at start-up.

A bundle without ``models/model.pt`` is listed for training only; once a training run has written its weights,
it is served without a restart.
"""

from __future__ import annotations

import logging
import os
from importlib.metadata import version

from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.utils.others.generic import strtobool

from lib.bundles import bundle_kind, served_bundles, weights_path
from lib.infers import GLMAEBundleInferTask
from lib.trainers import GLMAEBundleTrainTask

logger = logging.getLogger(__name__)

#: the repository's bundles/ folder, beside this app.
DEFAULT_BUNDLES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "bundles")


class GLMAEApp(MONAILabelApp):
    """Serves the bundles of ``--conf bundles_dir`` named by ``--conf models`` (see the module docstring)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.bundles = served_bundles(conf.get("bundles_dir", DEFAULT_BUNDLES_DIR), conf.get("models"))
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="GL-MAE bundles",
            description="UNETR segmentation and ViT classification fine-tuned from a GL-MAE pre-trained encoder",
            version=version("glmae-custom-components"),
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers = {}
        for name, path in self.bundles.items():
            if os.path.isfile(weights_path(path)):
                infers[name] = GLMAEBundleInferTask(path, self.conf)
            else:
                logger.warning(f"bundle '{name}' is not served for inference yet: {weights_path(path)} does not "
                               f"exist (train it, or copy trained weights there)")
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        if strtobool(self.conf.get("skip_trainers", "false")):
            return {}
        return {name: GLMAEBundleTrainTask(path, self.conf) for name, path in self.bundles.items()
                if bundle_kind(name) == InferType.SEGMENTATION}

    def serve_new_weights(self) -> None:
        """Add the infer task of every bundle whose ``models/model.pt`` appeared since start-up (a training run
        of the server writes it in another process)."""
        for name, path in self.bundles.items():
            if name not in self._infers and os.path.isfile(weights_path(path)):
                logger.info(f"bundle '{name}' has weights now: serving {weights_path(path)}")
                self._infers[name] = GLMAEBundleInferTask(path, self.conf)

    def info(self):
        self.serve_new_weights()
        return super().info()

    def infer(self, request, datastore=None):
        self.serve_new_weights()
        name = request.get("model")
        if name in self.bundles and name not in self._infers:
            raise MONAILabelException(
                MONAILabelError.INVALID_INPUT,
                f"bundle '{name}' has no trained weights: {weights_path(self.bundles[name])} does not exist; train "
                f"it first (/train/{name}, or python -m monai.bundle run with its train.json).")
        if name not in self._infers:
            raise MONAILabelException(MONAILabelError.INVALID_INPUT, f"model '{name}' is not served by this app; "
                                      f"served: {', '.join(self._infers) or 'none'}.")
        return super().infer(request, datastore)
