"""The scaling benchmark (zoo.bench, benchmark.py): exact score counts, the analytic FLOP formulas
against XLA's cost_analysis on loop-free programs, the log-log fit on synthetic data, the
memory of the naive and step-by-step attention, and a tiny run end to end (JSON and PNGs).
"""

import json
import math
import sys
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import flops
from zoo.bench import cli, layers, measure, runner, seq2seq, throughput
from zoo.bench.fit import fit_exponent, fit_series
from zoo.bench.measure import compile_program, memory_bytes, time_call, xla_flops
from zoo.functional import attention, cells
from zoo.functional.convolution import conv1d

# ---------------------------------------------------------------- the fit


def test_fit_exponent_recovers_a_known_power_law():
    x = np.array([16, 32, 64, 128, 256, 512], dtype=float)
    slope, intercept = fit_exponent(x, 3.0 * x**1.7)
    assert slope == pytest.approx(1.7, abs=1e-9) and intercept == pytest.approx(math.log(3.0), abs=1e-9)
    noise = np.exp(np.random.default_rng(0).normal(0.0, 0.05, x.size))  # 5% multiplicative timing noise
    slope, _ = fit_exponent(x, 2e-6 * x**2 * noise)
    assert slope == pytest.approx(2.0, abs=0.08)


def test_fit_series_keeps_its_range_and_fits_only_inside_it():
    x = np.array([1, 2, 4, 8, 16, 32], dtype=float)
    y = np.where(x < 8, 5.0, x**2)  # a constant overhead below 8, then quadratic
    fit = fit_series("y", "n", x, y, lowest=8)
    assert (fit.exponent, fit.x_min, fit.x_max, fit.points) == (pytest.approx(2.0), 8.0, 32.0, 3)
    np.testing.assert_allclose(fit.predict([8, 32]), [64, 1024], rtol=1e-9)


@pytest.mark.parametrize("x, y", [([1.0], [1.0]), ([1.0, 2.0], [1.0, -1.0]), ([3.0, 3.0], [1.0, 2.0]), ([1, 2], [1, 2, 3])])
def test_fit_exponent_refuses_what_has_no_slope(x, y):
    with pytest.raises(ValueError):
        fit_exponent(x, y)


# ---------------------------------------------------------------- FLOPs and measurement


def test_attention_flops_match_xla_on_the_reference_path():
    b, n, heads, width = 2, 96, 3, 64
    q = jnp.ones((b, n, heads, width))
    compiled = compile_program(lambda q, k, v: attention.scaled_dot_product_attention(q, k, v)[0], q, q, q)
    # XLA also counts the softmax, ~5 FLOPs per weight: 5 / (4·width) ≈ 2% here
    assert xla_flops(compiled) == pytest.approx(b * flops.attention_flops(n, n, heads, width, width), rel=0.03)


@pytest.mark.parametrize("padding, kernel, batch", [("same", 3, None), ("same", 5, 3), ("causal", 4, None)])
def test_conv1d_flops_match_xla(padding, kernel, batch):
    n, c_in, c_out = 200, 64, 80
    conv = lambda x, w, b: conv1d(x, w, b, padding)
    shape = (n, c_in) if batch is None else (batch, n, c_in)
    compiled = compile_program(conv if batch is None else jax.vmap(conv, (0, None, None)), jnp.ones(shape),
                               jnp.ones((kernel, c_in, c_out)), jnp.ones((c_out,)))
    # XLA may skip the padded taps (<= k²/4 of k·n) and adds the bias (1 / (2·k·C_in)): < 1% here
    assert xla_flops(compiled) == pytest.approx((batch or 1) * flops.conv1d_flops(n, kernel, c_in, c_out), rel=0.01)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_rnn_flops_match_xla_on_one_step(cell):
    d, h = 96, 128
    g = cells.NUM_GATES[cell] * h
    params = {"w_i": jnp.ones((d, g)), "b_i": jnp.ones((g,)), "w_h": jnp.ones((h, g)), "b_h": jnp.ones((g,))}
    step = {"rnn": cells.elman_cell, "gru": cells.gru_cell, "lstm": cells.lstm_cell}[cell]
    compiled = compile_program(step, params, cells.initial_carry(cell, h), jnp.ones((d,)))
    # gates and biases add ~10 FLOPs per hidden unit against 2·G·(D + H) per unit in the products
    assert xla_flops(compiled) == pytest.approx(flops.rnn_flops(cell, 1, d, h), rel=0.03)


