"""Named architectures and their registry.

Every seq2seq model works on one example and offers:
  ``encode(src, src_length, key=None) -> memory``,
  ``initial_decoder_state(memory) -> state``,
  ``decode_step(memory, state, y_prev, key=None) -> (state, logits (V,), weights (S,))``,
  ``__call__(src, src_length, tgt_in, key=None) -> (logits (T, V), weights (T, S))`` (teacher forcing),
and a class attribute ``has_attention`` (models without attention return all-zero weights).
"""

from flax import nnx

from zoo.config import MODEL_CONFIGS, replace_fields
from zoo.models.bahdanau import Bahdanau
from zoo.models.cho import Cho
from zoo.models.luong import Luong
from zoo.models.sutskever import Sutskever

MODELS = {"bahdanau": Bahdanau, "cho": Cho, "luong": Luong, "sutskever": Sutskever}


def list_models() -> list[str]:
    """Names accepted by :func:`build`."""
    return sorted(MODELS)


def build(name: str, config=None, seed: int = 0, **overrides) -> nnx.Module:
    """Build a registered model with freshly initialised parameters.

    Args:
      name: one of :func:`list_models`.
      config: the model's config dataclass (default: its defaults).
      seed: parameter initialisation seed.
      **overrides: config fields to replace, e.g. ``hidden_dim=512``.

    Raises:
      ValueError: unknown model name or config field.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(list_models())}")
    config = replace_fields(config or MODEL_CONFIGS[name](), overrides)
    return MODELS[name](config, rngs=nnx.Rngs(seed))
