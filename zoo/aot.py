"""Ahead-of-time compilation of the training step for named accelerator topologies.

XLA's TPU compiler ships in libtpu and runs on any machine: :func:`compile_only_devices` asks it
for the devices of a topology that is not there (``jax.experimental.topologies``), and
:func:`compile_train_step` compiles over a mesh of them the very step ``train.py`` would run
(:func:`zoo.training.make_train_step`, its optimizer, its data-parallel or FSDP state
shardings), from abstract shapes only (``nnx.eval_shape``, ``jax.ShapeDtypeStruct``): nothing of
the model's size is allocated on the host. XLA then says, per chip, how much HBM the step
needs (``memory_analysis()``: arguments, outputs, temporaries) and what it costs
(``cost_analysis()``: FLOPs, bytes accessed), and :func:`roofline` turns that into a lower
bound on the step time against the chip's data-sheet peak and HBM bandwidth (:data:`CHIPS`).
MaxText's ``train_compile.py`` checks a config against a TPU pod the same way.

    report = plan(recipe("transformer"), TOPOLOGIES["tpu:v5e-8"], data_dir="data")
    print(report.summary())

Shapes: B rows a batch, S / T padded source / target length, k = ``steps_per_call``.
Byte counts are per chip; FLOPs are per chip and per training step.
"""

import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import re
import time
from dataclasses import dataclass
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from zoo.checkpoint import read_config
from zoo.config import Config
from zoo.data.corpora import load_split, split_paths
from zoo.data.dataset import epoch_plan, within_max_length
from zoo.data.pipeline import TextPipeline
from zoo.distributed import state_shardings
from zoo.errors import ZooError
from zoo.flops import jaxpr_flops
from zoo.models import build
from zoo.training import init_state, make_optimizer, make_train_step

GiB = 2**30


@dataclass(frozen=True)
class Chip:
    """One accelerator chip's data-sheet figures: HBM capacity (bytes), dense bfloat16 peak
    (FLOP/s, no sparsity), HBM bandwidth (bytes/s), and where they come from; ``device_kind`` is
    JAX's ``Device.device_kind`` of the chip."""

    kind: str
    device_kind: str
    hbm_bytes: float
    peak_bf16_flops: float
    hbm_bandwidth: float
    source: str


CHIPS = {
    "v4": Chip("TPU v4", "TPU v4", 32 * GiB, 275e12, 1200e9,
               "https://cloud.google.com/tpu/docs/v4 (32 GiB HBM2, 1200 GB/s, 275 TFLOP/s bf16)"),
    "v5e": Chip("TPU v5e", "TPU v5 lite", 16 * GiB, 197e12, 819e9,
                "https://cloud.google.com/tpu/docs/v5e (16 GB HBM2, 819 GB/s, 197 TFLOP/s bf16)"),
    "v5p": Chip("TPU v5p", "TPU v5", 95 * GiB, 459e12, 2765e9,
                "https://cloud.google.com/tpu/docs/v5p (95 GiB HBM2e, 2765 GB/s, 459 TFLOP/s bf16)"),
    "v6e": Chip("TPU v6e", "TPU v6 lite", 32 * GiB, 918e12, 1640e9,
                "https://cloud.google.com/tpu/docs/v6e (32 GB HBM, 1640 GB/s, 918 TFLOP/s bf16)"),
    "h100": Chip("NVIDIA H100 SXM", "NVIDIA H100 80GB HBM3", 80e9, 989e12, 3.35e12,
                 "https://www.nvidia.com/en-us/data-center/h100/ datasheet, SXM column (80 GB HBM3, 3.35 TB/s, "
                 "1979 TFLOP/s bf16 with sparsity: 989 dense)"),
}


