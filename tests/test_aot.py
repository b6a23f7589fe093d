"""Ahead-of-time compilation for a TPU topology that is not there (zoo.aot, train.py --compile-only).

One tiny Sutskever step compiled for a compile-only TPU v5e 2x2 slice (4 chips), data parallel and
FSDP (two XLA:TPU compiles, the module's cost); the command-line tests compile nothing.
"""

import dataclasses
import importlib.util
import json
import math

import jax
import pytest
from corpus import write_tiny_multi30k
from flax import nnx

from zoo import aot
from zoo.bench.cli import main as benchmark_main
from zoo.bench.compile import largest_batch_tokens
from zoo.cli import train
from zoo.config import Config, DataConfig, SutskeverConfig, TrainConfig
from zoo.errors import ZooError
from zoo.models import build

V5E_4 = aot.TOPOLOGIES["tpu:v5e-4"]
# widths of 128 (a TPU tile's lanes) that 4 chips divide, so that FSDP splits every matrix
TINY = SutskeverConfig(src_vocab_size=512, tgt_vocab_size=512, embed_dim=128, hidden_dim=128, num_layers=1)
BATCH = (16, 16, 16)  # B, S, T: 4 rows a chip


def tiny_config(fsdp: bool) -> Config:
    return Config(model_name="sutskever", model=TINY, data=DataConfig(), train=TrainConfig(batch_size=16, fsdp=fsdp))


@pytest.fixture(scope="module")
def libtpu():
    try:
        aot.compile_only_devices(V5E_4)
    except (ZooError, RuntimeError) as e:
        pytest.skip(f"libtpu cannot load here: {e}")


@pytest.fixture(scope="module")
def compiled(libtpu):
    """``{"dp": (report, hlo), "fsdp": (report, hlo)}`` of the tiny step on tpu:v5e-4."""
    out = {}
    with jax.numpy_dtype_promotion("standard"):  # optax mixes Python floats with int32 counts
        for name, fsdp in (("dp", False), ("fsdp", True)):
            report, executable = aot.compile_train_step(tiny_config(fsdp), V5E_4, BATCH)
            out[name] = report, executable.as_text()
    return out


def test_data_parallel_step_fits_and_all_reduces_the_gradients(compiled):
    report, hlo = compiled["dp"]
    assert report.fits and report.num_chips == 4 and report.batch_shape == BATCH
    assert "all-reduce" in hlo
    assert "all-gather" not in hlo and "reduce-scatter" not in hlo  # replicated state: nothing to gather


def test_fsdp_step_gathers_parameters_and_reduce_scatters_gradients(compiled):
    report, hlo = compiled["fsdp"]
    assert report.fits and report.fsdp
    assert "all-gather" in hlo
    assert "reduce-scatter" in hlo  # XLA:TPU names its fused form all-reduce-scatter


def test_memory_and_cost_are_those_of_the_step(compiled):
    dp, fsdp = compiled["dp"][0], compiled["fsdp"][0]
    num_params = sum(x.size for x in jax.tree.leaves(jax.eval_shape(lambda: build("sutskever", TINY))))
    assert dp.num_params == fsdp.num_params == num_params
    state_bytes = 3 * 4 * num_params  # float32 parameters and Adam's two moments
    assert dp.argument_bytes >= state_bytes  # replicated: all of it on every chip
    assert state_bytes / 4 <= fsdp.argument_bytes < dp.argument_bytes / 2  # split four ways (plus the batch, padding)
    assert dp.alias_bytes >= state_bytes  # the donated state is updated in place
    for report in (dp, fsdp):
        assert 0.5 < report.xla_flops / report.jaxpr_flops < 3  # XLA counts elementwise work too
        assert report.roofline_s == max(report.xla_flops / V5E_4.chip.peak_bf16_flops,
                                        report.bytes_accessed / V5E_4.chip.hbm_bandwidth)
        assert report.tokens_per_s == pytest.approx(16 * 16 / report.roofline_s)
        assert 0 < report.mfu < 1 and report.compile_s > 0
        assert not dataclasses.replace(report, hbm_bytes=report.peak_bytes - 1).fits
        assert json.loads(report.to_json())["peak_bytes"] == report.peak_bytes


