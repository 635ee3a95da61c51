"""Several processes on localhost with MLX's ring backend: data-parallel training,
resume across world sizes, lost peers, SLM-mix's embedding and experts.

The 1-vs-2 equivalence runs under `mlx.launch -n 2 --backend ring` (the documented
launch); the other multi-process tests start the ranks directly with the two variables
mlx.launch sets, `_ring`, because its output loop keeps one of this machine's 2 cores busy.
Each rank writes into its own folder `run-RANK` (as on two Macs with their own disks), so
rank 1's folder staying absent shows that rank 0 alone writes, and resuming shows that the
others need nothing from disk."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import mlx_specialize as ms
from mlx_specialize.train.checkpoint import checkpoint_dirs
from helpers import GENERIC

STEPS, BATCH, CONTEXT, CHECKPOINT_EVERY = 8, 8, 64, 4


def _launcher() -> str | None:
    local = Path(sys.executable).parent / "mlx.launch"
    return str(local) if local.exists() else shutil.which("mlx.launch")


pytestmark = pytest.mark.skipif(_launcher() is None or not mx.distributed.is_available(),
                                reason="needs mlx.launch and MLX's distributed layer")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(out: str, tok_dir, cache_dir, *extra) -> list[str]:
    return ["pretrain", out, "--generic", GENERIC, "--preset", "tiny", "--tokenizer", str(tok_dir),
            "--tokens", str(STEPS * BATCH * CONTEXT), "--batch-size", str(BATCH), "--context", str(CONTEXT),
            "--lr", "3e-3", "--warmup", "2", "--checkpoint-every", str(CHECKPOINT_EVERY), "--eval-every", str(STEPS),
            "--cache-dir", str(cache_dir), "--quiet", *extra]


def _ring(n: int, argv, env: dict, cwd=None) -> subprocess.CompletedProcess:
    """N processes on a local ring started directly, with the two variables mlx.launch
    sets (MLX_RANK, MLX_HOSTFILE): its output loop would keep one of 2 cores busy.
    `argv(rank)` is each rank's command line; returns rank 0's exit status, all output."""
    hostfile = Path(cwd or ".") / f"ring-{os.getpid()}.json"
    port = _free_port()
    hostfile.write_text(json.dumps([[f"127.0.0.1:{port + r}"] for r in range(n)]))
    procs = [subprocess.Popen(argv(r), cwd=cwd, env={**env, "MLX_RANK": str(r), "MLX_HOSTFILE": str(hostfile)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(n)]
    outs = [p.communicate(timeout=300) for p in procs]
    hostfile.unlink()
    return subprocess.CompletedProcess(argv(0), procs[0].returncode, "".join(o[0] for o in outs),
                                       "".join(o[1] for o in outs))


def _run(cwd: Path, n: int, args: list[str], worker: list[str] | None = None, env: dict | None = None,
         direct: bool = False):
    """`mlxspec ARGS` in 1 plain process, or N with run-RANK folders: under `mlx.launch -n N`
    or (`direct`) started by `_ring`."""
    env = {**os.environ, **(env or {})}
    if worker:
        prog = [sys.executable, str(Path(__file__).with_name("dist_worker.py")), *worker, "--"]
    else:
        prog = [sys.executable, "-m", "mlxspec.main"]
    if n == 1:
        cmd = [*prog, *args]
    elif direct:
        return _ring(n, lambda r: [*prog, args[0], f"{args[1]}-{r}", *args[2:]], env, cwd)
    else:  # each rank its own folder: `run` -> `run-$MLX_RANK`
        line = " ".join(f'"{a}"' if a != args[1] else f'"{a}-$MLX_RANK"' for a in [*prog, *args])
        cmd = [_launcher(), "-n", str(n), "--backend", "ring", "--starting-port", str(_free_port()),
               "--", "bash", "-c", line]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _losses(run: Path) -> list[tuple]:
    return [(m["event"], m["step"], m.get("loss", m.get("valid_loss")))
            for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def _weights(run: Path, step: int = STEPS) -> dict:
    return mx.load(str(run / "checkpoints" / f"step_{step:08d}" / "model.safetensors"))


def _assert_same_weights(a: dict, b: dict, atol=1e-5):
    assert a.keys() == b.keys()
    worst = max(float(mx.abs(a[k] - b[k]).max()) for k in a)
    assert worst < atol, f"weights differ by {worst}"


@pytest.fixture(scope="module")
def runs(tokenizer, cache_dir, tmp_path_factory):
    """The same pre-training as 1 process x 8 rows and as 2 processes x 4 rows."""
    root = tmp_path_factory.mktemp("distributed")
    tokenizer.save(root / "tok")
    one = _run(root, 1, _args("one", root / "tok", cache_dir))
    assert one.returncode == 0, one.stderr
    two = _run(root, 2, _args("two", root / "tok", cache_dir))
    assert (root / "two-0" / "summary.json").exists(), two.stdout + two.stderr
    return root


def test_two_processes_train_like_one_with_twice_the_rows(runs):
    one, two = runs / "one", runs / "two-0"
    a, b = _losses(one), _losses(two)
    assert [x[:2] for x in a] == [x[:2] for x in b]  # each step logged once, by rank 0
    np.testing.assert_allclose([x[2] for x in b], [x[2] for x in a], rtol=1e-5)
    _assert_same_weights(_weights(one), _weights(two))
    summary = json.loads((two / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == STEPS
    assert summary["tokens"] == json.loads((one / "summary.json").read_text())["tokens"]  # the same global batch
    assert not (runs / "two-1").exists()  # rank 1 wrote nothing


def test_a_checkpoint_of_one_process_resumes_on_two(runs, cache_dir, tmp_path):
    """One process dies at global batch 6 (a finished run keeps only its last checkpoint,
    so the run is cut, not trimmed); two resume its step-4 checkpoint. (Two to one: the
    lost-peer test below.)"""
    run = tmp_path / "resumed-0"
    died = _run(tmp_path, 1, _args(str(run.name), runs / "tok", cache_dir), worker=["die", "0", "6"])
    assert died.returncode != 0 and checkpoint_dirs(run)[-1].name == f"step_{CHECKPOINT_EVERY:08d}", died.stderr
    assert not (run / "summary.json").exists()
    result = _run(tmp_path, 2, _args("resumed", runs / "tok", cache_dir, "--resume"), direct=True)
    assert (run / "summary.json").exists(), result.stdout + result.stderr
    assert json.loads((run / "summary.json").read_text())["steps_this_session"] == CHECKPOINT_EVERY
    _assert_same_weights(_weights(run), _weights(runs / "one"))
    a, b = _losses(run), _losses(runs / "one")
    assert [x[:2] for x in a] == [x[:2] for x in b]
    np.testing.assert_allclose([x[2] for x in a], [x[2] for x in b], rtol=1e-5)
    assert not (tmp_path / "resumed-1").exists()  # rank 1 needed nothing from disk


def test_a_dead_peer_stops_the_job_and_one_process_resumes_it(runs, cache_dir, tmp_path):
    """Rank 1 dies on global batch 6: the ring reports the lost peer and rank 0 stops
    with one line naming its rank and step, the checkpoint of step 4 is intact, and
    --resume on 1 process (a checkpoint of 2 read by 1) ends where the uninterrupted run
    ended."""
    result = _run(tmp_path, 2, _args("run", runs / "tok", cache_dir), worker=["die", "1", "6"], direct=True)
    run = tmp_path / "run-0"
    assert result.returncode == 2
    assert "error: rank 0: lost the connection to another process of the job at step 6" in result.stderr
    assert "--resume" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (run / "summary.json").exists()
    assert checkpoint_dirs(run)[-1].name == "step_00000004"
    resumed = _run(tmp_path, 1, _args("run-0", runs / "tok", cache_dir, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_weights(_weights(run), _weights(runs / "one"))


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=os.environ,
                          capture_output=True, text=True, timeout=60)


def test_the_launcher_stopping_a_process_is_one_line():
    """mlx.launch sends SIGTERM to the others when one process fails."""
    result = _python("import os, signal, time\n"
                     "from mlx_specialize.runtime.distributed import World, _install_sigterm_handler\n"
                     "_install_sigterm_handler(World(None, 1, 2))\n"
                     "os.kill(os.getpid(), signal.SIGTERM)\n"
                     "time.sleep(30)\n")
    assert result.returncode == 143
    assert result.stderr == ("error: rank 1: stopped by the launcher because another process of the job failed; "
                             "rerun the same command with --resume\n")


def test_the_watchdog_ends_a_process_whose_peer_hangs(tmp_path):
    """A peer that hangs (no socket closes) would block a collective forever: the
    watchdog ends the process with its rank and last step after MLXSPEC_DIST_TIMEOUT."""
    code = ("import time\n"
            "from mlx_specialize.runtime.distributed import World, Watchdog\n"
            "with Watchdog(World(None, 1, 2), timeout=0.5) as w:\n"
            "    w.beat(7)\n"
            "    time.sleep(30)\n")
    result = _python(code)
    assert result.returncode == 3
    assert result.stderr.startswith("error: rank 1: no progress at step 7 for ")
    assert "--resume" in result.stderr


def test_each_process_takes_its_rows_of_any_batch_source(tokenizer, tmp_path, monkeypatch):
    """The sharding contract for any `batches=` source (the projected network's): rank r
    gets a contiguous slice of global batch i, the global target count, and condition(i)."""
    from mlx_specialize.runtime import distributed as dist
    from mlx_specialize.train.trainer import TrainConfig, Trainer

    class Source:
        def batch(self, i):
            return np.arange(8 * 17, dtype=np.int32).reshape(8, 17) % 50 + i

        def condition(self, i):
            return np.array([i, 1.0], np.float32)

    monkeypatch.setattr(dist, "world", lambda: dist.World(None, 1, 2, 1))
    model = ms.Model(ms.get_preset("tiny").model_args(tokenizer.vocab_size))
    trainer = Trainer(model, tokenizer, None, None, TrainConfig(steps=2, batch_size=8, context=16, grad_accum=2),
                      tmp_path, batches=Source())
    tokens, counts, cond = trainer._batch(1)  # global batches 2 and 3
    np.testing.assert_array_equal(np.array(tokens), np.stack([Source().batch(i)[4:] for i in (2, 3)]))
    full = [Source().batch(i)[:, 1:] for i in (2, 3)]
    np.testing.assert_array_equal(np.array(counts), [np.count_nonzero(b != tokenizer.bos_id) for b in full])
    np.testing.assert_array_equal(np.array(cond), [[2, 1], [3, 1]])
    with pytest.raises(ms.SpecializeError, match="cannot be split over 3 processes"):
        dist.World(None, 0, 3).rows(2)


PIPELINE_SCRIPT = """
import json, os, sys
from pathlib import Path
import mlx_specialize as ms
from mlx_specialize.methods import clusters as imp
from mlx_specialize.data.embedding import HashedEmbedder, embed_windows
from mlx_specialize.methods.mixture import pretrain_mixture

tok, cache, root = ms.Tokenizer.load(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
rank = os.environ.get("MLX_RANK", "solo")
generic = imp.corpus_split("go-code", "train", tok, cache)
embedder = HashedEmbedder(dim=32)
# Each rank its own embeddings cache and clusters folder, as on hosts with their own disks.
embedded = embed_windows(generic, tok, embedder, 128, root / f"cache-{rank}", shard_rows=128, max_windows=500)
clusters = imp.cluster(embedded, 2, root / f"clusters-{rank}", "go-code", tok, embedder)
(root / f"labels-{rank}.json").write_text(json.dumps(clusters.labels.tolist()))
generic.tokens = generic.tokens[: 500 * 128]  # the embedded windows
pretrain_mixture(clusters, generic, tok, ms.get_preset("tiny"), root / "mix", 2048, cache, eval_every=1000,
                 eval_tokens=2048)
"""


def test_slm_mix_pipeline_shared_by_two_processes(runs, cache_dir, tmp_path):
    """2 processes on a ring: 4 embedding shards, 2 made by each rank and sent to the
    other; k-means on rank 0, the assignment split over both (the same shards and labels
    as one process); then expert c trains on rank c alone, no communication until rank 0
    writes mixture.json saying where each expert was trained."""
    script = tmp_path / "pipeline.py"
    script.write_text(PIPELINE_SCRIPT)
    env = dict(os.environ)
    both = _ring(2, lambda r: [sys.executable, str(script), str(runs / "tok"), str(cache_dir), str(tmp_path)], env)
    if not (tmp_path / "mix" / "mixture.json").exists():
        pytest.fail(both.stdout + both.stderr)

    from mlx_specialize.methods import clusters as imp
    from mlx_specialize.data.embedding import HashedEmbedder, embed_windows

    tok = ms.Tokenizer.load(runs / "tok")
    generic = imp.corpus_split("go-code", "train", tok, cache_dir)
    alone = embed_windows(generic, tok, HashedEmbedder(dim=32), 128, tmp_path / "cache-solo", shard_rows=128,
                          max_windows=500)
    labels = imp.cluster(alone, 2, tmp_path / "clusters-solo", "go-code", tok, HashedEmbedder(dim=32)).labels
    for rank in "01":
        assert json.loads((tmp_path / f"labels-{rank}.json").read_text()) == labels.tolist()
    shards = [sorted((tmp_path / f"cache-{r}").glob("embeddings/*/shard-*.npy")) for r in ("solo", "0", "1")]
    assert [len(s) for s in shards] == [4, 4, 4]
    for a, b, c in zip(*shards):
        assert a.read_bytes() == b.read_bytes() == c.read_bytes()
    assert (tmp_path / "clusters-0" / "labels.npy").exists() and not (tmp_path / "clusters-1").exists()

    meta = json.loads((tmp_path / "mix" / "mixture.json").read_text())
    assert [t["rank"] for t in meta["trained_on"]] == [0, 1]
    summaries = [json.loads((tmp_path / "mix" / e / "summary.json").read_text()) for e in meta["experts"]]
    assert [s["steps"] for s in summaries] == [2, 2] and "processes" not in summaries[1]  # each trained alone
    assert meta["tokens"] == 2 * 2048


def test_a_projected_network_trains_on_two_processes_like_on_one(runs, cache_dir, tmp_path):
    """pn pre-training (cluster-grouped batches, one condition per batch) on 2 processes
    x 4 rows: the same curve and weights as 1 process x 8 rows; rank 1 writes nothing."""
    from mlx_specialize.methods import clusters as imp
    from mlx_specialize.data.embedding import HashedEmbedder, embed_windows

    tok = ms.Tokenizer.load(runs / "tok")
    generic = imp.corpus_split("go-code", "train", tok, cache_dir)
    embedded = embed_windows(generic, tok, HashedEmbedder(dim=32), 128, cache_dir)
    imp.cluster(embedded, 3, tmp_path / "clusters", "go-code", tok, HashedEmbedder(dim=32))
    args = ["pretrain", "pn", "--arch", "pn", "--clusters", str(tmp_path / "clusters"), "--preset", "tiny",
            "--basis", "2", "--tokens", str(STEPS * BATCH * CONTEXT), "--batch-size", str(BATCH), "--context",
            str(CONTEXT), "--lr", "3e-3", "--warmup", "2", "--checkpoint-every", str(CHECKPOINT_EVERY),
            "--eval-every", str(STEPS), "--cache-dir", str(cache_dir), "--quiet"]
    one = _run(tmp_path, 1, args)
    assert one.returncode == 0, one.stderr
    two = _run(tmp_path, 2, args, direct=True)
    assert (tmp_path / "pn-0" / "summary.json").exists(), two.stdout + two.stderr
    a, b = _losses(tmp_path / "pn"), _losses(tmp_path / "pn-0")
    assert [x[:2] for x in a] == [x[:2] for x in b]
    np.testing.assert_allclose([x[2] for x in b], [x[2] for x in a], rtol=1e-5)
    _assert_same_weights(_weights(tmp_path / "pn"), _weights(tmp_path / "pn-0"))
    assert "expert_embedding" in _weights(tmp_path / "pn-0") and not (tmp_path / "pn-1").exists()