# XLA's description of an H100 SXM for compiling without one (a GpuTargetConfigProto in text form):
# the fields XLA's GPU compiler reads, with the values of XLA's own spec file
# openxla/xla xla/backends/gpu/target_config/specs/h100_sxm.txtpb (commit 0774019d), cuDNN 9.10 as JAX 0.10.2's.
H100_SXM_TARGET_CONFIG = """
gpu_device_info {
  threads_per_block_limit: 1024  threads_per_warp: 32  shared_memory_per_block: 49152
  shared_memory_per_core: 233472  threads_per_core_limit: 2048  core_count: 132  fpus_per_core: 128
  block_dim_limit_x: 2147483647  block_dim_limit_y: 65535  block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000  l2_cache_size: 52428800  clock_rate_ghz: 1.98
  device_memory_size: 84942979072  shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 feature_extension: ACCELERATED_FEATURES }
  registers_per_core_limit: 65536  registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 10 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""


@dataclass(frozen=True)
class Topology:
    """A named slice: its chip, how many, and how ``jax.experimental.topologies.get_topology_desc``
    spells it (``shape`` such as ``"v5e:2x4"``, the chips of one host, libtpu's chip config)."""

    name: str
    chip: Chip
    num_chips: int
    platform: str = "tpu"
    shape: str = ""
    chips_per_host_bounds: tuple[int, int, int] = (2, 2, 1)
    chip_config_name: str = "default"  # v4: "megacore", one JAX device per chip as on a real v4 VM
    target_config: str = ""  # CUDA: XLA's GpuTargetConfigProto of the GPU, in text form


# Cloud TPU names count chips for v5e/v6e (v5e-8: 8 chips) and TensorCores for v4/v5p (v4-8: 4 chips).
TOPOLOGIES = {t.name: t for t in (
    Topology("tpu:v4-8", CHIPS["v4"], 4, shape="v4:2x2x1", chip_config_name="megacore"),
    Topology("tpu:v5e-4", CHIPS["v5e"], 4, shape="v5e:2x2"),
    Topology("tpu:v5e-8", CHIPS["v5e"], 8, shape="v5e:2x4", chips_per_host_bounds=(2, 4, 1)),
    Topology("tpu:v5e-16", CHIPS["v5e"], 16, shape="v5e:4x4"),  # 4 hosts of 4 chips
    Topology("tpu:v5e-256", CHIPS["v5e"], 256, shape="v5e:16x16"),  # 64 hosts of 4 chips
    Topology("tpu:v5p-8", CHIPS["v5p"], 4, shape="v5p:2x2x1"),
    Topology("tpu:v6e-8", CHIPS["v6e"], 8, shape="v6e:2x4", chips_per_host_bounds=(2, 4, 1)),
    Topology("gpu:h100", CHIPS["h100"], 1, platform="cuda", shape="1x1x1", target_config=H100_SXM_TARGET_CONFIG),
)}


class DoesNotFit(ZooError):
    """The step needs more HBM a chip than the topology's chips have.

    Attributes:
      required_bytes: what the step needs a chip, in bytes, where known (XLA's figure, or the state's).
      available_bytes: what a chip offers, in bytes, where known (XLA's: below the chip's HBM, which
        keeps some for itself).
    """

    def __init__(self, message: str, required_bytes: float | None = None, available_bytes: float | None = None):
        super().__init__(message)
        self.required_bytes, self.available_bytes = required_bytes, available_bytes


# XLA:TPU's line for a program over the HBM, e.g. "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the
# total memory required for HLO temporaries (23.39G) exceeds available HBM (15.75G)." (libtpu 0.0.42.1;
# the figure counts arguments and outputs too: 23.39 GiB for a 11.7 GiB argument and its 11.7 GiB result)
_XLA_HBM_LINE = re.compile(r"required for .*?\((\d+(?:\.\d+)?)([KMGT])\).*?available HBM \((\d+(?:\.\d+)?)([KMGT])\)")


def xla_hbm_figures(message: str) -> tuple[float, float] | tuple[None, None]:
    """XLA's required and available HBM in bytes from its out-of-memory line (its "G" are GiB), or
    (None, None) where the line has another form.

    Examples:
      >>> xla_hbm_figures("Ran out of memory on HBM, the total memory required for HLO temporaries "
      ...                 "(23.39G) exceeds available HBM (15.75G).")
      (25114821263.36, 16911433728.0)
    """
    found = _XLA_HBM_LINE.search(message)
    if not found:
        return None, None
    unit = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    return float(found[1]) * unit[found[2]], float(found[3]) * unit[found[4]]


def topology(name: str) -> Topology:
    """The :data:`TOPOLOGIES` entry of ``name`` (e.g. ``"tpu:v5e-8"``).

    Raises:
      ZooError: an unknown name, listing the known ones.
    """
    if name not in TOPOLOGIES:
        raise ZooError(f"--compile-only {name!r}: unknown topology; choose from {', '.join(TOPOLOGIES)}")
    return TOPOLOGIES[name]


def roofline(flops: float, bytes_accessed: float, chip: Chip) -> float:
    """The roofline bound on one chip's step time, in seconds (Williams, Waterman & Patterson 2009):

        t ≥ max(FLOPs / peak, bytes / bandwidth)

    with the chip's dense bfloat16 peak and HBM bandwidth. A lower bound: it assumes perfect
    overlap of compute and memory traffic and ignores collectives and the host.

    Examples:
      >>> roofline(197e12, 0.0, CHIPS["v5e"])  # one second of peak v5e compute
      1.0
      >>> roofline(1e9, 819e9, CHIPS["v5e"])  # memory-bound
      1.0
    """
    return max(flops / chip.peak_bf16_flops, bytes_accessed / chip.hbm_bandwidth)


def compile_only_devices(topo: Topology) -> list:
    """The devices of ``topo`` as XLA's compiler for it sees them: they compile, they never run.

    CUDA: XLA's GPU compiler from JAX's CUDA plugin, told the GPU by ``topo.target_config``
    (``JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1`` is set if unset, so that the plugin loads without the
    CUDA libraries; it takes effect only if this process has not started its backends yet).
    TPU: libtpu's probing of the cloud metadata is quieted (``TPU_ACCELERATOR_TYPE``,
    ``TPU_WORKER_HOSTNAMES=localhost``, set only if unset and only after this process's own
    backends started), and ``ALLOW_MULTIPLE_LIBTPU_LOAD=1`` lets it load while another process of
    the machine holds libtpu's lock file (every JAX process does once libtpu is installed).

    Raises:
      ZooError: no CUDA plugin (naming ``pip install -e ".[cuda]"``) or no libtpu (naming
        ``pip install -e ".[tpu]"``).
    """
    from jax.experimental import topologies

    if topo.platform == "cuda":
        os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
        try:
            desc = topologies.get_topology_desc(topo.name, "cuda", target_config=topo.target_config, topology=topo.shape)
        except NotImplementedError:
            raise ZooError(f"{topo.name}: compiling for CUDA, even without a GPU, needs JAX's CUDA plugin: "
                           f"pip install -e \".[cuda]\"") from None
        return list(desc.devices)
    if importlib.util.find_spec("libtpu") is None:
        raise ZooError(f"{topo.name}: compiling for TPU needs libtpu: pip install -e \".[tpu]\"")
    jax.devices()  # this process's own backends first, untouched by the settings below
    for name, value in (("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"), ("TPU_ACCELERATOR_TYPE", "v5litepod-8"),
                        ("TPU_WORKER_HOSTNAMES", "localhost")):
        os.environ.setdefault(name, value)
    desc = topologies.get_topology_desc(topo.shape, "tpu", chip_config_name=topo.chip_config_name,
                                        chips_per_host_bounds=topo.chips_per_host_bounds, num_slices=1,
                                        wrap=(False, False, False))
    return list(desc.devices)


@dataclass(frozen=True)
class CompileReport:
    """What XLA says about one training step compiled for a topology (bytes per chip; FLOPs per
    chip and step; ``tokens_per_step`` counts the batch's padded target positions, B·T)."""

    topology: str
    chip: str
    num_chips: int
    model: str
    dtype: str
    fsdp: bool
    batch_shape: tuple[int, int, int]  # (B, S, T) of one step
    steps_per_call: int
    num_params: int
    argument_bytes: int
    output_bytes: int
    alias_bytes: int  # outputs written over donated arguments (the state)
    temp_bytes: int
    code_bytes: int
    hbm_bytes: float
    xla_flops: float | None  # cost_analysis(): every op XLA counts, elementwise included; None: no cost analysis
    jaxpr_flops: float  # zoo.flops.jaxpr_flops of the traced step / chips: matrix products only
    bytes_accessed: float | None  # cost_analysis()'s; None: no cost analysis
    compile_s: float
    custom_calls: tuple[str, ...] = ()  # the compiled program's custom-call targets, e.g. cuDNN's __cudnn$fmhaSoftmax

    @property
    def peak_bytes(self) -> int:
        """HBM a chip holds at the step's peak: arguments + outputs − aliased + temporaries + code."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.hbm_bytes

    @property
    def roofline_s(self) -> float:
        """:func:`roofline` of the FLOPs and XLA's bytes on this chip. The FLOPs are the larger of
        XLA's count and the jaxpr's: XLA's cost analysis counts a loop's body once, so for the
        recurrent models (a ``lax.scan`` over time) the jaxpr's count, which multiplies every matrix
        product in a scan by its trips, is the right one; their bytes stay XLA's, a lower bound.
        Where XLA gives no cost analysis (deviceless CUDA), the bytes are those of the arguments
        read and the outputs written once: a looser lower bound."""
        flops = self.jaxpr_flops if self.xla_flops is None else max(self.xla_flops, self.jaxpr_flops)
        moved = self.argument_bytes + self.output_bytes if self.bytes_accessed is None else self.bytes_accessed
        return roofline(flops, moved, TOPOLOGIES[self.topology].chip)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_shape[0] * self.batch_shape[2]

    @property
    def tokens_per_s(self) -> float:
        """Target tokens a second (padded positions) at the roofline step time: an upper bound."""
        return self.tokens_per_step / self.roofline_s

    @property
    def mfu(self) -> float:
        """Model FLOPs (the jaxpr's matrix products) over the chips' peak at the roofline step time."""
        return self.jaxpr_flops / (self.roofline_s * TOPOLOGIES[self.topology].chip.peak_bf16_flops)

    def to_json(self) -> str:
        """Every field and derived figure as one JSON object."""
        derived = {name: getattr(self, name) for name in ("peak_bytes", "fits", "roofline_s", "tokens_per_step",
                                                          "tokens_per_s", "mfu")}
        return json.dumps({**dataclasses.asdict(self), **derived}, indent=2)

    def summary(self) -> str:
        """A few lines for the console."""
        gb = lambda n: f"{n / 1e9:.2f} GB"
        b, s, t = self.batch_shape
        return "\n".join([
            f"{self.model} ({self.dtype}, {self.num_params / 1e6:.1f} M parameters, {'FSDP' if self.fsdp else 'data parallel'}) "
            f"on {self.topology}: {self.num_chips} × {self.chip}; batch {b} × {s} source × {t} target tokens a step",
            f"HBM a chip: {gb(self.peak_bytes)} of {gb(self.hbm_bytes)} ({'fits' if self.fits else 'does NOT fit'}): "
            f"arguments {gb(self.argument_bytes)}, temporaries {gb(self.temp_bytes)}, outputs {gb(self.output_bytes)} "
            f"({gb(self.alias_bytes)} of them over donated arguments), code {gb(self.code_bytes)}",
            f"FLOPs a step a chip: {'-' if self.xla_flops is None else f'{self.xla_flops / 1e9:.2f}'} G (XLA), "
            f"{self.jaxpr_flops / 1e9:.2f} G (matrix products, jaxpr); bytes accessed "
            f"{'- (no cost analysis)' if self.bytes_accessed is None else gb(self.bytes_accessed)}",
            f"roofline step time {self.roofline_s * 1e3:.3f} ms -> at most {self.tokens_per_s:,.0f} target tokens/s, "
            f"MFU {self.mfu:.1%}; compiled in {self.compile_s:.1f} s"
            + (f"; custom calls: {', '.join(self.custom_calls)}" if self.custom_calls else ""),
        ])


@contextlib.contextmanager
def answering_as(topo: Topology):
    """While building and tracing for a GPU that is not there, answer the questions the code asks
    the local machine as that GPU would: zoo's "auto" attention (:func:`zoo.nn.attention.on_nvidia_gpu`:
    yes) and JAX's cuDNN attention (cuDNN 9.10, compute capability 9.0: an H100 with JAX 0.10.2's
    cuDNN), so that the step is the one the GPU would run. Nothing changes for a TPU topology.
    """
    if topo.platform != "cuda":
        yield
        return
    from jax._src.cudnn import fused_attention_stablehlo as cudnn

    from zoo.nn import attention

    with (mock.patch.object(attention, "on_nvidia_gpu", lambda: True),
          mock.patch.object(cudnn, "check_cudnn_version", lambda: 91000),
          mock.patch.object(cudnn, "check_compute_capability", lambda capability: float(capability) <= 9.0),
          mock.patch.object(cudnn, "is_cuda_compute_capability_equal", lambda capability: float(capability) == 9.0)):
        yield


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _chip_bytes(tree) -> int:
    """Bytes a chip holds of abstract arrays with shardings (the largest shard of each)."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def compile_train_step(config: Config, topo: Topology, batch_shape: tuple[int, int, int]):
    """Compile ``config``'s training step for ``topo`` on batches of ``batch_shape``.

    The step is :func:`zoo.training.make_train_step` over a 1-D ``"data"`` mesh of the topology's
    chips, the batch split over it, the state replicated or, with ``config.train.fsdp``, split by
    :func:`zoo.distributed.state_shardings`; with ``steps_per_call`` k > 1 a call takes k stacked
    batches and the figures are divided by k. ``config.model``'s vocabulary sizes are used as they
    are. For a GPU, the model is built and the step traced :func:`answering_as` the GPU.

    Args:
      config: a whole run config.
      topo: an entry of :data:`TOPOLOGIES`.
      batch_shape: (B, S, T); B a multiple of the chip count.

    Returns:
      ``(report, compiled)``: the :class:`CompileReport` and ``jax.stages.Compiled`` (its HLO: ``as_text()``).

    Raises:
      DoesNotFit: the state alone, or the whole step (XLA's RESOURCE_EXHAUSTED), exceeds a chip's HBM.
      ZooError: no compile-only devices (:func:`compile_only_devices`), a model config the model
        refuses, or B not a multiple of the chips.
    """
    with answering_as(topo):
        return _compile_train_step(config, topo, batch_shape)


