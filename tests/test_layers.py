"""The layers of custom_components: a module imports only from layers below its own, never from a peer part of its
own layer, and no modules import each other in a cycle. Read from the sources with ``ast`` (nothing is imported),
function-local imports included, since they tie modules together as much as top-level ones.
"""

from __future__ import annotations

from pathlib import Path

from conftest import REPO_ROOT

from tools import zoo

PACKAGE = "custom_components"

#: bottom to top; each entry of a layer is a part (a module or a subpackage, by its name under the package).
#: A part may import from the layers below it and from itself, not from the other parts of its layer.
LAYERS = (
    # foundations that everything above shares; they import nothing from the package
    ("", "files", "precision", "geometry", "collapse_metrics", "metrics", "config_checks"),
    # the model, its objectives, the transforms, inference helpers, the process group: independent of one another
    ("networks", "losses", "transforms", "inferers", "distributed"),
    # checkpoint formats (built on the encoder) and datalists (built on the slice readers of the transforms)
    ("weights", "data"),
    # synthetic datasets, written with the datalist writers of data
    ("synthetic",),
    # the trainer step and the handlers attached to it in the configs: neither imports the other
    ("engines", "handlers"),
    # the encoder probes, built on everything
    ("probes",),
)



def import_graph() -> dict[str, set[str]]:
    """Every module of the package (a package by its ``__init__.py``) and the package modules it imports, as the zoo
    export reads them to vendor a bundle's modules: ``from a import b`` counts as ``a`` and, when it is a module,
    ``a.b``; ``a.b`` importing ``a.c`` does not count as importing the package ``a``."""
    modules = set()
    for path in sorted(Path(REPO_ROOT, PACKAGE).rglob("*.py")):
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        modules.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return {module: zoo.imported_modules(module) - {module} for module in modules}


def part_of(module: str) -> str:
    """``custom_components.synthetic.ct`` -> ``synthetic``; the package's own ``__init__`` -> ``""``."""
    return module.split(".")[1] if "." in module else ""


def layer_of(part: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if part in layer)


def test_every_module_is_in_a_layer():
    parts = {part_of(m) for m in import_graph()}
    listed = {p for layer in LAYERS for p in layer}
    assert parts <= listed, f"put {sorted(parts - listed)} into LAYERS of {__file__}"
    assert len(listed) == sum(len(layer) for layer in LAYERS), "a part is listed in two layers"


def test_no_module_imports_from_a_layer_above_or_from_a_peer():
    wrong = []
    for module, targets in import_graph().items():
        source = part_of(module)
        for target in sorted(targets):
            part = part_of(target)
            if part == source:
                continue
            if layer_of(part) > layer_of(source):
                wrong.append(f"{module} imports {target}, from a layer above it")
            elif layer_of(part) == layer_of(source):
                wrong.append(f"{module} imports {target}, a peer in its own layer")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    """No module reaches itself through its imports. A package's ``__init__`` importing its own modules does not
    count as the reverse of a module importing a sibling (``a.b`` importing ``a.c`` is not an import of ``a``)."""
    graph = import_graph()
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
