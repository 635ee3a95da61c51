"""mlx-lm interoperability: models from elsewhere in, exported (and quantized) models out."""

import json

import mlx.core as mx
import numpy as np
import pytest
from typer.testing import CliRunner

import mlx_specialize as ms
from mlxspec.main import app
from mlx_specialize.data.hf_tokenizer import HFTokenizer
from mlx_specialize.models.export import export_model

TEXT = "def read(path):\n    with open(path) as f:  # «ünïcode»\n        return f.read()\n"


def test_a_foreign_model_loads_with_its_own_tokenizer_and_mlx_lms_logits(foreign_model_dir):
    from mlx_lm import load

    ours, tokenizer, config = ms.load_model(foreign_model_dir)
    theirs, their_tokenizer = load(str(foreign_model_dir))
    assert isinstance(tokenizer, HFTokenizer) and tokenizer.bos_id is None
    assert tokenizer.eos_id == their_tokenizer.eos_token_id
    ids = tokenizer.encode(TEXT)
    assert their_tokenizer.encode(TEXT) == ids and tokenizer.decode(ids) == TEXT
    x = mx.array([ids])
    assert ours(x).dtype == mx.bfloat16  # kept as stored
    np.testing.assert_array_equal(np.array(ours(x).astype(mx.float32)), np.array(theirs(x).astype(mx.float32)))


def test_a_foreign_model_generates_what_mlx_lm_generates(foreign_model_dir):
    """Static-cache compiled decoding with grouped-query attention and llama3 RoPE: the
    same greedy ids as mlx-lm's `generate_step` in float32 (in the stored bfloat16 the two
    caches round differently and near-tied argmaxes part; ours then still equals a full
    recompute without cache)."""
    from mlx.utils import tree_map
    from mlx_lm import load
    from mlx_lm.generate import generate_step

    theirs, _ = load(str(foreign_model_dir))
    theirs.update(tree_map(lambda p: p.astype(mx.float32), theirs.parameters()))
    for dtype in ("float32", "bfloat16"):
        ours, tokenizer, _ = ms.load_model(foreign_model_dir, dtype=dtype)
        prompt = tokenizer.encode(TEXT)
        expected = list(ms.generate_tokens(ours, prompt, 24, temperature=0, stop_at_eos=False))
        assert len(set(expected)) > 3
        if dtype == "float32":
            assert [int(t) for t, _ in generate_step(mx.array(prompt), theirs, max_tokens=24)] == expected
        seq = list(prompt)
        for _ in range(24):
            seq.append(int(mx.argmax(ours(mx.array([seq]))[0, -1]).item()))
        assert seq[len(prompt):] == expected


def test_documents_of_a_tokenizer_without_bos_end_with_its_eos(foreign_model_dir, cache_dir):
    _, tokenizer, _ = ms.load_model(foreign_model_dir)
    split = ms.tokenize_split(ms.load_corpus("python-docs"), "valid", tokenizer, cache_dir)
    tokens = np.asarray(split.tokens)
    assert split.bos_id is None and tokens[-1] == tokenizer.eos_id
    assert np.count_nonzero(tokens == tokenizer.eos_id) == split.n_docs


