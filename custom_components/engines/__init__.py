from custom_components.engines.glmae_trainer import GLMAETrainer, cosine_momentum
from custom_components.engines.monitors import cross_volume_cosine
from custom_components.engines.optim import param_groups_weight_decay, scaled_learning_rate

__all__ = ["GLMAETrainer", "cosine_momentum", "cross_volume_cosine", "param_groups_weight_decay", "scaled_learning_rate"]
