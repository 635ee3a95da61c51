"""A study's spec (a TOML file) and the grid of cells it names.

The format, by example: `EXAMPLE` below (`mlxspec study example` prints it).

Without [[grid]] the study is the one grid of the top-level axes (with `seeds_at`);
with it, the union of its grids, run in their order (a cell two grids name runs once).
A grid's `options` table adds to (or replaces) the others for its cells: a learning rate
tried on the valid splits, say, whose cells match the main grid's once that rate is chosen.

A budget is the generic pre-training FLOPs that many tokens of the preset cost: methods
that pre-train the preset (SLM, SLM-is, SLM-mix, SLM-pn, soup, SLM-d's student) train on
those tokens; the LLM (and SLM-d's teacher) on fewer, at the same FLOPs
(`methods.llm.equal_flops_tokens`). SLM-nopt has no generic pre-training: one budget's
worth of its cells is run, not one per budget.

A cell is one `specialize` call: method x budget x domain-set size x target x seed. Its
key hashes what decides its result (the study's version, the method, its recipe's version
(`Method.recipe`) and its options, the preset, the budget, the domain-set size, the seed
and the bytes of the target and the generic corpora), never a path, so a results file written on one machine is read on
another and no finished cell is run again.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ..data.corpus import load_corpus
from ..data.tokenizer import TOKENIZER_SAMPLES
from ..errors import SpecializeError
from ..methods import METHODS, REGISTRY
from ..models.presets import PRESETS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

EXAMPLE = """\
name = "minipile-standard"           # what the results file says it holds
version = 1                          # bump when the protocol changes: new cells
data = "../../../shared/minipile"    # optional: corpus names below are DATA/NAME.jsonl.gz
preset = "small"
generic = ["c-headers", "go-code"]   # corpus specs (or names under `data`), one mix
targets = ["fortunes", "licenses"]   # each a corpus spec (or name)
methods = ["finetune", "is", "mix"]
pretrain_tokens = [500_000, 2_500_000, 12_500_000]  # budgets, in tokens of the preset
domain_tokens = [100_000, 1_000_000, "all"]
seeds = [0]
results = "results.jsonl"            # beside the spec unless absolute [SPEC-results.jsonl]
# cache = "cache"                    # the cache folder [--cache-dir, else mlxspec's]
# tokenizer_sample = "leading"       # the tokenizer's text: the mix's first characters, as the
                                     # standard study's [uniform: spread over all of it]

[seeds_at]                           # budgets run with other seeds
12500000 = [0, 1, 2]

[options]                            # `specialize`'s keyword arguments, every cell
embedder = "hashed"

[method.mix]                         # and one method's own
k = 4

[floors]                             # bits per byte of a classical coder, for the report
fortunes = 2.44

