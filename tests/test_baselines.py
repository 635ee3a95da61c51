"""The paper's reference rows as methods: SLM-nopt (the domain data only), LLM (the
preset's large twin) and SLM-d (distillation from the fine-tuned LLM), end to end through
`specialize` on the bundled corpora, and the distillation loss itself on small exact
cases."""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

import mlx_specialize as ms
from mlx_specialize.costs import total_cost
from mlx_specialize.data.tokenizer import BOS_ID
from mlx_specialize.data.tokens import target_mask
from mlx_specialize.models.dense import Model, ModelArgs
from mlx_specialize.train.distill import DistillationLoss, kl_to_teacher
from mlx_specialize.train.parallel import training_loss

RUN = dict(preset="tiny", vocab_size=512, pretrain_tokens=16 * 1024, finetune_tokens=8 * 1024,
           domain_tokens=20_000)


def _run(method, tmp_path, cache, **extra):
    return ms.specialize("python-docs", method=method, out_dir=tmp_path / method, cache_dir=cache, **RUN, **extra)


def _run_json(report, name):
    return json.loads((Path(report["model"]) / name).read_text())


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("baselines-cache")


def test_nopt_learns_the_domain_from_a_random_start(tmp_path, cache):
    report = _run("nopt", tmp_path, cache)
    assert report["phases"]["pretrain"]["flops"] == 0 and report["phases"]["pretrain"]["tokens"] == 0
    # a random start predicts about uniformly: perplexity near the vocabulary size
    assert report["ppl_before"] > 0.5 * 512
    assert report["ppl_after"] < 0.5 * report["ppl_before"]
    train = _run_json(report, "run.json")["train"]
    assert train["lr"] == ms.get_preset("tiny").lr and train["warmup"] == ms.get_preset("tiny").warmup
    assert report["params"] == ms.count_params(ms.get_preset("tiny").model_args(512))["total"]


def test_llm_is_the_presets_large_twin_pretrained_and_finetuned(tmp_path, cache):
    report = _run("llm", tmp_path, cache)
    twin = ms.get_preset("tiny-llm")
    assert report["preset"] == "tiny-llm"
    assert report["params"] == ms.count_params(twin.model_args(512))["total"]
    assert report["params"] > 4 * ms.count_params(ms.get_preset("tiny").model_args(512))["total"]
    # the budget is SLM's (tokens of `tiny`): the twin trains on the fewer tokens of the same FLOPs,
    # rounded up to whole steps
    small, large = (ms.flops_per_token(ms.get_preset(p).model_args(512), 128) for p in ("tiny", "tiny-llm"))
    trained, step = report["phases"]["pretrain"]["tokens"], twin.batch_size * 128
    assert trained - step < RUN["pretrain_tokens"] * small / large <= trained < RUN["pretrain_tokens"] / 3
    # its FLOPs: those tokens trained, and its validations, reported apart
    pre = report["phases"]["pretrain"]
    assert pre["flops"] == pytest.approx(trained * large + pre["valid_flops"]) and pre["valid_flops"] > 0
    assert report["ppl_after"] < report["ppl_before"]


