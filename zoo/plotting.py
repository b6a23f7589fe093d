"""All matplotlib use in the zoo. Imported lazily by the command-line tools."""

import math

import matplotlib

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
