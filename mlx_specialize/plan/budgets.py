"""The planner's inputs as a user writes them: budgets in FLOPs or in tokens of the
study's preset, the inference budget as a preset or a parameter count, and what a domain
corpus tells before anything is trained (its xz bits per byte, its size).

Defaults, so that `mlxspec plan` alone answers: a laptop's budgets, at the scale the study
measured: the generic pre-training of its largest budget (one pass of `small` over the
standard generic set; BENCHMARKS.md times it), a per-domain budget
that affords fine-tuning at any measured size, the SLM's size to serve, one domain of
100k tokens.
"""

from __future__ import annotations

import lzma
import math
import re
from decimal import Decimal

from ..errors import SpecializeError
from ..train.config import MAX_TOKENS

DEFAULT_PRETRAIN = "12.5M tokens"
DEFAULT_SPECIALIZE = "1e14"
DEFAULT_INFERENCE = "small"
DEFAULT_DOMAIN_TOKENS = 100_000
# a cost that equals its budget fits it: a budget is often written as the cost itself
# (a measured cell's FLOPs, printed to a few digits), which floating point must not exceed
TOLERANCE = 1e-9
XZ_CONTEXT_BYTES = 2_000_000  # the protocol's floor: xz -9e given the last 2 MB of the train split
# below these, a domain's floor is measured on far less than the study's targets' was (52-241 KB
# held out, 1.3-2 MB of context): the level a prediction is anchored on is less sure than stated
SMALL_HELD_OUT_BYTES = 20_000
SMALL_CONTEXT_BYTES = 500_000