def test_kl_to_the_teacher_is_exact_on_a_small_case():
    # two positions over a 3-token vocabulary, by hand: p = softmax(t / T), q = softmax(s / T)
    s = np.array([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    t = np.array([[2.0, 0.0, 0.0], [0.5, 0.5, 2.0]])
    for T in (1.0, 2.0):
        p = np.exp(t / T) / np.exp(t / T).sum(-1, keepdims=True)
        q = np.exp(s / T) / np.exp(s / T).sum(-1, keepdims=True)
        want = (p * np.log(p / q)).sum(-1)
        got = np.array(kl_to_teacher(mx.array(s, mx.float32), mx.array(t, mx.float32), T))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert abs(float(got[1])) < 1e-6  # equal distributions: 0


def _tiny(seed):
    mx.random.seed(seed)
    return Model(ModelArgs(hidden_size=32, num_hidden_layers=1, intermediate_size=64, num_attention_heads=2,
                           vocab_size=64, max_position_embeddings=32, tie_word_embeddings=True))


def test_the_distillation_loss_mixes_kl_and_nll_and_alpha_0_is_plain_training():
    student, teacher = _tiny(0), _tiny(1)
    x = mx.random.randint(0, 8, (4, 17), key=mx.random.key(3))  # a few BOS among them
    inputs, targets = x[:, :-1], x[:, 1:]
    plain = training_loss(student, inputs, targets, [None])
    assert DistillationLoss(teacher, 2.0, 0.0, 16)(student, inputs, targets, [None]).item() == pytest.approx(
        plain.item(), rel=1e-6)
    # with alpha = 0 the teacher never runs: its forward pass is not counted as paid
    assert DistillationLoss(teacher, 2.0, 0.0, 16).extra_flops_per_token == 0
    assert DistillationLoss(teacher, 2.0, 0.25, 16).extra_flops_per_token == teacher.flops_per_token(16, training=False)
    mask = np.array(target_mask(targets, BOS_ID), dtype=np.float64)  # document starts are not targets
    assert 0 < mask.sum() < mask.size
    kl = float((np.array(kl_to_teacher(student(inputs), teacher(inputs), 2.0)) * mask).sum() / mask.sum())
    mixed = DistillationLoss(teacher, 2.0, 0.25, 16)(student, inputs, targets, [None]).item()
    assert mixed == pytest.approx(0.75 * plain.item() + 0.25 * 4.0 * kl, rel=1e-5)
    # the teacher is a constant: no gradient reaches it, the student's is finite
    loss = DistillationLoss(teacher, 2.0, 0.5, 16)
    grads = mx.grad(lambda m: loss(m, inputs, targets, [None]))(student)
    assert all(np.isfinite(np.array(g)).all() for _, g in tree_flatten(grads))
    with pytest.raises(ValueError):
        DistillationLoss(teacher, 0.0, 0.5)


def test_a_student_trained_against_a_fixed_teacher_comes_closer_to_it(tmp_path, tokenizer, cache_dir):
    """alpha = 1: the trainer, given the distillation loss, lowers the student's KL to a
    fixed (random, different) teacher on held-out windows."""
    from mlx_specialize.data.corpus import load_corpus
    from mlx_specialize.train.jobs import tokenize
    from mlx_specialize.train.trainer import Trainer, TrainConfig

    args = ModelArgs(hidden_size=32, num_hidden_layers=1, intermediate_size=64, num_attention_heads=2,
                     vocab_size=tokenizer.vocab_size, max_position_embeddings=64, tie_word_embeddings=True)
    mx.random.seed(0)
    student = Model(args)
    mx.random.seed(1)
    teacher = Model(args)
    split = tokenize(load_corpus("python-docs"), "train", tokenizer, cache_dir, 20_000)
    held_out = mx.array(np.asarray(split.tokens[-8 * 65:], dtype=np.int32).reshape(8, 65))

    def kl_now():
        return kl_to_teacher(student(held_out[:, :-1]), teacher(held_out[:, :-1])).mean().item()

    before = kl_now()
    cfg = TrainConfig(steps=30, batch_size=8, context=64, lr=3e-3, warmup=2, eval_every=1000)
    loss = DistillationLoss(teacher, 1.0, 1.0, 64)
    summary = Trainer(student, tokenizer, split, None, cfg, tmp_path / "run", loss=loss).run()
    assert kl_now() < 0.7 * before
    # the teacher's forward pass is in the budget: 2 per weight it multiplies by, per token
    student_only = student.flops_per_token(64)
    assert summary["flops"] == pytest.approx(summary["tokens"] * (student_only + teacher.flops_per_token(64, False)))


def test_distill_fine_tunes_the_slm_against_the_fine_tuned_llm(tmp_path, cache):
    report = _run("distill", tmp_path, cache, distill_temperature=2.0, distill_alpha=0.5)
    phases = report["phases"]
    assert report["preset"] == "tiny" and report["ppl_after"] < report["ppl_before"]
    # both generic pre-trainings are counted (shared), the teacher's fine-tuning per domain
    pre = phases["pretrain"]
    assert pre["flops"] == pytest.approx(pre["student"]["flops"] + pre["teacher"]["flops"])
    # the teacher's pre-training costs the student's FLOPs (within one of its steps): fewer tokens
    per_token = {p: ms.flops_per_token(ms.get_preset(p).model_args(512), 128) for p in ("tiny", "tiny-llm")}
    trained = {who: pre[who]["tokens"] * per_token[p] for who, p in (("student", "tiny"), ("teacher", "tiny-llm"))}
    assert abs(trained["teacher"] - trained["student"]) <= 8 * 128 * per_token["tiny-llm"]
    assert pre["teacher"]["tokens"] < pre["student"]["tokens"] / 3
    assert phases["teacher"]["flops"] > 0 and phases["teacher"]["preset"] == "tiny-llm"
    # the student's fine-tuning paid the teacher's forward pass on every token
    tiny, twin = (ms.get_preset(p).model_args(512) for p in ("tiny", "tiny-llm"))
    per_token = ms.flops_per_token(tiny, 128) + ms.flops_per_token(twin, 128, training=False)
    tuned = phases["finetune"]
    assert tuned["flops"] - tuned["valid_flops"] == pytest.approx(tuned["tokens"] * per_token)
    assert tuned["valid_flops"] > 0  # its validations (the student alone) are counted too
    # the paper's cost model: the two generic pre-trainings shared, the teacher's and the
    # student's fine-tunings paid again for every domain
    costs = report["costs"]
    assert costs["shared"]["phases"] == ["pretrain"] and costs["shared"]["flops"] == pre["flops"]
    assert sorted(costs["per_domain"]["phases"]) == ["finetune", "teacher"]
    per_domain = phases["teacher"]["flops"] + tuned["flops"]
    assert costs["per_domain"]["flops"] == pytest.approx(per_domain)
    assert total_cost(costs, 3)["flops"] == pytest.approx(pre["flops"] + 3 * per_domain)
    assert costs["inference"]["params"] == report["params"] and costs["inference"]["flops_per_token"] > 0
    with pytest.raises(ms.SpecializeError, match="--distill-alpha"):
        _run("distill", tmp_path / "bad", cache, distill_alpha=1.5)


def test_the_llm_and_the_distillation_teacher_are_one_fine_tuning(tmp_path, cache):
    """SLM-d's teacher is the LLM fine-tuned on the domain with SLM's recipe: `--method
    llm` at the same budget (the student's generic FLOPs) copies that fine-tuning rather
    than training it again, and reports its cost."""
    distilled = _run("distill", tmp_path, cache)
    llm = _run("llm", tmp_path, cache)
    teacher = distilled["phases"]["teacher"]
    assert llm["phases"]["finetune"]["cached"] is True
    assert llm["phases"]["finetune"]["flops"] == teacher["flops"] > 0
    ours, theirs = (dict(tree_flatten(ms.load_model(p)[0].parameters())) for p in (llm["model"], teacher["model"]))
    assert all(mx.array_equal(ours[name], theirs[name]).item() for name in theirs)
    # and the other way: an LLM fine-tuned first is the teacher a later distillation finds
    other = {**RUN, "domain_tokens": 16_000}
    first = ms.specialize("python-docs", method="llm", out_dir=tmp_path / "llm2", cache_dir=cache, **other)
    later = ms.specialize("python-docs", method="distill", out_dir=tmp_path / "distill2", cache_dir=cache, **other)
    assert first["phases"]["finetune"]["cached"] is False and later["phases"]["teacher"]["cached"] is True
    assert later["phases"]["teacher"]["flops"] == first["phases"]["finetune"]["flops"]


def test_llm_lora_trains_adapters_only_and_serves_them_fused(tmp_path, cache):
    """LLM + LoRA: mlx-lm's adapters on the frozen LLM, the paper's rank scaled to the
    width, fused for serving: the fused model's logits are the adapter model's."""
    from mlx_lm.tuner.utils import load_adapters

    from mlx_specialize.train.lora import adapter_params, lora_flops_per_token, lora_rank

    report = _run("llm-lora", tmp_path, cache)
    twin = ms.get_preset("tiny-llm").model_args(512)
    rank = lora_rank(twin)
    assert rank == round(256 * 64 / 2816) == 6
    assert report["preset"] == "tiny-llm" and report["ppl_after"] < report["ppl_before"]
    assert report["params"] == ms.count_params(twin)["total"]  # served at the LLM's own size
    run = Path(report["model"])
    adapters = mx.load(str(run / "adapters" / "adapters.safetensors"))
    assert sum(v.size for v in adapters.values()) == adapter_params(twin, rank)
    assert all(k.endswith(("lora_a", "lora_b")) for k in adapters)
    # its FLOPs: a frozen base's forward and activation backward, the adapters trained
    tuned = report["phases"]["finetune"]
    # by hand for tiny-llm (2 layers, d 256, F 672, 4 heads of 64, vocabulary 512, context 128), rank 6:
    # forward 2 N + 2 x 2 layers x 128 x 256, N = 2 (4 d^2 + 3 d F + 2 d) + d + V d (the norms' weights
    # counted, as the dense model's own FLOPs count them); adapters 2 x 6 x (4 (d + d) + 3 (d + F))
    forward = 2 * (2 * (4 * 256 ** 2 + 3 * 256 * 672 + 2 * 256) + 256 + 512 * 256) + 2 * 2 * 128 * 256
    adapters = 2 * 6 * (4 * (256 + 256) + 3 * (256 + 672))
    assert lora_flops_per_token(twin, 128, rank) == 2 * forward + 6 * adapters == 7_365_376
    assert tuned["flops"] - tuned["valid_flops"] == pytest.approx(tuned["tokens"] * (2 * forward + 6 * adapters))
    # fused (what is served) == the base with mlx-lm's own adapters loaded from the run
    fused, tokenizer, _ = ms.load_model(run)
    base, _, _ = ms.load_model(report["phases"]["pretrain"]["model"])
    load_adapters(base, str(run / "adapters"))
    x = mx.array([tokenizer.encode("def main():\n    return 0\n")[:64]])
    np.testing.assert_allclose(np.array(fused(x)), np.array(base(x)), rtol=1e-4, atol=1e-4)
    assert not mx.allclose(fused.layers[0].mlp.down_proj.weight,
                           ms.load_model(report["phases"]["pretrain"]["model"])[0].layers[0].mlp.down_proj.weight).item()
    # the adapters' random start follows the seed: the same command, from a process whose
    # generator has moved on since, trains the same adapters
    mx.random.uniform(shape=(7,))
    again = _run("llm-lora", tmp_path / "again", cache)
    theirs = mx.load(str(Path(again["model"]) / "adapters" / "adapters.safetensors"))
    ours = mx.load(str(run / "adapters" / "adapters.safetensors"))
    assert sorted(ours) == sorted(theirs) and all(mx.array_equal(ours[k], theirs[k]).item() for k in ours)