def _compile_train_step(config: Config, topo: Topology, batch_shape: tuple[int, int, int]):
    devices = compile_only_devices(topo)
    mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)
    rows, src_len, tgt_len = batch_shape
    if rows % len(devices):
        raise ZooError(f"batch of {rows} rows does not split over the {len(devices)} chips of {topo.name}")
    t = config.train
    tx = make_optimizer(t)
    try:
        new = lambda: build(config.model_name, config.model, seed=t.seed)
        graphdef = nnx.graphdef(nnx.eval_shape(new))
        state = jax.eval_shape(lambda: init_state(new(), tx)[1])
    except ValueError as e:
        raise ZooError(f"model {config.model_name!r}: {e}") from None
    state_sharding = state_shardings(state, mesh, t.fsdp)
    state = _abstract(state, state_sharding)
    replicated = NamedSharding(mesh, P())
    k = t.steps_per_call
    slots, batch_spec = ((), P("data")) if k == 1 else ((k,), P(None, "data"))
    data = NamedSharding(mesh, batch_spec)
    shapes = {"src": (rows, src_len), "src_length": (rows,), "tgt_in": (rows, tgt_len), "tgt_out": (rows, tgt_len),
              "tgt_length": (rows,)}
    batch = {name: jax.ShapeDtypeStruct(slots + shape, jnp.int32, sharding=data) for name, shape in shapes.items()}
    if k > 1:
        batch["active"] = jax.ShapeDtypeStruct((k,), jnp.bool_, sharding=replicated)
    key_type = jax.eval_shape(lambda: jax.random.key(0))
    key = jax.ShapeDtypeStruct(key_type.shape, key_type.dtype, sharding=replicated)
    hbm = topo.chip.hbm_bytes
    state_bytes = _chip_bytes(state)
    if state_bytes > hbm:
        raise DoesNotFit(f"{config.model_name} does not fit {topo.name}: its training state alone takes "
                         f"{state_bytes / 1e9:.2f} GB a chip, over the {hbm / 1e9:.2f} GB HBM of a {topo.chip.kind}",
                         state_bytes, hbm)
    step = make_train_step(graphdef, tx, t.teacher_forcing, t.label_smoothing, state_sharding, k)
    tic = time.perf_counter()
    traced = step.trace(state, batch, key)
    lowered = traced.lower()
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        line = str(e).strip().splitlines()[0]
        raise DoesNotFit(f"{config.model_name} does not fit {topo.name}: XLA: {line}", *xla_hbm_figures(line)) from None
    compile_s = time.perf_counter() - tic
    memory, cost = compiled.memory_analysis(), compiled.cost_analysis()
    cost = cost or {}  # deviceless CUDA: no cost analysis (docs/accelerators.md)
    report = CompileReport(
        topology=topo.name, chip=topo.chip.kind, num_chips=len(devices), model=config.model_name,
        dtype=getattr(config.model, "dtype", "float32"), fsdp=t.fsdp, batch_shape=(rows, src_len, tgt_len),
        steps_per_call=k, num_params=int(sum(x.size for x in jax.tree.leaves(state["params"]))),
        argument_bytes=memory.argument_size_in_bytes, output_bytes=memory.output_size_in_bytes,
        alias_bytes=memory.alias_size_in_bytes, temp_bytes=memory.temp_size_in_bytes,
        code_bytes=memory.generated_code_size_in_bytes, hbm_bytes=hbm,
        xla_flops=cost["flops"] / k if "flops" in cost else None,
        jaxpr_flops=jaxpr_flops(traced.jaxpr) / k / len(devices),
        bytes_accessed=cost["bytes accessed"] / k if "bytes accessed" in cost else None, compile_s=compile_s,
        custom_calls=tuple(sorted(set(re.findall(r'custom_call_target="([^"]+)"', compiled.as_text())))))
    return report, compiled


