"""Shared components of the GL-MAE MONAI bundles.

Bundles instantiate these from their configs by full dotted path, e.g.
``"_target_": "custom_components.networks.GLMAE"``.
"""

__version__ = "0.11.0"
