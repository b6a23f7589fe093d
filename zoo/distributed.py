"""Several processes, one run: JAX's distributed runtime (``jax.distributed``).

Each process of a multi-process run (one per host, or per GPU) calls :func:`initialize` before
any other JAX call; from then on ``jax.devices()`` lists the devices of every process, the
``"data"`` mesh of :func:`zoo.distributed.data_parallel` spans them all, each process feeds its
own rows of every global batch (:mod:`zoo.data.loader`), and only the main process
(:func:`is_main`) writes the workdir's config, vocabularies and metrics and prints. Orbax
saves and restores the sharded state from all processes together.

The shardings of the zoo live here too: batches split over the ``"data"`` axis, parameters and
optimizer state replicated or (FSDP) split over it.
"""

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from zoo.errors import ZooError


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Join a multi-process run: ``jax.distributed.initialize`` with CPU collectives over gloo.

    Call it before any other JAX call. Arguments left None are detected from the cluster
    (SLURM, Open MPI, TPU pod slices, ...; see ``jax.distributed.initialize``).

    Args:
      coordinator_address: ``HOST:PORT`` of process 0's coordination service.
      num_processes: how many processes take part.
      process_id: this process's index in [0, num_processes).

    Raises:
      ZooError: the runtime could not start (e.g. nothing detected and no address given),
        with JAX's reason.
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process collectives of CPU devices
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    except (RuntimeError, ValueError, TypeError) as e:
        raise ZooError(f"--distributed: JAX's distributed runtime did not start ({str(e).strip().splitlines()[0]}); "
                       f"outside SLURM/MPI/TPU pods give --coordinator-address, --num-processes and --process-id") from None


def is_main() -> bool:
    """Whether this is process 0, the one that writes the workdir's files and prints."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process has got here (nothing to wait for with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def data_parallel(devices=None):
    """``(batch_sharding, replicated)`` over a 1-D ``"data"`` mesh of ``devices`` (default: all
    devices of all processes)."""
    devices = jax.devices() if devices is None else devices
    mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)
    return NamedSharding(mesh, P("data")), NamedSharding(mesh, P())


def state_shardings(state, mesh, fsdp: bool):
    """Shardings of the training state's leaves over ``mesh``'s ``"data"`` axis: replicated; or with
    ``fsdp`` (fully sharded data parallelism, ZeRO-3: Rajbhandari et al. 2020) each array split
    along its largest axis that the device count divides (replicated if none does), so that
    parameters and Adam's moments, which share the parameters' shapes, are split alike.
    """
    n = mesh.shape["data"]

    def sharding(x) -> NamedSharding:
        shape = np.shape(x)
        axes = [a for a in range(len(shape)) if shape[a] % n == 0] if fsdp else []
        if not axes:
            return NamedSharding(mesh, P())
        axis = max(axes, key=lambda a: shape[a])
        return NamedSharding(mesh, P(*[None] * axis, "data"))

    return jax.tree.map(sharding, state)
