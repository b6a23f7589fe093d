"""Frozen configuration dataclasses: the single source of truth, stored as JSON in a workdir.

Every config is frozen and keyword-only. The model configs share :class:`ModelConfig`
(``dropout``, ``dtype``; :class:`Seq2SeqConfig` adds the vocabulary sizes), whose check refuses,
in one line, any integer below 1 and any choice outside its ``Literal`` type, whether the value
comes from Python, a ``config.json`` or the command line (where tyro lists the choices). Which
config belongs to which model name is the registry's business (:data:`zoo.models.MODELS`).

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
import types as types_
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

# The choices of the model configs' name fields. tyro turns each into a flag that lists them and
# refuses any other value; ``ModelConfig.__post_init__`` refuses one from Python or a config.json.
ComputeDtype = Literal["float32", "bfloat16"]  # float16 would need loss scaling
Score = Literal["additive", "dot", "general", "scaled_dot", "cosine", "mlp"]  # zoo.functional.attention.SCORES
Positional = Literal["sinusoidal", "sinusoidal-concat", "learned", "shaw", "rope", "alibi"]
AttentionImpl = Literal["auto", "reference", "xla", "cudnn", "blocked"]  # auto + zoo.nn.attention.IMPLEMENTATIONS
Cell = Literal["rnn", "lstm", "gru"]  # zoo.functional.cells.NUM_GATES
Dataset = Literal["multi30k", "tatoeba"]  # zoo.data.corpora.DATASETS
Tokenizer = Literal["moses", "sentencepiece"]  # DataConfig.tokenizer (zoo.data.pipeline)
SubwordModel = Literal["unigram", "bpe"]  # DataConfig.subword_model (SentencePiece's model_type)
COMPUTE_DTYPES = typing.get_args(ComputeDtype)
_NOTES = {"dtype": " (float16 would need loss scaling)"}  # appended to a refused choice's message


def check_field(obj, name: str, ok: bool, requirement: str) -> None:
    """Raise ``ValueError("<Class>.<name>=<value>: <requirement>")`` unless ``ok``: the one message
    that the command line, the Python API and a ``config.json`` read from disk all give."""
    if not ok:
        raise ValueError(f"{type(obj).__name__}.{name}={getattr(obj, name)!r}: {requirement}")


def _at_least(obj, minimum: int, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        check_field(obj, name, isinstance(value, int) and value >= minimum, f"must be at least {minimum} (an integer)")


_TYPES = {int: (int,), float: (int, float), bool: (bool,), str: (str,)}  # what a field of each type accepts


def _check_types(obj) -> None:
    """Every ``int``, ``float``, ``bool``, ``str`` (or ``X | None``) field of the dataclass ``obj`` holds
    a value of its type (a bool is no number here): a hand-edited ``config.json`` with
    ``"batch_size": true`` or ``"lowercase": "no"`` is refused, not read as 1 or as true."""
    for f in dataclasses.fields(obj):
        value, allowed = getattr(obj, f.name), typing.get_args(f.type) if isinstance(f.type, types_.UnionType) else (f.type,)
        kinds = [t for t in allowed if t is not type(None)]
        if len(kinds) != 1 or kinds[0] not in _TYPES or (value is None and type(None) in allowed):
            continue  # Literal choices (checked apart), Any, or an optional field left None
        ok = isinstance(value, _TYPES[kinds[0]]) and (kinds[0] is bool or not isinstance(value, bool))
        check_field(obj, f.name, ok, f"must be {'an' if kinds[0] is int else 'a'} {kinds[0].__name__}")


def _check_sizes_and_choices(obj) -> None:
    """Every field of the dataclass ``obj`` has its type (:func:`_check_types`), every ``int`` field
    is at least 1, every ``Literal`` field one of its values."""
    _check_types(obj)
    for f in dataclasses.fields(obj):
        if f.type is int:
            _at_least(obj, 1, f.name)
        elif typing.get_origin(f.type) is Literal:
            choices = typing.get_args(f.type)
            check_field(obj, f.name, getattr(obj, f.name) in choices,
                        f"must be one of {', '.join(choices)}{_NOTES.get(f.name, '')}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The fields every model config has, and what every one checks on construction
    (``__post_init__``): every integer field (sizes, widths, counts, windows) is at least 1, every
    choice (a ``Literal`` field: ``dtype``, ``score``, ``positional``, ...) is one of its values,
    ``dropout`` lies in [0, 1). Subclasses add the checks a type cannot express.

    Raises:
      ValueError: ``"<Class>.<field>=<value>: <requirement>"`` for the first field refused.
    """

    dropout: float = 0.0  # drop probability of the dropout layers, in [0, 1)
    dtype: ComputeDtype = "float32"  # compute dtype (zoo.nn.precision); parameters stay float32

    def __post_init__(self):
        _check_sizes_and_choices(self)
        check_field(self, "dropout", 0.0 <= self.dropout < 1.0, "must be in [0, 1)")