[[grid]]                             # optional: run these sub-grids, in this order, each
domain_tokens = [100_000]            # taking the axes it does not name from the top
[[grid]]                             # level (methods, pretrain_tokens, domain_tokens,
pretrain_tokens = [12_500_000]       # seeds; and `options`, added to the others)
domain_tokens = [1_000_000, "all"]
"""

KEYS = {"name", "version", "data", "preset", "generic", "targets", "methods", "pretrain_tokens", "domain_tokens",
        "seeds", "seeds_at", "results", "options", "method", "floors", "cache", "grid", "tokenizer_sample"}
TYPES = [("name", str, "a string"), ("version", int, "an integer"), ("data", str, "a folder's path"),
         ("tokenizer_sample", str, "one of " + ", ".join(TOKENIZER_SAMPLES)),
         ("preset", str, "a preset's name"), ("results", str, "a file's path"), ("cache", str, "a folder's path"),
         ("generic", (str, list), "a corpus or a list of them"), ("seeds_at", dict, "a table ([seeds_at])"),
         ("options", dict, "a table ([options])"),
         ("method", dict, "a table of tables ([method.NAME]; the methods to run are `methods = [...]`)"),
         ("floors", dict, "a table ([floors])")]
AXES = ("methods", "pretrain_tokens", "domain_tokens", "seeds", "options")  # what a [[grid]] may set
# what `specialize` takes from a spec's [options] and [method.NAME] (the rest is the grid's)
CELL_OPTIONS = {"vocab_size", "lr", "k", "embedder", "window", "sampler", "metric", "select", "expert_init", "basis",
                "distill_temperature", "distill_alpha", "finetune_tokens", "soup_support"}


@dataclass(frozen=True)
class Cell:
    """One `specialize` call of the grid; `domain_tokens` None is the whole train split."""

    method: str
    budget: int  # generic pre-training budget, in tokens of the preset
    domain_tokens: int | None
    target: str  # the target's name (the corpus' own)
    seed: int
    options: tuple = ()  # sorted (name, value) pairs for `specialize`

    @property
    def label(self) -> str:
        size = "all" if self.domain_tokens is None else f"{self.domain_tokens:,}"
        return f"{self.method} budget {self.budget:,} domain {size} {self.target} seed {self.seed}"

    def variant(self, common: dict) -> str:
        """The options that tell the cell from the study's `common` ones, as the report names
        its variants ("finetune_tokens=12288000"), or ""."""
        return ", ".join(f"{name}={value}" for name, value in self.options if common.get(name, object()) != value)

    def label_beside(self, common: dict) -> str:
        """The label, with its variant (`variant`) beside it."""
        extra = self.variant(common)
        return self.label + (f" ({extra})" if extra else "")


@dataclass
class Study:
    """A parsed spec: the grid's axes, the options, where its results go."""

    path: Path
    name: str
    version: int
    preset: str
    generic: str  # one corpus spec (a comma-joined mix)
    targets: dict[str, str]  # name -> corpus spec
    methods: list[str]
    budgets: list[int]
    domain_tokens: list[int | None]
    seeds: list[int]
    seeds_at: dict[int, list[int]]
    results: Path
    options: dict = field(default_factory=dict)
    method_options: dict = field(default_factory=dict)
    floors: dict = field(default_factory=dict)
    cache: Path | None = None
    tokenizer_sample: str = "uniform"  # how the generic tokenizer's text is drawn (data.tokenizer)
    grids: list[dict] = field(default_factory=list)  # [[grid]]: sub-grids' axes, in running order

    def cells(self) -> list[Cell]:
        """The grid(s), in the order they run; within one: budgets from the smallest,
        then seeds, methods (each method's generic pre-training is made once, then serves
        all its cells), domain-set sizes and targets. SLM-nopt, which pre-trains nothing,
        is one cell whatever the budget: recorded at the study's smallest, it takes the
        domain sets and seeds of every grid that names it. A cell two grids name appears
        once."""
        cells, smallest = [], min(self.budgets)
        for grid in self.grids or [{}]:
            methods = grid.get("methods", self.methods)
            sizes = grid.get("domain_tokens", self.domain_tokens)
            for budget in sorted(grid.get("pretrain_tokens", self.budgets)):
                for seed in grid.get("seeds", self.seeds_at.get(budget, self.seeds)):
                    for method in methods:
                        at = smallest if method == "nopt" else budget
                        options = tuple(sorted({**self.options, **self.method_options.get(method, {}),
                                                **grid.get("options", {})}.items()))
                        for size in sizes:
                            for target in self.targets:
                                cell = Cell(method, at, size, target, seed, options)
                                if cell not in cells:
                                    cells.append(cell)
        return cells

    @cached_property
    def fingerprints(self) -> dict:
        """The bytes of the corpora (generic, each target), read once per study run."""
        return {"generic": load_corpus(self.generic).fingerprint(),
                **{name: load_corpus(spec).fingerprint() for name, spec in self.targets.items()}}

    def key(self, cell: Cell) -> str:
        """What decides a cell's result, hashed (see the module docstring)."""
        prints, recipe = self.fingerprints, REGISTRY[cell.method].recipe
        parts = {"version": self.version, "method": cell.method, "preset": self.preset, "options": list(cell.options),
                 "budget": 0 if cell.method == "nopt" else cell.budget, "domain_tokens": cell.domain_tokens,
                 "seed": cell.seed, "target": prints[cell.target],
                 "generic": prints["generic"],
                 # a method's later recipe is measured again (its first's keys stay as they were);
                 # so is a tokenizer drawn otherwise than the first way (`leading`)
                 **({"recipe": recipe} if recipe > 1 else {}),
                 **({"tokenizer_sample": self.tokenizer_sample} if self.tokenizer_sample != "leading" else {})}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def _fail(path: Path, message: str):
    raise SpecializeError(f"{path}: {message}")


