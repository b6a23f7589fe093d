"""All matplotlib use in the zoo. Imported lazily by the command-line tools."""

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_attention(translations, path) -> None:
    """Heatmaps of attention weights, one panel per sentence: target tokens (rows) × source
    tokens (columns). ``translations``: :class:`zoo.translator.Translation` objects."""
    n = len(translations)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 6 * rows), squeeze=False, layout="constrained")
    for ax, t in zip(axes.flat, translations):
        image = ax.imshow(t.attention, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(t.source_tokens)), t.source_tokens, rotation=60, ha="right")
        ax.set_yticks(range(len(t.tokens)), t.tokens)
        ax.set_xlabel("source")
        ax.set_ylabel("target")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.colorbar(image, ax=axes, label="attention weight α", shrink=0.6)
    fig.savefig(path, dpi=120)
    plt.close(fig)