@dataclass(frozen=True, kw_only=True)
class Seq2SeqConfig(ModelConfig):
    """The fields of every sequence-to-sequence model (:func:`zoo.models.build`); training sets the
    vocabulary sizes from the corpus."""

    src_vocab_size: int = 8000  # source vocabulary, <pad> <unk> <bos> <eos> included
    tgt_vocab_size: int = 6000  # target vocabulary


@dataclass(frozen=True, kw_only=True)
class BahdanauConfig(Seq2SeqConfig):
    """Bahdanau et al. (2015) RNNsearch. Widths are per direction for the encoder.

    The paper uses embed 620, hidden 1000, maxout 500 on WMT'14. The defaults follow the PyTorch
    seq2seq tutorial's sizes (embed 256, hidden 512, dropout 0.5); its output layer reads
    [s; c; Ey] directly, this one through the paper's maxout layer, so the model has 14.6 M
    parameters against the tutorial's 20.5 M on Multi30k.

    Raises:
      ValueError: as :class:`ModelConfig`, or a parameter-free score (dot, cosine), which cannot
        compare the decoder state (hidden_dim) with the bidirectional annotations (2·hidden_dim).
    """

    embed_dim: int = 256
    hidden_dim: int = 512
    attention_dim: int = 512
    maxout_dim: int = 512
    dropout: float = 0.5  # drop probability of the dropout layers, in [0, 1)
    score: Score = "additive"  # query H, keys 2H: the scores with parameters (dot and cosine need equal widths)
    hard_attention: bool = False

    def __post_init__(self):
        super().__post_init__()
        check_field(self, "score", self.score not in ("dot", "cosine"),
                    "needs query and keys of equal width, but the decoder state is hidden_dim wide and the "
                    "annotations 2·hidden_dim; choose additive, general, scaled_dot or mlp")


@dataclass(frozen=True, kw_only=True)
class SutskeverConfig(Seq2SeqConfig):
    """Sutskever, Vinyals & Le (2014): a deep LSTM reads the source, its final states initialise a
    deep LSTM decoder; nothing else passes between them.

    The paper: 4 layers of 1000 cells, 1000-wide embeddings, reversed source, WMT'14. The defaults
    are the PyTorch seq2seq tutorial's (notebook 1) sizes: 2 layers of 512, embeddings 256, dropout 0.5.
    """

    embed_dim: int = 256
    hidden_dim: int = 512
    num_layers: int = 2
    dropout: float = 0.5  # drop probability of the dropout layers, in [0, 1)
    reverse_source: bool = True  # section 3.3: "reversing the source sentences"


@dataclass(frozen=True, kw_only=True)
class ChoConfig(Seq2SeqConfig):
    """Cho et al. (2014) RNN encoder-decoder: the summary C enters every decoder step and the output.

    The paper: 1000 hidden units, 100-wide embeddings, maxout 500, GRU with the reset gate
    applied before the hidden product. Defaults follow the tutorial's (notebook 2) sizes.
    """

    embed_dim: int = 256
    hidden_dim: int = 512
    maxout_dim: int = 512
    dropout: float = 0.5  # drop probability of the dropout layers, in [0, 1)
    reset_after: bool = False  # False: the paper's GRU (eq. 8); True: cuDNN/PyTorch's


