"""Frozen configuration dataclasses: the single source of truth, stored as JSON in a workdir.

Every model config has ``dtype``, the compute dtype of Flax's ``dtype``/``param_dtype``
convention (:mod:`zoo.nn.precision`): "float32" (the default) or "bfloat16". Parameters, the
optimizer state and the checkpoints stay float32 either way; matrix products, convolutions and
recurrent updates run in ``dtype``; softmax, layer-norm statistics, the logits' log-softmax and
the loss in float32. float16 is not offered: it would need loss scaling, which training does
not do. A config.json written before the field existed reads as float32.
"""

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

COMPUTE_DTYPES = ("float32", "bfloat16")  # float16 would need loss scaling


def check_field(obj, name: str, ok: bool, requirement: str) -> None:
    """Raise ``ValueError("<Class>.<name>=<value>: <requirement>")`` unless ``ok``: the one message
    that the command line, the Python API and a ``config.json`` read from disk all give."""
    if not ok:
        raise ValueError(f"{type(obj).__name__}.{name}={getattr(obj, name)!r}: {requirement}")


def _at_least(obj, minimum: int, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        check_field(obj, name, isinstance(value, int) and value >= minimum, f"must be at least {minimum} (an integer)")


class ModelConfig:
    """What every model config checks on construction (``__post_init__``): every integer field
    (sizes, widths, counts, windows) is at least 1, ``dropout`` lies in [0, 1) and ``dtype`` is a
    compute dtype. Choices among names (scores, positional encodings, ...) are checked by the
    model that reads them, before anything is written."""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if f.type is int:
                _at_least(self, 1, f.name)
        check_field(self, "dropout", 0.0 <= self.dropout < 1.0, "must be in [0, 1)")
        check_field(self, "dtype", self.dtype in COMPUTE_DTYPES,
                    f"must be one of {', '.join(COMPUTE_DTYPES)} (float16 would need loss scaling)")


@dataclass(frozen=True)
class BahdanauConfig(ModelConfig):
    """Bahdanau et al. (2015) RNNsearch. Widths are per direction for the encoder.

    The paper uses embed 620, hidden 1000, maxout 500 on WMT'14. The defaults follow the PyTorch
    seq2seq tutorial's sizes (embed 256, hidden 512, dropout 0.5); its output layer reads
    [s; c; Ey] directly, this one through the paper's maxout layer, so the model has 14.6 M
    parameters against the tutorial's 20.5 M on Multi30k.
    """

    src_vocab_size: int = 8000
    tgt_vocab_size: int = 6000
    embed_dim: int = 256
    hidden_dim: int = 512
    attention_dim: int = 512
    maxout_dim: int = 512
    dropout: float = 0.5
    score: str = "additive"  # any of zoo.functional.attention.SCORES whose widths fit (query H, keys 2H)
    hard_attention: bool = False
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)


@dataclass(frozen=True)
class SutskeverConfig(ModelConfig):
    """Sutskever, Vinyals & Le (2014): a deep LSTM reads the source, its final states initialise a
    deep LSTM decoder; nothing else passes between them.

    The paper: 4 layers of 1000 cells, 1000-wide embeddings, reversed source, WMT'14. The defaults
    are the PyTorch seq2seq tutorial's (notebook 1) sizes: 2 layers of 512, embeddings 256, dropout 0.5.
    """

    src_vocab_size: int = 8000
    tgt_vocab_size: int = 6000
    embed_dim: int = 256
    hidden_dim: int = 512
    num_layers: int = 2
    dropout: float = 0.5
    reverse_source: bool = True  # section 3.3: "reversing the source sentences"
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)


@dataclass(frozen=True)
class ChoConfig(ModelConfig):
    """Cho et al. (2014) RNN encoder-decoder: the summary C enters every decoder step and the output.

    The paper: 1000 hidden units, 100-wide embeddings, maxout 500, GRU with the reset gate
    applied before the hidden product. Defaults follow the tutorial's (notebook 2) sizes.
    """

    src_vocab_size: int = 8000
    tgt_vocab_size: int = 6000
    embed_dim: int = 256
    hidden_dim: int = 512
    maxout_dim: int = 512
    dropout: float = 0.5
    reset_after: bool = False  # False: the paper's GRU (eq. 8); True: cuDNN/PyTorch's
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)


