from custom_components.transforms.checks import CheckImaged, CheckLabeld
from custom_components.transforms.io import LoadImageWithContext, LoadImageWithContextd
from custom_components.transforms.labels import RemapLabeld, parse_label_mapping
from custom_components.transforms.modalities import LoadModalitiesd
from custom_components.transforms.overlay import SaveOverlayd
from custom_components.transforms.regions import LabelToRegionsd, RegionsToLabeld
from custom_components.transforms.slices import LoadScand, SliceFolderReader
from custom_components.transforms.views import GlobalLocalViewsd
from custom_components.transforms.windows import PadToWindowd

__all__ = [
    "CheckImaged", "CheckLabeld", "GlobalLocalViewsd", "LabelToRegionsd", "LoadImageWithContext",
    "LoadImageWithContextd", "LoadModalitiesd", "LoadScand", "PadToWindowd", "RegionsToLabeld", "RemapLabeld", "SaveOverlayd",
    "SliceFolderReader", "parse_label_mapping",
]
