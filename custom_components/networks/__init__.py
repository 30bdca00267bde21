from custom_components.networks.classifier import ViTClassifier
from custom_components.networks.decoder import MAEDecoder
from custom_components.networks.features import GLMAEFeatureEncoder
from custom_components.networks.glmae import CONSISTENCY_FORMS, GLMAE, EMATeacher
from custom_components.networks.heads import DINOHead, MLPHead
from custom_components.networks.pos_embed import sincos_position_embedding
from custom_components.networks.vit import MaskedViTEncoder, random_masking

__all__ = [
    "CONSISTENCY_FORMS", "DINOHead", "EMATeacher", "GLMAE", "GLMAEFeatureEncoder", "MAEDecoder", "MLPHead", "MaskedViTEncoder",
    "ViTClassifier", "random_masking", "sincos_position_embedding",
]
