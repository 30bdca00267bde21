from custom_components.handlers.checkpoint import TrainingCheckpointSaver
from custom_components.handlers.export import EncoderExport
from custom_components.handlers.preview import ReconstructionPreview
from custom_components.handlers.progress import ProgressBarHandler
from custom_components.handlers.validation_log import ValidationLog

__all__ = ["EncoderExport", "ProgressBarHandler", "ReconstructionPreview", "TrainingCheckpointSaver", "ValidationLog"]
