"""The results of the commands whose reports are more than key / value pairs, as tables
and lines to print (`output.emit`): the presets, specialize's phases, a selection's
clusters, bench's speed and cost; and the title of pre-training's summary."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from .output import add_row, make_table, summary_table


def presets_table(rows: list[dict]) -> Table:
    """`presets`: each preset's shape, parameters and training FLOPs per token."""
    numbers = ("L", "d", "mlp", "heads", "vocab", "ctx", "params", "train FLOP/tok")
    table = make_table("presets (parameters at each preset's default vocabulary)", "preset", "role", *numbers,
                       right=numbers)
    for r in rows:
        add_row(table, r["name"], r["role"], r["layers"], r["d_model"], r["mlp"], r["heads"], r["vocab"], r["context"],
                f"{r['params'] / 1e6:.1f}M", f"{r['train_flops_per_token'] / 1e6:,.0f}M")
    return table


def pretrain_table(arch: str, preset: str, out_dir: Path, summary: dict) -> Table:
    """`pretrain`'s summary, titled by what was pre-trained (a mixture: its k experts,
    listed in mixture.json, not here)."""
    what = {"dense": preset, "mix": f"{summary.get('k')} '{preset}' experts"}.get(arch, f"a '{preset}' {arch}")
    return summary_table(f"pre-trained {what} -> {out_dir}", {k: v for k, v in summary.items() if k != "experts"})


def specialize_view(report: dict) -> list:
    """`specialize`'s summary table, its cost line (shared / per domain / inference) and
    its line on generation speed and domain data."""
    fin, costs = report["phases"]["finetune"], report.get("costs")  # a report of an older version has no costs
    stop = ("early-stopped" if fin["stopped_early"]
            else f"stopped at the {fin['max_steps']:,}-step bound" if fin.get("max_steps") == fin["steps"] else "")
    lines = [specialize_table(report)]
    if costs:
        shared, per_domain, serve = costs["shared"], costs["per_domain"], costs["inference"]
        lines.append(f"cost: shared {shared['flops']:.2e} FLOPs ({shared['seconds']:.0f} s), per domain "
                     f"{per_domain['flops']:.2e} FLOPs ({per_domain['seconds']:.0f} s): N domains cost shared + N x "
                     f"per domain (validation included); inference {serve['flops_per_token']:.2e} FLOPs per token")
    if report.get("plan"):  # --method auto: what the planner chose, and why
        lines.append(f"--method auto chose {report['method']}: {report['plan']['reason']}")
    return [*lines,
            f"generation: {report['gen_tok_s']:.0f} tok/s (batch 1); domain data: {fin['domain_tokens']:,} tokens"
            f"{', ' + stop if stop else ''}"]


def specialize_table(report: dict) -> Table:
    """`specialize`'s summary: one row per phase (clustering, selection, pre-training,
    fine-tuning)."""
    table = make_table(f"{report['method']} on {report['domain']}: {report['params'] / 1e6:.2f}M params -> "
                       f"{report['model']}", "phase", "tokens", "seconds", "FLOPs", "test ppl", "test bits/byte",
                       right=("tokens", "seconds", "FLOPs", "test ppl", "test bits/byte"))
    pre, fin = report["phases"]["pretrain"], report["phases"]["finetune"]
    cached = " (cached)" if pre.get("cached") else " (given)" if "given" in pre else ""
    sel = report["phases"].get("select", {})
    kind = {"is": "importance-sampled", "mix": f"{sel.get('k')} experts'", "pn": "projected network",
            "soup": "soup of experts"}.get(report["method"], "generic")
    before = (f"{report['ppl_before']:.2f}", f"{report['bpb_before']:.3f}")
    pretrain_row = (f"{kind} pre-train{cached}", f"{pre['tokens']:,}", f"{pre['seconds']:.0f}", f"{pre['flops']:.2e}")
    # In the order the phases ran; the test figures before fine-tuning on the row of the
    # model they measure (SLM-mix's chosen expert, pn's instantiated SLM).
    clusters = report["phases"].get("clusters")
    if clusters:  # SLM-is, -mix, -pn, the soup: the generic corpus clustered first (shared)
        seconds, flops = clusters.get("seconds"), clusters.get("flops")  # None: cached before costs were kept
        add_row(table, f"cluster generic (k={clusters['k']}, {clusters['embedder']})"
                + (" (cached)" if clusters.get("cached") else ""), f"{clusters['windows']:,} win",
                "-" if seconds is None else f"{seconds:.0f}", "-" if flops is None else f"{flops:.2e}", "", "")
    if "kl_selected" in sel:  # SLM-is: select, then pre-train on the selection
        add_row(table, f"select (k={sel['k']}, KL {sel['kl_generic']:.3f} -> {sel['kl_selected']:.3f})",
                f"{sel['windows']:,} win", f"{sel['seconds']:.0f}", "", "", "")
        add_row(table, *pretrain_row, *before)
    elif "expert" in sel or "instance" in sel:  # pre-train once for all domains, then choose
        add_row(table, *pretrain_row, "", "")
        if "expert" in sel:
            chosen = f"choose expert {sel['expert']} of {sel['k']} ({sel['rule']})"
        else:
            target = f"cluster {sel['cluster']}" if "cluster" in sel else "the domain's histogram"
            chosen = f"instantiate for {target} of {sel['k']}"
        add_row(table, chosen, "", f"{sel['seconds']:.0f}", "", *before)
    else:
        add_row(table, *pretrain_row, *before)
    tuned = f"domain fine-tune (LoRA rank {fin['lora_rank']}, fused)" if fin.get("lora_rank") else "domain fine-tune"
    add_row(table, tuned, f"{fin['tokens']:,}", f"{fin['seconds']:.0f}", f"{fin['flops']:.2e}",
            f"{report['ppl_after']:.2f}", f"{report['bpb_after']:.3f}")
    return table


