"""Command-line programs for people (synthetic data, datalists, zoo export, benchmarks, studies), run as
``python tools/<name>.py``.

A package so that the programs and the tests import one another as ``tools.<name>`` without editing ``sys.path``:
``pip install -e .`` installs it beside ``custom_components`` (see ``pyproject.toml``), which is what lets
``python tools/<name>.py`` find both from any working directory.
"""
