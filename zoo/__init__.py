"""zoo: attention and recurrent sequence models in JAX/Flax.

The entry points::

    zoo.list_models()                 names of the registered architectures
    zoo.build(name, **overrides)      a freshly initialised model (flax.nnx.Module)
    zoo.load(workdir, step=None)      a trained model: .translate(sentences, beam_size=1)
"""

from zoo.models import build, list_models


def load(workdir, step=None):
    """Load a trained model from ``workdir`` (see :func:`zoo.translator.load`).

    Examples:
      ``workdir`` is a folder that ``train.py`` wrote (here one of a tiny, untrained Bahdanau model):

      >>> import zoo
      >>> translator = zoo.load(workdir)  # the best-validation checkpoint; step=N for another
      >>> translator.config.model_name, translator.step
      ('bahdanau', 7)
      >>> hypotheses, attention = translator.translate(["Ein Mann läuft."])
      >>> attention[0].shape[1]  # one column a source token: ein mann läuft . <eos>
      5
    """
    from zoo.translator import load as _load

    return _load(workdir, step)


__all__ = ["build", "list_models", "load"]