# no "E" (exa): "1.5e" is far likelier an exponent left unfinished than 1.5e18
_SUFFIX = {"k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9, "t": 10**12, "p": 10**15}
_AMOUNT = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*([a-z]*)\s*$", re.IGNORECASE)
TOKEN_UNITS = {"", "tok", "toks", "token", "tokens"}
_UNITS = TOKEN_UNITS | {"flop", "flops", "param", "params", "parameters", "s", "sec", "second", "seconds",
                        "min", "mins", "minute", "minutes", "h", "hr", "hour", "hours"}


class AmountError(ValueError):
    """An amount that cannot be read; its message names the text, not the option."""


class UnreadableAmount(AmountError):
    """Text that is no amount at all, or an amount in a unit not known here."""


# thousands separated by commas, as in 1,000,000 (a decimal comma, 1,5M, is refused, not read as 15M)
_GROUPED = re.compile(r"^\s*[-+]?[0-9]{1,3}(,[0-9]{3})+(\.[0-9]*)?([^0-9,.].*)?$")


def amount(text: str, times: bool = True) -> tuple[Decimal, str]:
    """(number, unit) of "2e14", "200T FLOPs", "12.5M tokens", "1_000", "1,000", "30min":
    exact (1.1M is 1,100,000), the unit lower-cased ("" when none). An SI prefix (k, M, G
    or B, T, P) only where the letters are not a unit themselves. Where `times` may be
    written, a bare "m" (minutes? millions?) is refused. The one parser of every amount
    a user writes: the planner's budgets and the CLI's counts of tokens."""
    if "," in text and not _GROUPED.match(text):
        raise AmountError(f"'{text}': commas may only separate thousands (1,500,000); write 1.5M for one and a half "
                          "million")
    cleaned = text.replace("_", "").replace(",", "").strip()
    match = _AMOUNT.match(cleaned)
    if not match:
        raise UnreadableAmount(f"'{text}' is not an amount (write 2e14, 2e14 FLOPs, 12.5M tokens or 30min)")
    number, word, unit = match.groups()
    word, unit = word.lower(), unit.lower()
    if times and word == "m" and not unit:  # 45m: minutes or millions? refused rather than guessed
        raise AmountError(f"'{text}' is ambiguous: write {number}min for minutes, or {number}M FLOPs "
                          f"or {number}M tokens")
    if not unit and word in _UNITS:
        value = Decimal(number)
    elif word[:1] in _SUFFIX and not (unit and word[1:]) and (unit or word[1:]) in _UNITS:
        value, word = Decimal(number) * _SUFFIX[word[0]], unit or word[1:]
    elif word[:1] == "e" and cleaned[len(number):][:1].lower() == "e":
        raise AmountError(f"'{text}' has an exponent without its digits (write {number}e14, say)")
    else:
        raise UnreadableAmount(f"unknown unit '{(word + ' ' + unit).strip()}' in '{text}' "
                               "(FLOPs, tokens, or s, min, h)")
    if value > 0 and not math.isfinite(float(value)):  # a negative one is refused as such by the callers
        raise AmountError(f"'{text}' is too large")
    return value, word


def _amount(text: str, option: str, times: bool = True) -> tuple[float, str]:
    """`amount` for a budget: a positive number as a float, errors naming `option`."""
    try:
        value, unit = amount(text, times)
    except AmountError as error:
        raise SpecializeError(f"{option}: {error}") from None
    if float(value) <= 0:
        raise SpecializeError(f"{option}: a budget must be positive, not '{text}'")
    return float(value), unit


_SECONDS = {"s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0, "min": 60.0, "mins": 60.0, "minute": 60.0,
            "minutes": 60.0, "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0}
MAX_SECONDS = 100_000 * 3600.0  # a budget in time, at most: eleven years of one machine


def within(cost: float, budget: float) -> bool:
    """Whether `cost` fits `budget` (same unit), up to TOLERANCE of it."""
    return cost <= budget * (1 + TOLERANCE)


def compute_budget(text: str, option: str, flops_per_token: float) -> tuple[float, str, str]:
    """(amount, "flops", written) from "2e14", "2e14 FLOPs", "200T FLOPs" or "12.5M tokens"
    (tokens of the study's preset, at what SLM's pre-training of one token costs,
    validation included); (seconds, "seconds", "seconds") from "90s", "30 min" or "2h"
    (time on this machine, which `plan` calibrates). `written` is the unit the user wrote:
    "flops", "tokens", "seconds", or "" for a bare number (read as FLOPs)."""
    value, unit = _amount(text, option)
    if not math.isfinite(value * flops_per_token):
        raise SpecializeError(f"{option}: '{text}' is too large")
    if unit in TOKEN_UNITS or unit in ("flop", "flops"):
        in_tokens = unit in TOKEN_UNITS - {""}  # a bare number is FLOPs
        flops = value * flops_per_token if in_tokens else value
        if flops > MAX_TOKENS * flops_per_token:  # as the token options are bounded
            raise SpecializeError(f"{option}: '{text}' pays for more than {MAX_TOKENS:.0e} tokens, the most any "
                                  "budget here can train")
        return flops, "flops", "tokens" if in_tokens else "flops" if unit else ""
    if unit in _SECONDS:
        seconds = value * _SECONDS[unit]
        if not 1 <= seconds <= MAX_SECONDS:
            raise SpecializeError(f"{option}: '{text}' is " + ("less than a second" if seconds < 1 else
                                                               f"more than {MAX_SECONDS / _SECONDS['h']:,.0f} hours"))
        return seconds, "seconds", "seconds"
    raise SpecializeError(f"{option}: unknown unit '{unit}' in '{text}' (FLOPs, tokens, or s, min, h)")


def inference_budget(text: str, option: str, presets: dict) -> float:
    """Parameters of the largest servable model from a preset's name ("small") or a
    count ("2M", "2e6", "2M params")."""
    if text in presets:
        return float(presets[text])
    try:
        value, unit = _amount(text, option, times=False)
    except SpecializeError:
        value, unit = 0.0, ""
    if unit not in ("", "param", "params", "parameters") or value < 1 or value != round(value) \
            or not math.isfinite(value):
        raise SpecializeError(f"{option}: '{text}' is neither a preset ({', '.join(presets)}) nor a parameter count")
    return value


def xz_bits_per_byte(context: bytes, held_out: bytes) -> float:
    """Bits per byte xz -9e needs for `held_out` after `context` (the protocol's floor):
    8 x (|xz(context + held_out)| - |xz(context)|) / |held_out|. The extreme preset, as
    it reproduces the protocol's published floors for all three targets, documents
    joined by blank lines (plain -9 codes licenses at 0.53 against its 0.51)."""
    if not held_out:
        raise SpecializeError("the domain has no held-out text to measure its xz bits per byte on")
    preset = 9 | lzma.PRESET_EXTREME
    with_held = len(lzma.compress(context + held_out, preset=preset))
    return 8.0 * (with_held - len(lzma.compress(context, preset=preset))) / len(held_out)


def domain_features(spec: str, tokenizer: str | None = None, clusters: str | None = None,
                    cache_dir=None) -> dict:
    """What the planner reads from a domain corpus before anything is trained: its xz -9e
    bits per byte on its test split (valid if it has none) after the last 2 MB of its
    train split, and the train split's bytes; with a `tokenizer` (the study's: a model
    folder or tokenizer.model), its train tokens and the held-out split's bytes per token;
    with `clusters` too (a clustering of the study's generic corpus, made with that
    tokenizer: `cluster_features`), its cluster histogram's entropy and distance to the
    generic mix's."""
    from ..data.corpus import load_corpus, split_hint
    from ..data.tokenizer import Tokenizer

    encoder = Tokenizer.load(tokenizer) if tokenizer else None  # a bad path fails before the corpus is read
    if clusters is not None:
        if encoder is None:
            raise SpecializeError("--clusters needs --tokenizer: the domain's windows are clustered as tokens")
        from ..methods.clusters import load_clusters

        clustering = load_clusters(clusters)
        if clustering.meta.get("tokenizer") != encoder.fingerprint:
            raise SpecializeError(f"--clusters {clusters} was made with another tokenizer than --tokenizer {tokenizer}")
    corpus = load_corpus(spec)
    counts = corpus.check(splits=("train",))
    held_split = "test" if counts.get("test") else "valid" if counts.get("valid") else None
    if held_split is None:
        raise SpecializeError(f"--domain {spec}: no valid or test documents to measure its xz bits per byte on; "
                              f"{split_hint('test')}")
    train_docs, held_docs = list(corpus.documents("train")), list(corpus.documents(held_split))
    train, held = "\n\n".join(train_docs).encode(), "\n\n".join(held_docs).encode()
    features = {"floor": xz_bits_per_byte(train[-XZ_CONTEXT_BYTES:], held), "train_bytes": len(train),
                "held_out": held_split, "held_out_bytes": len(held),
                "context_bytes": min(len(train), XZ_CONTEXT_BYTES)}
    if encoder is not None:
        features["train_tokens"] = sum(map(len, encoder.encode_batch(train_docs)))
        held_tokens = sum(map(len, encoder.encode_batch(held_docs)))
        features["bytes_per_token"] = sum(len(d.encode()) for d in held_docs) / max(held_tokens, 1)
    if clusters is not None:
        features.update(cluster_features(spec, encoder, clustering, cache_dir))
    return features


def cluster_features(spec: str, tokenizer, clustering, cache_dir=None) -> dict:
    """The domain's train windows assigned to the generic clusters (as SLM-is assigns
    them): the entropy of their histogram and its KL divergence to the generic
    histogram, in nats, as SLM-is's selection reports them (`entropy_domain`,
    `kl_generic`)."""
    from ..data.selection import entropy, histogram, kl_divergence
    from ..methods.clusters import corpus_split, domain_histogram_labels
    from ..runtime.cache import default_cache_dir

    cache_dir = cache_dir or default_cache_dir()
    split = corpus_split(spec, "train", tokenizer, cache_dir)
    p_domain = histogram(domain_histogram_labels(clustering, split, tokenizer, cache_dir), clustering.k)
    p_generic = histogram(clustering.labels, clustering.k)
    return {"entropy": entropy(p_domain), "kl_generic": kl_divergence(p_domain, p_generic), "k": clustering.k}
