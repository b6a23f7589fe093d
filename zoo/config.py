"""Frozen configuration dataclasses: the single source of truth, stored as JSON in a workdir."""

import dataclasses
import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class BahdanauConfig:
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


MODEL_CONFIGS = {"bahdanau": BahdanauConfig}


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "multi30k"
    src_lang: str = "de"
    tgt_lang: str = "en"
    lowercase: bool = True
    min_freq: int = 2
    length_multiple: int = 8  # pad batch lengths up to a multiple of this (fewer recompilations)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    clip_norm: float = 1.0
    seed: int = 0
    checkpoint_every: int = 100  # steps between resumable checkpoints
    max_steps: int | None = None  # stop early (tests, smoke runs)
    teacher_forcing: float = 1.0  # probability that a decoder step reads the reference token


@dataclass(frozen=True)
class Config:
    model_name: str = "bahdanau"
    model: BahdanauConfig = field(default_factory=BahdanauConfig)
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


def replace_fields(obj, overrides: dict):
    """``dataclasses.replace`` that names the dataclass and the field when a key is unknown."""
    names = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"{type(obj).__name__} has no field {unknown[0]!r} (fields: {', '.join(sorted(names))})")
    return dataclasses.replace(obj, **overrides)
