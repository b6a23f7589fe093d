"""What jax.export's symbolic shapes cost against a static-shape export (one module a bucket):
export time, module size, first call (compilation) and steady call time, for one batch shape.

    python scripts/export_shapes.py [--model bahdanau] [--batch 8] [--sentence-tokens 12] [--repeats 20]

A freshly initialised model at its default size (:func:`zoo.bench.serving.export_fresh_model`'s
setting); greedy decoding on this machine's platform. Prints one JSON object.
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import export

from zoo import decoding
from zoo.data.batching import round_up
from zoo.models import MODELS, build
from zoo.serving import current_platform
from zoo.translation import MAX_SOURCE_LENGTH


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bahdanau")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--sentence-tokens", type=int, default=12)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    config = MODELS[args.model].config()
    graphdef, state = nnx.split(build(args.model, config))
    leaves, treedef = jax.tree.flatten(nnx.to_pure_dict(state))
    S = round_up(args.sentence_tokens + 1, 8)
    T = min(2 * S + 8, getattr(config, "max_length", MAX_SOURCE_LENGTH + 1))

    def decode(param_leaves, src, src_length, steps):
        model = nnx.merge(graphdef, jax.tree.unflatten(treedef, param_leaves))
        return decoding.decode_batch(model, src, src_length, 1, steps.shape[0])

    specs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves]
    b, s, t = export.symbolic_shape("b, s, t")
    shapes = {"symbolic": ((b, s), (b,), (t,)), "static": ((args.batch, S), (args.batch,), (T,))}
    rng = np.random.default_rng(0)
    src = rng.integers(4, config.src_vocab_size, (args.batch, S)).astype(np.int32)
    src_length = np.full((args.batch,), args.sentence_tokens + 1, np.int32)
    params = jax.device_put(leaves)
    results = {"model": args.model, "batch": args.batch, "S": S, "T": T, "platform": current_platform(),
               "device": str(jax.devices()[0])}
    calls = {}
    for name, (src_shape, length_shape, steps_shape) in shapes.items():
        start = time.perf_counter()
        exported = export.export(jax.jit(decode), platforms=[current_platform()])(
            specs, jax.ShapeDtypeStruct(src_shape, jnp.int32), jax.ShapeDtypeStruct(length_shape, jnp.int32),
            jax.ShapeDtypeStruct(steps_shape, jnp.int32))
        blob = exported.serialize()
        export_s = time.perf_counter() - start
        call = jax.jit(export.deserialize(blob).call)
        start = time.perf_counter()
        jax.block_until_ready(call(params, src, src_length, np.zeros((T,), np.int32)))
        first_s = time.perf_counter() - start
        calls[name], results[name] = call, {"export_s": export_s, "module_bytes": len(blob), "first_call_s": first_s}
    times = {name: [] for name in calls}
    for _ in range(args.repeats):  # alternated, so that a drift of the machine's speed hits both alike
        for name, call in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(call(params, src, src_length, np.zeros((T,), np.int32)))
            times[name].append(time.perf_counter() - start)
    for name, ts in times.items():
        results[name].update(call_ms_median=1e3 * statistics.median(ts), call_ms_min=1e3 * min(ts))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
