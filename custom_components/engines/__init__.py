from custom_components.engines.glmae_trainer import GLMAETrainer, cosine_momentum
from custom_components.engines.optim import (
    encoder_layer_id, param_groups_layer_decay, param_groups_weight_decay, scaled_learning_rate,
)

__all__ = [
    "GLMAETrainer", "cosine_momentum", "encoder_layer_id", "param_groups_layer_decay", "param_groups_weight_decay",
    "scaled_learning_rate",
]