def test_every_tpu_topology_has_its_chips_as_compile_only_devices(libtpu):
    for topo in aot.TOPOLOGIES.values():
        if topo.platform == "tpu":
            devices = aot.compile_only_devices(topo)
            assert len(devices) == topo.num_chips, topo.name
            assert {d.device_kind for d in devices} == {topo.chip.device_kind}, topo.name


def test_roofline_is_the_slower_of_compute_and_memory():
    chip = aot.CHIPS["v5p"]
    assert aot.roofline(459e12, 2765e9 / 2, chip) == 1.0  # compute-bound
    assert aot.roofline(459e12 / 4, 2765e9 * 2, chip) == 2.0  # memory-bound
    assert set(aot.TOPOLOGIES) >= {"tpu:v4-8", "tpu:v5e-8", "tpu:v5e-16", "tpu:v5e-256", "tpu:v5p-8", "tpu:v6e-8", "gpu:h100"}


def test_the_roofline_counts_a_scans_flops_every_trip():
    """XLA's cost analysis counts a loop body once; the jaxpr's count multiplies it by the trips:
    a recurrent model's compute bound takes the larger (v5p: 459 TFLOP/s, 2,765 GB/s)."""
    report = aot.CompileReport(topology="tpu:v5p-8", chip="v5p", num_chips=4, model="sutskever", dtype="float32",
                               fsdp=False, batch_shape=(8, 16, 16), steps_per_call=1, num_params=1, argument_bytes=0,
                               output_bytes=0, alias_bytes=0, temp_bytes=0, code_bytes=0, hbm_bytes=95e9,
                               xla_flops=459e9 / 16, jaxpr_flops=459e9, bytes_accessed=2765e6 / 2, compile_s=0.0)
    assert report.roofline_s == 1e-3  # 459 GFLOP of matrix products over 16 trips, not XLA's one body
    assert dataclasses.replace(report, xla_flops=2 * 459e9).roofline_s == 2e-3  # XLA's count where it is larger


def test_largest_batch_shape_is_the_plans_most_padded_tokens():
    config = dataclasses.replace(tiny_config(False), train=TrainConfig(batch_tokens=256))
    # 40 pairs in the bucket of 8 tokens (32 rows a batch), 3 in that of 20 (8 rows: 12 is no multiple of 8)
    shape = aot.largest_batch_shape(config, [3] * 40 + [18] * 3, [2] * 40 + [10] * 3, num_chips=4)
    assert shape == (32, 8, 8)  # 32·(8 + 8) = 512 padded tokens against 8·(20 + 20) = 320
    with pytest.raises(ZooError, match="does not split over 3 chips"):
        aot.largest_batch_shape(tiny_config(False), [3], [3], num_chips=3)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_tiny_multi30k(tmp_path_factory.mktemp("data"))


def run_cli(capsys, *args) -> tuple[int, list[str]]:
    code = train.main(["--model", "sutskever", *args])
    return code, capsys.readouterr().err.strip().splitlines()


def test_compile_only_prints_and_writes_the_report_and_nothing_into_the_workdir(compiled, data_dir, tmp_path, capsys,
                                                                                monkeypatch):
    calls = []

    def compile_step(config, topo, batch_shape):  # the compile itself is the fixture's
        calls.append((config.model.src_vocab_size, topo.name, batch_shape))
        return compiled["dp"][0], None

    monkeypatch.setattr(aot, "compile_train_step", compile_step)
    workdir, output = tmp_path / "run", tmp_path / "report.json"
    assert train.main(["--model", "sutskever", "--workdir", str(workdir), "--data-dir", str(data_dir), "--train.batch-size", "16",
                       "--compile-only", "tpu:v5e-4", "--output", str(output)]) == 0
    (vocab, name, (rows, src_len, tgt_len)), = calls
    assert name == "tpu:v5e-4" and rows == 16 and src_len % 8 == tgt_len % 8 == 0
    assert 10 < vocab < 40  # the tiny corpus's vocabulary, not the config's default
    assert "fits" in capsys.readouterr().out
    assert json.loads(output.read_text())["fits"] is True
    assert not workdir.exists()


