"""What a non-editable install ships: every file the code reads at run time.

An editable install reads the checkout, so a file missing from the wheel goes unseen
(`native/common.h` once stopped `specialize` on a fresh machine). This test reads the
rules that decide the wheel's contents (pyproject.toml's package-data) and checks every
non-Python file of the packages against them; `.ci/run` also installs the built wheel
and runs `mlxspec` from outside the checkout.
"""

import fnmatch
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")


def _package_data() -> dict[str, list[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return config["tool"]["setuptools"]["package-data"]


def _shipped(path: Path, rules: dict[str, list[str]]) -> bool:
    """Whether setuptools puts `path` (a non-Python file) into the wheel under `rules`."""
    for package, patterns in rules.items():
        folder = ROOT / package.replace(".", "/")
        if folder in path.parents:
            relative = path.relative_to(folder).as_posix()
            if any(fnmatch.fnmatch(relative, pattern) for pattern in patterns):
                return True
    return False


def test_every_data_file_of_the_packages_is_in_the_wheel():
    rules = _package_data()
    files = [p for top in ("mlx_specialize", "mlxspec") for p in (ROOT / top).rglob("*")
             if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    assert files, "no data files found: is the checkout complete?"
    missing = [str(p.relative_to(ROOT)) for p in files if not _shipped(p, rules)]
    assert missing == [], f"not in the wheel (add to [tool.setuptools.package-data]): {missing}"


def test_the_rules_would_catch_a_missing_header():
    """The check itself: the header rule removed, common.h is reported."""
    rules = {k: [p for p in v if p != "*.h"] for k, v in _package_data().items()}
    assert not _shipped(ROOT / "mlx_specialize" / "accel" / "native" / "common.h", rules)
    assert _shipped(ROOT / "mlx_specialize" / "accel" / "native" / "common.h", _package_data())


def test_every_source_the_native_build_reads_exists():
    from mlx_specialize.accel import native

    for name in native.SOURCES:
        assert (native.SOURCE_DIR / name).is_file(), name


def test_the_wheel_ships_two_top_level_packages_named_after_the_project():
    """`mlx_specialize` (the library) and `mlxspec` (the command line), nothing with a
    generic name: a top-level `cli` package once went into site-packages, where it would
    overwrite (or be overwritten by) any other distribution's `cli`."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    tops = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    shipped = {name for name in tops if any(fnmatch.fnmatch(name, pattern) for pattern in include)}
    assert shipped == {"mlx_specialize", "mlxspec"}, shipped
    assert config["project"]["scripts"] == {"mlxspec": "mlxspec.main:main"}
