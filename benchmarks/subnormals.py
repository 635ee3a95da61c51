"""What flushing subnormal floats to zero (accel/subnormals.py) buys a trained model's
training step on an x86 CPU: the same compiled forward + backward step, on the same
batch of domain text, timed in two fresh processes, one with MLXSPEC_FLUSH_SUBNORMALS=0
(subnormals kept, MLX's default) and one with the package's default (flushed).

    python benchmarks/subnormals.py MODEL_FOLDER [--corpus ../shared/minipile/licenses.jsonl.gz]
        [--lora-rank 9] [--batch 8] [--steps 4] [--weights CHECKPOINT.safetensors]

MODEL_FOLDER: a model that has trained a while (a fresh one makes few subnormals), e.g.
the study's cached LLM twin pre-training; --lora-rank trains LoRA adapters on it (the
study's LLM + LoRA cells), 0 the whole model; --weights loads a run's checkpoint on top
(its adapters, trained). Prints each process's seconds per step and
forward pass, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, time
from functools import partial
import mlx_specialize
import mlx.core as mx
import mlx.nn as nn
from mlx_specialize import accel, load_corpus
from mlx_specialize.models.io import load_model
from mlx_specialize.train.lora import add_adapters
from mlx_specialize.train.parallel import training_loss
from mlx_specialize.accel import subnormals

folder, corpus, rank, batch, steps = sys.argv[1:3] + [int(a) for a in sys.argv[3:6]]
weights = sys.argv[6] if len(sys.argv) > 6 else None
model, tokenizer, config = load_model(folder)
context = config.get("max_position_embeddings", 256)
tokens = []
for doc in load_corpus(corpus).documents("train"):
    tokens += tokenizer.encode(doc)
    if len(tokens) > batch * (context + 1):
        break
rows = mx.array(tokens[: batch * (context + 1)]).reshape(batch, context + 1)
x, y = rows[:, :-1], rows[:, 1:]
mx.random.seed(0)
if rank:
    add_adapters(model, rank)
if weights:  # a run's checkpoint (the adapters' too)
    model.load_weights(list(mx.load(weights).items()), strict=False)
accel.prepare(model)
vg = nn.value_and_grad(model, lambda m, x, y: training_loss(m, x, y, [mx.default_stream(mx.cpu)]))
state = [model.state]
step = partial(mx.compile, inputs=state, outputs=state)(lambda x, y: vg(model, x, y))
with accel.scope("float32"):
    for _ in range(2):
        mx.eval(step(x, y))
    t = time.perf_counter()
    for _ in range(steps):
        loss, grads = step(x, y)
        mx.eval(loss, grads)
    per_step = (time.perf_counter() - t) / steps
    t = time.perf_counter()
    for _ in range(steps):
        mx.eval(model(x))
    forward = (time.perf_counter() - t) / steps
print(json.dumps({"subnormals": subnormals.status(), "loss": loss.item(), "step_s": per_step, "forward_s": forward}))
"""


def run(args, flush: bool) -> dict:
    env = dict(os.environ)
    if flush:
        env.pop("MLXSPEC_FLUSH_SUBNORMALS", None)
    else:
        env["MLXSPEC_FLUSH_SUBNORMALS"] = "0"
    out = subprocess.run([sys.executable, "-c", CHILD, args.model, args.corpus, str(args.lora_rank), str(args.batch),
                          str(args.steps), *([args.weights] if args.weights else [])], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--corpus", default=os.path.join(os.path.dirname(__file__), "../../shared/minipile/"
                                                         "licenses.jsonl.gz"))
    parser.add_argument("--lora-rank", type=int, default=9)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--weights", help="a training run's checkpoint weights (.safetensors) to load on top, "
                        "adapters included: RUN/adapters/checkpoints/step_N/model.safetensors")
    args = parser.parse_args()
    kept, flushed = run(args, flush=False), run(args, flush=True)
    for name, r in (("kept", kept), ("flushed", flushed)):
        print(f"subnormals {name:8s} ({r['subnormals']}): step {r['step_s']:.3f} s, forward {r['forward_s']:.3f} s, "
              f"loss {r['loss']:.4f}")
    print(f"flushed / kept: step {kept['step_s'] / flushed['step_s']:.2f}x faster, "
          f"forward {kept['forward_s'] / flushed['forward_s']:.2f}x faster")


if __name__ == "__main__":
    main()