def test_xla_counts_a_scan_body_once_and_the_correction_restores_it():
    sizes = layers.LayerSizes(batch=2, head_dim=64, kernel_size=3, block_size=16, fixed_d=128, n_grid=(64,), fixed_n=64,
                              d_grid=(128,), fit_points=2)
    for kind in ("lstm", "attention-blocked"):
        layer = layers.make_layer(kind, 64, 128, sizes, jnp.float32)
        raw = xla_flops(compile_program(layer.fn, *layer.args))
        corrected = flops.loop_corrected(raw, xla_flops(compile_program(layer.body, *layer.body_args)), layer.trips)
        assert raw < 0.7 * layer.analytic_flops  # the body once, not 64 (4) times
        # XLA adds the elementwise work: gates (~1/d) and the online softmax (~17 FLOPs a logit against 4·d_head)
        assert corrected == pytest.approx(layer.analytic_flops, rel=0.1), kind


def test_xla_flops_reads_a_dict_a_list_or_nothing():
    class Compiled:
        def __init__(self, analysis):
            self.analysis = analysis

        def cost_analysis(self):
            return self.analysis

    assert xla_flops(Compiled({"flops": 6.0})) == 6.0
    assert xla_flops(Compiled([{"flops": 2.0}, {"flops": 3.0}])) == 5.0
    assert math.isnan(xla_flops(Compiled(None)))


def test_time_call_reports_the_median_and_spread_of_its_runs():
    calls = []
    timing = time_call(lambda: calls.append(1), repeats=5, warmup=2)
    assert len(calls) == 7 and len(timing.runs) == 5
    assert timing.min <= timing.q1 <= timing.median <= timing.q3 <= timing.max
    with pytest.raises(ValueError):
        time_call(lambda: None, repeats=0)


def test_flop_peak_table_knows_the_nvidia_chips():
    assert flops.dense_bf16_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert flops.dense_bf16_peak("NVIDIA H100 PCIe") == 756e12
    assert flops.dense_bf16_peak("NVIDIA H200") == 989e12
    assert flops.dense_bf16_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert flops.dense_bf16_peak("cpu") is None


# ---------------------------------------------------------------- the seq2seq models

# The sizes of every seq2seq test and of the run end to end (TINY), so that the run loads from the
# compilation cache the programs the tests before it compiled: the additive and local forward
# passes at (m, t) = (5, 4), the three training steps at m = t = 40.
# A window of D = 1 (3 positions) is narrower than both grid sources: local attention scores t·3 < m·t.
SIZES = seq2seq.Seq2SeqSizes(batch=4, vocab=11, embed=6, hidden=16, attention_dim=32, grid=((5, 4), (7, 5)),
                             memory_length=40, fit_from=20, train=False, window=1)


def exact_scores(model: str, m: int, t: int) -> int:
    """Score evaluations of one example, by hand: local attention (D = 1) scores t·(2D + 1) < m·t."""
    return {"none": 0, "local": t * 3}.get(model, m * t)


def test_broadcast_score_and_step_counts_are_exact():
    """The study counts the step-by-step models (the run end to end checks them against
    :func:`exact_scores`); the broadcast scoring is counted here."""
    graphdef, params = seq2seq.build("additive", SIZES, jnp.float32, scoring="broadcast")
    m, t = 7, 5
    src, tgt_in, _ = seq2seq.batch(SIZES, m, t)
    counts = seq2seq.count(graphdef, params, src[0], tgt_in[0])
    assert counts == {"scores": m * t, "recurrent_steps": m + t} and SIZES.scores("additive", m, t) == m * t


