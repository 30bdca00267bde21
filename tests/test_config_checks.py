"""Command-line overrides must name config ids that exist and spell constants the way the command line reads them."""

import os
import subprocess
import sys

import pytest
from bundle_utils import BUNDLES
from conftest import REPO_ROOT

from custom_components.config_checks import check_cli_overrides

MAIN = os.path.join("site-packages", "monai", "bundle", "__main__.py")
CONFIGS = "['configs/train.json','configs/quickstart.json']"


@pytest.fixture
def in_pretraining_bundle(monkeypatch):
    monkeypatch.chdir(os.path.join(BUNDLES, "glmae_pretraining"))


def test_known_ids_nested_ids_and_run_arguments_pass(in_pretraining_bundle):
    check_cli_overrides([MAIN, "run", "--config_file", CONFIGS, "--max_epochs", "2", "--train#trainer#amp=False",
                         "--meta_file", "configs/metadata.json", "--resume", "True"])


def test_a_typo_is_an_error_with_a_suggestion(in_pretraining_bundle):
    with pytest.raises(ValueError, match=r"--max_epoch \(did you mean --max_epochs\?\)"):
        check_cli_overrides([MAIN, "run", "--config_file", CONFIGS, "--max_epoch", "2"])


@pytest.mark.parametrize("value, spelling", [("false", "False"), ("true", "True"), ("null", "None")])
def test_lowercase_constants_are_an_error_with_the_spelling_that_works(in_pretraining_bundle, value, spelling):
    """``--amp false`` reaches the config as the string 'false', which is truthy: mixed precision would stay on."""
    with pytest.raises(ValueError, match=f"--amp {spelling} instead of --amp {value}"):
        check_cli_overrides([MAIN, "run", "--config_file", CONFIGS, "--amp", value])
    check_cli_overrides([MAIN, "run", "--config_file", CONFIGS, f"--amp={spelling}"])


def test_outside_the_bundle_command_line_nothing_is_checked():
    check_cli_overrides(["pytest", "--max_epoch", "2"])


def test_the_bundle_command_stops_on_an_unknown_override():
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", CONFIGS, "--num_volume", "2"]
    result = subprocess.run(command, cwd=os.path.join(BUNDLES, "glmae_pretraining"), capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=REPO_ROOT), timeout=120)
    assert result.returncode != 0
    assert "unknown config id(s) on the command line: --num_volume (did you mean --num_volumes?)" in result.stderr
