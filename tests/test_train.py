"""Training: loss falls on real text, exact resume after SIGKILL, early stopping, and each
step's gradient is that of the mean loss over all the step's targets."""

import json
import os
import signal
import subprocess
import sys
import time

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten

import mlx_specialize as ms
from mlx_specialize.errors import SpecializeError
from mlx_specialize.train.checkpoint import checkpoint_dirs
from helpers import DOMAIN, GENERIC


def test_loss_falls_on_real_text(tiny_model_dir, tokenizer, cache_dir):
    metrics = [json.loads(l) for l in (tiny_model_dir / "metrics.jsonl").read_text().splitlines()]
    train = [m["loss"] for m in metrics if m["event"] == "train"]
    valid = [m["valid_loss"] for m in metrics if m["event"] == "valid"]
    assert train[-1] < train[0] - 0.5
    assert valid[-1] < np.log(tokenizer.vocab_size) - 0.5  # well below a uniform guess
    summary = json.loads((tiny_model_dir / "summary.json").read_text())
    assert summary["tokens"] == summary["steps"] * 8 * 128
    args = ms.load_model(tiny_model_dir)[0].args
    assert summary["train_flops"] == pytest.approx(summary["tokens"] * ms.flops_per_token(args, 128))
    # every validation is counted: its predicted tokens at the forward pass' FLOPs (a third of training's)
    # steps 20 and 40, each over eval_tokens 4096 tokens: 4095 predicted (the first has no context)
    assert len(valid) == 2 and summary["valid_tokens"] == 2 * 4095
    assert summary["valid_flops"] == pytest.approx(summary["valid_tokens"] * ms.flops_per_token(args, 128) / 3)
    assert summary["flops"] == pytest.approx(summary["train_flops"] + summary["valid_flops"])
    assert summary["seconds"] == pytest.approx(summary["train_seconds"] + summary["valid_seconds"])
    assert summary["valid_seconds"] > 0 and summary["peak_memory_bytes"] > 0


def test_finetuning_lowers_domain_perplexity(tiny_model_dir, cache_dir, tmp_path):
    before = ms.evaluate_model(tiny_model_dir, DOMAIN, "test", cache_dir, max_tokens=4096)
    result = ms.finetune(tiny_model_dir, DOMAIN, tmp_path / "ft", max_tokens=30 * 8 * 128, cache_dir=cache_dir,
                         batch_size=8, eval_every=10, eval_tokens=4096, lr=3e-3)
    after = ms.evaluate_model(result.model_dir, DOMAIN, "test", cache_dir, max_tokens=4096)
    assert after.ppl < before.ppl
    assert after.bits_per_byte < before.bits_per_byte
    assert after.tokens == before.tokens == 4096


def _pretrain_cmd(out, tok_dir, cache_dir, *extra):
    return [sys.executable, "-m", "mlxspec.main", "pretrain", str(out), "--generic", GENERIC, "--preset", "tiny",
            "--tokenizer", str(tok_dir), "--tokens", str(40 * 8 * 128), "--checkpoint-every", "4",
            "--eval-every", "8", "--cache-dir", str(cache_dir), "--quiet", *extra]


