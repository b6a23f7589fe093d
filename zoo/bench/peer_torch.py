"""PyTorch on the same shapes, in the same run: the peer the layer study's times are held against.

PyTorch is never a dependency of the zoo: it is imported when a peer is made, and a missing
install is one clear error. The peer of each layer kind (:mod:`zoo.bench.layers`):

    attention-*    torch.nn.functional.scaled_dot_product_attention   q, k, v (B, N, n, d/N)
    lstm, gru      torch.nn.LSTM / torch.nn.GRU(d, d, batch_first=True)  x (B, n, d)
    conv           torch.nn.Conv1d(d, d, k, padding="same")            x (B, d, n)

"forward" runs under ``torch.inference_mode()``; "train" is the forward pass and the backward
pass of the summed outputs with respect to the input and the parameters (the recurrent layers).
:class:`TorchSeq2SeqPeer` is the training-throughput study's peer: whole training steps of the
PyTorch tutorials' Bahdanau and Transformer models on the zoo's batches.
Timing is :func:`zoo.bench.measure.time_call` (median after warm-up; CUDA synchronised).
"""

import time
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


class TorchSeq2SeqPeer:
    """PyTorch training steps of the PyTorch seq2seq tutorials' models, on the zoo's own batches.

    ``bahdanau``: tutorial 3 (Bahdanau attention): a bidirectional GRU encoder (embeddings 256,
    hidden 512), s_0 = tanh(W[→h_S; ←h_1]), additive attention (512), a GRU decoder (512) over
    [E y; c], the output layer over [s; c; E y], dropout 0.5, the decoder stepped in Python.
    ``transformer``: ``torch.nn.Transformer`` (d_model 256, 8 heads, 3+3 layers, FFN 512,
    dropout 0.1, batch_first) with scaled embeddings, sinusoidal positions and an output layer.
    Both train with Adam (lr 1e-3), the global gradient norm clipped to 1 and the mean token
    cross-entropy over real target tokens, with teacher forcing, as the zoo's step does.

    Raises:
      PeerUnavailable: as :func:`torch_peer`.
    """

    models = ("bahdanau", "transformer")

    def __init__(self, device, dtype: str, threads: int | None = None):
        try:
            import torch
        except ImportError:
            raise PeerUnavailable("--peer torch needs PyTorch, which is not installed (pip install torch)") from None
        if device.platform not in ("cpu", "gpu") or (device.platform == "gpu" and not torch.cuda.is_available()):
            raise PeerUnavailable(f"--peer torch: this PyTorch cannot run where JAX runs ({device.platform})")
        if threads is not None:
            torch.set_num_threads(threads)
        self.torch = torch
        self.where = "cuda" if device.platform == "gpu" else "cpu"
        self.dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]

    def setting(self) -> dict:
        return torch_setting()

    def tokens_per_s(self, model: str, batches: list[dict], vocab: tuple[int, int]) -> float:
        """Target tokens/s of back-to-back training steps over ``batches`` (after one warm-up step)."""
        torch = self.torch
        torch.manual_seed(0)
        net = (_tutorial_bahdanau if model == "bahdanau" else _tutorial_transformer)(torch, *vocab)
        net = net.to(self.where, self.dtype).train()
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        batches = [{k: torch.as_tensor(v, dtype=torch.long, device=self.where) for k, v in b.items()} for b in batches]

        def step(b) -> None:
            optimizer.zero_grad(set_to_none=True)
            logits = net(b["src"], b["tgt_in"])
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), b["tgt_out"].flatten(), ignore_index=0)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()

        step(batches[0])
        sync = torch.cuda.synchronize if self.where == "cuda" else (lambda: None)
        sync()
        tic = time.perf_counter()
        for b in batches:
            step(b)
        sync()
        seconds = time.perf_counter() - tic
        return sum(int(b["tgt_length"].sum()) for b in batches) / seconds


def _tutorial_bahdanau(torch, src_vocab: int, tgt_vocab: int, emb: int = 256, hidden: int = 512, dropout: float = 0.5):
    nn = torch.nn

    class Seq2Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.src_embed, self.tgt_embed = nn.Embedding(src_vocab, emb), nn.Embedding(tgt_vocab, emb)
            self.encoder = nn.GRU(emb, hidden, bidirectional=True, batch_first=True)
            self.bridge = nn.Linear(2 * hidden, hidden)
            self.attn, self.v = nn.Linear(3 * hidden, hidden), nn.Linear(hidden, 1, bias=False)
            self.decoder = nn.GRU(2 * hidden + emb, hidden, batch_first=True)
            self.out = nn.Linear(3 * hidden + emb, tgt_vocab)
            self.dropout = nn.Dropout(dropout)

        def forward(self, src, tgt_in):
            annotations, final = self.encoder(self.dropout(self.src_embed(src)))  # (B, S, 2H), (2, B, H)
            s = torch.tanh(self.bridge(torch.cat([final[0], final[1]], dim=1)))  # (B, H)
            mask = src != 0
            embedded = self.dropout(self.tgt_embed(tgt_in))  # (B, T, E)
            outputs = []
            for t in range(tgt_in.shape[1]):
                query = s.unsqueeze(1).expand(-1, src.shape[1], -1)
                energy = self.v(torch.tanh(self.attn(torch.cat([query, annotations], dim=2)))).squeeze(2)
                alpha = torch.softmax(energy.masked_fill(~mask, -1e10), dim=1)
                context = torch.bmm(alpha.unsqueeze(1), annotations).squeeze(1)  # (B, 2H)
                y = embedded[:, t]
                _, hidden_state = self.decoder(torch.cat([y, context], dim=1).unsqueeze(1), s.unsqueeze(0))
                s = hidden_state.squeeze(0)
                outputs.append(self.out(torch.cat([s, context, y], dim=1)))
            return torch.stack(outputs, dim=1)  # (B, T, V)

    return Seq2Seq()


def _tutorial_transformer(torch, src_vocab: int, tgt_vocab: int, d_model: int = 256, heads: int = 8, layers: int = 3,
                          d_ff: int = 512, dropout: float = 0.1, max_length: int = 256):
    import math

    nn = torch.nn
    position = torch.arange(max_length).unsqueeze(1)
    angle = position / torch.pow(10000.0, torch.arange(0, d_model, 2) / d_model)
    table = torch.zeros(max_length, d_model)
    table[:, 0::2], table[:, 1::2] = torch.sin(angle), torch.cos(angle)

    class Seq2Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.src_embed, self.tgt_embed = nn.Embedding(src_vocab, d_model), nn.Embedding(tgt_vocab, d_model)
            self.register_buffer("positions", table)
            self.transformer = nn.Transformer(d_model, heads, layers, layers, d_ff, dropout, batch_first=True)
            self.out = nn.Linear(d_model, tgt_vocab)
            self.dropout = nn.Dropout(dropout)

        def embed(self, embedding, tokens):
            return self.dropout(embedding(tokens) * math.sqrt(d_model) + self.positions[: tokens.shape[1]])

        def forward(self, src, tgt_in):
            causal = self.transformer.generate_square_subsequent_mask(tgt_in.shape[1], device=src.device)
            h = self.transformer(self.embed(self.src_embed, src), self.embed(self.tgt_embed, tgt_in), tgt_mask=causal,
                                 src_key_padding_mask=src == 0, tgt_key_padding_mask=tgt_in == 0,
                                 memory_key_padding_mask=src == 0)
            return self.out(h)

    return Seq2Seq()