@dataclass(frozen=True, kw_only=True)
class LuongConfig(Seq2SeqConfig):
    """Luong, Pham & Manning (2015): stacked LSTMs, attention on the top decoder state h_t,
    attentional state h̃_t = tanh(W_c [c_t; h_t]), input feeding.

    The paper: 4 layers of 1000 cells, dropout 0.2, reversed source. Defaults: 2 layers of 512,
    embeddings 256, dropout 0.5 (the tutorial's sizes); the source is read in order so that
    local-m's monotone p_t = t and attention plots read left to right.

    Raises:
      ValueError: as :class:`ModelConfig`, or hard attention with local-p (which weights the
        window by a Gaussian), or an odd ``hidden_dim`` with ``bidirectional_encoder``.
    """

    embed_dim: int = 256
    hidden_dim: int = 512
    num_layers: int = 2
    dropout: float = 0.5  # drop probability of the dropout layers, in [0, 1)
    score: Score = "general"
    attention_dim: int = 512  # width of the projected scores (additive, scaled_dot, mlp)
    attention: Literal["global", "local-m", "local-p"] = "global"  # section 3.2
    window: int = 10  # D: local attention reads [p_t − D, p_t + D]
    input_feeding: bool = True  # section 3.3
    hard_attention: bool = False
    reverse_source: bool = False
    # OpenNMT-py's `brnn` encoder, not the paper's: every layer reads both ways with H/2 cells a
    # direction, [→h_s; ←h_s] is h̄_s and the decoder starts from [→carry_S; ←carry_1] per layer
    bidirectional_encoder: bool = False
    decoder_init: Literal["encoder", "zeros"] = "encoder"  # encoder: its final carries (the paper); zeros

    def __post_init__(self):
        super().__post_init__()
        check_field(self, "hard_attention", not (self.hard_attention and self.attention == "local-p"),
                    "hard attention picks one position; it has no Gaussian-weighted (local-p) form")
        check_field(self, "hidden_dim", not (self.bidirectional_encoder and self.hidden_dim % 2),
                    "bidirectional_encoder splits hidden_dim in two directions: it must be even")


@dataclass(frozen=True, kw_only=True)
class TransformerConfig(Seq2SeqConfig):
    """Vaswani et al. (2017) encoder-decoder Transformer.

    The paper's base model: d_model 512, 8 heads, 6+6 layers, FFN 2048, dropout 0.1, post-LN,
    sinusoidal positions. The defaults are the PyTorch seq2seq tutorial's (notebook 6) sizes:
    d_model 256, 8 heads, 3+3 layers, FFN 512.
    """

    d_model: int = 256
    num_heads: int = 8
    num_encoder_layers: int = 3
    num_decoder_layers: int = 3
    d_ff: int = 512
    dropout: float = 0.1  # drop probability of the dropout layers, in [0, 1)
    positional: Positional = "sinusoidal"  # absolute (sinusoidal, learned) or relative (shaw, rope, alibi)
    norm: Literal["pre", "post"] = "pre"  # pre: x + f(LN(x)) (Xiong et al. 2020); post: LN(x + f(x)) (the paper)
    share_embeddings: bool = True  # target embedding = pre-softmax weights (section 3.4)
    max_length: int = 256  # longest sentence: learned positions, the decoder's cache
    max_relative_position: int = 16  # Shaw et al. (2018): k, the clipping distance
    # scaled dot-product path in training (zoo.nn.MultiHeadAttention);
    # auto: cuDNN for bfloat16 on NVIDIA GPUs, XLA elsewhere, reference with shaw (which needs the weights)
    attention_impl: AttentionImpl = "auto"
    attention_block_size: int = 128  # keys per block of the blocked path


@dataclass(frozen=True, kw_only=True)
class ConvS2SConfig(Seq2SeqConfig):
    """Gehring et al. (2017) convolutional sequence to sequence learning.

    The paper (WMT'14 En-Fr): 512 hidden units, embeddings 512, 15 encoder and 15 decoder
    layers, kernel 3. Defaults are the PyTorch seq2seq tutorial's (notebook 5) sizes:
    embeddings 256, hidden 512, 10+10 layers, kernel 3, dropout 0.25.

    Raises:
      ValueError: as :class:`ModelConfig`, or an even ``kernel_size`` (the encoder's "same"
        convolution needs an odd one).
    """

    embed_dim: int = 256
    hidden_dim: int = 512
    num_encoder_layers: int = 10
    num_decoder_layers: int = 10
    kernel_size: int = 3  # odd
    dropout: float = 0.25  # drop probability of the dropout layers, in [0, 1)
    max_length: int = 256  # longest sentence: the learned position embeddings
    # the decoder's attention in training, one head of width embed_dim, as TransformerConfig's
    # (auto: cuDNN needs embed_dim <= 128, so XLA at the default 256)
    attention_impl: AttentionImpl = "auto"
    attention_block_size: int = 128  # keys per block of the blocked path

    def __post_init__(self):
        super().__post_init__()
        check_field(self, "kernel_size", self.kernel_size % 2 == 1, "must be odd (the encoder's convolution is 'same')")


