from custom_components.engines.glmae_trainer import GLMAETrainer, cosine_momentum
from custom_components.engines.optim import param_groups_weight_decay, scaled_learning_rate

__all__ = ["GLMAETrainer", "cosine_momentum", "param_groups_weight_decay", "scaled_learning_rate"]