def test_broadcast_step_and_remat_attention_are_one_function_with_different_memory():
    length = SIZES.memory_length  # the programs of the run's memory comparison
    data = seq2seq.batch(SIZES, length, length)
    results = []
    for scoring, remat in (("broadcast", False), ("step", False), ("step", True)):
        graphdef, params = seq2seq.build("additive", SIZES, jnp.float32, scoring=scoring, remat=remat)
        compiled = compile_program(seq2seq.train_step_fn(graphdef), params, *data)
        new_params, loss = compiled(params, *data)
        results.append((loss, jax.tree.leaves(new_params), memory_bytes(compiled)["peak"]))
    (loss_b, params_b, mem_b), (loss_s, params_s, mem_s), (loss_r, params_r, mem_r) = results
    np.testing.assert_allclose([loss_s, loss_r], [loss_b, loss_b], rtol=1e-5)
    for a, b, c in zip(params_b, params_s, params_r):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(c, a, rtol=1e-4, atol=1e-6)
    assert mem_r < 0.25 * mem_b and mem_r < 0.25 * mem_s  # the (t, m, A) tanh is neither kept nor built at once


def test_local_attention_with_a_window_over_the_whole_source_is_global_attention():
    m, t = 5, 4  # a grid point of the run end to end: it loads the first and last programs
    data = seq2seq.batch(SIZES, m, t)
    losses = []
    for model, sizes in (("additive", SIZES), ("local", replace(SIZES, window=m)), ("local", SIZES)):  # SIZES: D = 1
        graphdef, params = seq2seq.build(model, sizes, jnp.float32)  # one seed: the same parameters
        losses.append(float(compile_program(seq2seq.loss_fn(graphdef), params, *data)(params, *data)))
    assert losses[1] == pytest.approx(losses[0], rel=1e-6) and abs(losses[2] - losses[0]) > 1e-6


def test_seq2seq_refuses_impossible_variants():
    for kwargs in ({"attention": "cosine"}, {"attention": "dot", "scoring": "broadcast"},
                   {"attention": "none", "remat": True}, {"attention": "additive", "scoring": "all"}):
        with pytest.raises(ValueError):
            seq2seq.build(sizes=SIZES, dtype=jnp.float32, **kwargs)


# ---------------------------------------------------------------- a run end to end

TINY = runner.Preset(
    "tiny", SIZES,
    layers.LayerSizes(batch=2, head_dim=8, kernel_size=3, block_size=8, fixed_d=8, n_grid=(8, 16), fixed_n=8,
                      d_grid=(8, 16), fit_points=2),
    repeats=3, warmup=1)


