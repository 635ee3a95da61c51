"""The command line's options are declared once (mlxspec/options.py): an option that several
commands take is the same option on each, and reaches the library under one name."""

import re

import pytest
import typer.main
from typer.testing import CliRunner

import mlxspec.main
from mlxspec.main import app
from mlxspec.options import TRAINING

GROUP = typer.main.get_command(app)
# The commands that train, and the training options each takes.
TRAINS = {"pretrain": list(TRAINING), "finetune": [n for n in TRAINING if n != "context"], "specialize": ["lr"]}


def command(path: str):
    found = GROUP
    for part in path.split():
        found = found.commands[part]
    return found


def params(path: str) -> dict:
    return {p.name: p for p in command(path).params}


def every_command(group=GROUP, prefix=""):
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from every_command(cmd, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}"


@pytest.mark.parametrize("name", list(TRAINING))
def test_a_training_option_is_the_same_on_every_command_that_takes_it(name):
    """Same flag, type, range, default (none: the library's) and check; the same help but
    for the default it states (the preset's, the base's), and specialize's scope (its
    fine-tuning)."""
    declared = {cmd: params(cmd)[name] for cmd, names in TRAINS.items() if name in names}
    assert len(declared) >= 2 or name == "context"
    flag = f"--{name.replace('_', '-')}"
    shapes = set()
    for cmd, param in declared.items():
        assert param.opts == [flag] and param.default is None and not param.required, (cmd, param.opts)
        shapes.add((param.type_descriptor.annotation, param.min, param.max, param.multiple, param.is_flag,
                    param.callback is None))
        meaning = re.sub(r"^Fine-tuning: (.)", lambda m: m.group(1).upper(), param.help)
        assert re.fullmatch(re.escape(TRAINING[name].help) + r"( \[default: [^\]]+\])?\.", meaning), (cmd, param.help)
    assert len(shapes) == 1, shapes


def test_every_command_ends_with_its_output_options():
    """--json on every command, --quiet on those that print progress, last; each command's
    own options before them, every one of them with help."""
    for path in every_command():
        names = [p.name for p in command(path).params]
        last = ["json_out"] if path in ("doctor", "presets", "generate") else ["json_out", "quiet"]
        assert names[-len(last):] == last and len(set(names)) == len(names), (path, names)
        assert all(p.help for p in command(path).params if p.param_type_name == "option"), path


def test_the_training_options_given_reach_the_library_by_their_trainer_names(monkeypatch, tmp_path):
    """Only those given, as TrainConfig names them, with the command's own arguments."""
    calls = {}
    main = mlxspec.main
    monkeypatch.setattr(main, "finetune_run", lambda *args, **kw: calls.setdefault("finetune", (args, kw)) and {})
    monkeypatch.setattr(main, "pretrain_run", lambda *args, **kw: calls.setdefault("pretrain", (args, kw)) and {})
    monkeypatch.setattr(mlxspec.main.ms, "specialize", lambda *args, **kw: calls.setdefault("specialize", (args, kw)))
    monkeypatch.setattr(mlxspec.main, "specialize_view", lambda report: [])
    runner = CliRunner()
    for args in (["finetune", "m", str(tmp_path / "ft"), "--lr", "0.01", "--warmup", "3", "--precision", "bf16"],
                 ["pretrain", str(tmp_path / "pre"), "--arch", "pn", "--context", "64", "--patience", "0"],
                 ["specialize", "--lr", "2e-4", "--seed", "5"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
    args, kw = calls["finetune"]
    assert kw == {"lr": 0.01, "warmup": 3, "precision": "bf16"} and args[:3] == ("m", "python-docs", tmp_path / "ft")
    args, kw = calls["pretrain"]
    assert {k: kw[k] for k in ("context", "patience")} == {"context": 64, "patience": 0} and "lr" not in kw
    assert args[:2] == (tmp_path / "pre", "pn")
    args, _ = calls["specialize"]
    assert 2e-4 in args and 5 in args