@dataclass(frozen=True, kw_only=True)
class EncoderConfig(ModelConfig):
    """The recurrent encoder of the labelling models (:mod:`zoo.models.labelling`): embeddings and
    ``num_layers`` recurrent layers, optionally bidirectional."""

    vocab_size: int
    embed_dim: int
    hidden_dim: int
    cell: Cell = "lstm"  # rnn (Elman), lstm or gru
    num_layers: int = 1
    bidirectional: bool = True


@dataclass(frozen=True, kw_only=True)
class TaggerConfig(EncoderConfig):
    """:class:`zoo.models.labelling.SequenceTagger`: one of ``num_tags`` tags per token (POS
    tagging, slot filling).

    Raises:
      ValueError: as :class:`ModelConfig`.
    """

    num_tags: int


@dataclass(frozen=True, kw_only=True)
class ClassifierConfig(EncoderConfig):
    """:class:`zoo.models.labelling.SequenceClassifier`: one of ``num_classes`` classes per sequence
    (sentiment, topic).

    Raises:
      ValueError: as :class:`ModelConfig`.
    """

    num_classes: int


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    dataset: Dataset = "multi30k"  # the corpus (zoo.data.corpora)
    src_lang: str = "de"  # source language
    tgt_lang: str = "en"  # target language
    lowercase: bool = True  # lowercase before tokenizing
    min_freq: int = 2  # moses: rarer training tokens map to <unk>
    length_multiple: int = 8  # pad sentence batches up to a multiple of this (fewer recompilations)
    max_length: int = 200  # training and validation pairs with a longer side (tokens + <eos>) are left out, counted in the log
    # moses: words (sacremoses), a vocabulary a side; sentencepiece: subwords of one joint SentencePiece model
    # trained on both sides of the training split (zoo.data.subword)
    tokenizer: Tokenizer = "moses"
    vocab_size: int = 8000  # sentencepiece: pieces of the joint model, the source and the target vocabulary (specials included)
    subword_model: SubwordModel = "unigram"  # sentencepiece: unigram (Kudo 2018) | bpe (Sennrich et al. 2016)

    def __post_init__(self):
        _check_sizes_and_choices(self)
        _at_least(self, 5, "vocab_size")  # the 4 special tokens and a piece


@dataclass(frozen=True, kw_only=True)
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
        _check_types(self)
        _at_least(self, 1, "epochs", "batch_size", "checkpoint_every", "log_every", "steps_per_call")
        _at_least(self, 0, "seed", "warmup_steps")
        check_field(self, "seed", self.seed < 2**32, "must be below 2**32 (a 32-bit PRNG seed)")
        for name in ("batch_tokens", "max_steps"):
            if getattr(self, name) is not None:
                _at_least(self, 1, name)
        for name in ("learning_rate", "clip_norm"):
            value = getattr(self, name)
            check_field(self, name, isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
                        "must be a finite number > 0")
        check_field(self, "teacher_forcing", 0.0 <= self.teacher_forcing <= 1.0, "must be in [0, 1]")
        check_field(self, "label_smoothing", 0.0 <= self.label_smoothing < 1.0, "must be in [0, 1)")


@dataclass(frozen=True, kw_only=True)
class Config:
    """Everything a run trains: the registered model's name (:data:`zoo.models.MODELS`) and config,
    the data and the training settings. Stored as a workdir's ``config.json``
    (:meth:`to_json`; read back by :func:`zoo.checkpoint.config_from_dict`)."""

    model_name: str = "bahdanau"
    model: Any = field(default_factory=BahdanauConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


def replace_fields(obj, overrides: dict):
    """``dataclasses.replace`` that names the dataclass and the field when a key is unknown."""
    names = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"{type(obj).__name__} has no field {unknown[0]!r} (fields: {', '.join(sorted(names))})")
    return dataclasses.replace(obj, **overrides)
