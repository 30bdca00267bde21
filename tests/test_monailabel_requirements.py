"""The MONAI Label environment pins what the main environment pins, torch and torchvision aside (the app itself is
tested in that environment: monailabel_app/tests)."""

import os

from conftest import REPO_ROOT

from tools.verify_bundles import read_pins

#: packages pinned differently in the MONAI Label environment: torchvision needs torch 2.14.1 there.
OWN_PINS = {"torch", "torchvision"}


def pins(name: str) -> dict[str, str]:
    return read_pins(os.path.join(REPO_ROOT, name))


def test_monailabel_environment_keeps_the_main_pins():
    main, monailabel = pins("requirements.txt"), pins("requirements-monailabel.txt")
    shared = {k: v for k, v in main.items() if k not in OWN_PINS}
    assert {k: monailabel.get(k) for k in shared} == shared
    assert set(OWN_PINS) <= set(monailabel)
