"""Run a model exported by :mod:`zoo.export` with JAX alone: no model code, no flax.

    >>> from zoo.serving import load_exported  # doctest: +SKIP
    >>> model = load_exported("bahdanau.zoo")  # doctest: +SKIP
    >>> hypotheses, weights = model.translate(["Ein Mann schläft."], beam_size=3)  # doctest: +SKIP

This module imports ``jax``, NumPy, the tokenizers (sacremoses, sentencepiece) and the flax-free host side of
translation (:mod:`zoo.translation`, :mod:`zoo.data`, :mod:`zoo.config`), which it shares with
:func:`zoo.load`: the same sentences give the same translations and attention weights.
"""

import io
import json
import zipfile
from pathlib import Path

import jax
import numpy as np
from jax import export

from zoo import config as zoo_config
from zoo.config import Config, DataConfig, Seq2SeqConfig, TrainConfig
from zoo.data.pipeline import TextPipeline
from zoo.data.subword import SubwordTokenizer
from zoo.data.tokenize import Tokenizer
from zoo.data.vocab import Vocab
from zoo.errors import ZooError
from zoo.translation import TranslatorBase, check_beam_size

FORMAT, VERSION = "zoo-export", 1  # as zoo.export writes (not imported from it: it imports flax)
MANIFEST, PARAMS = "manifest.json", "params.npz"


class ExportedTranslator(TranslatorBase):
    """An exported model: ``translate(sentences, beam_size=1) -> (hypotheses, weights)`` and
    ``translate_tokens`` as :class:`zoo.translator.Translator`, on JAX's default device.

    Attributes:
      config, pipeline: the workdir's config and tokenizers/vocabularies.
      step: the checkpoint step exported. has_attention: False for models without attention
        (their weights are zeros). beam_sizes: the beam sizes the file decodes with.
      platforms: the platforms it was lowered for.
    """

    def __init__(self, manifest: dict, config: Config, params: list[np.ndarray], decoders: dict[int, export.Exported],
                 subword_model: bytes | None = None):
        self.config = config
        data = self.config.data
        src_vocab, tgt_vocab = Vocab(manifest["src_vocab"]), Vocab(manifest["tgt_vocab"])
        if subword_model is not None:  # a sentencepiece workdir's spm.model (zoo.data.subword)
            tokenizer = SubwordTokenizer(subword_model, data.lowercase)
            self.pipeline = TextPipeline(tokenizer, tokenizer, src_vocab, tgt_vocab)
        else:
            self.pipeline = TextPipeline(Tokenizer(data.src_lang, data.lowercase), Tokenizer(data.tgt_lang, data.lowercase),
                                         src_vocab, tgt_vocab)
        self.model_name, self.step, self.has_attention = self.config.model_name, manifest["step"], manifest["has_attention"]
        self.platforms, self.beam_sizes = manifest["platforms"], sorted(decoders)
        self.params = jax.device_put(params)
        self._decoders = {k: jax.jit(exp.call) for k, exp in decoders.items()}

    def check_beam_size(self, beam_size) -> None:
        """Raises ValueError unless ``beam_size`` is one the file was exported with."""
        check_beam_size(beam_size)
        if beam_size not in self._decoders:
            raise ValueError(f"beam_size={beam_size}: this model was exported with beam sizes "
                             f"{','.join(map(str, self.beam_sizes))}")

    def batch_rows(self, batch_size: int) -> int:
        """``batch_size`` rounded up to a power of two: fewer batch shapes, fewer compilations."""
        return 1 << max(0, batch_size - 1).bit_length()

    def decode_batch(self, batch: dict, beam_size: int, max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """The exported decoder of ``beam_size`` on the batch (see :meth:`TranslatorBase.decode_batch`)."""
        self.check_beam_size(beam_size)
        steps = np.zeros((max_length,), np.int32)  # only its length T reaches the module
        return jax.device_get(self._decoders[beam_size](self.params, batch["src"], batch["src_length"], steps))


def _config(manifest: dict) -> Config:
    """The exported config, rebuilt from :mod:`zoo.config` alone (:func:`zoo.checkpoint.config_from_dict`
    needs the model registry, which imports flax)."""
    cls = getattr(zoo_config, manifest["config_class"], None)
    if not (isinstance(cls, type) and issubclass(cls, Seq2SeqConfig)):
        raise ValueError(f"config_class {manifest['config_class']!r} is not a model config of zoo.config")
    raw = manifest["config"]
    return Config(model_name=raw["model_name"], model=cls(**raw["model"]), data=DataConfig(**raw["data"]),
                  train=TrainConfig(**raw["train"]))


def current_platform() -> str:
    """JAX's default platform, named as ``jax.export`` names platforms."""
    return {"gpu": "cuda"}.get(jax.default_backend(), jax.default_backend())


def load_exported(path) -> ExportedTranslator:
    """Load a file written by ``python -m zoo.export`` (:func:`zoo.export.export_translator`).

    Args:
      path: the ``.zoo`` file.

    Returns:
      An :class:`ExportedTranslator` on JAX's default device.

    Raises:
      ZooError: no such file, not a zoo export (or a damaged one), a newer format, or no lowering
        for this machine's platform; naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ZooError(f"{path}: no such file")
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = json.loads(archive.read(MANIFEST))
            if manifest.get("format") != FORMAT:
                raise ZooError(f"{path}: not a zoo export (format {manifest.get('format')!r})")
            if manifest.get("version") != VERSION:
                raise ZooError(f"{path}: export format version {manifest.get('version')}; this zoo reads version {VERSION}")
            with np.load(io.BytesIO(archive.read(PARAMS)), allow_pickle=False) as npz:
                params = [npz[f"{i:04d}"] for i in range(manifest["num_params"])]
            decoders = {k: export.deserialize(bytearray(archive.read(f"decode/beam{k}.jaxexport")))
                        for k in manifest["beam_sizes"]}
            config = _config(manifest)
            subword_model = archive.read(TextPipeline.SUBWORD_FILE) if config.data.tokenizer == "sentencepiece" else None
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, OSError) as e:
        raise ZooError(f"{path}: not a complete zoo export ({type(e).__name__}: {e})") from None
    if current_platform() not in manifest["platforms"]:
        raise ZooError(f"{path}: exported for {','.join(manifest['platforms'])}, not for this machine's "
                       f"{current_platform()}; export again with --platforms {current_platform()}")
    return ExportedTranslator(manifest, config, params, decoders, subword_model)
