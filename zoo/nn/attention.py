"""Attention modules (one example at a time)."""

from flax import nnx

from zoo.functional import attention
from zoo.functional.counting import record


class Attention(nnx.Module):
    """Attention of one query over S keys with any score of :data:`zoo.functional.attention.SCORES`.

        e_j = score(q, k_j),  α = softmax(e) over real positions (soft) or one-hot (hard),
        c = Σ_j α_j v_j

    The score's parameters are attributes of the module under the score's names (e.g.
    ``w_query``, ``w_key``, ``v`` for the additive score).

    Args:
      score: a key of ``SCORES``: additive, dot, general, scaled_dot, cosine, mlp.
      query_dim, key_dim: Q and K. attention_dim: A, the width of projected scores.
      hard: hard attention (:func:`zoo.functional.attention.hard_weights`): one-hot weights,
        trained by straight-through Gumbel-softmax when a PRNG key is given.
      window: local attention (Luong et al. 2015, section 3.2): only positions within D =
        ``window`` of a centre p_t given at each call take part. None: global attention.
      gaussian: local-p: multiply the weights by exp(−(s − p_t)²/(2σ²)), σ = D/2 (eq. 10); the
        weights then sum to less than 1, as in the paper.

    Raises:
      ValueError: unknown score, widths a parameter-free score cannot compare, or hard
        attention with the Gaussian window.
    """

    def __init__(self, score: str, query_dim: int, key_dim: int, attention_dim: int, *, hard: bool = False,
                 window: int | None = None, gaussian: bool = False, rngs: nnx.Rngs):
        if hard and gaussian:
            raise ValueError("hard attention picks one position; it has no Gaussian-weighted (local-p) form")
        if gaussian and window is None:
            raise ValueError("the Gaussian (local-p) weighting needs a window")
        self.score_name, self.hard, self.window, self.gaussian = score, hard, window, gaussian
        params = attention.get_score(score).init(rngs.params(), query_dim, key_dim, attention_dim)
        self.names = tuple(params)
        for name, value in params.items():
            setattr(self, name, nnx.Param(value))

    @property
    def params(self) -> dict:
        return {name: getattr(self, name)[...] for name in self.names}

    def project_keys(self, keys):
        """The query-independent part of the score for every source position: keys (S, K) -> (S, K').
        Take it once per sentence."""
        return attention.get_score(self.score_name).project_keys(self.params, keys)

    def __call__(self, query, keys_proj, values, mask, key=None, center=None):
        """query (Q,), keys_proj (S, K') from :meth:`project_keys`, values (S, C), mask (S,) True on
        real positions; ``key`` draws the hard attention's sample during training; ``center``
        p_t (float scalar) for local attention.

        Every position is scored (S evaluations; local attention masks outside its window).

        Returns ``(context (C,), weights (S,))``; weights are zero on masked positions.
        """
        logits = attention.get_score(self.score_name).score(self.params, query, keys_proj)
        record("scores", logits.size)
        num_positions = logits.shape[-1]
        if self.window is not None:
            mask = mask & attention.window_mask(center, num_positions, self.window)
        weights = attention.hard_weights(logits, mask, key) if self.hard else attention.masked_softmax(logits, mask)
        if self.gaussian:
            weights = weights * attention.gaussian_window(center, num_positions, self.window)
        return attention.context_vector(weights, values), weights
