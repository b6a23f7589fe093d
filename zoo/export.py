"""Export a trained workdir as one portable file that JAX alone runs (:func:`zoo.serving.load_exported`).

    python -m zoo.export --workdir runs/bahdanau --output bahdanau.zoo [--platforms cpu,cuda,tpu] [--beam-sizes 1,2,3,4,5]

The file is a zip archive (``unzip -l bahdanau.zoo`` lists it; no pickle anywhere):

* ``manifest.json``: format and version, the workdir's config (and its model config's class name in
  :mod:`zoo.config`, which a reader needs to rebuild it without the model registry), step, the source and target
  vocabularies, whether the model attends, the beam sizes and platforms, the JAX version.
* ``spm.model``: a sentencepiece workdir's SentencePiece model (:mod:`zoo.data.subword`), which
  segments the sentences; absent for word-level (moses) workdirs.
* ``params.npz``: the parameters as the leaves of their pytree, in ``jax.tree.flatten`` order
  (``0000.npy``, ``0001.npy``, ...): float32, as trained.
* ``decode/beam{K}.jaxexport``: per beam size K, :func:`zoo.decoding.decode_batch` (greedy for
  K = 1, beam search with its length normalisation otherwise) serialized by ``jax.export`` as
  StableHLO for every platform asked, with the parameters as its first argument (not baked-in
  constants, which would bloat the module and its compilation).

Variable-length input uses ``jax.export`` symbolic shapes: one module per beam size serves every
batch size B, padded source length S and number of decoded steps T; the caller's ``jax.jit``
specialises it to each concrete (B, S, T) on the first call, as a bucketed export would compile
each bucket. T is the host's choice (:func:`zoo.translation.decode_steps`: 2 S + 8, at most the
model's ``max_length``) and reaches the module as the length of an int32 (T,) argument, so the
rule lives in one place; models with positions are exported with S, T ≤ ``max_length``, which
the module checks when called.
"""

import argparse
import io
import json
import sys
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import export

from zoo import decoding
from zoo.data.pipeline import TextPipeline
from zoo.data.subword import SubwordTokenizer
from zoo.errors import ZooError
from zoo.translator import Translator, load

FORMAT, VERSION = "zoo-export", 1
MANIFEST, PARAMS = "manifest.json", "params.npz"
PLATFORMS = ("cpu", "cuda", "tpu")
BEAM_SIZES = (1, 2, 3, 4, 5)


def decoder_member(beam_size: int) -> str:
    """The archive member holding the serialized decoder of ``beam_size``."""
    return f"decode/beam{beam_size}.jaxexport"


def export_decoder(translator: Translator, beam_size: int, platforms=PLATFORMS) -> export.Exported:
    """``jax.export`` of ``(param_leaves, src (B, S), src_length (B,), steps (T,)) -> (tokens (B, T),
    weights (B, T, ...))``, :func:`zoo.decoding.decode_batch` of the translator's model with B, S
    and T symbolic (see the module docstring).

    Args:
      translator: a loaded model (:func:`zoo.load`). beam_size: K ≥ 1.
      platforms: any of "cpu", "cuda", "tpu"; the module holds a lowering for each.
    """
    leaves, treedef = jax.tree.flatten(translator.params)
    graphdef = translator.graphdef

    def decode(param_leaves, src, src_length, steps):
        model = nnx.merge(graphdef, jax.tree.unflatten(treedef, param_leaves))
        return decoding.decode_batch(model, src, src_length, beam_size, steps.shape[0])

    limit = getattr(translator.config.model, "max_length", None)
    constraints = [f"s <= {limit}", f"t <= {limit}"] if limit else []
    b, s, t = export.symbolic_shape("b, s, t", constraints=constraints)
    specs = ([jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves], jax.ShapeDtypeStruct((b, s), jnp.int32),
             jax.ShapeDtypeStruct((b,), jnp.int32), jax.ShapeDtypeStruct((t,), jnp.int32))
    return export.export(jax.jit(decode), platforms=tuple(platforms))(*specs)


