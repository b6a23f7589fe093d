"""What a benchmark run shows: the issue's targets checked against the measurements, the printed
tables, and scaling.json.

A target is ``{"name", "value", "target", "met", "note"}``; ``met`` is None when the run did not
measure what the target needs (e.g. no ``--peer torch``, or no GPU).
"""

import json
import math
from pathlib import Path

TIME_RANGE = (0.85, 1.2)  # seq2seq exponents
ATTENTION_RANGE = (1.7, 2.3)
RECURRENT_D_RANGE = (1.6, 2.3)
BLOCKED_MEMORY_MAX = 1.2
REMAT_MEMORY_MAX = 0.05
RECURRENT_PEER_MAX = 1.2
ATTENTION_PEER_MAX = 2.0
ATTENTION_PEER_N = 1024
GPU_PEAK_FRACTION = 0.5
GPU_MIN_N, GPU_HEAD_DIM = 4096, 128


def _fit(fits: list, series: str, against: str) -> dict | None:
    return next((f for f in fits if f["series"] == series and f["against"] == against), None)


def _range_target(name: str, fit: dict | None, low: float, high: float) -> dict:
    if fit is None:
        return {"name": name, "value": None, "target": f"[{low}, {high}]", "met": None, "note": "not measured"}
    note = f"fit over {fit['against']} in [{fit['x_min']:.0f}, {fit['x_max']:.0f}], {fit['points']} points"
    return {"name": name, "value": fit["exponent"], "target": f"[{low}, {high}]",
            "met": low <= fit["exponent"] <= high, "note": note}


def _max_target(name: str, value: float | None, limit: float, note: str) -> dict:
    return {"name": name, "value": value, "target": f"<= {limit}", "met": None if value is None else value <= limit,
            "note": note if value is not None else f"not measured ({note})"}


def targets(results: dict) -> list[dict]:
    """The issue's targets, each checked on this run's results (see the module docstring)."""
    out = []
    if "seq2seq" in results:
        s = results["seq2seq"]
        for model in ("additive", "dot"):
            for pass_ in ("forward", "train"):
                fit = _fit(s["fits"], f"{model}/{pass_} time, large", "m*t")
                out.append(_range_target(f"seq2seq {model} {pass_} time ~ (m·t)^b", fit, *TIME_RANGE))
        for pass_ in ("forward", "train"):
            fit = _fit(s["fits"], f"none/{pass_} time, large", "m+t")
            out.append(_range_target(f"seq2seq none {pass_} time ~ (m+t)^b", fit, *TIME_RANGE))
        train = {(r["model"], r["scoring"], r["remat"]): r for r in s["memory"] if r["pass"] == "train"}
        remat, floor = train.get(("additive", "step", True)), train.get(("none", "step", False))
        note = f"m = t = {s['sizes']['memory_length']}, XLA memory_analysis"
        if floor is not None:
            note += f"; the model without attention: {floor['ratio_to_broadcast']:.3f}"
        out.append(_max_target("seq2seq step+remat train memory / broadcast", remat and remat["ratio_to_broadcast"],
                               REMAT_MEMORY_MAX, note))
    if "layers" in results:
        lay = results["layers"]
        fits, rows, sizes = lay["fits"], lay["measurements"], lay["sizes"]
        for kind in ("attention-reference", "attention-fused", "attention-blocked"):
            out.append(_range_target(f"{kind} forward time ~ n^b", _fit(fits, f"{kind}/forward time", "n"), *ATTENTION_RANGE))
        fit = _fit(fits, "attention-blocked/forward memory", "n")
        out.append(_max_target("attention-blocked forward memory ~ n^b", fit and fit["exponent"], BLOCKED_MEMORY_MAX,
                               f"fit over n in [{fit['x_min']:.0f}, {fit['x_max']:.0f}]" if fit else "blocked attention"))
        for kind in ("lstm", "gru"):
            for pass_ in ("forward", "train"):
                fit = _fit(fits, f"{kind}/{pass_} time", "d")
                out.append(_range_target(f"{kind} {pass_} time ~ d^b", fit, *RECURRENT_D_RANGE))
        out.extend(_peer_targets(rows, sizes))
        out.append(_gpu_target(rows, results["setting"], sizes))
    return out


