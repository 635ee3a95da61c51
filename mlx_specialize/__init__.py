"""mlx-specialize: small, cheap-to-run language models specialized to a domain, in MLX.

Implements Grangier, Katharopoulos, Ablin & Hannun, "Specialized Language Models with
Cheap Inference from Limited Domain Data" (arXiv 2402.01093).
"""

# First, before anything imports mlx.core: the platform's set-up (accel.setup: on Linux
# an optimized BLAS, on x86-64 Linux a wider evaluation order; nothing on a Mac). The
# only thing importing the package does.
from . import accel
from .accel import BLAS, load_optimized_blas

accel.setup()

from .data.corpus import Corpus, bundled_names, load_corpus  # noqa: E402
from .data.tokenizer import Tokenizer, train_tokenizer  # noqa: E402
from .data.tokens import PackedWindows, TokenizedSplit, tokenize_split  # noqa: E402
from .errors import SpecializeError  # noqa: E402
from .runtime.cache import default_cache_dir  # noqa: E402
from .models.dense import Model, ModelArgs, count_params, flops_per_token  # noqa: E402
from .models.generate import generate_text, generate_tokens, measure_generation  # noqa: E402
from .models.io import load_model, save_model  # noqa: E402
from .models.presets import PRESETS, Preset, get_preset  # noqa: E402
from .models.projected import ProjectedModel, ProjectionArgs, instantiate, load_projected  # noqa: E402
from .specialize import specialize  # noqa: E402
from .train.evaluate import EvalResult, evaluate  # noqa: E402
from .train.jobs import evaluate_model, finetune, pretrain  # noqa: E402
from .methods.projected import instantiate_for_domain  # noqa: E402
from .train.projected import instantiate_folder, pretrain_projected  # noqa: E402
from .train.trainer import TrainConfig, Trainer  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BLAS", "Corpus", "EvalResult", "Model", "ModelArgs", "PRESETS", "PackedWindows", "Preset",
    "ProjectedModel", "ProjectionArgs", "SpecializeError", "TokenizedSplit", "Tokenizer", "TrainConfig", "Trainer", "bundled_names",
    "count_params", "default_cache_dir", "evaluate", "evaluate_model", "finetune", "flops_per_token", "generate_text",
    "generate_tokens", "get_preset", "instantiate", "instantiate_folder", "instantiate_for_domain",
    "load_corpus", "load_model", "load_optimized_blas", "load_projected", "measure_generation", "pretrain",
    "pretrain_projected", "save_model", "specialize", "tokenize_split", "train_tokenizer",
]
