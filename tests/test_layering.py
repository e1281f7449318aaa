"""The dependency line of docs/architecture.md, read off the source: ``zoo`` <- ``datamodules`` <-
``lightning_modules``, ``zoo`` <- ``deploy``, no import circle, and a torch-free runtime and service.

Imports are read with ``ast`` (module level and inside functions, which run too), except those under
``if TYPE_CHECKING:``, which never run.
"""

import ast
import dataclasses
import importlib
from pathlib import Path

import pytest

from zoo.common.tasks import TASKS, Task

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("zoo", "datamodules", "lightning_modules", "deploy")
# What each package may import from the others.
ALLOWED = {
    "zoo": set(),
    "datamodules": {"zoo"},
    "deploy": {"zoo"},
    "lightning_modules": {"zoo", "datamodules", "deploy"},  # the CLI is the composition root
}
TORCH_FREE = (
    "deploy.runtime",
    "deploy.sequences",
    "deploy.serving",
    "deploy.service",
    "deploy.open_inference",
    "deploy.signatures",
    # the zoo's torch-free folder, every module of it
    *(".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
      for path in sorted((REPO / "zoo" / "common").rglob("*.py"))),
    # each task's serving module (``deploy.tasks``)
    *sorted({getattr(task, part).rpartition(".")[0] for task in TASKS.values() for part in ("predictor", "api")}),
)
TRAINING_STACK = ("torch", "lightning", "datasets", "torchmetrics", "safetensors")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> tuple[set[str], set[str]]:
    """The modules ``path`` imports: (when it loads, i.e. at module level and not under
    ``TYPE_CHECKING``; anywhere, those for the type checker included)."""
    tree = ast.parse(path.read_text())
    type_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    top_level = {id(node) for node in tree.body} | {
        id(node) for block in tree.body if isinstance(block, ast.Try) for node in ast.walk(block)
    }
    everywhere, module_level = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        else:
            continue
        everywhere |= names
        if id(node) in top_level and id(node) not in type_only:
            module_level |= names
    return module_level, everywhere


SOURCES = {module_name(path): path for package in PACKAGES for path in (REPO / package).rglob("*.py")}
IMPORTS = {name: imports(path) for name, path in SOURCES.items()}


def project_modules(names: set[str]) -> set[str]:
    """The project modules among imported names (``from zoo import text`` names ``zoo.common.text``)."""
    return {name for name in names if name in SOURCES}


def package(name: str) -> str:
    return name.partition(".")[0]


@pytest.mark.parametrize("layer", PACKAGES)
def test_each_package_imports_only_the_layers_below_it(layer):
    wrong = {
        f"{name} imports {imported}"
        for name, (_, everywhere) in IMPORTS.items()
        if package(name) == layer
        for imported in project_modules(everywhere)
        if package(imported) not in ALLOWED[layer] | {layer}
    }
    assert not wrong, sorted(wrong)


def test_the_zoos_torch_free_folder_imports_nothing_else_of_the_zoo():
    """``zoo.common`` is all the runtime and service take from the zoo."""
    wrong = {
        f"{name} imports {imported}"
        for name, (_, everywhere) in IMPORTS.items()
        if name.startswith("zoo.common")
        for imported in project_modules(everywhere)
        if package(imported) == "zoo" and imported.split(".")[:2] != ["zoo", "common"] and imported != "zoo"
    }
    assert not wrong, sorted(wrong)


def test_the_zoo_imports_no_lightning():
    wrong = {
        f"{name} imports {imported}"
        for name, (_, everywhere) in IMPORTS.items()
        if package(name) == "zoo"
        for imported in everywhere
        if package(imported) == "lightning"
    }
    assert not wrong, sorted(wrong)


def test_no_import_circle():
    """Not even one the type checker alone would follow (``TYPE_CHECKING``): a circle is one concept
    split in two, whoever reads it."""
    # A package's __init__ runs before any of its modules: ``import deploy.x`` from another package
    # imports ``deploy`` too (within the package, its __init__ is already running or done).
    graph = {}
    for name, (_, everywhere) in IMPORTS.items():
        edges = project_modules(everywhere) - {name, package(name)}
        graph[name] = edges | {package(e) for e in edges if package(e) in SOURCES and package(e) != package(name)}
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for imported in sorted(graph[name]):
            if state.get(imported) == "open":
                circle = path[path.index(imported) :] + [imported]
                pytest.fail(f"import circle: {' -> '.join(circle)}")
            if imported not in state:
                visit(imported, [*path, imported])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize("root", TORCH_FREE)
def test_the_runtime_and_service_never_import_the_training_stack(root):
    """Everything ``root`` imports when it loads (module-level imports, followed through the project)."""
    seen, todo, external = set(), [root], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        module_level, _ = IMPORTS[name]
        external |= {imported.partition(".")[0] for imported in module_level if imported not in SOURCES}
        todo += project_modules(module_level) | ({package(name)} if package(name) in SOURCES else set())
    assert not external & set(TRAINING_STACK), (root, sorted(external & set(TRAINING_STACK)), sorted(seen))


# The layer of each part a task record names, and the parts the torch-free runtime and service load.
LAYERS = {
    "predict": "zoo",
    "options": "zoo",
    "architecture": "zoo",
    "ensemble": "zoo",
    "lightning_module": "lightning_modules",
    "datamodule": "datamodules",
    "graphs": "deploy",
    "predictor": "deploy",
    "api": "deploy",
    "tensors": "deploy",
    "parity": "deploy",
}
SERVED_WITHOUT_TORCH = ("predict", "options", "predictor", "api", "tensors")


@pytest.mark.parametrize("task", TASKS.values(), ids=lambda task: task.name)
def test_every_part_a_task_names_lives_in_its_layer_and_exists(task):
    for field in dataclasses.fields(Task):
        if field.name in ("name", "usage", "tokenizers"):  # not import paths
            continue
        assert field.name in LAYERS, f"tests/test_layering.py does not say where {field.name!r} lives"
        path = getattr(task, field.name)
        module, _, attribute = path.rpartition(".")
        where = LAYERS[field.name]
        assert package(module) == where, f"{task.name}.{field.name} = {path} is not in {where}"
        assert module in SOURCES and hasattr(importlib.import_module(module), attribute), path
    for part in SERVED_WITHOUT_TORCH:
        assert getattr(task, part).rpartition(".")[0] in TORCH_FREE, f"{task.name}.{part} is not torch-free"
