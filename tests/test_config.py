"""The configs and the registry: one table of models, choices typed as Literals and refused alike
from Python, a config.json and the command line; the checks a Literal cannot express."""

import dataclasses
import typing

import pytest

from zoo import config as zc
from zoo.checkpoint import config_difference, config_from_dict
from zoo.cli import train
from zoo.errors import ZooError
from zoo.models import MODELS, build, list_models

CONFIGS = [*(architecture.config for architecture in MODELS.values()), zc.TaggerConfig, zc.ClassifierConfig, zc.DataConfig]
REQUIRED = {"vocab_size": 5, "embed_dim": 4, "hidden_dim": 4, "num_tags": 3, "num_classes": 2}  # labelling sizes


def make(cls, **fields):
    required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
    return cls(**{k: v for k, v in REQUIRED.items() if k in required}, **fields)


def test_literal_choices_are_the_libraries_names():
    from zoo.data.corpora import DATASETS
    from zoo.functional.attention import SCORES
    from zoo.functional.cells import NUM_GATES
    from zoo.nn.attention import IMPLEMENTATIONS

    assert set(typing.get_args(zc.Score)) == set(SCORES)
    assert typing.get_args(zc.AttentionImpl) == ("auto", *IMPLEMENTATIONS)
    assert set(typing.get_args(zc.Cell)) == set(NUM_GATES)
    assert set(typing.get_args(zc.Dataset)) == set(DATASETS)


def test_one_registry_of_frozen_keyword_only_configs():
    assert list_models() == sorted(MODELS) == ["bahdanau", "cho", "convs2s", "luong", "sutskever", "transformer"]
    for name, architecture in MODELS.items():
        assert issubclass(architecture.config, zc.Seq2SeqConfig)
        assert architecture.config.__dataclass_params__.frozen
        assert all(f.kw_only for f in dataclasses.fields(architecture.config))
        with pytest.raises(TypeError):
            architecture.config(8000)  # keywords only
        common = {f.name for f in dataclasses.fields(zc.Seq2SeqConfig)}
        assert common == {"dropout", "dtype", "src_vocab_size", "tgt_vocab_size"} <= {f.name for f in
                                                                                     dataclasses.fields(architecture.config)}
    with pytest.raises(TypeError):
        zc.Config("luong")  # keywords only
    with pytest.raises(ValueError, match="unknown model 'rnn'; choose from bahdanau, cho"):
        build("rnn")


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda cls: cls.__name__)
def test_every_choice_is_refused_alike_from_python_and_config_json(cls, tmp_path):
    choices = [f for f in dataclasses.fields(cls) if typing.get_origin(f.type) is typing.Literal]
    assert choices[0].name == ("dataset" if cls is zc.DataConfig else "dtype")
    for f in choices:
        message = f"{cls.__name__}.{f.name}='nope': must be one of {', '.join(typing.get_args(f.type))}"
        with pytest.raises(ValueError) as refused:
            make(cls, **{f.name: "nope"})
        assert str(refused.value).startswith(message)
        for value in typing.get_args(f.type):
            if not (cls is zc.BahdanauConfig and value in ("dot", "cosine")):
                assert getattr(make(cls, **{f.name: value}), f.name) == value
        if cls in [a.config for a in MODELS.values()]:
            name = next(n for n, a in MODELS.items() if a.config is cls)
            with pytest.raises(ZooError, match=f"^config.json: {message}"):
                config_from_dict({"model_name": name, "model": {f.name: "nope"}}, "config.json")


@pytest.mark.parametrize("fields, message", [
    (dict(score="dot"), r"BahdanauConfig.score='dot': needs query and keys of equal width"),
    (dict(score="cosine"), r"BahdanauConfig.score='cosine': needs query and keys of equal width"),
])
def test_bahdanau_refuses_the_scores_whose_widths_do_not_fit(fields, message):
    with pytest.raises(ValueError, match=message):
        zc.BahdanauConfig(**fields)


def test_the_checks_a_literal_cannot_express():
    with pytest.raises(ValueError, match=r"^LuongConfig.hidden_dim=15: bidirectional_encoder splits"):
        zc.LuongConfig(hidden_dim=15, bidirectional_encoder=True)
    assert zc.LuongConfig(hidden_dim=15).hidden_dim == 15
    with pytest.raises(ValueError, match=r"^LuongConfig.hard_attention=True: hard attention picks one position"):
        zc.LuongConfig(hard_attention=True, attention="local-p")
    assert zc.LuongConfig(hard_attention=True, attention="local-m").hard_attention
    with pytest.raises(ValueError, match=r"^ConvS2SConfig.kernel_size=4: must be odd"):
        zc.ConvS2SConfig(kernel_size=4)


def test_the_one_reader_names_the_file_and_field():
    with pytest.raises(ZooError, match=r"^c.yaml: no model_name \(one of bahdanau"):
        config_from_dict({"model": {}}, "c.yaml")
    with pytest.raises(ZooError, match=r"^c.yaml: model_name 'rnn' is not one of bahdanau"):
        config_from_dict({"model_name": "rnn"}, "c.yaml")
    with pytest.raises(ZooError, match=r"^c.yaml: model.hiden_dim is not a known field"):
        config_from_dict({"model_name": "luong", "model": {"hiden_dim": 3}}, "c.yaml")
    with pytest.raises(ZooError, match=r"^c.yaml: the config must be a mapping, not list"):
        config_from_dict([], "c.yaml")
    config = config_from_dict({"model_name": "luong", "model": {"hidden_dim": 32}, "train": {"epochs": 2}}, "c.yaml")
    assert config == zc.Config(model_name="luong", model=zc.LuongConfig(hidden_dim=32), train=zc.TrainConfig(epochs=2))
    assert config_from_dict(__import__("json").loads(config.to_json()), "config.json") == config


def test_the_one_difference_of_two_configs():
    a = zc.Config(model_name="luong", model=zc.LuongConfig())
    assert config_difference(a, a) is None
    assert config_difference(a, zc.Config()) == ("model_name", "luong", "bahdanau")
    b = dataclasses.replace(a, model=zc.LuongConfig(hidden_dim=8, src_vocab_size=9), train=zc.TrainConfig(epochs=99))
    assert config_difference(a, b) == ("model.src_vocab_size", 8000, 9)  # epochs may change on resume
    assert config_difference(a, b, ignore={"model.src_vocab_size"}) == ("model.hidden_dim", 512, 8)


def test_help_lists_the_choices_and_the_cli_refuses_a_wrong_one_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        train.parse_args(["--model", "luong", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "--model {bahdanau,cho,convs2s,luong,sutskever,transformer}" in text
    assert "--model.score {additive,dot,general,scaled_dot,cosine,mlp}" in text
    assert "--model.attention {global,local-m,local-p}" in text and "--data.dataset {multi30k,tatoeba}" in text
    with pytest.raises(ZooError) as refused:
        train.parse_args(["--model", "luong", "--workdir", "w", "--model.score", "cosin"])
    assert str(refused.value) == "--model.score 'cosin': choose from additive, dot, general, scaled_dot, cosine, mlp"
    with pytest.raises(ZooError, match=r"^BahdanauConfig.score='dot': needs query and keys of equal width"):
        train.parse_args(["--workdir", "w", "--model.score", "dot"])