def _strict_json(path):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_quick_cli_writes_json_table_and_plots(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner, "QUICK", TINY)  # --quick's code path at even smaller sizes
    peer = ["--peer", "torch"] if _has_torch() else []
    assert cli.main(["--quick", "--out", str(tmp_path / "out"), *peer]) == 0
    out = tmp_path / "out"
    results = _strict_json(out / "scaling.json")
    if peer:  # without --peer-threads the peer gets as many threads as JAX: every core of this process
        assert results["setting"]["torch_threads"] == results["setting"]["host_cores"] == measure.host_threads()
    assert results["setting"]["platform"] == "cpu" and results["setting"]["dtype"] == "float32"
    assert results["preset"] == "tiny" and results["repeats"] == 3
    rows = results["seq2seq"]["measurements"]
    assert {(r["model"], r["m"], r["t"]) for r in rows} == {(a, m, t) for a in seq2seq.MODELS for m, t in SIZES.grid}
    for r in rows:  # the counts at run time, the analytic ones and the ones by hand agree
        assert r["scores_counted"] == r["scores_analytic"] == exact_scores(r["model"], r["m"], r["t"])
        assert r["recurrent_steps_counted"] == r["recurrent_steps_analytic"] == r["m"] + r["t"]
        assert len(r["time"]["runs"]) == 3 and r["time"]["min"] <= r["time"]["median"] <= r["time"]["max"]
    assert {(f["series"], f["against"]) for f in results["seq2seq"]["fits"]} >= {("additive/forward time", "m*t"),
                                                                                ("local/forward time", "t*W"),
                                                                                ("none/forward time", "m+t")}
    memory = results["seq2seq"]["memory"]
    assert [(r["model"], r["scoring"], r["remat"], r["pass"]) for r in memory] == list(seq2seq.MEMORY_VARIANTS)
    lay = results["layers"]["measurements"]
    assert {r["kind"] for r in lay} == set(layers.KINDS)
    assert {r["pass"] for r in lay if r["kind"] == "lstm"} == {"forward", "train"}
    forward = [r for r in lay if r["pass"] == "forward"]
    assert all(r["flops_analytic"] > 0 and r["memory"]["peak"] > 0 for r in forward)
    if peer:
        assert results["setting"]["torch"] and all("ratio_to_peer" in r for r in lay)
    assert all(t["met"] in (True, False, None) for t in results["targets"])
    for name in ("seq2seq_time.png", "seq2seq_memory.png", "layers.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "table.txt").read_text().strip() in capsys.readouterr().out


def _has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("argv, message", [
    (["attention"], "unknown study 'attention'"),
    (["--repeats", "3"], "--repeats 3"),
    (["--device", "tpu"], "--device tpu"),
    (["--peer-threads", "0"], "--peer-threads 0"),
])
def test_cli_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    assert cli.main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("benchmark.py: error:") and message in err and "\n" not in err


def test_peer_torch_missing_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    assert cli.main(["layers", "--peer", "torch", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs PyTorch" in err and "\n" not in err


@pytest.mark.usefixtures("standard_dtype_promotion")
def test_train_study_quick_writes_every_field(tmp_path, monkeypatch):
    """``benchmark.py train --quick`` on the synthetic corpus (no Multi30k under --data-dir), with
    fewer timed steps and sentences than the preset's (64: 8 batches, more than any loop's 4 steps,
    so that no epoch ends and validates),
    and the study's Transformer at the small model's size and batch, so that its row and the
    small model's (both one step a call) run one program: the second loads it from the cache."""
    quick = throughput.QUICK
    monkeypatch.setattr(throughput, "QUICK", replace(quick, loop_steps=2, small_loop_steps=2, small_steps_per_call=2,
                                                     log_every=1, min_seconds=0.0, corpus_sentences=64,
                                                     overrides={"transformer": quick.small[1]},
                                                     batch_tokens=quick.small_batch_tokens))
    out = tmp_path / "out"
    assert cli.main(["train", "--quick", "--models", "transformer", "--data-dir", str(tmp_path / "none"), "--out", str(out)]) == 0
    results = json.loads((out / "train.json").read_text())
    assert results["corpus"]["source"] == "synthetic" and results["setting"]["peak_flops"] > 0
    # the study's model, then the small one at 1 and 2 steps a call
    assert [(r["model"], r["steps_per_call"]) for r in results["rows"]] == [("transformer", 1), ("transformer", 1),
                                                                            ("transformer", 2)]
    for row in results["rows"]:
        for field in ("loop_tokens_per_s", "step_tokens_per_s", "host_overhead", "step_ms", "compile_s",
                      "peak_memory_bytes", "flops_per_token", "xla_flops_per_token", "flops_per_s", "mfu", "num_params"):
            assert row[field] is not None, field
        assert row["loop_tokens_per_s"] > 0 and row["step_tokens_per_s"] > 0 and row["mfu"] > 0
        assert row["batch_shape"][1] == throughput.BUCKET
        # the jaxpr count includes every scan iteration; XLA's counts a scan body once, so it can only be lower
        assert row["flops_per_token"] > 0 and row["xla_flops_per_token"] > 0
    assert {t["name"].split(",")[0] for t in results["targets"]} >= {"host overhead"}
    assert (out / "train.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "loop tok/s" in (out / "train_table.txt").read_text()
