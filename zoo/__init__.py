"""zoo: attention and recurrent sequence models in JAX/Flax.

    zoo.list_models()                 names of the registered architectures
    zoo.build(name, **overrides)      a freshly initialised model (flax.nnx.Module)
    zoo.load(workdir, step=None)      a trained model: .translate(sentences, beam_size=1)
"""

from zoo.models import build, list_models


def load(workdir, step=None):
    """Load a trained model from ``workdir`` (see :func:`zoo.translator.load`)."""
    from zoo.translator import load as _load

    return _load(workdir, step)


__all__ = ["build", "list_models", "load"]