@dataclass(frozen=True)
class LuongConfig(ModelConfig):
    """Luong, Pham & Manning (2015): stacked LSTMs, attention on the top decoder state h_t,
    attentional state h̃_t = tanh(W_c [c_t; h_t]), input feeding.

    The paper: 4 layers of 1000 cells, dropout 0.2, reversed source. Defaults: 2 layers of 512,
    embeddings 256, dropout 0.5 (the tutorial's sizes); the source is read in order so that
    local-m's monotone p_t = t and attention plots read left to right.
    """

    src_vocab_size: int = 8000
    tgt_vocab_size: int = 6000
    embed_dim: int = 256
    hidden_dim: int = 512
    num_layers: int = 2
    dropout: float = 0.5
    score: str = "general"  # any of zoo.functional.attention.SCORES
    attention_dim: int = 512  # width of the projected scores (additive, scaled_dot, mlp)
    attention: str = "global"  # global | local-m | local-p (section 3.2)
    window: int = 10  # D: local attention reads [p_t − D, p_t + D]
    input_feeding: bool = True  # section 3.3
    hard_attention: bool = False
    reverse_source: bool = False
    # OpenNMT-py's `brnn` encoder, not the paper's: every layer reads both ways with H/2 cells a
    # direction, [→h_s; ←h_s] is h̄_s and the decoder starts from [→carry_S; ←carry_1] per layer
    bidirectional_encoder: bool = False
    decoder_init: str = "encoder"  # encoder: the encoder's final carries (the paper); zeros: zero carries
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)


@dataclass(frozen=True)
class TransformerConfig(ModelConfig):
    """Vaswani et al. (2017) encoder-decoder Transformer.

    The paper's base model: d_model 512, 8 heads, 6+6 layers, FFN 2048, dropout 0.1, post-LN,
    sinusoidal positions. The defaults are the PyTorch seq2seq tutorial's (notebook 6) sizes:
    d_model 256, 8 heads, 3+3 layers, FFN 512.
    """

    src_vocab_size: int = 8000
    tgt_vocab_size: int = 6000
    d_model: int = 256
    num_heads: int = 8
    num_encoder_layers: int = 3
    num_decoder_layers: int = 3
    d_ff: int = 512
    dropout: float = 0.1
    positional: str = "sinusoidal"  # any of zoo.models.transformer.POSITIONAL
    norm: str = "pre"  # pre: x + f(LN(x)) (Xiong et al. 2020); post: LN(x + f(x)) (the paper)
    share_embeddings: bool = True  # target embedding = pre-softmax weights (section 3.4)
    max_length: int = 256  # longest sentence: learned positions, the decoder's cache
    max_relative_position: int = 16  # Shaw et al. (2018): k, the clipping distance
    # scaled dot-product path in training (zoo.nn.MultiHeadAttention): auto | reference | xla | cudnn | blocked;
    # auto: cuDNN for bfloat16 on NVIDIA GPUs, XLA elsewhere, reference with shaw (which needs the weights)
    attention_impl: str = "auto"
    attention_block_size: int = 128  # keys per block of the blocked path
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)


@dataclass(frozen=True)
class ConvS2SConfig(ModelConfig):
    """Gehring et al. (2017) convolutional sequence to sequence learning.

    The paper (WMT'14 En-Fr): 512 hidden units, embeddings 512, 15 encoder and 15 decoder
    layers, kernel 3. Defaults are the PyTorch seq2seq tutorial's (notebook 5) sizes:
    embeddings 256, hidden 512, 10+10 layers, kernel 3, dropout 0.25.
    """

    src_vocab_size: int = 8000
    tgt_vocab_size: int = 6000
    embed_dim: int = 256
    hidden_dim: int = 512
    num_encoder_layers: int = 10
    num_decoder_layers: int = 10
    kernel_size: int = 3
    dropout: float = 0.25
    max_length: int = 256  # longest sentence: the learned position embeddings
    # the decoder's attention in training, one head of width embed_dim: auto | reference | xla | cudnn | blocked,
    # as TransformerConfig's (auto: cuDNN needs embed_dim <= 128, so XLA at the default 256)
    attention_impl: str = "auto"
    attention_block_size: int = 128  # keys per block of the blocked path
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)


