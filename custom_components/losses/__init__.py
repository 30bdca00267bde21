from custom_components.losses.consistency import CosineConsistencyLoss, DINOConsistencyLoss
from custom_components.losses.glmae_loss import LOSS_TERMS, GLMAELoss
from custom_components.losses.reconstruction import MaskedReconstructionLoss

__all__ = ["CosineConsistencyLoss", "DINOConsistencyLoss", "GLMAELoss", "LOSS_TERMS", "MaskedReconstructionLoss"]
