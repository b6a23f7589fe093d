"""Named architectures and their registry.

Every seq2seq model works on one example and offers::

  encode(src, src_length, key=None) -> memory
  initial_decoder_state(memory) -> state
  decode_step(memory, state, y_prev, key=None) -> (state, logits (V,), weights (S,) or (L, N, S))
  __call__(src, src_length, tgt_in, key=None) -> (logits (T, V), weights (T, S) or (T, L, N, S))  # teacher forcing

and a class attribute ``has_attention`` (models without attention return all-zero weights). The
Transformer's and ConvS2S's ``__call__`` compute the weights only with ``return_weights=True``
(otherwise None: the training loss runs their fused attention). The
recurrent models attend once per step (S,); the Transformer and ConvS2S return the attention of
every decoder layer and head, (L, N, S) per step (ConvS2S: one head per layer).
"""

from typing import NamedTuple

from flax import nnx

from zoo.config import (
    BahdanauConfig,
    ChoConfig,
    Config,
    ConvS2SConfig,
    DataConfig,
    LuongConfig,
    Seq2SeqConfig,
    SutskeverConfig,
    TrainConfig,
    TransformerConfig,
    replace_fields,
)
from zoo.models.bahdanau import Bahdanau
from zoo.models.cho import Cho
from zoo.models.convs2s import ConvS2S
from zoo.models.luong import Luong
from zoo.models.sutskever import Sutskever
from zoo.models.transformer import Transformer


class Architecture(NamedTuple):
    """A registered model: its config dataclass and the module built from it."""

    config: type[Seq2SeqConfig]
    model: type[nnx.Module]


# The registry: every name that train.py --model, zoo.build and a config.json's model_name accept.
MODELS = {
    "bahdanau": Architecture(BahdanauConfig, Bahdanau),
    "cho": Architecture(ChoConfig, Cho),
    "convs2s": Architecture(ConvS2SConfig, ConvS2S),
    "luong": Architecture(LuongConfig, Luong),
    "sutskever": Architecture(SutskeverConfig, Sutskever),
    "transformer": Architecture(TransformerConfig, Transformer),
}

# What ``python train.py --model NAME`` trains without ``--config``: the settings of the README
# row that NAME's results come from, over the dataclasses' defaults (the papers' sizes, Adam 1e-3).
RECIPES = {
    "convs2s": {"model": {"num_encoder_layers": 6, "num_decoder_layers": 6},
                "train": {"epochs": 12, "batch_tokens": 2048, "warmup_steps": 400, "label_smoothing": 0.1, "clip_norm": 0.1}},
    "luong": {"model": {"dropout": 0.3, "bidirectional_encoder": True}, "train": {"epochs": 12, "batch_tokens": 2048}},
    "transformer": {"model": {"dropout": 0.3},
                    "train": {"epochs": 20, "batch_tokens": 2048, "warmup_steps": 400, "label_smoothing": 0.1}},
}


def list_models() -> list[str]:
    """Names accepted by :func:`build`.

    Examples:
      >>> import zoo
      >>> zoo.list_models()
      ['bahdanau', 'cho', 'convs2s', 'luong', 'sutskever', 'transformer']
    """
    return sorted(MODELS)


def recipe(name: str) -> Config:
    """The :class:`~zoo.config.Config` of model ``name``'s results recipe (:data:`RECIPES`; the
    dataclasses' defaults where it has none).

    Raises:
      KeyError: an unknown model name.

    Examples:
      >>> recipe("transformer").train.warmup_steps
      400
    """
    settings = RECIPES.get(name, {})
    return Config(model_name=name, model=MODELS[name].config(**settings.get("model", {})), data=DataConfig(),
                  train=TrainConfig(**settings.get("train", {})))


def build(name: str, config=None, seed: int = 0, **overrides) -> nnx.Module:
    """Build a registered model with freshly initialised parameters.

    Args:
      name: one of :func:`list_models`.
      config: the model's config dataclass (default: its defaults).
      seed: parameter initialisation seed.
      **overrides: config fields to replace, e.g. ``hidden_dim=512``.

    Raises:
      ValueError: unknown model name or config field, or a value the config refuses.

    Examples:
      A small Transformer (one layer each side, d_model 8, two heads, vocabularies of 12 and 10):

      >>> import jax, zoo
      >>> from flax import nnx
      >>> model = zoo.build("transformer", src_vocab_size=12, tgt_vocab_size=10, d_model=8, num_heads=2, d_ff=16,
      ...                   num_encoder_layers=1, num_decoder_layers=1)
      >>> type(model).__name__, model.config.d_model
      ('Transformer', 8)
      >>> sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))  # parameters
      1712
      >>> zoo.build("rnn")
      Traceback (most recent call last):
      ...
      ValueError: unknown model 'rnn'; choose from bahdanau, cho, convs2s, luong, sutskever, transformer
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(list_models())}")
    config = replace_fields(config or MODELS[name].config(), overrides)
    return MODELS[name].model(config, rngs=nnx.Rngs(seed))
