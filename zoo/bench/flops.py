"""Analytic FLOP counts of the layers the benchmark compares, and known accelerator peaks.

Vaswani et al. (2017), Table 1, compares per-layer cost for a sequence of length n and width d:
self-attention O(n²·d), recurrent O(n·d²), convolutional O(k·n·d²). The functions below give
the leading term exactly — the matrix products, counting a multiply-add as 2 FLOPs, as XLA's
``cost_analysis()`` does — for one sequence; elementwise work (softmax, gates, biases) is lower
order (a fraction ~ 1/d_head, 1/d or 1/(k·C_in) of the total) and left out.
"""

from zoo.functional.cells import NUM_GATES


def attention_flops(num_queries: int, num_keys: int, heads: int, key_dim: int, value_dim: int) -> int:
    """Scaled dot-product attention, softmax(Q Kᵀ/√d_k) V (Vaswani et al. 2017, eq. 1), all heads:

        2·N·Tq·Tk·d_k  (Q Kᵀ)  +  2·N·Tq·Tk·d_v  (weights · V)

    For self-attention (Tq = Tk = n, N·d_k = N·d_v = d) this is 4·n²·d: Table 1's O(n²·d). The
    input and output projections (O(n·d²)) are not part of it, as in Table 1.

    Args:
      num_queries, num_keys: Tq, Tk. heads: N. key_dim, value_dim: d_k, d_v per head.
    """
    return 2 * heads * num_queries * num_keys * (key_dim + value_dim)


def rnn_flops(cell: str, steps: int, input_dim: int, hidden_dim: int) -> int:
    """A recurrent layer over n steps (:func:`zoo.functional.cells.recurrent`):

        2·n·G·H·D  (input half W_i x)  +  2·n·G·H·H  (recurrent half W_h h)

    with G = 1 (Elman), 3 (GRU), 4 (LSTM) gates; for D = H = d this is 2·G·n·d²: Table 1's O(n·d²).

    Args:
      cell: "rnn", "lstm" or "gru". steps: n. input_dim, hidden_dim: D, H.

    Raises:
      KeyError: unknown cell.
    """
    return 2 * steps * NUM_GATES[cell] * hidden_dim * (input_dim + hidden_dim)


def conv1d_flops(steps: int, kernel_size: int, in_channels: int, out_channels: int) -> int:
    """A one-dimensional convolution that keeps the length n (:func:`zoo.functional.convolution.conv1d`):

        2·k·n·C_in·C_out        Table 1's O(k·n·d²)

    counting the taps on the zero padding too (XLA's count leaves them out for some batch sizes:
    at most k²/4 of the k·n taps of a sequence).

    Args:
      steps: n. kernel_size: k. in_channels, out_channels: C_in, C_out.
    """
    return 2 * kernel_size * steps * in_channels * out_channels


def loop_corrected(flops: float, body_flops: float, trips: int) -> float:
    """XLA's ``cost_analysis()`` counts a ``while`` loop's body once; add the other ``trips − 1``.

    Args:
      flops: XLA's count of the whole program. body_flops: XLA's count of one iteration,
        compiled on its own. trips: the loop's trip count.
    """
    return flops + (trips - 1) * body_flops
