"""Corpus BLEU (sacreBLEU), a dataset's negative log-likelihood, and perplexities of a trained
model on a parallel corpus.

Two BLEU flavours::

  ``bleu``         sacreBLEU's default (13a tokenization, cased) on detokenized hypotheses
                   against the raw references: the WMT-style number.
  ``bleu_lc_tok``  lowercased, Moses-tokenized hypotheses against references put through the
                   same tokenizer (punctuation normalisation, lowercasing, tokenizer.perl), with
                   ``tokenize="none"``: the protocol of most Multi30k papers and of the PyTorch
                   seq2seq tutorials (who tokenize with spaCy, so expect small differences).

Two perplexities, exp of the token-level mean cross-entropy over the references::

  ``ppl_teacher_forced``  the decoder reads the reference prefix;
  ``ppl_free_running``    the decoder reads its own greedy outputs (teacher forcing ratio 0, as
                          the PyTorch tutorials' test loss), scored against the reference tokens.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from sacrebleu.metrics import BLEU

from zoo.data.batching import collate
from zoo.data.tokenize import Tokenizer
from zoo.loss import batch_nll


def make_eval_nll(graphdef, teacher_forcing: float = 1.0):
    """Compiled ``eval_nll(params, batch) -> (nll_sum, num_tokens)`` without dropout; teacher-forced,
    or free-running (greedy) with ``teacher_forcing=0``."""
    return jax.jit(lambda params, batch: batch_nll(graphdef, params, batch, None, teacher_forcing))


def dataset_nll(eval_nll, params, src_ids, tgt_ids, batch_size: int, length_multiple: int, sharding=None) -> float:
    """Token-level mean NLL (nats) of a dataset, teacher-forced; the sums stay on the device
    until the end (one read). ``sharding``: where batches go (default: JAX's default device),
    e.g. split over a ``"data"`` mesh, whose device count must divide ``batch_size``; with
    several processes every process passes the whole batch.

    Raises:
      ValueError: no pairs (a mean over nothing would read as a loss of 0).
    """
    if not len(src_ids):
        raise ValueError("no pairs to evaluate: a mean NLL needs at least one")
    order = np.argsort([len(s) for s in src_ids], kind="stable")
    total, count = jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)
    for start in range(0, len(order), batch_size):
        batch = collate(src_ids, tgt_ids, order[start : start + batch_size], batch_size, length_multiple)
        nll, n = eval_nll(params, batch if sharding is None else jax.device_put(batch, sharding))
        total, count = total + nll, count + n
    total, count = jax.device_get((total, count))
    return float(total) / max(float(count), 1.0)


def perplexity(nll: float) -> float:
    """exp(nll), ``inf`` where that overflows."""
    return math.exp(nll) if nll < 700 else math.inf


def corpus_bleu(hypotheses: list[str], references: list[str], lang: str) -> dict:
    """Both BLEU flavours (see the module docstring) with their sacreBLEU signatures."""
    cased = BLEU()
    lc_tok = BLEU(tokenize="none", lowercase=True, force=True)
    tokenizer = Tokenizer(lang, lowercase=True)
    tok = lambda sentences: [" ".join(tokenizer.tokenize(s)) for s in sentences]
    score = cased.corpus_score(hypotheses, [references])
    score_lc = lc_tok.corpus_score(tok(hypotheses), [tok(references)])
    return {
        "bleu": score.score,
        "bleu_lc_tok": score_lc.score,
        "sacrebleu_signature": str(cased.get_signature()),
        "sacrebleu_signature_lc_tok": str(lc_tok.get_signature()) + "|moses-tok",
    }


def perplexities(translator, sources: list[str], references: list[str], batch_size: int = 64) -> dict:
    """Teacher-forced and free-running perplexity of the references (see the module docstring), on
    batches of ``batch_size`` sentences (rounded up by ``translator.batch_rows``) split over the
    local devices. Sentences longer than ``translator.max_source_length`` tokens are truncated, on
    both sides, as :meth:`~zoo.translator.Translator.translate` truncates sources."""
    limit = translator.max_source_length
    ids = translator.encode_source(sources), [t[:limit] for t in translator.pipeline.encode_target(references)]

    def nll_perplexity(teacher_forcing: float) -> float:
        eval_nll = make_eval_nll(translator.graphdef, teacher_forcing)
        return perplexity(dataset_nll(eval_nll, translator.params, *ids, translator.batch_rows(batch_size),
                                      translator.config.data.length_multiple, translator.batch_sharding))

    return {"ppl_teacher_forced": nll_perplexity(1.0), "ppl_free_running": nll_perplexity(0.0)}


def evaluate(translator, sources: list[str], references: list[str], beam_size: int = 1) -> tuple[dict, list[str]]:
    """BLEU (both flavours) and both perplexities; returns ``(results, hypotheses)``."""
    hypotheses, _ = translator.translate(sources, beam_size=beam_size)
    results = corpus_bleu(hypotheses, references, translator.config.data.tgt_lang)
    results.update(perplexities(translator, sources, references))
    results.update(num_sentences=len(sources), beam_size=beam_size, step=translator.step)
    return results, hypotheses
