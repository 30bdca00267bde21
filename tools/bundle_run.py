"""Build, print and run ``python -m monai.bundle run`` command lines for the bundles of this repository.

The one place the tools (``quickstart.py``, ``label_efficiency.py``, ``lr_pilot.py``) and the tests start a bundle
the way a user would: in the bundle's folder, with config files named relative to its ``configs/`` folder, merged
in order, and ``--key value`` overrides. With ``nproc`` the same command runs under
``python -m torch.distributed.run --standalone --nproc_per_node=N``.

    from tools.bundle_run import display_command, run_bundle

    run_bundle("glmae_pretraining", ["train.json", "quickstart.json"], {"max_epochs": 2}, log_file="log.txt")
    print(display_command("glmae_btcv_segmentation", ["train.json", "evaluate.json"]))

Importable as ``tools.bundle_run`` once the repository is installed (``pip install -e .`` installs ``tools`` beside
``custom_components``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the folder holding one sub-folder per bundle; looked up at call time, so tests may point it elsewhere.
BUNDLES = os.path.join(REPO_ROOT, "bundles")
#: the pre-training bundle; every other bundle fine-tunes from its encoder.
PRETRAINING_BUNDLE = "glmae_pretraining"
#: how many trailing characters of captured output a failure's message quotes.
TAIL_CHARS = 3000

__all__ = ["BUNDLES", "PRETRAINING_BUNDLE", "REPO_ROOT", "bundle_command", "bundle_dir", "display_command",
           "finetuning_bundles", "run_bundle"]


def bundle_dir(bundle: str) -> str:
    """
    The folder of ``bundle`` under :data:`BUNDLES`.

    Args:
        bundle: the bundle's folder name, e.g. ``"glmae_btcv_segmentation"``.

    Raises:
        ValueError: when that folder does not exist (the message names the path).
    """
    folder = os.path.join(BUNDLES, bundle)
    if not os.path.isdir(folder):
        raise ValueError(f"bundle folder not found: {folder}")
    return folder


def finetuning_bundles(config: str = "train.json") -> list[str]:
    """
    The bundles other than :data:`PRETRAINING_BUNDLE` that have ``configs/<config>``, sorted by name.

    Args:
        config: a config file name the bundle must have, e.g. ``"quickstart.json"``.
    """
    if not os.path.isdir(BUNDLES):
        return []
    return sorted(name for name in os.listdir(BUNDLES)
                  if name != PRETRAINING_BUNDLE and os.path.isfile(os.path.join(BUNDLES, name, "configs", config)))


def bundle_command(bundle: str, configs: Sequence[str], overrides: Mapping[str, Any] | None = None,
                   nproc: int | None = None) -> list[str]:
    """
    The argv of ``python -m monai.bundle run --config_file "['configs/a.json',...]" --key value ...``, to be run in
    the bundle's folder (see :func:`run_bundle`).

    Args:
        bundle: the bundle's folder name under :data:`BUNDLES`.
        configs: config file names relative to the bundle's ``configs/`` folder, merged in this order.
        overrides: ``--key value`` pairs; lists and dicts are JSON-encoded, other values go through ``str()``.
        nproc: when an int, run under ``python -m torch.distributed.run --standalone --nproc_per_node=nproc``.

    Returns:
        the argv, starting with ``sys.executable``.

    Raises:
        ValueError: when the bundle folder or one of the config files does not exist (the message names the path),
            when ``configs`` is empty, or when ``nproc`` is not a positive int.
    """
    folder = bundle_dir(bundle)
    if isinstance(configs, str) or not configs:
        raise ValueError(f"configs must be a non-empty list of config file names, got {configs!r}")
    for name in configs:
        path = os.path.join(folder, "configs", name)
        if not os.path.isfile(path):
            raise ValueError(f"config file not found: {path}")
    command = [sys.executable]
    if nproc is not None:
        if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
            raise ValueError(f"nproc must be a positive int, got {nproc!r}")
        command += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    command += ["-m", "monai.bundle", "run", "--config_file", "[" + ",".join(f"'configs/{c}'" for c in configs) + "]"]
    for key, value in (overrides or {}).items():
        command += [f"--{key}", json.dumps(value) if isinstance(value, (list, dict)) else str(value)]
    return command


def display_command(bundle: str, configs: Sequence[str], overrides: Mapping[str, Any] | None = None,
                    nproc: int | None = None) -> str:
    """
    The copy-pasteable shell line ``(cd bundles/<bundle> && python -m monai.bundle run ...)`` of
    :func:`bundle_command`, with ``python`` for the interpreter, shell-quoted, the folder relative to the current
    directory. Takes the same arguments and raises the same errors as :func:`bundle_command`.
    """
    return _display(bundle, bundle_command(bundle, configs, overrides, nproc))


def _display(bundle: str, command: list[str]) -> str:
    words = " ".join(_quote(word) for word in ["python", *command[1:]])
    return f"(cd {shlex.quote(os.path.relpath(bundle_dir(bundle)))} && {words})"


def _quote(word: str) -> str:
    """``shlex.quote``, except that a word with single quotes and nothing a double-quoted shell word expands is
    wrapped in double quotes, as the docs write ``--config_file "['configs/train.json','configs/evaluate.json']"``."""
    if "'" in word and not any(c in word for c in '"$`\\!'):
        return f'"{word}"'
    return shlex.quote(word)


def run_bundle(bundle: str, configs: Sequence[str], overrides: Mapping[str, Any] | None = None,
               log_file: str | None = None, *, nproc: int | None = None, echo: bool = True,
               timeout: float | None = None, env: Mapping[str, str] | None = None,
               capture: bool = False) -> subprocess.CompletedProcess:
    """
    Run :func:`bundle_command` in the bundle's folder, with ``PYTHONPATH`` prefixed by :data:`REPO_ROOT` (an
    existing ``PYTHONPATH`` is kept after it).

    Args:
        bundle: the bundle's folder name under :data:`BUNDLES`.
        configs: config file names relative to the bundle's ``configs/`` folder, merged in this order.
        overrides: ``--key value`` pairs (see :func:`bundle_command`).
        log_file: when given, stdout and stderr go to this file (overwritten); otherwise to the terminal.
        nproc: when an int, run under ``torch.distributed.run`` with this many processes.
        echo: print ``$ (cd bundles/<bundle> && python -m monai.bundle run ...)`` before running.
        timeout: seconds after which the run (with all of its processes) is killed and counts as failed.
        env: entries set over ``os.environ`` for the run, e.g. ``{"OMP_NUM_THREADS": "1"}``.
        capture: keep stdout and stderr (merged) in the result's ``stdout`` instead of printing them; not together
            with ``log_file``.

    Returns:
        the finished process; its ``stdout`` is the output when ``capture``, else None.

    Raises:
        ValueError: as :func:`bundle_command`, or when both ``log_file`` and ``capture`` are given.
        RuntimeError: when the run exits with a non-zero code or times out; the message names the bundle, the exit
            code and the log file, or quotes the last :data:`TAIL_CHARS` characters of the captured output.
    """
    if log_file is not None and capture:
        raise ValueError("give either log_file or capture=True, not both")
    command = bundle_command(bundle, configs, overrides, nproc)
    if echo:
        print(f"$ {_display(bundle, command)}", flush=True)
    run_env = dict(os.environ, **(env or {}))
    run_env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, run_env.get("PYTHONPATH")]))
    with open(log_file, "w") if log_file is not None else contextlib.nullcontext() as log:
        stdout = log if log is not None else subprocess.PIPE if capture else None
        try:
            returncode, output = _execute(command, bundle_dir(bundle), run_env, stdout, timeout)
        except subprocess.TimeoutExpired as error:
            raise RuntimeError(_failure(bundle, f"timed out after {timeout} s", log_file, error.output)) from error
    if returncode != 0:
        raise RuntimeError(_failure(bundle, f"failed with exit code {returncode}", log_file, output))
    return subprocess.CompletedProcess(command, returncode, stdout=output)


def _execute(command: list[str], cwd: str, env: dict[str, str], stdout: Any,
             timeout: float | None) -> tuple[int, str | None]:
    """``subprocess.run`` that, with a timeout, runs the command in its own process group and kills the whole group
    (torchrun's workers included) when it times out or is interrupted."""
    group = timeout is not None and hasattr(os, "killpg")
    with subprocess.Popen(command, cwd=cwd, env=env, stdout=stdout, stderr=subprocess.STDOUT, text=True,
                          start_new_session=group) as process:
        try:
            output, _ = process.communicate(timeout=timeout)
        except BaseException as error:
            if group:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
            if isinstance(error, subprocess.TimeoutExpired):
                error.output, _ = process.communicate()  # what was written before the kill
            raise
    return process.returncode, output


def _failure(bundle: str, what: str, log_file: str | None, output: str | None) -> str:
    message = f"bundle {bundle} {what}"
    if log_file is not None:
        return f"{message}; see {log_file}"
    if output:
        return f"{message}; last output:\n{output[-TAIL_CHARS:]}"
    return f"{message} (output above)"