def read_corpus(config: Config, workdir=None, data_dir=None) -> tuple[Config, list[int], list[int]]:
    """What of the corpus the step's shapes depend on, read as :func:`zoo.run.prepare` reads it:
    ``config`` with the vocabulary sizes ``train.py`` would give the model (built from the training
    split, or a started ``workdir``'s), and the token counts of the training pairs within
    ``data.max_length``. Tokenizes the training split into memory, as ``train.py --prepared-dir off``
    does (Multi30k, word-level: ~15 s of one core; the batches are the same either way); writes nothing.

    Raises:
      ZooError: missing or bad data files or vocabularies.
    """
    d = config.data
    train_src, train_tgt = load_split(d.dataset, "train", d.src_lang, d.tgt_lang, data_dir)
    if workdir is not None and TextPipeline.saved_in(d, workdir):
        saved = read_config(workdir).model
        pipeline = TextPipeline.load(d, workdir, (saved.src_vocab_size, saved.tgt_vocab_size))
    else:
        origin = " and ".join(map(str, split_paths(d.dataset, "train", d.src_lang, d.tgt_lang, data_dir)))
        pipeline = TextPipeline.build(d, train_src, train_tgt, origin)
    sizes = {"src_vocab_size": len(pipeline.src_vocab), "tgt_vocab_size": len(pipeline.tgt_vocab)}
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, **sizes))
    (src_ids, tgt_ids), _ = within_max_length(pipeline.encode_source(train_src), pipeline.encode_target(train_tgt),
                                              d.max_length)
    return config, [len(s) for s in src_ids], [len(s) for s in tgt_ids]