def _peer_targets(rows: list, sizes: dict) -> list[dict]:
    out = []
    for kind in ("lstm", "gru"):
        ratios = [r for r in rows if r["kind"] == kind and r["pass"] == "train" and "ratio_to_peer" in r]
        at = next((r for r in ratios if r["n"] == sizes["fixed_n"] and r["d"] == sizes["fixed_d"]), None)
        note = f"torch.nn.{kind.upper()}, B={sizes['batch']}"
        if at is not None:
            spread = [r["ratio_to_peer"] for r in ratios]
            note += f", n={at['n']}, d={at['d']}; over all {len(spread)} sizes {min(spread):.2f}-{max(spread):.2f}"
        out.append(_max_target(f"{kind} forward+backward time / torch", at and at["ratio_to_peer"], RECURRENT_PEER_MAX, note))
    at = next((r for r in rows if r["kind"] == "attention-blocked" and r["n"] == ATTENTION_PEER_N
               and r["d"] == sizes["fixed_d"] and "ratio_to_peer" in r), None)
    out.append(_max_target("attention-blocked forward time / torch SDPA", at and at["ratio_to_peer"], ATTENTION_PEER_MAX,
                           f"n={ATTENTION_PEER_N}, d={sizes['fixed_d']}, B={sizes['batch']}"))
    return out


def _gpu_target(rows: list, setting: dict, sizes: dict) -> dict:
    name = "attention-fused bf16 forward fraction of dense peak (GPU)"
    fractions = [r["fraction_of_peak"] for r in rows if r["kind"] == "attention-fused" and r["pass"] == "forward"
                 and r["n"] >= GPU_MIN_N and "fraction_of_peak" in r]
    if setting["platform"] != "gpu" or setting["dtype"] != "bfloat16" or sizes["head_dim"] != GPU_HEAD_DIM or not fractions:
        return {"name": name, "value": None, "target": f">= {GPU_PEAK_FRACTION}", "met": None,
                "note": f"needs an NVIDIA GPU of known peak, --dtype bfloat16, n >= {GPU_MIN_N}, d_head = {GPU_HEAD_DIM}"}
    return {"name": name, "value": max(fractions), "target": f">= {GPU_PEAK_FRACTION}",
            "met": max(fractions) >= GPU_PEAK_FRACTION,
            "note": f"{setting['device_kind']}, best over n >= {GPU_MIN_N}"}


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g}"


def _spread(time: dict) -> str:
    return f"{_ms(time['min'])}-{_ms(time['max'])}"


def tables(results: dict) -> str:
    """The printed report: the run's setting, every measurement, the fits, and the targets."""
    s = results["setting"]
    header = (f"device {s['device_kind']} ({s['platform']}), host {s['host_cpu']} x{s['host_cores']}, dtype {s['dtype']}, "
              f"jax {s['jax']}, median of {results['repeats']} runs after {results['warmup']} warm-up")
    if "torch" in s:
        header += f", torch {s['torch']} ({s['torch_threads']} threads)"
    lines = [header + f", preset {results['preset']}"]
    if "seq2seq" in results:
        lines += _seq2seq_lines(results["seq2seq"])
    if "layers" in results:
        lines += _layer_lines(results["layers"])
    fits = results.get("seq2seq", {}).get("fits", []) + results.get("layers", {}).get("fits", [])
    lines += ["", "fitted exponents: log y = b·log x + c", f"{'series':41s} {'x':4s} {'b':>6s} {'range':>16s} {'points':>6s}"]
    for f in fits:
        span = f"{f['x_min']:.0f}-{f['x_max']:.0f}"
        lines.append(f"{f['series']:41s} {f['against']:4s} {f['exponent']:6.2f} {span:>16s} {f['points']:6d}")
    lines += ["", "targets", f"{'target':58s} {'value':>7s} {'wanted':>12s} {'met':>4s}  note"]
    for t in results["targets"]:
        value = "-" if t["value"] is None else f"{t['value']:.3g}"
        met = {True: "yes", False: "NO", None: "-"}[t["met"]]
        lines.append(f"{t['name']:58s} {value:>7s} {t['target']:>12s} {met:>4s}  {t['note']}")
    return "\n".join(lines)


