"""zoo: attention and recurrent sequence models in JAX/Flax.

The entry points::

    zoo.list_models()                 names of the registered architectures
    zoo.build(name, **overrides)      a freshly initialised model (flax.nnx.Module)
    zoo.load(workdir, step=None)      a trained model: .translate(sentences, beam_size=1)

``build`` and ``list_models`` are imported on first use, so that ``import zoo.serving`` (an
exported model run by JAX alone) imports no model code and no flax, and the worker processes of
``zoo.data.prepare`` import neither JAX nor flax.
"""


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


def __getattr__(name):
    if name in ("build", "list_models"):
        from zoo import models

        return getattr(models, name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")


__all__ = ["build", "list_models", "load"]
