"""All matplotlib use in the zoo: attention heatmaps and the benchmark's log-log plots.
Imported lazily by the command-line tools."""

import math
from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_attention(translations, path, layer: int = -1) -> None:
    """Heatmaps of attention weights: target tokens (rows) × source tokens (columns).

    A model with one attention per step (the recurrent ones) gets one panel per sentence; a
    model with several heads (Transformer, ConvS2S) gets one row of panels per sentence, one panel
    per head of decoder layer ``layer``.

    Args:
      translations: :class:`zoo.translator.Translation` objects.
      path: the PNG to write.
      layer: decoder layer index (Python indexing: −1 is the last).

    Raises:
      ValueError: ``layer`` out of range.
    """
    num_layers, num_heads = translations[0].heads.shape[:2]
    if not -num_layers <= layer < num_layers:
        raise ValueError(f"layer {layer} out of range: the model has {num_layers} decoder layer(s)")
    if num_heads == 1:
        panels = [(t, t.heads[layer, 0], "") for t in translations]
        cols = min(len(panels), 2)
    else:
        panels = [(t, t.heads[layer, h], f"layer {layer % num_layers}, head {h}") for t in translations
                  for h in range(num_heads)]
        cols = min(num_heads, 4)
    rows = math.ceil(len(panels) / cols)
    size = 7 if num_heads == 1 else 4
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, (size - 1) * rows), squeeze=False,
                             layout="constrained")
    for ax, (t, weights, title) in zip(axes.flat, panels):
        image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(t.source_tokens)), t.source_tokens, rotation=60, ha="right")
        ax.set_yticks(range(len(t.tokens)), t.tokens)
        ax.set_xlabel("source")
        ax.set_ylabel("target")
        ax.set_title(title)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.colorbar(image, ax=axes, label="attention weight α", shrink=0.6)
    fig.savefig(path, dpi=100 if num_heads > 1 else 120)
    plt.close(fig)


SIZE_OF = {"m*t": lambda r: r["m"] * r["t"], "m+t": lambda r: r["m"] + r["t"], "n": lambda r: r["n"], "d": lambda r: r["d"]}
AXIS_LABEL = {"m*t": "m·t (source × target length)", "m+t": "m + t", "n": "sequence length n", "d": "width d"}


