from custom_components.transforms.checks import CheckImaged, CheckLabeld
from custom_components.transforms.io import LoadImageWithContext, LoadImageWithContextd
from custom_components.transforms.overlay import SaveOverlayd
from custom_components.transforms.views import GlobalLocalViewsd

__all__ = ["CheckImaged", "CheckLabeld", "GlobalLocalViewsd", "LoadImageWithContext", "LoadImageWithContextd", "SaveOverlayd"]
