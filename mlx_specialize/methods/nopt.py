"""SLM-nopt (`--method nopt`): an SLM trained on the domain data only, no pre-training.

The paper's lower reference: what the domain data alone gives a small model. The model
starts from a random initialisation (seeded) with the generic corpus' tokenizer, the same
one every other method uses, so its perplexity per token compares with theirs; it is then
trained on the domain's train tokens at the preset's own learning rate and warm-up (not
the fine-tuning's lr / 3: nothing was learnt before), early-stopped on the domain's valid
split, within `--finetune-tokens`. Its generic pre-training cost is 0.
"""

from __future__ import annotations

import json

import mlx.core as mx

from .. import ui
from ..models.dense import Model
from ..models.io import save_model
from ..models.presets import get_preset
from ..runtime.cache import cache_entry
from .base import Method, Prepared, Settings
from .clusters import cache_key, generic_tokenizer


class NoPretraining(Method):
    name = "nopt"
    paper = "SLM-nopt"

    def prepare(self, s: Settings) -> Prepared:
        """The seeded random initialisation of the preset with the generic tokenizer
        (cached: every domain of one seed starts from the same weights)."""
        preset = get_preset(s.preset)
        tokenizer = generic_tokenizer(s.generic, s.vocab_size or preset.vocab, s.cache_dir, s.tokenizer_sample)
        folder = s.cache_dir / "initialized" / cache_key(tokenizer.fingerprint, preset.__dict__, s.seed)
        with cache_entry(folder, f"a random '{preset.name}' model (seed {s.seed})") as entry:
            if entry.ready:
                ui.info(f"using the cached initialisation {folder}")
            else:
                mx.random.seed(s.seed)  # as `pretrain` seeds its initialisation
                model = Model(preset.model_args(tokenizer.vocab_size))
                save_model(model, entry.build, tokenizer, {"job": "init", "preset": preset.name, "lr": preset.lr,
                                                           "batch_size": preset.batch_size})
                (entry.build / "summary.json").write_text(json.dumps({"tokens": 0, "seconds": 0.0, "flops": 0.0}))
                entry.publish()
        return Prepared(folder, {"pretrain": {"tokens": 0, "seconds": 0.0, "flops": 0.0, "model": str(folder)}})

    def finetune_options(self, s: Settings, phases: dict) -> dict:
        """Trained from scratch: the preset's learning rate and warm-up."""
        preset = get_preset(s.preset)
        return {"lr": preset.lr, "warmup": preset.warmup}
