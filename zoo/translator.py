"""A trained model loaded from its workdir: ``zoo.load(workdir).translate(sentences)``."""

from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zoo import decoding
from zoo.checkpoint import CONFIG_FILE, CheckpointStore, read_config
from zoo.config import Config
from zoo.data.batching import round_up
from zoo.data.pipeline import TextPipeline
from zoo.distributed import data_parallel
from zoo.errors import ZooError
from zoo.models import build
from zoo.translation import MAX_SOURCE_LENGTH, Translation, TranslatorBase

__all__ = ["MAX_SOURCE_LENGTH", "Translation", "Translator", "load"]


class Translator(TranslatorBase):
    """A model with its parameters, tokenizers and vocabularies; translates raw sentences.

    Batches are split over the ``"data"`` axis of this process's devices (``batch_sharding``),
    the parameters are replicated on them.
    """

    def __init__(self, config: Config, pipeline: TextPipeline, graphdef, params, step: int):
        self.config, self.pipeline, self.graphdef, self.step = config, pipeline, graphdef, step
        self.batch_sharding, replicated = data_parallel(jax.local_devices())
        self.params = jax.device_put(params, replicated)

    def batch_rows(self, batch_size: int) -> int:
        """``batch_size`` rounded up to a multiple of the local devices, which split each batch."""
        return round_up(batch_size, len(self.batch_sharding.device_set))

    @property
    def model(self) -> nnx.Module:
        """The model as a ``flax.nnx.Module`` holding the loaded parameters (one example at a time)."""
        return nnx.merge(self.graphdef, self.params)

    @partial(jax.jit, static_argnums=(0, 3, 4))
    def _decode(self, params, batch, beam_size: int, max_length: int):
        return decoding.decode_batch(nnx.merge(self.graphdef, params), batch["src"], batch["src_length"], beam_size,
                                     max_length)

    def decode_batch(self, batch: dict, beam_size: int, max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """The batch split over the local devices, decoded by the jit-compiled model (see
        :meth:`zoo.translation.TranslatorBase.decode_batch`)."""
        batch = jax.device_put(batch, self.batch_sharding)
        return jax.device_get(self._decode(self.params, batch, beam_size, max_length))


def load(workdir, step: int | None = None) -> Translator:
    """Load a trained model from its workdir, with no knowledge of its structure needed.

    The model is built abstractly (``nnx.eval_shape``: shapes only, no initialisation) and only
    its parameters and step are read from the checkpoint, never the optimizer state. A damaged
    step is skipped for the next intact one (one log line; see :mod:`zoo.checkpoint`). Nothing
    in the workdir is written or locked, so loading may run beside training.

    Args:
      workdir: a folder written by ``train.py`` / :func:`zoo.training.train`.
      step: a saved step; default the best-validation checkpoint (else the latest intact one).

    Raises:
      ZooError: not a workdir, a damaged ``config.json`` or vocabulary (naming the file), a
        vocabulary that does not fit the config or is not the one the step was trained with, no
        (intact) checkpoint, or parameters that do not fit the config.
    """
    workdir = Path(workdir)
    config = read_config(workdir)
    sizes = (config.model.src_vocab_size, config.model.tgt_vocab_size)
    pipeline = TextPipeline.load(config.data, workdir, vocab_sizes=sizes)
    try:
        model = nnx.eval_shape(lambda: build(config.model_name, config.model))
    except ValueError as e:
        raise ZooError(f"{workdir / CONFIG_FILE}: model {config.model_name!r}: {e}") from None
    graphdef, params = nnx.split(model)
    target = {"params": nnx.to_pure_dict(params), "step": jax.ShapeDtypeStruct((), jnp.int32)}
    store = CheckpointStore(workdir, read_only=True, depends_on=TextPipeline.files(config.data))
    state, _ = store.restore(target, step=step, best=True)
    return Translator(config, pipeline, graphdef, jax.device_put(state["params"]), int(state["step"]))