def test_compile_only_refuses_a_step_that_does_not_fit_in_one_line(libtpu, data_dir, tmp_path, capsys):
    # 6.5 G parameters: 78 GB of float32 parameters and Adam moments a chip, replicated, against 16 GiB: refused
    # before compiling, from abstract shapes (nothing of that size is allocated)
    code, err = run_cli(capsys, "--workdir", str(tmp_path / "run"), "--data-dir", str(data_dir), "--train.batch-size", "16",
                        "--model.hidden-dim", "16384", "--model.num-layers", "2", "--compile-only", "tpu:v5e-4")
    assert code == 2 and len(err) == 1
    assert "does not fit tpu:v5e-4" in err[0] and "HBM of a TPU v5e" in err[0]
    assert not (tmp_path / "run").exists()


def test_compile_only_refuses_an_unknown_topology_and_names_libtpu_when_missing(tmp_path, capsys, monkeypatch):
    code, err = run_cli(capsys, "--workdir", str(tmp_path), "--compile-only", "tpu:v9-8")
    assert code == 2 and len(err) == 1 and "tpu:v9-8" in err[0] and "tpu:v5e-8" in err[0]
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "libtpu" else find_spec(name, *a))
    code, err = run_cli(capsys, "--workdir", str(tmp_path), "--compile-only", "tpu:v5e-8")
    assert code == 2 and len(err) == 1 and 'pip install -e ".[tpu]"' in err[0]


def test_compiling_for_cuda_without_its_plugin_names_the_extra():
    h100 = aot.TOPOLOGIES["gpu:h100"]
    assert math.isclose(aot.roofline(989e12, 0.0, h100.chip), 1.0)
    plugins = importlib.util.find_spec("jax_plugins")
    if plugins and any(importlib.util.find_spec(f"jax_plugins.{name}") for name in ("xla_cuda12", "xla_cuda13")):
        pytest.skip("JAX's CUDA plugin is installed here: gpu:h100 compiles (docs/accelerators.md)")
    with pytest.raises(ZooError, match=r'pip install -e "\.\[cuda\]"'):
        aot.compile_only_devices(h100)


def test_built_for_a_gpu_the_bfloat16_transformer_takes_cudnn_attention():
    from jax._src.cudnn import fused_attention_stablehlo as cudnn

    from zoo.nn.attention import MultiHeadAttention

    def implementations():
        model = nnx.eval_shape(lambda: build("transformer", None, dtype="bfloat16", d_model=32, num_heads=2,
                                             num_encoder_layers=1, num_decoder_layers=1, d_ff=64))
        return {m.implementation for _, m in nnx.iter_graph(model) if isinstance(m, MultiHeadAttention)}

    with aot.answering_as(aot.TOPOLOGIES["gpu:h100"]):
        assert implementations() == {"cudnn"} and cudnn.check_cudnn_version() == 91000
    assert implementations() == {"xla"}  # this CPU machine's own answer, restored