def test_specialize_starts_from_a_foreign_model(foreign_model_dir, cache_dir, tmp_path):
    from mlx_lm import load

    out = tmp_path / "run"
    report = ms.specialize("python-docs", base=str(foreign_model_dir), out_dir=out, domain_tokens=30_000,
                           finetune_tokens=60_000, lr=3e-3, cache_dir=cache_dir)
    assert report["ppl_after"] < 0.7 * report["ppl_before"]
    assert (out / "tokenizer.json").read_bytes() == (foreign_model_dir / "tokenizer.json").read_bytes()
    model, tokenizer, config = ms.load_model(out)
    assert isinstance(tokenizer, HFTokenizer) and config["mlxspec"]["tokenizer_kind"] == "hf"
    assert config["rope_scaling"]["rope_type"] == "llama3" and config["num_key_value_heads"] == 2
    theirs, _ = load(str(out))  # still an mlx-lm model
    x = mx.array([tokenizer.encode(TEXT)])
    np.testing.assert_allclose(np.array(theirs(x)), np.array(model(x)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bits", [None, 4, 8])
def test_export_round_trip_in_mlx_lm(tiny_model_dir, tmp_path, bits):
    from mlx_lm import generate, load
    from mlx_lm.sample_utils import make_sampler

    out = tmp_path / "export"
    summary = export_model(tiny_model_dir, out, bits=bits)
    ours, tokenizer, config = ms.load_model(out)
    theirs, their_tokenizer = load(str(out))
    assert (config.get("quantization") or {}).get("bits") == bits
    x = mx.array([[tokenizer.bos_id, *tokenizer.encode(TEXT)]])
    np.testing.assert_allclose(np.array(theirs(x)), np.array(ours(x)), rtol=1e-4, atol=1e-4)
    prompt = "import os\n"
    expected = ms.generate_text(ours, tokenizer, prompt, max_tokens=12, temperature=0)
    assert generate(theirs, their_tokenizer, prompt, max_tokens=12, sampler=make_sampler(temp=0.0)) == expected
    if bits:
        source, _, _ = ms.load_model(tiny_model_dir)
        float_logits, q_logits = np.array(source(x)), np.array(ours(x))
        assert 0 < np.abs(float_logits - q_logits).max()  # really quantized ...
        assert np.corrcoef(float_logits.ravel(), q_logits.ravel())[0, 1] > (0.99 if bits == 8 else 0.9)  # ... and close
        assert summary["bits_per_weight"] < 16


def test_mlx_lm_lora_trains_an_exported_model(tiny_model_dir, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "export"
    export_model(tiny_model_dir, out)
    data = tmp_path / "data"
    data.mkdir()
    docs = [d for _, d in zip(range(40), ms.load_corpus("python-docs").documents("train"))]
    for name, part in (("train", docs[:32]), ("valid", docs[32:])):
        (data / f"{name}.jsonl").write_text("".join(json.dumps({"text": d[:600]}) + "\n" for d in part))
    cmd = [sys.executable, "-m", "mlx_lm", "lora", "--model", str(out), "--train", "--data", str(data),
           "--iters", "3", "--batch-size", "2", "--num-layers", "1", "--steps-per-report", "1",
           "--adapter-path", str(tmp_path / "adapters")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "adapters" / "adapters.safetensors").is_file()


def test_bench_reports_sane_figures_as_json(tiny_model_dir):
    result = CliRunner().invoke(app, ["bench", str(tiny_model_dir), "-p", "16", "-g", "8", "-n", "2",
                                      "--quantize", "8", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["bandwidth_gb_s"] > 0
    plain, q8 = report["models"]
    assert (plain["variant"], q8["variant"]) == ("float32", "q8")
    for row in (plain, q8):
        assert len(row["trials"]) == 2
        assert all(t["prompt_tps"] > 0 and t["generation_tps"] > 0 and t["ttft_s"] > 0 for t in row["trials"])
        assert row["mean"]["peak_memory_gb"] > 0 and row["bound_tok_s"] > 0 and row["fraction_of_bound"] > 0
        assert row["device_hours_per_billion"] == pytest.approx(1e9 / row["mean"]["generation_tps"] / 3600)
    assert plain["bytes"] == 4 * plain["params"] and q8["bytes"] < plain["bytes"] / 2.5
    assert plain["cost_vs_first"] == 1.0
    batched = CliRunner().invoke(app, ["bench", str(tiny_model_dir), "-p", "16", "-g", "8", "-n", "1", "-b", "3", "--json"])
    report3 = json.loads(batched.stdout.strip().splitlines()[-1])
    row = report3["models"][0]
    per_gb_s = plain["bound_tok_s"] / report["bandwidth_gb_s"]
    assert row["bound_tok_s"] / report3["bandwidth_gb_s"] == pytest.approx(3 * per_gb_s)  # 3 tokens per weight read
    assert row["mean"]["generation_tps"] > 0 and row["mean"]["peak_memory_gb"] > plain["mean"]["peak_memory_gb"] * 0.5


def test_bad_model_folders_give_one_error_line(tiny_model_dir, foreign_model_dir, tmp_path):
    runner = CliRunner()
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.model", "tokenizer_config.json"):
        (broken / name).write_bytes((tiny_model_dir / name).read_bytes())
    (broken / "model.safetensors").write_bytes((tiny_model_dir / "model.safetensors").read_bytes()[:300])
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    cases = [
        (["bench", str(tmp_path / "missing")], "no model at"),
        (["bench", str(broken)], "corrupt or truncated"),
        (["export", str(broken), str(tmp_path / "x")], "corrupt or truncated"),
        (["bench", str(other)], "not supported"),
        (["export", str(tiny_model_dir), str(existing)], "already exists"),
        (["export", str(tiny_model_dir), str(tmp_path / "y"), "--quantize", "7"], "--quantize: '7' is not one of 2, 3, 4, 5, 6, 8"),
        (["bench", str(tiny_model_dir), "-g", "0"], "--generation-tokens"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], (args, result.output)
    assert (existing / "keep.txt").read_text() == "mine" and not (tmp_path / "x").exists()


def test_mlx_lm_server_serves_a_quantized_export(tiny_model_dir, tmp_path):
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    out = tmp_path / "export"
    export_model(tiny_model_dir, out, bits=4)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mlx_lm", "server", "--model", str(out), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        body = json.dumps({"prompt": "import os\n", "max_tokens": 10, "temperature": 0}).encode()
        for _ in range(120):
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body,
                                                 {"Content-Type": "application/json"})
                reply = json.loads(urllib.request.urlopen(request, timeout=30).read())
                break
            except OSError:
                assert server.poll() is None, "mlx_lm.server exited"
                time.sleep(0.5)
        else:
            raise AssertionError("mlx_lm.server did not answer")
    finally:
        server.terminate()
        server.wait(timeout=30)
    ours, tokenizer, _ = ms.load_model(out)
    expected = ms.generate_text(ours, tokenizer, "import os\n", max_tokens=10, temperature=0)
    assert reply["choices"][0]["text"] == expected and len(expected) > 0


def test_a_quantized_export_names_the_layers_its_group_size_leaves_in_float(tiny_model_dir, tmp_path, monkeypatch):
    """`small`'s MLP down projection reads 352 features, not a multiple of 64: quantized
    in groups of 64 it stays in float (mlx-lm's rule), which the export says, with the
    group size that quantizes every layer; in groups of 32 every layer is quantized."""
    from io import StringIO

    from rich.console import Console

    from mlx_specialize import ui

    tokenizer = ms.load_model(tiny_model_dir)[1]
    mx.random.seed(0)
    ms.save_model(ms.Model(ms.get_preset("small").model_args(tokenizer.vocab_size)), tmp_path / "small", tokenizer)
    for group, said in ((64, True), (32, False)):
        monkeypatch.setattr(ui, "console", Console(file=StringIO(), width=300))
        export_model(tmp_path / "small", tmp_path / f"q{group}", bits=4, group_size=group)
        quantized = mx.load(str(tmp_path / f"q{group}" / "model.safetensors"))
        has_scales = any(k.endswith("mlp.down_proj.scales") for k in quantized)
        assert has_scales != said  # left in float at 64, quantized at 32
        warned = ui.console.file.getvalue()
        assert ("warning: --group-size 64: down_proj (input width 352) kept in float, not a multiple of 64; "
                "--group-size 32 quantizes every layer" in warned) == said, warned