def _seq2seq_lines(s: dict) -> list[str]:
    lines = ["", f"seq2seq (GRU, per batch of {s['sizes']['batch']}): time in ms, median (min-max)",
             (f"{'model':9s} {'m':>5s} {'t':>5s} {'m·t':>7s} {'pass':8s} {'time ms':>9s} {'spread':>15s} "
              f"{'scores':>8s} {'=m·t':>7s} {'steps':>6s} {'=m+t':>6s} {'MiB':>8s}")]
    for r in s["measurements"]:
        counts = (f"{r['scores_counted']:8d} {r['scores_analytic']:7d} {r['recurrent_steps_counted']:6d} "
                  f"{r['recurrent_steps_analytic']:6d}" if "scores_counted" in r else " " * 30)
        lines.append(f"{r['model']:9s} {r['m']:5d} {r['t']:5d} {r['m'] * r['t']:7d} {r['pass']:8s} "
                     f"{_ms(r['time']['median']):>9s} {_spread(r['time']):>15s} {counts} {r['memory']['peak'] / 2**20:8.2f}")
    lines += ["", f"additive attention memory at m = t = {s['sizes']['memory_length']} (XLA memory_analysis)",
              f"{'model':9s} {'scoring':10s} {'remat':6s} {'pass':8s} {'MiB':>9s} {'/ broadcast':>12s} {'time ms':>9s}"]
    for r in s["memory"]:
        scoring = "-" if r["model"] == "none" else r["scoring"]
        lines.append(f"{r['model']:9s} {scoring:10s} {r['remat']!s:6s} {r['pass']:8s} {r['memory']['peak'] / 2**20:9.2f} "
                     f"{r['ratio_to_broadcast']:12.3f} {_ms(r['time']['median']):>9s}")
    return lines


def _layer_lines(lay: dict) -> list[str]:
    z = lay["sizes"]
    lines = ["", (f"layers (batch {z['batch']}, head width {z['head_dim']}, kernel {z['kernel_size']}, "
                  f"block {z['block_size']}, fused attention: {lay['implementation']})"),
             (f"{'kind':19s} {'n':>5s} {'d':>5s} {'pass':8s} {'time ms':>9s} {'spread':>15s} {'GFLOP':>8s} "
              f"{'XLA GFLOP':>9s} {'GFLOP/s':>8s} {'MiB':>8s} {'peer ms':>9s} {'ratio':>6s}")]
    for r in lay["measurements"]:
        fl = (f"{r['flops_analytic'] / 1e9:8.3f} {_num(r['flops_xla_corrected']) / 1e9:9.3f} {r['flops_per_s'] / 1e9:8.2f}"
              if "flops_analytic" in r else " " * 26)
        peer = f"{_ms(r['peer_time']['median']):>9s} {r['ratio_to_peer']:6.2f}" if "peer_time" in r else ""
        lines.append(f"{r['kind']:19s} {r['n']:5d} {r['d']:5d} {r['pass']:8s} {_ms(r['time']['median']):>9s} "
                     f"{_spread(r['time']):>15s} {fl} {r['memory']['peak'] / 2**20:8.2f} {peer}")
    return lines


def _num(x) -> float:
    return float("nan") if x is None else x


def _json_safe(value):
    """NaN and infinities as null (strict JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(results: dict, path: Path) -> None:
    """scaling.json: every measurement, fit and target (strict JSON: NaN written as null)."""
    path.write_text(json.dumps(_json_safe(results), indent=1, allow_nan=False) + "\n")
