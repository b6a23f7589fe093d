"""zoo.export and zoo.serving.load_exported: the exported file translates as zoo.load does, for
every model, in a process where model code and flax cannot be imported."""

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import jaxtyping
import numpy as np
import pytest
from exported import SENTENCES, TINY, export_file, tiny_workdir

import zoo
from zoo import export
from zoo.errors import ZooError
from zoo.serving import load_exported

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("standard_dtype_promotion")


# greedy for every model, beam search for one (test_serve.py runs the Transformer's beam search over HTTP)
BEAM_SIZES = {"bahdanau": [1, 3]}


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    return {name: tiny_workdir(tmp_path_factory.mktemp(name), name) for name in TINY}


@pytest.fixture(scope="module")
def loaded(workdirs, tmp_path_factory):
    """Per model: ``zoo.load(workdir)`` and its export (one translator a model, so that its
    compiled programs serve every test)."""
    folder = tmp_path_factory.mktemp("exported")
    out = {}
    for name, workdir in workdirs.items():
        translator = zoo.load(workdir)
        out[name] = translator, export_file(translator, folder / f"{name}.zoo", beam_sizes=BEAM_SIZES.get(name, [1]))
    return out


@pytest.mark.parametrize("name", sorted(TINY))
def test_exported_file_translates_as_the_workdir(loaded, name):
    translator, path = loaded[name]
    beam_sizes = BEAM_SIZES.get(name, [1])
    exported = load_exported(path)
    assert exported.has_attention == type(translator.model).has_attention
    assert (exported.step, exported.beam_sizes, exported.max_source_length) == (3, beam_sizes, translator.max_source_length)
    for k in beam_sizes:
        expected, got = translator.translate_tokens(SENTENCES, k), exported.translate_tokens(SENTENCES, k)
        for a, b in zip(expected, got, strict=True):
            assert (b.text, b.tokens, b.source_tokens) == (a.text, a.tokens, a.source_tokens)
            # two XLA programs (the export's symbolic shapes, the translator's jit) round apart: ConvS2S's
            # weights differed by 4.5e-6 under the suite's fast-compile flags (tests/conftest.py)
            np.testing.assert_allclose(b.heads, a.heads, rtol=1e-5, atol=1e-5)
        assert len(got[2].source_tokens) == 13 and got[2].heads.shape[-2:] == (len(got[2].tokens), 13)
        if name == "transformer":
            assert got[0].heads.shape[:2] == (2, 2)  # 2 decoder layers of 2 heads
        if name in ("sutskever", "cho"):
            assert not np.any(got[0].heads)


def test_export_cli_writes_one_file_for_three_platforms(workdirs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(jaxtyping.config, "jaxtyping_disable", True)  # see exported.export_file
    path = tmp_path / "t.zoo"
    assert export.main(["--workdir", str(workdirs["luong"]), "--output", str(path), "--beam-sizes", "1,2"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {path} (")
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == ["decode/beam1.jaxexport", "decode/beam2.jaxexport", "manifest.json", "params.npz"]
        manifest = json.loads(archive.read("manifest.json"))
    assert manifest["platforms"] == ["cpu", "cuda", "tpu"] and manifest["config"]["model_name"] == "luong"
    assert list(path.parent.iterdir()) == [path]  # no partial file left
    model = load_exported(path)
    with pytest.raises(ValueError, match="^beam_size=3: this model was exported with beam sizes 1,2$"):
        model.translate(["Ein Hund."], beam_size=3)
    with pytest.raises(ValueError, match="must be an integer of at least 1"):
        model.translate(["Ein Hund."], beam_size=0)


@pytest.mark.parametrize("args, message", [
    (["--platforms", "cpu,gpu"], "--platforms cpu,gpu: choose one or more of cpu,cuda,tpu"),
    (["--beam-sizes", "1,x"], "--beam-sizes 1,x: comma-separated integers"),
    (["--beam-sizes", "0"], r"--beam-sizes \[0\]: integers of at least 1"),
])
def test_export_cli_refuses_bad_flags_in_one_line(workdirs, tmp_path, capsys, args, message):
    assert export.main(["--workdir", str(workdirs["cho"]), "--output", str(tmp_path / "x.zoo"), *args]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and re.match(f"zoo.export: error: {message}", err)
    assert not list(tmp_path.iterdir())


def test_load_exported_refuses_what_is_not_an_export(tmp_path):
    (tmp_path / "a.zoo").write_text("hello")
    with pytest.raises(ZooError, match=f"^{tmp_path / 'a.zoo'}: not a complete zoo export"):
        load_exported(tmp_path / "a.zoo")
    with zipfile.ZipFile(tmp_path / "b.zoo", "w") as archive:
        archive.writestr("manifest.json", json.dumps({"format": "zoo-export", "version": 2}))
    with pytest.raises(ZooError, match="export format version 2; this zoo reads version 1"):
        load_exported(tmp_path / "b.zoo")
    with pytest.raises(ZooError, match="no such file"):
        load_exported(tmp_path / "c.zoo")


BLOCKED = """
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in ("flax", "zoo.models", "zoo.translator") or name.startswith(("flax.", "zoo.models.")):
            raise ImportError(f"{name} is blocked")
sys.meta_path.insert(0, Block())
from zoo.serving import load_exported
hypotheses, weights = load_exported(sys.argv[1]).translate(json.loads(sys.argv[2]), beam_size=3)
assert not any(m == "flax" or m.startswith(("flax.", "zoo.models")) for m in sys.modules)
print(json.dumps({"hypotheses": hypotheses, "weights": [w.tolist() for w in weights]}))
"""


def test_exported_file_translates_where_model_code_and_flax_cannot_be_imported(loaded):
    translator, path = loaded["bahdanau"]
    done = subprocess.run([sys.executable, "-c", BLOCKED, str(path), json.dumps(SENTENCES)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    hypotheses, weights = translator.translate(SENTENCES, beam_size=3)
    assert got["hypotheses"] == hypotheses
    for a, b in zip(weights, got["weights"], strict=True):
        np.testing.assert_allclose(np.array(b), a, rtol=1e-5, atol=1e-6)
