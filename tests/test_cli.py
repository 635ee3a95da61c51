"""The `mlxspec` command line: the main job end to end, and bad input as one clear line."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from mlxspec.main import app
from helpers import GENERIC

MLXSPEC = [shutil.which("mlxspec")] if shutil.which("mlxspec") else [sys.executable, "-m", "mlxspec.main"]
runner = CliRunner()


def run_cli(*args, env=None, cwd=None):
    return subprocess.run([*MLXSPEC, *map(str, args)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def test_version_names_the_installed_distribution_and_mlx():
    from importlib.metadata import version

    import mlx.core as mx

    expected = f"mlxspec {version('mlx-specialize')} (MLX {mx.__version__})"
    for prog in (MLXSPEC, [sys.executable, "-m", "mlxspec"]):
        done = subprocess.run([*prog, "--version"], capture_output=True, text=True, timeout=120)
        assert (done.returncode, done.stdout.strip(), done.stderr) == (0, expected, ""), prog


def test_specialize_end_to_end_then_reuses_the_pretrained_model(tmp_path):
    common = ["specialize", "--domain", "python-docs", "--preset", "tiny", "--vocab-size", "512",
              "--pretrain-tokens", 60 * 1024, "--finetune-tokens", 20 * 1024, "--cache-dir", tmp_path / "cache", "--json"]
    first = run_cli(*common, "--out", tmp_path / "run1")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout.strip().splitlines()[-1])
    for key in ("domain", "method", "ppl_before", "ppl_after", "params", "gen_tok_s", "bpb_before", "bpb_after"):
        assert key in report
    assert report["method"] == "finetune" and report["domain"] == "python-docs"
    assert report["ppl_after"] < report["ppl_before"]
    assert report["gen_tok_s"] > 0 and report["params"] > 0
    for phase in ("pretrain", "finetune"):
        assert report["phases"][phase]["tokens"] > 0
        assert report["phases"][phase]["seconds"] > 0 and report["phases"][phase]["flops"] > 0
    assert report["phases"]["pretrain"]["cached"] is False
    assert (tmp_path / "run1" / "model.safetensors").exists() and (tmp_path / "run1" / "report.json").exists()

    second = run_cli(*common, "--out", tmp_path / "run2", "--domain-tokens", 5000)
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout.strip().splitlines()[-1])
    assert again["phases"]["pretrain"]["cached"] is True
    assert again["phases"]["pretrain"]["tokens"] == report["phases"]["pretrain"]["tokens"]
    assert again["phases"]["finetune"]["domain_tokens"] == 5000
    assert again["ppl_before"] == pytest.approx(report["ppl_before"])

    # the same run's report as text: the cost line splits shared and per-domain FLOPs, as the JSON does
    text = run_cli(*[a for a in common if a != "--json"], "--out", tmp_path / "run1")
    assert text.returncode == 0, text.stderr
    costs = report["costs"]
    assert (f"cost: shared {costs['shared']['flops']:.2e} FLOPs" in text.stdout
            and f"per domain {costs['per_domain']['flops']:.2e} FLOPs" in text.stdout)
    assert costs["per_domain"]["flops"] == pytest.approx(report["phases"]["finetune"]["flops"])

    gen = run_cli("generate", tmp_path / "run1", "--prompt", "The ", "--max-tokens", 10, "--temperature", 0)
    assert gen.returncode == 0 and gen.stdout.startswith("The ")
    greedy = run_cli("generate", tmp_path / "run1", "--prompt", "The ", "--max-tokens", 10, "--temp", 0)
    assert greedy.returncode == 0 and greedy.stdout == gen.stdout  # mlx-lm's spelling, the same greedy text


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    for command in ("doctor", "presets", "tokenizer", "pretrain", "finetune", "eval", "generate", "specialize",
                    "bench", "export", "study"):
        assert command in result.stdout


def test_doctor_and_presets_report_json():
    doctor = json.loads(runner.invoke(app, ["doctor", "--json"]).stdout)
    assert doctor["device"] in ("CPU", "Metal GPU", "CUDA GPU") and doctor["matmul_gflops_f32"] > 0
    assert doctor["dtype"] == "float32"
    assert doctor["cpu_fast_math"].split()[0] in ("on", "off")
    assert doctor["cpu_kernels"].split()[0] in ("on", "off") and "(" in doctor["cpu_kernels"]  # with its reason
    assert doctor["bf16_training"].split()[0] in ("available", "off")
    for key in ("cpu", "blas", "blas_path", "matmul_gflops_f32", "reference_blas_gflops_f32", "blas_speedup",
                "slow_paths"):
        assert key in doctor
    presets = json.loads(runner.invoke(app, ["presets", "--json"]).stdout)["presets"]
    assert {"tiny", "small", "medium", "paper-slm", "paper-llm"} <= {p["name"] for p in presets}


@pytest.mark.skipif(sys.platform != "linux", reason="the BLAS loader acts on Linux only")
def test_training_warns_first_when_it_would_run_on_the_reference_blas(tmp_path, tiny_model_dir):
    args = ["finetune", tiny_model_dir, tmp_path / "ft", "--domain-tokens", 4000, "--tokens", 2048,
            "--cache-dir", tmp_path / "cache", "--json"]
    slow = run_cli(*args, env={"MLXSPEC_BLAS": "off"})
    assert slow.returncode == 0, slow.stderr
    first = slow.stderr.strip().splitlines()[0]
    assert first.startswith("warning: MLX is using the reference BLAS") and "slower" in first
    assert "pip install" in first  # the command that fixes it, brackets and all
    doctor = json.loads(run_cli("doctor", "--json", env={"MLXSPEC_BLAS": "off"}).stdout)
    assert doctor["blas"] == "none" and "reference BLAS" in doctor["slow_paths"][0]
    env = {k: v for k, v in os.environ.items() if k != "MLXSPEC_BLAS"}
    fast = subprocess.run([*MLXSPEC, *map(str, args[:2]), str(tmp_path / "ft2"), *map(str, args[3:])],
                          capture_output=True, text=True, timeout=600, env=env)
    assert fast.returncode == 0 and "reference BLAS" not in fast.stderr, fast.stderr


def _bad_inputs(tmp_path, model_dir, other_tokenizer):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "binary.jsonl").write_bytes(bytes(range(256)) * 40)
    foreign = tmp_path / "foreign"
    shutil.copytree(model_dir, foreign)
    other_tokenizer.save(foreign)
    truncated = tmp_path / "truncated"
    shutil.copytree(model_dir, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    base = ["specialize", "--base", model_dir, "--cache-dir", tmp_path / "cache", "--out", tmp_path / "out"]
    return {
        "missing path": (["specialize", "--domain", tmp_path / "nope.jsonl"], "unknown corpus"),
        "unknown domain": (["specialize", "--domain", "klingon-poetry"], "unknown corpus"),
        "empty corpus": ([*base, "--domain", tmp_path / "empty.jsonl"], "no documents"),
        "binary corpus": ([*base, "--domain", tmp_path / "binary.jsonl"], "binary"),
        "unknown preset": (["specialize", "--preset", "gigantic"], "--preset: 'gigantic' is not one of"),
        "unknown method": (["specialize", "--method", "magic"], "--method: 'magic' is not one of finetune, nopt, llm, "
                                                               "llm-lora, distill, is, mix, pn, soup, auto"),
        "another tokenizer": ([*base[:2], foreign, *base[3:]], "another tokenizer"),
        "truncated weights": (["eval", truncated, "--cache-dir", tmp_path / "cache"], "corrupt or truncated"),
        "missing model": (["eval", tmp_path / "no-model"], "no model"),
        "unknown precision": (["pretrain", tmp_path / "out", "--precision", "fp8"], "--precision: 'fp8' is not one of"),
        **({} if not _bf16_needs_mkl() else {  # refused before any work (builds the extension first)
            "bf16 without MKL": (["finetune", model_dir, tmp_path / "out", "--precision", "bf16"],
                                 "pip install 'mlx-specialize[bf16]'")}),  # brackets printed as text
    }


def _bf16_needs_mkl() -> bool:
    """Whether bf16 training is refused here for want of MKL: on a Linux CPU device whose
    BLAS is not MKL (a GPU trains in bf16 with MLX's own matmul)."""
    import mlx.core as mx

    from mlx_specialize.accel import bf16

    on_linux_cpu = mx.default_device().type == mx.cpu and sys.platform == "linux"
    return on_linux_cpu and not (bf16._emulate() or bf16._has_bf16_gemm())


def _message_lines(stderr: str) -> list[str]:
    """stderr's non-empty lines, less the slow-path warnings that training commands print
    first on a machine without the fast BLAS or C++ kernels (none where both load)."""
    from mlx_specialize.accel import slow_paths

    machine = {f"warning: {line}" for line in slow_paths()}
    return [line for line in stderr.splitlines() if line.strip() and line not in machine]


def test_bad_input_gives_one_error_line_and_nonzero_exit(tmp_path, tiny_model_dir):
    from mlx_specialize import train_tokenizer, load_corpus

    other = train_tokenizer(load_corpus("go-code").documents("valid"), 400)
    for name, (args, message) in _bad_inputs(tmp_path, tiny_model_dir, other).items():
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 2, (name, result.output)
        lines = _message_lines(result.stderr)  # exactly one line: the error
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], (name, result.stderr)
        assert "Traceback" not in result.output + result.stderr, name
    assert not (tmp_path / "out").exists()  # nothing was written by the failed runs


