"""PyTorch on the same shapes, in the same run: the peer the layer study's times are held against.

PyTorch is never a dependency of the zoo: it is imported when a peer is made, and a missing
install is one clear error. The peer of each layer kind (:mod:`zoo.bench.layers`):

    attention-*    torch.nn.functional.scaled_dot_product_attention   q, k, v (B, N, n, d/N)
    lstm, gru      torch.nn.LSTM / torch.nn.GRU(d, d, batch_first=True)  x (B, n, d)
    conv           torch.nn.Conv1d(d, d, k, padding="same")            x (B, d, n)

"forward" runs under ``torch.inference_mode()``; "train" is the forward pass and the backward
pass of the summed outputs with respect to the input and the parameters (the recurrent layers).
Timing is :func:`zoo.bench.measure.time_call` (median after warm-up; CUDA synchronised).
"""

from collections.abc import Callable
from functools import cache

from zoo.bench.measure import Timing, time_call


class PeerUnavailable(RuntimeError):
    """PyTorch is not installed, or cannot run on the device JAX runs on."""


def torch_peer(device, dtype: str, sizes, repeats: int, warmup: int, threads: int | None = None) -> Callable:
    """A peer ``(kind, n, d, pass) -> Timing | None`` (None: no counterpart for that kind and pass).

    Args:
      device: the JAX device of the run: PyTorch runs on the CPU, or on CUDA for a GPU.
      dtype: "float32" or "bfloat16". sizes: :class:`zoo.bench.layers.LayerSizes`.
      repeats, warmup: as :func:`zoo.bench.measure.time_call`.
      threads: PyTorch's intra-op threads (``torch.set_num_threads``); None: its default.

    Raises:
      PeerUnavailable: PyTorch missing, or JAX on a GPU while this PyTorch has no CUDA, or JAX on
        a TPU.
    """
    try:
        import torch
    except ImportError:
        raise PeerUnavailable("--peer torch needs PyTorch, which is not installed (pip install torch)") from None
    if device.platform == "gpu":
        if not torch.cuda.is_available():
            raise PeerUnavailable("--peer torch: JAX runs on a GPU but this PyTorch build has no CUDA")
        where = "cuda"
    elif device.platform == "cpu":
        where = "cpu"
    else:
        raise PeerUnavailable(f"--peer torch: PyTorch does not run on {device.platform}")
    if threads is not None:
        torch.set_num_threads(threads)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    sync = torch.cuda.synchronize if where == "cuda" else (lambda: None)

    def timed(fn) -> Timing:
        def call():
            fn()
            sync()

        return time_call(call, repeats=repeats, warmup=warmup)

    def randn(*shape, grad=False):
        return torch.randn(*shape, device=where, dtype=torch_dtype, requires_grad=grad)

    @cache  # the three attention kinds share one peer timing
    def attention(n: int, d: int) -> Timing:
        q, k, v = (randn(sizes.batch, d // sizes.head_dim, n, sizes.head_dim) for _ in range(3))
        with torch.inference_mode():
            return timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))

    def module(kind: str, d: int):
        if kind == "conv":
            return torch.nn.Conv1d(d, d, sizes.kernel_size, padding="same")
        return (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(d, d, batch_first=True)

    def layer(kind: str, n: int, d: int, pass_: str) -> Timing:
        net = module(kind, d).to(device=where, dtype=torch_dtype)
        x = randn(sizes.batch, d, n) if kind == "conv" else randn(sizes.batch, n, d)
        output = (lambda: net(x)) if kind == "conv" else (lambda: net(x)[0])
        if pass_ == "forward":
            with torch.inference_mode():
                return timed(output)
        x.requires_grad_(True)

        def train():
            net.zero_grad(set_to_none=True)
            x.grad = None
            output().float().sum().backward()

        return timed(train)

    def peer(kind: str, n: int, d: int, pass_: str) -> Timing | None:
        if kind.startswith("attention-"):
            return attention(n, d) if pass_ == "forward" else None
        return layer(kind, n, d, pass_)

    return peer


def torch_setting() -> dict:
    """PyTorch's version and thread count (call after :func:`torch_peer` succeeded)."""
    import torch

    return {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