@pytest.mark.parametrize("memory, start, said, found, tried", [
    # HBM grows faster than the batch: the line's size (aimed at 0.97 x 16e9) does not fit; XLA states
    # its need (16.7e9), and the secant through it and 32768 lands at 0.96 of the HBM (limit: 124,900)
    (lambda n: 2e9 + 1e5 * n + 0.1 * n**2, 8192, True, 119808, [8192, 32768, 130048, 119808]),
    # the same where XLA's line has no figure: bisect
    (lambda n: 2e9 + 1e5 * n + 0.1 * n**2, 8192, False, 117760, [8192, 32768, 130048, 81408, 105728, 117760]),
    # the first size does not fit: shrink x4, then the secant to 0.96 of the HBM (limit: 14,000)
    (lambda n: 2e9 + 1e6 * n, 32768, True, 13312, [32768, 8192, 13312]),
    (lambda n: 2e9 + 1e6 * n, 32768, False, 12800, [32768, 8192, 20480, 14336, 11264, 12800]),
    # HBM grows slower than the line (XLA reuses buffers): a fitting size far below the HBM predicts again
    (lambda n: 1e9 + 1e7 * n**0.5 + 3e4 * n, 8192, True, 289280, [8192, 32768, 208128, 289280]),
    # the peak jumps at 50,000 (XLA changes strategy; limit: 64,705): the line overshoots twice
    # (145,152 gives 29.7e9; the secant to it, 82,432, 19.0e9), so the search bisects to 57,600 (14.8e9)
    (lambda n: 1e9 + 1e5 * n if n < 50_000 else 5e9 + 1.7e5 * n, 8192, True, 57600, [8192, 32768, 145152, 82432, 57600]),
])
def test_the_batch_search_finds_a_fitting_size_in_five_more_compiles(memory, start, said, found, tried):
    compile_at = lambda n: {"fits": memory(n) <= 16e9, "peak_bytes": memory(n) if said or memory(n) <= 16e9 else None}
    result = largest_batch_tokens(compile_at, start, compile_at(start), hbm=16e9)
    assert result["batch_tokens"] == found and [n for n, _, _ in result["tried"]] == tried
    assert all(fits == (memory(n) <= 16e9) for n, _, fits in result["tried"])


def test_the_batch_search_aims_under_the_hbm_that_xla_says_is_available():
    # 16e9 of HBM, of which XLA offers 15e9: the first line (to 0.97 x 16e9) overshoots 15e9; the
    # next aims at 0.97 x 15e9 = 14.55e9, i.e. N = 125,500, rounded down to 125,440
    memory = lambda n: 2e9 + 1e5 * n
    compile_at = lambda n: {"fits": memory(n) <= 15e9, "peak_bytes": memory(n),
                            "available_bytes": None if memory(n) <= 15e9 else 15e9}  # XLA says it when it fails
    result = largest_batch_tokens(compile_at, 8192, compile_at(8192), hbm=16e9)
    assert [n for n, _, _ in result["tried"]] == [8192, 32768, 135168, 125440]
    assert result["batch_tokens"] == 125440 and result["predicted"] == 130000


def test_benchmark_compile_refuses_an_unknown_topology_in_one_line(capsys):
    assert benchmark_main(["compile", "--topologies", "tpu:v5e-8", "tpu:v9-8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown topology 'tpu:v9-8'" in err[0]


def test_xla_out_of_memory_line_gives_what_the_program_needs_and_what_a_chip_offers(libtpu):
    # one v5e chip (16 GiB), a 50,000² float32 argument (9.31 GiB) and a result of the same size
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    device = aot.compile_only_devices(V5E_4)[0]
    big = jax.ShapeDtypeStruct((50_000, 50_000), jnp.float32, sharding=NamedSharding(Mesh([device], ("d",)), P()))
    with pytest.raises(jax.errors.JaxRuntimeError, match="RESOURCE_EXHAUSTED") as raised:
        jax.jit(lambda a: a @ a + 1.0).trace(big).lower().compile()
    required, available = aot.xla_hbm_figures(str(raised.value).splitlines()[0])
    assert required == pytest.approx(2 * 50_000**2 * 4, rel=0.01)  # the argument and the result
    assert 15 * 2**30 <= available < 16 * 2**30  # under the chip's 16 GiB: libtpu keeps some