def export_translator(translator: Translator, output, platforms=PLATFORMS, beam_sizes=BEAM_SIZES) -> Path:
    """Write ``translator`` as one file (see the module docstring); returns its path.

    Args:
      translator: a loaded model (:func:`zoo.load`).
      output: the file to write (conventionally ``NAME.zoo``); replaced if it exists.
      platforms: the platforms to lower for, a subset of :data:`PLATFORMS`.
      beam_sizes: the beam sizes the file can decode with (1 is greedy).

    Raises:
      ZooError: an unknown platform, a beam size < 1, or an output that cannot be written.

    Examples:
      >>> import zoo, zoo.export  # doctest: +SKIP
      >>> zoo.export.export_translator(zoo.load("runs/bahdanau"), "bahdanau.zoo", ["cpu"])  # doctest: +SKIP
      PosixPath('bahdanau.zoo')
    """
    platforms, beam_sizes = list(platforms), sorted(set(beam_sizes))
    unknown = [p for p in platforms if p not in PLATFORMS]
    if unknown or not platforms:
        raise ZooError(f"--platforms {','.join(platforms)}: choose one or more of {','.join(PLATFORMS)}")
    if not beam_sizes or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in beam_sizes):
        raise ZooError(f"--beam-sizes {beam_sizes}: integers of at least 1 (1 is greedy decoding)")
    leaves = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(translator.params))]
    params = io.BytesIO()
    np.savez(params, **{f"{i:04d}": x for i, x in enumerate(leaves)})
    config, pipeline = translator.config, translator.pipeline
    manifest = {
        "format": FORMAT, "version": VERSION, "jax_version": jax.__version__,
        "config": json.loads(config.to_json()), "config_class": type(config.model).__name__, "step": translator.step,
        "has_attention": bool(type(translator.model).has_attention),
        "src_vocab": pipeline.src_vocab.itos, "tgt_vocab": pipeline.tgt_vocab.itos,
        "platforms": platforms, "beam_sizes": beam_sizes, "num_params": len(leaves),
    }
    members = {MANIFEST: json.dumps(manifest, ensure_ascii=False, indent=1).encode(), PARAMS: params.getvalue()}
    if isinstance(pipeline.src_tokenizer, SubwordTokenizer):  # the pieces alone cannot segment a sentence
        members[TextPipeline.SUBWORD_FILE] = pipeline.src_tokenizer.model_proto
    for k in beam_sizes:
        members[decoder_member(k)] = bytes(export_decoder(translator, k, platforms).serialize())
    output = Path(output)
    partial = output.with_name(output.name + ".partial")
    try:
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as archive:
            for name, data in members.items():
                archive.writestr(name, data)
        partial.replace(output)
    except OSError as e:
        partial.unlink(missing_ok=True)
        raise ZooError(f"{output}: cannot write ({e.strerror or e})") from None
    return output


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m zoo.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="the trained workdir")
    p.add_argument("--output", required=True, help="the file to write, e.g. bahdanau.zoo")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: best validation loss)")
    p.add_argument("--platforms", default=",".join(PLATFORMS), help="comma-separated, of cpu,cuda,tpu (default: all)")
    p.add_argument("--beam-sizes", default=",".join(map(str, BEAM_SIZES)),
                   help="comma-separated beam sizes the file can decode with (default: 1,2,3,4,5; 1 is greedy)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        try:
            beam_sizes = [int(k) for k in args.beam_sizes.split(",")]
        except ValueError:
            raise ZooError(f"--beam-sizes {args.beam_sizes}: comma-separated integers, e.g. 1,2,5") from None
        path = export_translator(load(args.workdir, args.step), args.output, args.platforms.split(","), beam_sizes)
    except ZooError as e:
        print(f"zoo.export: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