def selection_view(report: dict, out_dir: Path) -> list:
    """`data select`'s top clusters (domain, generic and selected shares, a sample of
    text) and its line on repeats and unmatched mass."""
    table = make_table(f"{report['sampler']} sampler: {report['windows']:,} windows -> {out_dir} "
                       f"(KL(D||selected) {report['kl_selected']:.4f}, KL(D||generic) {report['kl_generic']:.4f} "
                       f"nats, H(D) {report['entropy_domain']:.3f})", "cluster", "P(c|D)", "P(c|G)", "selected",
                       "sample")
    for c in report["top_clusters"]:
        add_row(table, c["cluster"], f"{c['p_domain']:.3f}", f"{c['p_generic']:.3f}", f"{c['p_selected']:.3f}",
                c["sample"][:80])
    rep = report["repeats"]
    return [table, f"unique windows {rep['unique']:,}, most repeats of one window {rep['max']}, drawn n times: "
                   f"{rep['drawn_times']}; unmatched domain mass {report['unmatched_mass']:.3f}; chart "
                   f"{out_dir / 'histograms.png'}"]


def bench_view(report: dict) -> list:
    """`bench`'s speed table, its size / bound / cost table and the line saying what they mean."""
    cfg = report["settings"]
    title = (f"{report['device']}: prompt {cfg['prompt_tokens']} tokens, generate {cfg['generation_tokens']}, "
             f"batch {cfg['batch_size']}, mean ± std of {cfg['trials']} trials")
    speed = make_table(title, "model", "variant", "prompt tok/s", "generation tok/s", "first token ms", "peak MB")
    quality = ["test ppl", "bits/byte"] if cfg["eval_corpus"] else []
    cost = make_table(f"size, bandwidth bound ({report['bandwidth_gb_s']:.1f} GB/s copy) and serving cost",
                      "model", "variant", "params", "MB", "bits/w", "bound tok/s", "of bound", "hours / 1B tok",
                      "cost", *quality)
    for r in report["models"]:
        m, sd = r["mean"], r["std"]
        label = Path(r["model"]).name if Path(r["model"]).exists() else r["model"]
        add_row(speed, label, r["variant"], f"{m['prompt_tps']:,.0f} ± {sd['prompt_tps']:,.0f}",
                f"{m['generation_tps']:,.1f} ± {sd['generation_tps']:,.1f}",
                f"{m['ttft_s'] * 1e3:,.1f} ± {sd['ttft_s'] * 1e3:,.1f}", f"{m['peak_memory_gb'] * 1e3:,.1f}")
        add_row(cost, label, r["variant"], f"{r['params'] / 1e6:.2f}M", f"{r['bytes'] / 1e6:.1f}",
                f"{r['bits_per_weight']:.1f}", f"{r['bound_tok_s']:,.0f}", f"{r['fraction_of_bound']:.0%}",
                f"{r['device_hours_per_billion']:,.1f}", f"{r['cost_vs_first']:.2f}x",
                *([f"{r['ppl']:.2f}", f"{r['bpb']:.3f}"] if quality else []))
    return [speed, cost, "bound: batch x bandwidth / weight bytes read per decoding step; hours / 1B tok: device "
                         "hours to generate a billion tokens at the measured speed; cost: relative to the first row."]
