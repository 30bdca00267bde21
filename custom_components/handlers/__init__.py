from custom_components.handlers.checkpoint import (
    ModelCheckpointLoader, TrainingCheckpointLoader, TrainingCheckpointSaver, latest_checkpoint,
)
from custom_components.handlers.classification import ConfusionMatrixSaver, ProbabilityCSVSaver
from custom_components.handlers.export import EncoderExport
from custom_components.handlers.features import FeatureWriter, read_embeddings
from custom_components.handlers.metrics_saver import MetricsSaver
from custom_components.handlers.preview import InferencePreview, ReconstructionPreview
from custom_components.handlers.progress import ProgressBarHandler, log_epoch_metrics
from custom_components.handlers.seeding import SeedEachEpoch
from custom_components.handlers.training_log import TrainingLog, read_training_log
from custom_components.handlers.validation_log import ValidationLog

__all__ = [
    "ConfusionMatrixSaver", "EncoderExport", "FeatureWriter", "InferencePreview", "MetricsSaver",
    "ModelCheckpointLoader", "ProbabilityCSVSaver", "ProgressBarHandler", "ReconstructionPreview", "SeedEachEpoch",
    "TrainingCheckpointLoader", "TrainingCheckpointSaver", "TrainingLog", "ValidationLog", "latest_checkpoint",
    "log_epoch_metrics", "read_embeddings", "read_training_log",
]