def test_kill_and_resume_ends_with_the_same_weights(tokenizer, cache_dir, tmp_path):
    tok_dir = tmp_path / "tok"
    tokenizer.save(tok_dir)
    env = dict(os.environ)
    subprocess.run(_pretrain_cmd(tmp_path / "a", tok_dir, cache_dir), check=True, env=env)

    proc = subprocess.Popen(_pretrain_cmd(tmp_path / "b", tok_dir, cache_dir), env=env)
    deadline = time.time() + 120
    while not checkpoint_dirs(tmp_path / "b") and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads((checkpoint_dirs(tmp_path / "b")[-1] / "state.json").read_text())["step"]
    assert 0 < killed_at < 40
    subprocess.run(_pretrain_cmd(tmp_path / "b", tok_dir, cache_dir, "--resume"), check=True, env=env)

    final_a, final_b = checkpoint_dirs(tmp_path / "a")[-1], checkpoint_dirs(tmp_path / "b")[-1]
    assert final_a.name == final_b.name == "step_00000040"
    # a finished run keeps its last checkpoint only (two are kept while it trains)
    assert [p.name for p in checkpoint_dirs(tmp_path / "a")] == ["step_00000040"]
    for name in ("model.safetensors", "optimizer.safetensors"):
        wa, wb = mx.load(str(final_a / name)), mx.load(str(final_b / name))
        assert wa.keys() == wb.keys()
        for k in wa:
            np.testing.assert_array_equal(np.array(wa[k]), np.array(wb[k]), err_msg=k)
    sa = json.loads((tmp_path / "a" / "summary.json").read_text())
    sb = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert sa["tokens"] == sb["tokens"] and sa["best_valid_loss"] == sb["best_valid_loss"]
    steps = [json.loads(l)["step"] for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # nothing logged twice after the resume
    assert [p.name for p in checkpoint_dirs(tmp_path / "b")] == ["step_00000040"]


def test_the_newest_checkpoints_are_kept_while_training_and_the_last_at_the_end(tokenizer, cache_dir, tmp_path):
    """8 steps of `tiny`, a checkpoint every 2: the last only once it ends, or the two
    newest when asked (as while it trains). The final retention is not part of what the
    run is (its recorded configuration), so a run saved before it was an option is still
    the same run to a resume."""
    def run(out, **keep):
        return ms.pretrain(GENERIC, ms.get_preset("tiny"), out, tokens=8 * 8 * 128, tokenizer=tokenizer,
                           cache_dir=cache_dir, checkpoint_every=2, lr=3e-3, warmup=2, **keep)

    run(tmp_path / "kept", keep_final_checkpoints=2)
    assert [p.name for p in checkpoint_dirs(tmp_path / "kept")] == ["step_00000006", "step_00000008"]
    run(tmp_path / "default")
    assert [p.name for p in checkpoint_dirs(tmp_path / "default")] == ["step_00000008"]
    from mlx_specialize.train.config import TrainConfig

    assert "keep_final_checkpoints" not in TrainConfig(steps=8).to_dict()
    state = json.loads((checkpoint_dirs(tmp_path / "default")[-1] / "state.json").read_text())
    assert "keep_final_checkpoints" not in state["config"]


def test_early_stopping_and_refusing_to_overwrite(tiny_model_dir, cache_dir, tmp_path):
    # A learning rate far too high makes validation worse at once: stop after 2 evals.
    out = tmp_path / "ft"
    result = ms.finetune(tiny_model_dir, DOMAIN, out, max_tokens=200 * 8 * 128, cache_dir=cache_dir,
                         batch_size=8, eval_every=2, eval_tokens=2048, lr=0.5, warmup=0, patience=2)
    assert result.summary["stopped_early"] and result.summary["steps"] < 200
    # the validations it stopped on, as the summary keeps them: every 2 steps, the best
    # first (patience 2: the two after it were worse), ending where training did
    curve = result.summary["valid_curve"]
    assert [step for step, _ in curve] == list(range(2, result.summary["steps"] + 1, 2))
    assert min(loss for _, loss in curve) == pytest.approx(result.summary["best_valid_loss"], abs=1e-4)
    assert all(loss > curve[-3][1] for _, loss in curve[-2:])
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(SpecializeError, match="already holds a run"):
        ms.finetune(tiny_model_dir, DOMAIN, out, max_tokens=8 * 128, cache_dir=cache_dir, batch_size=8)
    assert (out / "model.safetensors").read_bytes() == before


def test_resuming_with_another_tokenizer_is_refused(tiny_model_dir, cache_dir, tmp_path):
    other = ms.train_tokenizer(ms.load_corpus("go-code").documents("valid"), 400)
    with pytest.raises(SpecializeError, match="another tokenizer"):
        ms.pretrain(GENERIC, ms.get_preset("tiny"), tiny_model_dir, tokens=8 * 128 * 50, tokenizer=other,
                    cache_dir=cache_dir, resume=True)


class _Rows:
    """A `batches=` source over a fixed global batch of real text: batch(i) is rows
    [i * n, (i + 1) * n) of `rows`, so micro-batch i of step 0 is the i-th block."""

    def __init__(self, rows: np.ndarray, per_batch: int):
        self.rows, self.per_batch = rows, per_batch

    def batch(self, i):
        return self.rows[i * self.per_batch:(i + 1) * self.per_batch]


def _uneven_rows(tokenizer, context: int = 32) -> np.ndarray:
    """8 rows [context + 1] of real code and docs: 3 rows of a short document start
    padded with BOS (8 targets counted each), then 5 full rows (all `context` targets
    counted). Any split of the rows into micro-batches or stream slices that the tests
    use thus holds unequal target counts: a mean of per-part means is not the mean over
    all tokens."""
    docs = [d for _, d in zip(range(8), ms.load_corpus(GENERIC).documents("train"))]
    bos, rows = tokenizer.bos_id, []
    for i, doc in enumerate(docs):
        ids = tokenizer.encode(doc)[:context]
        assert len(ids) == context and bos not in ids
        if i < 3:
            ids = ids[:8] + [bos] * (context - 8)  # padding: BOS targets are masked out
        rows.append([bos] + ids)
    return np.array(rows, np.int32)


def _plain_mean_nll(model, x, y, bos_id):
    """The training objective written out: -log softmax(logits)[target], averaged over
    every target that is not BOS, with MLX's plain ops (no library loss, no fast path)."""
    logits = model(x)
    log_p = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    nll = -mx.take_along_axis(log_p, y[..., None], axis=-1)[..., 0]
    mask = (y != bos_id).astype(mx.float32)
    return (nll * mask).sum() / mask.sum()


def _plain_loss_and_grads(model, rows, bos_id):
    loss, grads = nn.value_and_grad(model, _plain_mean_nll)(model, mx.array(rows[:, :-1]), mx.array(rows[:, 1:]),
                                                          bos_id)
    mx.eval(loss, grads)
    return loss.item(), dict(tree_flatten(grads))


def _relative_error(got: dict, want: dict) -> tuple[float, str]:
    """The largest ||got - want|| / ||want|| over the parameters, and its parameter."""
    assert got.keys() == want.keys()
    return max((float(np.linalg.norm(np.array(got[k]) - np.array(want[k])) / np.linalg.norm(np.array(want[k]))), k)
               for k in want)


@pytest.mark.parametrize("grad_accum,streams", [(1, 1), (2, 1), (1, 2), (2, 2), (1, 3)])
def test_the_step_takes_the_gradient_of_the_mean_loss_over_all_target_tokens(tokenizer, tmp_path, grad_accum,
                                                                            streams):
    """One trainer step, the 8 rows of `_uneven_rows` split into `grad_accum`
    micro-batches of 8 / grad_accum rows, each split over `streams` CPU streams: the
    loss it logs, the gradient norm it clips by and the gradient it applies must be those
    of the mean over all target tokens of the whole batch (the paper's per-token
    objective, and what one big batch gives), computed here by `nn.value_and_grad` on a
    plain cross-entropy. The step's optimizer is swapped for SGD with lr 2^10 (clipping
    off), whose update is linear in the gradient: gradient = (before - after) / lr.

    The rows have unequal target counts per micro-batch and per stream slice, so summing
    instead of averaging, dividing by grad_accum twice or not at all, or averaging the
    parts' means instead of weighting them by their counts all change the gradient."""
    rows = _uneven_rows(tokenizer)
    mx.random.seed(0)
    model = ms.Model(ms.get_preset("tiny").model_args(tokenizer.vocab_size))
    want_loss, want = _plain_loss_and_grads(model, rows, tokenizer.bos_id)
    before = {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}

    # The test's own data discriminates: a mean of the micro-batches' (or slices') means
    # is far from the mean over all tokens (the parts' counts are 56 and 128 targets).
    halves = [_plain_loss_and_grads(model, part, tokenizer.bos_id)[1] for part in (rows[:4], rows[4:])]
    assert _relative_error({k: (halves[0][k] + halves[1][k]) / 2 for k in want}, want)[0] > 0.05

    lr = 2.0**10  # a power of two: lr * gradient is exact, and dwarfs the weights' rounding
    cfg = ms.TrainConfig(steps=1, batch_size=8 // grad_accum, grad_accum=grad_accum, context=32, streams=streams,
                         clip=1e9, log_every=1)
    trainer = ms.Trainer(model, tokenizer, None, None, cfg, tmp_path, batches=_Rows(rows, 8 // grad_accum))
    trainer.optimizer = optim.SGD(learning_rate=lr)
    trainer.optimizer.init(model.trainable_parameters())
    assert len(trainer.streams) == streams
    trainer.run()

    logged = trainer.history[-1]
    got = {k: (before[k] - np.array(v)) / lr for k, v in tree_flatten(model.trainable_parameters())}
    assert logged["loss"] == pytest.approx(want_loss, rel=1e-5)
    want_norm = float(np.sqrt(sum(np.sum(np.array(g, np.float64) ** 2) for g in want.values())))
    assert logged["grad_norm"] == pytest.approx(want_norm, rel=1e-4)
    error, name = _relative_error(got, want)
    assert error < 1e-4, f"{name}: the applied gradient is {error:.3g} off the plain one (measured ~6e-7)"


def test_the_loop_takes_its_loss_and_tells_its_callbacks_what_it_logs(tokenizer, tmp_path):
    """A loss given to the trainer is the one its compiled step differentiates (twice the
    plain loss: twice its gradient, under SGD whose update is linear in it), and the
    callbacks hear every record the run logs, in order, as metrics.jsonl holds them."""
    from mlx_specialize.train.parallel import training_loss
    from mlx_specialize.train.trainer import TrainingCallback

    rows = _uneven_rows(tokenizer)
    mx.random.seed(0)
    model = ms.Model(ms.get_preset("tiny").model_args(tokenizer.vocab_size))
    want_loss, want = _plain_loss_and_grads(model, rows, tokenizer.bos_id)
    before = {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}

    class Heard(TrainingCallback):
        def __init__(self):
            self.train, self.valid = [], []

        def on_train_loss_report(self, info):
            self.train.append(info)

        def on_val_loss_report(self, info):
            self.valid.append(info)

    heard = Heard()
    lr = 2.0**10
    cfg = ms.TrainConfig(steps=1, batch_size=8, context=32, streams=1, clip=1e9, log_every=1)
    doubled = lambda *args: 2 * training_loss(*args)  # noqa: E731
    trainer = ms.Trainer(model, tokenizer, None, None, cfg, tmp_path, batches=_Rows(rows, 8), loss=doubled,
                         callbacks=[heard])
    trainer.optimizer = optim.SGD(learning_rate=lr)
    trainer.optimizer.init(model.trainable_parameters())
    trainer.run()
    got = {k: (before[k] - np.array(v)) / lr for k, v in tree_flatten(model.trainable_parameters())}
    assert trainer.history[-1]["loss"] == pytest.approx(2 * want_loss, rel=1e-5)
    error, name = _relative_error(got, {k: 2 * v for k, v in want.items()})
    assert error < 1e-4, f"{name}: {error:.3g} off twice the plain gradient"
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert heard.train == [r for r in logged if r["event"] == "train"] and heard.valid == [] and len(heard.train) == 1


def test_a_model_reports_its_own_flops_and_the_trainer_counts_them(tokenizer, tmp_path, monkeypatch):
    """A projected network costs its dense SLM's FLOPs plus making its MLP weights once
    per micro-batch: h multiply-adds for each of the 3 L D F MLP weights, forward and
    backward (x3), spread over the micro-batch's tokens. The trainer's budget counts that."""
    from mlx_specialize.models.projected import ProjectedModel, ProjectionArgs

    args = ms.get_preset("tiny").model_args(tokenizer.vocab_size)
    D, F, L, h, B, T = args.hidden_size, args.intermediate_size, args.num_hidden_layers, 3, 4, 32
    dense, pn = ms.Model(args), ProjectedModel(args, ProjectionArgs("pn", experts=2, basis=h))
    made = 3 * 2 * h * (3 * L * D * F)  # per micro-batch, by hand
    assert dense.flops_per_token(T, batch_tokens=B * T) == ms.flops_per_token(args, T)
    assert pn.flops_per_token(T, batch_tokens=B * T) == pytest.approx(ms.flops_per_token(args, T) + made / (B * T))

    class Conditioned:  # the same B rows of real text each batch, all of cluster 0
        def __init__(self, rows):
            self.rows = rows

        def batch(self, i):
            return self.rows[:B]

        def condition(self, i):
            return np.array([1.0, 0.0], np.float32)

    cfg = ms.TrainConfig(steps=2, batch_size=B, context=T, streams=1, log_every=1)
    summary = ms.Trainer(pn, tokenizer, None, None, cfg, tmp_path, batches=Conditioned(_uneven_rows(tokenizer))).run()
    assert summary["flops"] == pytest.approx(2 * B * T * ms.flops_per_token(args, T) + 2 * made)
    # over 2 data-parallel processes each makes the weights for its own B / 2 rows: twice per micro-batch
    from mlx_specialize.runtime import distributed as dist

    monkeypatch.setattr(dist, "world", lambda: dist.World(None, 0, 2, 2))
    shared = ms.Trainer(pn, tokenizer, None, None, cfg, tmp_path / "dp", batches=Conditioned(_uneven_rows(tokenizer)))
    assert shared.flops_per_token == pytest.approx(ms.flops_per_token(args, T) + 2 * made / (B * T))


def test_resuming_a_finished_run_returns_it_and_an_early_stop_stays_stopped(tiny_model_dir, cache_dir, tmp_path):
    """`--resume` on a run that ended (early-stopped here) trains no further: its summary
    comes back and no file changes; killed after its last checkpoint but before its
    summary, the resume stops at once, with a metrics line cut by the kill dropped."""
    out = tmp_path / "ft"
    options = dict(max_tokens=200 * 8 * 128, cache_dir=cache_dir, batch_size=8, eval_every=2, eval_tokens=2048,
                   lr=0.5, warmup=0, patience=2, checkpoint_every=50)
    first = ms.finetune(tiny_model_dir, DOMAIN, out, **options).summary
    assert first["stopped_early"] and first["steps"] < 50  # the last checkpoint is the stop's
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = ms.finetune(tiny_model_dir, DOMAIN, out, resume=True, **options).summary
    assert again == first and {p: p.stat().st_mtime_ns for p in out.rglob("*")} == files

    (out / "summary.json").unlink()  # as if killed before writing it
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"event": "train", "step": 9')  # a line cut by the kill
    resumed = ms.finetune(tiny_model_dir, DOMAIN, out, resume=True, **options).summary
    assert resumed["steps"] == first["steps"] and resumed["steps_this_session"] == 0 and resumed["stopped_early"]
    assert resumed["best_valid_loss"] == first["best_valid_loss"]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line)["step"] <= first["steps"] for line in lines)


def test_a_fine_tuned_model_records_the_rate_it_was_fine_tuned_at(tiny_model_dir, cache_dir, tmp_path):
    """Its config says the fine-tuning rate it ran at ("lr": it used to repeat the base's
    pre-training rate) and the lineage's pre-training rate ("pretrain_lr"), which the rule
    scales again when it is fine-tuned in turn (not lr / 3 of lr / 3)."""
    from mlx_specialize.models.io import read_config
    from mlx_specialize.train.jobs import finetune_lr

    base_lr = read_config(tiny_model_dir)["mlxspec"]["lr"]
    options = dict(max_tokens=2 * 8 * 128, domain_tokens=50_000, cache_dir=cache_dir, batch_size=8, eval_every=1,
                   eval_tokens=1024)  # a small domain set: lr / 3
    first = ms.finetune(tiny_model_dir, DOMAIN, tmp_path / "ft", **options)
    meta = read_config(first.model_dir)["mlxspec"]
    n = first.summary["domain_tokens"]
    assert meta["lr"] == first.summary["lr"] == pytest.approx(finetune_lr(base_lr, n)) != base_lr
    assert meta["pretrain_lr"] == base_lr
    second = ms.finetune(first.model_dir, DOMAIN, tmp_path / "ft2", **options)
    assert second.summary["lr"] == pytest.approx(finetune_lr(base_lr, n))
    assert read_config(second.model_dir)["mlxspec"]["pretrain_lr"] == base_lr


def test_fine_tuning_rules_follow_the_domain_sets_size():
    """lr / 3 for small domain sets (the paper's smallest), the base lr above; validation
    8 times per pass over the domain data, but no closer than 10 steps apart."""
    from mlx_specialize.train.jobs import finetune_eval_every, finetune_lr

    assert finetune_lr(6e-3, 100_000) == pytest.approx(2e-3) and finetune_lr(6e-3, 1_000_000) == 6e-3
    step = 8 * 256  # the small preset's batch
    assert finetune_eval_every(100_000, step) == 10  # 49 steps a pass: 6 between validations, raised to 10
    assert finetune_eval_every(1_000_000, step) == 61  # 488 steps a pass / 8


def test_the_valid_curve_kept_is_thinned_evenly_and_ends_where_training_did(tmp_path):
    from mlx_specialize.runtime.distributed import SOLO
    from mlx_specialize.train.run_folder import RunFolder

    folder = RunFolder(tmp_path, SOLO)
    for step in range(10, 2001, 10):  # 200 validations, and training lines between them
        folder.log({"event": "train", "step": step, "loss": 1.0})
        folder.log({"event": "valid", "step": step, "valid_loss": 3.0 - step / 1000})
    with open(folder.metrics, "a") as f:
        f.write('{"event": "valid", "step": 20')  # a line cut by a crash
    curve = folder.valid_curve()
    steps = [step for step, _ in curve]
    assert len(curve) == 64 and steps[0] == 10 and steps[-1] == 2000 and steps == sorted(set(steps))
    assert all(loss == pytest.approx(3.0 - step / 1000) for step, loss in curve)
    assert RunFolder(tmp_path / "none", SOLO).valid_curve() == []


@pytest.mark.parametrize("keep,step", [("best", 4), ("final", 8)])
def test_a_run_leaves_its_best_validated_model_or_its_final_one(tokenizer, tmp_path, keep, step):
    """`keep`: the model of the best validation (early stopping's), or the last step's (a
    pre-training validated on text its data does not sample: SLM-is, the experts, the
    soup): validations scripted to be best at step 4 of 8."""
    from mlx_specialize.train.evaluate import EvalResult

    losses = iter([3.0, 2.0, 2.5, 2.7])  # at steps 2, 4, 6 and 8
    mx.random.seed(0)
    model = ms.Model(ms.get_preset("tiny").model_args(tokenizer.vocab_size))
    cfg = ms.TrainConfig(steps=8, batch_size=8, context=32, eval_every=2, keep=keep, log_every=1)
    rows = _uneven_rows(tokenizer)
    every_step = _Rows(np.concatenate([rows] * cfg.steps), 8)  # the same 8 rows at each step
    trainer = ms.Trainer(model, tokenizer, None, None, cfg, tmp_path, batches=every_step,
                         evaluator=lambda m: EvalResult(next(losses) * 100, 100, 400.0))
    summary = trainer.run()
    saved, _, config = ms.load_model(tmp_path)
    assert config["mlxspec"]["step"] == step and summary["best_valid_loss"] == pytest.approx(2.0)
    final = dict(tree_flatten(model.parameters()))  # the trainer's model is the last step's
    same = all(mx.array_equal(v, final[k]).item() for k, v in tree_flatten(saved.parameters()))
    assert same == (keep == "final")
    with pytest.raises(SpecializeError, match="unknown keep 'last' \\(best or final\\)"):
        ms.TrainConfig(steps=1, keep="last")