def largest_batch_shape(config: Config, src_lengths: list[int], tgt_lengths: list[int], num_chips: int) -> tuple[int, int, int]:
    """(B, S, T) of the largest batch of the run's first epoch (:func:`zoo.data.dataset.epoch_plan`)
    on ``num_chips`` chips: the most padded tokens B·(S + T), then the longest S + T (the most
    attention scores). Every epoch has the same shapes, only in another order.

    Raises:
      ZooError: ``batch_size`` not a multiple of ``num_chips``, or a ``batch_tokens`` budget too
        small for the longest pair.
    """
    if config.train.batch_tokens is None and config.train.batch_size % num_chips:
        raise ZooError(f"--train.batch-size {config.train.batch_size} does not split over {num_chips} chips")
    try:
        plan = epoch_plan(src_lengths, tgt_lengths, config.train, config.data, 0, num_chips)
    except ValueError as e:
        raise ZooError(f"--train.batch-tokens: {e} (rows are a multiple of 8 and of the {num_chips} chips)") from None
    shapes = {(int(spec.rows), int(spec.src_len), int(spec.tgt_len)) for spec in plan}
    return max(shapes, key=lambda b: (b[0] * (b[1] + b[2]), b[1] + b[2]))


def plan(config: Config, topo: Topology, workdir=None, data_dir=None) -> CompileReport:
    """Compile the step ``train.py`` would run with ``config`` for ``topo``, on the largest batch
    shape of its plan (:func:`read_corpus`, :func:`largest_batch_shape`, :func:`compile_train_step`).

    Raises:
      DoesNotFit, ZooError: as :func:`compile_train_step` and :func:`read_corpus`.
    """
    compile_only_devices(topo)  # fail before reading the corpus
    config, src_lengths, tgt_lengths = read_corpus(config, workdir, data_dir)
    return compile_train_step(config, topo, largest_batch_shape(config, src_lengths, tgt_lengths, topo.num_chips))[0]
