"""Checks of how a bundle was invoked: command-line overrides must name ids that exist in its config files; and
on the command line, the cause of a failed run is its last line."""

from __future__ import annotations

import difflib
import os
import re
import sys
import types

from monai.bundle import ConfigParser
from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

__all__ = ["check_cli_overrides", "install_cause_last", "project_cause", "RUN_ARGUMENTS"]

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
#: the errors this project raises for bad inputs (files, datalists, shapes, values, overrides).
INPUT_ERRORS = (ValueError, FileNotFoundError)
#: a project error inside the text of an error re-raised from a DataLoader worker (its traceback is text there).
_WORKER_CAUSE = re.compile(
    r'File "[^"]*custom_components[^"]*".*\n(?:[ \t].*\n)*((?:ValueError|FileNotFoundError): .+)'
)

#: Arguments of ``python -m monai.bundle run`` itself, not config ids.
RUN_ARGUMENTS = {"run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file",
                 "workflow_type", "workflow_name", "properties_path"}
#: Values the command line keeps as strings although they look like constants: "false" is a non-empty string, so
#: ``--amp false`` would leave mixed precision on. Python's spelling is what ``monai.bundle run`` turns into values.
#: a config expression for null: `python -m monai.bundle run` drops an override whose value is None.
NULL_SPELLING = "'$None'"
PYTHON_SPELLING = {"true": "True", "false": "False", "null": NULL_SPELLING, "none": NULL_SPELLING, "None": NULL_SPELLING}


def _cli_pairs(argv: list[str]) -> dict[str, str]:
    """``--key value`` / ``--key=value`` pairs of a ``monai.bundle run`` command line."""
    pairs, i = {}, 0
    while i < len(argv):
        word = argv[i]
        if word.startswith("--"):
            key, _, value = word[2:].partition("=")
            if not value and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value, i = argv[i + 1], i + 1
            pairs[key] = value
        i += 1
    return pairs


def _raised_in_project(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by a function of this package (its innermost traceback frame is in it)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(PACKAGE_DIR + os.sep)


def project_cause(exc: BaseException | None) -> str | None:
    """The message of the first bad-input error this package raised in ``exc``'s chain (``__cause__`` /
    ``__context__``), e.g. under MONAI's "Failed to evaluate ConfigExpression"; None when the chain holds none (a bug
    elsewhere keeps its own traceback as the last word). Errors re-raised from DataLoader workers carry their
    traceback as text, which is searched for the same."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, INPUT_ERRORS) and _raised_in_project(exc):
            return f"{type(exc).__name__}: {exc}"
        worker = _WORKER_CAUSE.search(str(exc))
        if worker:
            return worker.group(1)
        exc = exc.__cause__ or exc.__context__
    return None


def install_cause_last() -> None:
    """Make a failing bundle run end with ``error: <cause>`` when the cause is a bad input this package reported:
    MONAI wraps it (``RuntimeError: Failed to evaluate ConfigExpression``, ``applying transform``), which leaves the
    useful sentence 10-20 lines up. The full traceback is still printed first. Installed once per process."""
    if getattr(sys.excepthook, "_prints_cause_last", False):
        return
    previous = sys.excepthook

    def hook(exc_type: type[BaseException], exc: BaseException, tb: types.TracebackType | None) -> None:
        previous(exc_type, exc, tb)
        cause = project_cause(exc)
        if cause is not None:
            print(f"\nerror: {cause}", file=sys.stderr, flush=True)

    hook._prints_cause_last = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def check_cli_overrides(argv: list[str] | None = None) -> None:
    """Raise a ``ValueError`` when a ``--key`` given to ``python -m monai.bundle run`` is not an id of the config
    files (a typo such as ``--max_epoch`` would otherwise add an unused id and be silently ignored), or when its
    value is ``true`` / ``false`` / ``null`` / ``none``: the command line passes those on as strings, and the
    string ``"false"`` counts as true (``--amp false`` would keep mixed precision on); or ``None``, which MONAI drops
    without a word, so the config keeps its value (``--datalist None`` would still read the datalist). The message
    gives the spelling that works (``--amp False``, ``--datalist '$None'``: a config expression for null).

    Bundle configs call it first in ``initialize``. On that command line it also installs
    :func:`install_cause_last`. Outside it (Python API, tests) it does nothing. A nested id
    (``train#trainer#max_epochs``) is checked by its first component.
    """
    argv = sys.argv if argv is None else argv
    if len(argv) < 2 or not argv[0].replace(os.sep, "/").endswith("monai/bundle/__main__.py"):
        return
    install_cause_last()
    pairs = _cli_pairs(argv[2:])
    config_files = pairs.get("config_file")
    if not config_files:
        return
    parser = ConfigParser()
    parser.read_config(_as_list(config_files))
    known = set(parser.get().keys()) | _tracking_ids(pairs.get("tracking"))
    unknown = []
    for key in pairs:
        root = key.replace("::", "#").split("#")[0].lstrip("+")
        if key not in RUN_ARGUMENTS and root not in known:
            unknown.append(key)
    misspelt = {k: v for k, v in pairs.items() if k not in RUN_ARGUMENTS and v in PYTHON_SPELLING}
    if misspelt:
        hints = "; ".join(f"--{k} {PYTHON_SPELLING[v]} instead of --{k} {v}" for k, v in misspelt.items())
        raise ValueError(f"write {hints}: python -m monai.bundle run reads values as Python literals, so true, false, "
                         f"null and none stay strings (a non-empty string such as 'false' counts as true), and it "
                         f"drops an override of None, keeping the config's value; '$None' is a config expression for "
                         f"null.")
    if unknown:
        hints = "; ".join(
            f"--{k}" + (f" (did you mean --{m[0]}?)" if (m := difflib.get_close_matches(k, known, n=1)) else "")
            for k in unknown
        )
        raise ValueError(f"unknown config id(s) on the command line: {hints}. Ids are top-level keys of "
                         f"{config_files}; nested ones are written train#trainer#max_epochs.")


def _tracking_ids(tracking: str | None) -> set[str]:
    """The ids ``--tracking`` adds to the config (``tracking_uri``, ``experiment_name``, ``run_name``, ...): MONAI
    keeps the value of each one the config or the command line already sets."""
    if not tracking:
        return set()
    settings = DEFAULT_EXP_MGMT_SETTINGS.get(tracking) or ConfigParser.load_config_files(tracking)
    return set(settings.get("configs", {})) - set(settings.get("handlers_id", {}))


def _as_list(config_files: str) -> list[str]:
    """The ``--config_file`` value (a path, ``"['a.json','b.json']"`` or ``"a.json,b.json"``) as a list of paths."""
    text = config_files.strip()
    if text.startswith("["):
        text = text.strip("[]")
    return [p.strip().strip("'\"") for p in text.split(",") if p.strip()]