MODEL_CONFIGS = {"bahdanau": BahdanauConfig, "cho": ChoConfig, "convs2s": ConvS2SConfig, "luong": LuongConfig,
                 "sutskever": SutskeverConfig, "transformer": TransformerConfig}


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "multi30k"  # the corpus (zoo.data.corpora.DATASETS)
    src_lang: str = "de"  # source language
    tgt_lang: str = "en"  # target language
    lowercase: bool = True  # lowercase before tokenizing
    min_freq: int = 2  # rarer training tokens map to <unk>
    length_multiple: int = 8  # pad sentence batches up to a multiple of this (fewer recompilations)
    max_length: int = 200  # training and validation pairs with a longer side (tokens + <eos>) are left out, counted in the log

    def __post_init__(self):
        _at_least(self, 1, "min_freq", "length_multiple", "max_length")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10  # passes over the training set
    batch_size: int = 128  # sentences a batch (when batch_tokens is None)
    batch_tokens: int | None = None  # a token budget a batch instead: rows × padded length ≤ this (zoo.data.batching)
    learning_rate: float = 1e-3  # Adam's step size (the peak, with warmup_steps)
    clip_norm: float = 1.0  # the global gradient norm is clipped to this
    seed: int = 0  # parameters, data order and dropout
    checkpoint_every: int = 100  # steps between resumable checkpoints
    log_every: int = 50  # steps between reads of the metrics from the device (and log lines)
    steps_per_call: int = 1  # training steps a call of the compiled program (a lax.scan over batches of one shape)
    max_steps: int | None = None  # stop early (tests, smoke runs)
    teacher_forcing: float = 1.0  # probability that a decoder step reads the reference token
    label_smoothing: float = 0.0  # ε of Szegedy et al. (2016), as in Vaswani et al. (2017) section 5.4
    warmup_steps: int = 0  # >0: linear warmup to learning_rate, then ∝ 1/√step (Vaswani et al. eq. 3)
    fsdp: bool = False  # shard parameters and optimizer state over the devices too (zoo.distributed.state_shardings)

    def __post_init__(self):
        _at_least(self, 1, "epochs", "batch_size", "checkpoint_every", "log_every", "steps_per_call")
        _at_least(self, 0, "seed", "warmup_steps")
        for name in ("batch_tokens", "max_steps"):
            if getattr(self, name) is not None:
                _at_least(self, 1, name)
        for name in ("learning_rate", "clip_norm"):
            value = getattr(self, name)
            check_field(self, name, isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
                        "must be a finite number > 0")
        check_field(self, "teacher_forcing", 0.0 <= self.teacher_forcing <= 1.0, "must be in [0, 1]")
        check_field(self, "label_smoothing", 0.0 <= self.label_smoothing < 1.0, "must be in [0, 1)")


@dataclass(frozen=True)
class Config:
    model_name: str = "bahdanau"
    model: Any = field(default_factory=BahdanauConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Config":
        raw = json.loads(text)
        return cls(
            model_name=raw["model_name"],
            model=MODEL_CONFIGS[raw["model_name"]](**raw["model"]),
            data=DataConfig(**raw["data"]),
            train=TrainConfig(**raw["train"]),
        )


# What ``python train.py --model NAME`` trains without ``--config``: the settings of the README
# row that NAME's results come from, over the dataclasses' defaults (the papers' sizes, Adam 1e-3).
RECIPES = {
    "convs2s": {"model": {"num_encoder_layers": 6, "num_decoder_layers": 6},
                "train": {"epochs": 12, "batch_tokens": 2048, "warmup_steps": 400, "label_smoothing": 0.1, "clip_norm": 0.1}},
    "luong": {"model": {"dropout": 0.3, "bidirectional_encoder": True}, "train": {"epochs": 12, "batch_tokens": 2048}},
    "transformer": {"model": {"dropout": 0.3},
                    "train": {"epochs": 20, "batch_tokens": 2048, "warmup_steps": 400, "label_smoothing": 0.1}},
}


def recipe(model_name: str) -> Config:
    """The :class:`Config` of ``model_name``'s results recipe (:data:`RECIPES`; the defaults where it has none).

    Raises:
      KeyError: an unknown model name.
    """
    settings = RECIPES.get(model_name, {})
    return Config(model_name, MODEL_CONFIGS[model_name](**settings.get("model", {})), DataConfig(),
                  TrainConfig(**settings.get("train", {})))


def replace_fields(obj, overrides: dict):
    """``dataclasses.replace`` that names the dataclass and the field when a key is unknown."""
    names = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"{type(obj).__name__} has no field {unknown[0]!r} (fields: {', '.join(sorted(names))})")
    return dataclasses.replace(obj, **overrides)