def _int_list(path: Path, spec: dict, key: str, allow_all: bool = False) -> list:
    values = spec.get(key)
    if not isinstance(values, list) or not values:
        _fail(path, f"`{key}` must be a non-empty list")
    for v in values:
        ok = (isinstance(v, int) and not isinstance(v, bool) and v >= (0 if key == "seeds" else 1)) or \
            (allow_all and v == "all")
        if not ok:
            _fail(path, f"`{key}` holds {v!r}: " + ("a positive number of tokens or \"all\"" if allow_all else
                                                    "a non-negative integer" if key == "seeds" else
                                                    "a positive integer"))
    if len(set(map(str, values))) != len(values):
        _fail(path, f"`{key}` repeats a value")
    return values


def _read(path: Path) -> dict:
    if not path.is_file():
        raise SpecializeError(f"no study spec at {path}")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        _fail(path, f"not valid TOML ({err})")


def spec_floors(path: str | Path) -> dict:
    """A spec's [floors] alone (for a report), its corpora not looked at."""
    floors = _read(Path(path)).get("floors", {})
    if not isinstance(floors, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                                               for v in floors.values()):
        _fail(Path(path), "`floors` must be a table of numbers of 0 or more (bits per byte per target)")
    return floors


def load_study(path: str | Path, data: str | Path | None = None, corpora: bool = True) -> Study:
    """Read and check a study spec; every problem is one error naming the file and the
    key, before any work. `data` replaces the spec's `data` folder; `corpora` False looks
    for no corpus (a report, which names targets and reads results only: no cell's key)."""
    path = Path(path)
    spec = _read(path)
    unknown = sorted(set(spec) - KEYS)
    if unknown:
        _fail(path, f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                    f"(known: {', '.join(sorted(KEYS))})")
    # types first: `method = "pn"`, meant as `methods`, is told apart from a missing `methods`
    for key, kind, what in TYPES:
        if key in spec and (not isinstance(spec[key], kind) or isinstance(spec[key], bool)):
            _fail(path, f"`{key}` must be {what}, not {spec[key]!r}")
    for key in ("name", "generic", "targets", "methods", "pretrain_tokens", "domain_tokens"):
        if key not in spec:
            _fail(path, f"`{key}` is missing")
    here = path.resolve().parent
    folder = Path(data).resolve() if data is not None else ((here / spec["data"]).resolve() if "data" in spec else None)
    folder = folder if corpora else None
    if folder is not None and not folder.is_dir():
        _fail(path, f"the data folder {folder} does not exist" + ("" if data else " (pass --data)"))

    def corpus(name) -> str:
        if not isinstance(name, str) or not name:
            _fail(path, f"a corpus must be a spec or a name, not {name!r}")
        if folder is not None and (folder / f"{name}.jsonl.gz").is_file():
            return str(folder / f"{name}.jsonl.gz")
        if folder is not None and not any(c in name for c in "/:,.") and not Path(name).exists():
            # never a bundled corpus of the same name in its place
            _fail(path, f"no {name}.jsonl.gz in the data folder {folder}")
        return name

    generic = spec["generic"] if isinstance(spec["generic"], list) else [spec["generic"]]
    targets = spec["targets"]
    if not isinstance(targets, list) or not targets:
        _fail(path, "`targets` must be a non-empty list of corpus names or specs")
    targets = {Path(str(t)).name.split(".")[0]: corpus(t) for t in targets}
    methods = spec["methods"]
    if not isinstance(methods, list) or not methods:
        _fail(path, "`methods` must be a non-empty list")
    for m in methods:
        if m not in METHODS:
            _fail(path, f"unknown method {m!r} in `methods` (choose from {', '.join(METHODS)})")
    preset = spec.get("preset", "small")
    if preset not in PRESETS:
        _fail(path, f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    budgets = _int_list(path, spec, "pretrain_tokens")
    sizes = [None if v == "all" else v for v in _int_list(path, spec, "domain_tokens", allow_all=True)]
    seeds = _int_list(path, spec, "seeds") if "seeds" in spec else [0]
    seeds_at = {}
    for budget, values in spec.get("seeds_at", {}).items():
        if not budget.isdigit() or int(budget) not in budgets:
            _fail(path, f"`seeds_at` names {budget}, which is not one of `pretrain_tokens`")
        seeds_at[int(budget)] = _int_list(path, {"seeds": values}, "seeds")
    options = spec.get("options", {})
    method_options = spec.get("method", {})
    for name, table in method_options.items():
        if not isinstance(table, dict):
            _fail(path, f"`method.{name}` must be a table ([method.{name}]), not {table!r}")
    for where, table in [("options", options)] + [(f"method.{m}", t) for m, t in method_options.items()]:
        if not isinstance(table, dict):
            _fail(path, f"`{where}` must be a table")
        bad = sorted(set(table) - CELL_OPTIONS)
        if bad:
            _fail(path, f"`{where}` takes {', '.join(sorted(CELL_OPTIONS))}, not {', '.join(bad)}")
    for m in method_options:
        if m not in methods:
            _fail(path, f"`method.{m}` is not one of the study's methods")
    grids = spec.get("grid", [])
    if not isinstance(grids, list) or not all(isinstance(g, dict) for g in grids):
        _fail(path, "`grid` must be an array of tables ([[grid]])")
    for i, grid in enumerate(grids, 1):
        bad = sorted(set(grid) - set(AXES))
        if bad:
            _fail(path, f"[[grid]] {i} sets {', '.join(bad)}; a grid sets only {', '.join(AXES)}")
        if "methods" in grid:
            unknown = [m for m in grid["methods"] if m not in methods] if isinstance(grid["methods"], list) else [1]
            if unknown or not grid["methods"]:
                _fail(path, f"[[grid]] {i}: `methods` must list some of the study's methods")
        if "pretrain_tokens" in grid:
            extra = [b for b in _int_list(path, grid, "pretrain_tokens") if b not in budgets]
            if extra:
                _fail(path, f"[[grid]] {i}: budget {extra[0]} is not one of the top-level `pretrain_tokens`")
        if "domain_tokens" in grid:
            grid["domain_tokens"] = [None if v == "all" else v for v in _int_list(path, grid, "domain_tokens", True)]
        if "seeds" in grid:
            _int_list(path, grid, "seeds")
        if not isinstance(grid.get("options", {}), dict) or set(grid.get("options", {})) - CELL_OPTIONS:
            _fail(path, f"[[grid]] {i}: `options` takes {', '.join(sorted(CELL_OPTIONS))}")
    # the default results file: SPEC-results.jsonl beside the spec (a renamed spec starts a new file;
    # its finished cells are still found where a spec names the old one: keys name no path)
    results = Path(spec.get("results", f"{path.stem}-results.jsonl"))
    cache = spec.get("cache")
    sample = spec.get("tokenizer_sample", "uniform")
    if sample not in TOKENIZER_SAMPLES:
        _fail(path, f"`tokenizer_sample` is {sample!r}: choose {' or '.join(TOKENIZER_SAMPLES)}")
    return Study(path=path, name=str(spec["name"]), version=int(spec.get("version", 1)), preset=preset,
                 generic=",".join(corpus(g) for g in generic), targets=targets, methods=list(methods),
                 budgets=budgets, domain_tokens=sizes, seeds=seeds, seeds_at=seeds_at,
                 results=results if results.is_absolute() else here / results, options=options,
                 method_options=method_options, floors=spec_floors(path),
                 cache=None if cache is None else (here / cache), grids=grids, tokenizer_sample=sample)