def _panel(ax, rows_by_series: dict, fits: list, against: str, value, fit_kinds: tuple, ylabel: str) -> None:
    """One log-log panel: a marker series per name and its fitted lines over their fit ranges,
    the first of ``fit_kinds`` solid, any others dotted; the legend gives every slope."""
    for i, (name, rows) in enumerate(rows_by_series.items()):
        color = f"C{i}"
        x = np.array([SIZE_OF[against](r) for r in rows], dtype=float)
        y = np.array([value(r) for r in rows], dtype=float)
        order = np.argsort(x)
        ax.plot(x[order], y[order], "o", color=color, markersize=4, alpha=0.8)
        slopes = []
        for style, kind in zip(("-", ":", ":"), fit_kinds):
            fit = next((f for f in fits if f["series"] == f"{name} {kind}" and f["against"] == against), None)
            if fit is not None:
                xs = np.geomspace(fit["x_min"], fit["x_max"], 20)
                ax.plot(xs, np.exp(fit["intercept"]) * xs ** fit["exponent"], style, color=color)
                slopes.append(f"{fit['exponent']:.2f} over {fit['x_min']:.0f}-{fit['x_max']:.0f}")
        ax.plot([], [], "o-", color=color, label=f"{name}: slope " + ", ".join(slopes) if slopes else name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(AXIS_LABEL[against])
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def seq2seq_plot(results: dict, path: Path) -> None:
    """Time against m·t and against m + t, one row per timed pass, a series per model."""
    s = results["seq2seq"]
    passes = list(dict.fromkeys(r["pass"] for r in s["measurements"]))
    fig, axes = plt.subplots(len(passes), 2, figsize=(10, 4 * len(passes)), squeeze=False, layout="constrained")
    for row, pass_ in zip(axes, passes):
        series = {}
        for r in s["measurements"]:
            if r["pass"] == pass_:
                series.setdefault(f"{r['model']}/{pass_}", []).append(r)
        for ax, against in zip(row, ("m*t", "m+t")):
            _panel(ax, series, s["fits"], against, lambda r: r["time"]["median"], ("time, large", "time"),
                   f"{pass_} time (s)")
    fig.suptitle(f"GRU seq2seq, batch {s['sizes']['batch']}, H = A = {s['sizes']['hidden']}: "
                 f"{results['setting']['device_kind']}, {results['setting']['dtype']} "
                 f"(solid: fit over m·t >= {s['sizes']['fit_from']}, dotted: whole grid)")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def memory_plot(results: dict, path: Path) -> None:
    """XLA's peak memory of the additive attention's variants at m = t = memory_length."""
    s = results["seq2seq"]
    rows = s["memory"]
    labels = [("no attention" if r["model"] == "none" else f"{r['scoring']}{' +remat' if r['remat'] else ''}")
              + f"\n{r['pass']}" for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    bars = ax.bar(labels, [r["memory"]["peak"] / 2**20 for r in rows], color=[f"C{i}" for i in range(len(rows))])
    ax.bar_label(bars, [f"{r['ratio_to_broadcast']:.1%}" for r in rows], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("peak memory (MiB), XLA memory_analysis")
    ax.set_title(f"additive attention, m = t = {s['sizes']['memory_length']}, batch {s['sizes']['batch']} "
                 "(labels: share of the broadcast version)", fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def layers_plot(results: dict, path: Path) -> None:
    """Forward time and memory against n at fixed d, and forward time against d at fixed n, a
    series per layer kind (Vaswani et al. 2017, Table 1, measured)."""
    lay = results["layers"]
    sizes = lay["sizes"]
    by_n, by_d = {}, {}
    for r in lay["measurements"]:
        if r["pass"] != "forward":
            continue
        name = f"{r['kind']}/forward"
        if r["d"] == sizes["fixed_d"] and r["n"] in sizes["n_grid"]:
            by_n.setdefault(name, []).append(r)
        if r["n"] == sizes["fixed_n"] and r["d"] in sizes["d_grid"]:
            by_d.setdefault(name, []).append(r)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), layout="constrained")
    _panel(axes[0], by_n, lay["fits"], "n", lambda r: r["time"]["median"], ("time",), f"forward time (s), d = {sizes['fixed_d']}")
    _panel(axes[1], by_n, lay["fits"], "n", lambda r: r["memory"]["peak"], ("memory",),
           f"peak memory (bytes), d = {sizes['fixed_d']}")
    _panel(axes[2], by_d, lay["fits"], "d", lambda r: r["time"]["median"], ("time",), f"forward time (s), n = {sizes['fixed_n']}")
    fig.suptitle(f"layers, batch {sizes['batch']}: {results['setting']['device_kind']}, {results['setting']['dtype']} "
                 "(lines: least-squares fits over the largest sizes)")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_scaling_plots(results: dict, out: Path) -> list[Path]:
    """The benchmark's log-log plots (every fitted power law drawn over its fit range and labelled
    with its exponent): every plot the results allow, as PNGs in ``out``; returns their paths."""
    paths = []
    if "seq2seq" in results:
        paths += [out / "seq2seq_time.png", out / "seq2seq_memory.png"]
        seq2seq_plot(results, paths[-2])
        memory_plot(results, paths[-1])
    if "layers" in results:
        paths.append(out / "layers.png")
        layers_plot(results, paths[-1])
    return paths


def throughput_plot(results: dict, path: Path) -> None:
    """Bar chart of the training-throughput study: target tokens/s of the loop, the back-to-back
    step and (where measured) the PyTorch peer, per model, on a log axis."""
    rows = results["rows"]
    calls = [r.get("steps_per_call", 1) for r in rows]
    names = [r["model"] + ("*" if r["overrides"] else "") + (f" k={k}" if k > 1 else "") for r, k in zip(rows, calls)]
    series = [("loop", "loop_tokens_per_s"), ("step", "step_tokens_per_s"), ("torch", "peer_tokens_per_s")]
    width, x = 0.27, np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(rows)), 4), layout="constrained")
    for i, (label, key) in enumerate(series):
        values = [r.get(key) or 0.0 for r in rows]
        if any(values):
            ax.bar(x + (i - 1) * width, values, width, label=label)
    ax.set_xticks(x, names)
    ax.set_yscale("log")
    ax.set_ylabel("target tokens / s")
    s = results["setting"]
    ax.set_title(f"training throughput, {s['device_kind']}, {s['dtype']} (* smaller than default; k: steps a call)")
    ax.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compile_plot(results: dict, path: Path) -> None:
    """The compile-only planner study (:mod:`zoo.bench.compile`): per row, the HBM a chip against
    the chip's (left) and the roofline's target tokens/s (right, log axis), one colour a topology."""
    rows = results["rows"]
    topologies = list(dict.fromkeys(r["topology"] for r in rows))
    configs = list(dict.fromkeys((r["model"], r["size"], r["dtype"]) for r in rows))
    width, x = 0.8 / len(topologies), np.arange(len(configs))
    fig, (mem, speed) = plt.subplots(1, 2, figsize=(max(8.0, 0.9 * len(configs) + 4), 4.5), layout="constrained")
    for i, topology in enumerate(topologies):
        by_config = {(r["model"], r["size"], r["dtype"]): r for r in rows if r["topology"] == topology}
        fitting = [by_config.get(c, {}) for c in configs]
        offset = x + (i - (len(topologies) - 1) / 2) * width
        mem.bar(offset, [r.get("peak_bytes", 0) / 1e9 if r.get("fits") else 0 for r in fitting], width, label=topology,
                color=f"C{i}")
        hbm = next((r["hbm_bytes"] for r in fitting if r.get("fits")), None)
        if hbm:
            mem.axhline(hbm / 1e9, color=f"C{i}", linestyle="--", linewidth=0.8)
        speed.bar(offset, [r.get("tokens_per_s", 0) if r.get("fits") else 0 for r in fitting], width, label=topology,
                  color=f"C{i}")
    labels = [f"{m}\n{'paper' if s == 'large' else 'default'} {'bf16' if d == 'bfloat16' else 'f32'}" for m, s, d in configs]
    for ax in (mem, speed):
        ax.set_xticks(x, labels, fontsize=7, rotation=90)
    mem.set_ylabel("HBM a chip at the step's peak (GB; dashed: the chip's)")
    mem.set_yscale("log")
    speed.set_ylabel("target tokens / s at the roofline step time")
    speed.set_yscale("log")
    mem.legend(fontsize=8)
    fig.suptitle("training steps compiled for TPU on a CPU (XLA:TPU, compile-only devices); missing bar: does not fit")
    fig.savefig(path, dpi=110)
    plt.close(fig)