def test_bad_input_from_a_real_process_has_no_traceback(tmp_path):
    (tmp_path / "binary.txt").write_bytes(b"\x00\x01\x02" * 1000)
    result = run_cli("specialize", "--domain", tmp_path / "binary.txt", "--generic", GENERIC)
    assert result.returncode == 2, result.stderr
    lines = _message_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error:") and "binary" in lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_a_hub_name_that_cannot_be_fetched_is_one_error_line(tmp_path):
    result = run_cli("bench", "no-such-org/no-such-model", env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)})
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: no model folder at no-such-org/no-such-model")
    assert len(result.stderr.strip().splitlines()) == 1
    # a mistyped run folder under a folder that is here: local, never asked of the hub
    (tmp_path / "runs").mkdir()
    typo = run_cli("bench", "runs/typo", cwd=tmp_path, env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)})
    assert typo.returncode == 2 and typo.stderr.strip() == ("error: no model folder at runs/typo (runs/ has no "
                                                            "typo; a hub name is fetched from a folder without a "
                                                            "runs/ in it)")


def test_an_existing_run_is_never_overwritten(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    args = ["finetune", str(tiny_model_dir), str(out), "--tokens", "2048", "--batch-size", "8",
            "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert runner.invoke(app, args).exit_code == 0
    weights = (out / "model.safetensors").read_bytes()
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--overwrite" in result.stderr
    assert (out / "model.safetensors").read_bytes() == weights
