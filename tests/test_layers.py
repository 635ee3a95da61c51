"""The package's layers: no module imports from a layer above its own.

    runtime  errors.py, ui.py, runtime/ (cache folder and entries, files, process group)
    layers   layers.py (the plain MLX layers a platform may swap)
    accel    accel/ (what makes MLX fast on a platform)
    data     data/
    models   models/
    train    train/
    methods  methods/
    jobs     specialize.py, costs.py, stats.py, study/, plan/, training.py, bench.py, the package's __init__.py
    mlxspec  mlxspec/ (the command line)

A lower layer that imports a higher one ties, say, the corpus readers to the trainer: it
cannot be tested, reused or read alone (docs/architecture.md). Read from the source with
`ast`, so an import inside a function counts too. data/ uses accel through the package's
own names, never its files; models/ does not use it at all (accel.prepare swaps their
layers from outside).
"""

import ast
from pathlib import Path

import pytest

import mlx_specialize

PACKAGE = Path(mlx_specialize.__file__).parent
CLI = PACKAGE.parent / "mlxspec"
LAYERS = ["runtime", "layers", "accel", "data", "models", "train", "methods", "jobs", "mlxspec"]


def layer_of(module: str) -> str:
    """The layer of a dotted module name inside the package (`mlx_specialize.data.corpus`)."""
    parts = module.split(".")
    if parts[0] == "mlxspec":
        return "mlxspec"
    head = parts[1] if len(parts) > 1 else "__init__"
    if head in ("errors", "ui", "runtime"):
        return "runtime"
    if head in ("layers", "accel", "data", "models", "train", "methods"):
        return head
    return "jobs"


def module_name(path: Path) -> str:
    root = CLI.parent if path.is_relative_to(CLI) else PACKAGE.parent
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import of the package's own modules in `path`."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from .. import ui` imports the module mlx_specialize.ui, not the package
            targets = [f"{target}.{a.name}" for a in node.names] if not node.module else [target]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] in ("mlx_specialize", "mlxspec"):
                found.append((node.lineno, target))
    return found


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py")) + sorted(CLI.rglob("*.py"))


def test_every_module_has_a_layer():
    assert {layer_of(module_name(p)) for p in sources()} <= set(LAYERS)


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_no_module_imports_from_a_layer_above_its_own(path):
    own = LAYERS.index(layer_of(module_name(path)))
    upward = [f"line {line}: {target} ({layer_of(target)})" for line, target in imports_of(path)
              if LAYERS.index(layer_of(target)) > own]
    assert not upward, f"{module_name(path)} ({LAYERS[own]}) imports upward: {upward}"


def test_the_reader_sees_relative_and_absolute_imports(tmp_path):
    """The checker itself: a relative import two levels up, and an import inside a function."""
    data = PACKAGE / "data"
    probe = data / "corpus.py"
    found = dict((t, line) for line, t in imports_of(probe))
    assert "mlx_specialize.errors" in found
    assert layer_of("mlx_specialize.train.trainer") == "train" and layer_of("mlx_specialize.runtime.cache") == "runtime"
    assert layer_of("mlx_specialize.accel.native") == "accel" and layer_of("mlx_specialize") == "jobs"


@pytest.mark.parametrize("path", [p for p in sources() if layer_of(module_name(p)) in ("data", "models")],
                         ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_data_and_models_see_accel_only_through_its_package(path):
    """models/ stays plain MLX (accel.prepare swaps its layers from outside); data/ uses
    the CPU streams through `mlx_specialize.accel`'s names, never its files."""
    used = [(line, t) for line, t in imports_of(path) if t == "mlx_specialize.accel" or t.startswith("mlx_specialize.accel.")]
    if layer_of(module_name(path)) == "models":
        assert not used, f"{module_name(path)} uses accel: {used}"
    inside = [f"line {line}: {t}" for line, t in used if t != "mlx_specialize.accel"]
    assert not inside, f"{module_name(path)} reaches into accel's files: {inside}"
