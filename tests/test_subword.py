"""SentencePiece subwords: ids aligned with the zoo's, round trips, one-line errors, train -> resume -> load."""

import dataclasses
import json
import unicodedata

import pytest
from corpus import sentence_pairs, write_tiny_multi30k
from exported import export_file

import zoo
from zoo.config import BahdanauConfig, Config, DataConfig, TrainConfig
from zoo.data.pipeline import TextPipeline
from zoo.data.subword import SubwordTokenizer
from zoo.data.vocab import SPECIALS, UNK_ID, Vocab
from zoo.errors import ZooError
from zoo.serving import load_exported
from zoo.training import train

pytestmark = pytest.mark.usefixtures("standard_dtype_promotion")

PAIRS = sentence_pairs(48, seed=0)
CORPUS = [s for pair in PAIRS for s in pair]
SUBWORDS = DataConfig(tokenizer="sentencepiece", vocab_size=48, lowercase=False, length_multiple=32)


@pytest.fixture(scope="module")
def pipeline():
    return TextPipeline.build(SUBWORDS, [s for s, _ in PAIRS], [t for _, t in PAIRS])


def normalised(sentence: str, lowercase: bool) -> str:
    """What SentencePiece's nmt_nfkc normalisation makes of these sentences: NFKC, single spaces, no ends."""
    text = " ".join(unicodedata.normalize("NFKC", sentence).split())
    return text.lower() if lowercase else text


def test_one_joint_model_whose_ids_are_the_zoo_ids(pipeline):
    assert pipeline.src_tokenizer is pipeline.tgt_tokenizer and pipeline.src_vocab is pipeline.tgt_vocab
    assert len(pipeline.src_vocab) == 48
    assert tuple(pipeline.src_vocab.itos[:4]) == SPECIALS  # <pad> <unk> <bos> <eos> at the zoo's ids 0-3
    sentence = "Ein Hund springt am Strand. A dog jumps on the beach."  # both languages: one joint model
    pieces = pipeline.src_tokenizer.tokenize(sentence)
    assert pipeline.encode_source([sentence]) == [pipeline.src_vocab.encode(pieces)] == pipeline.encode_target([sentence])
    assert pipeline.encode_source(["Ein Hund Ω"])[0][-1] == UNK_ID  # a character never seen in training


@pytest.mark.parametrize("lowercase", [False, True])
def test_round_trip_detokenizes_to_the_normalised_input(lowercase):
    tokenizer = SubwordTokenizer.train(CORPUS, 48, "bpe", lowercase)
    for sentence in ["Ein Mann läuft im Park.", "  A  child  sings\ton the street.  ", "Eine Katze isst im Haus."]:
        pieces = tokenizer.tokenize(sentence)
        assert pieces[0].startswith("▁") and len(pieces) > len(sentence.split())  # subwords, not words
        assert tokenizer.detokenize(pieces) == normalised(sentence, lowercase)
        ids = tokenizer.encode([sentence])[0]
        assert tokenizer.detokenize(Vocab(tokenizer.pieces()).decode(ids)) == normalised(sentence, lowercase)


TOO_FEW = r"corpus\.de: gives at most {} SentencePiece pieces, fewer than --data\.vocab-size {}"


@pytest.mark.parametrize("sentences, vocab_size, message", [
    (["", " "], 48, r"corpus\.de: no text to train SentencePiece on"),
    (["aaaa aaaa"] * 20, 48, TOO_FEW.format(7, 48) + r" .*use at most 7"),
    (CORPUS, 8000, TOO_FEW.format(r"\d+", 8000)),
    (CORPUS, 8, r"corpus\.de: has \d+ distinct characters .* more than --data\.vocab-size 8"),
], ids=["empty", "one-repeated-character", "vocab-too-large", "vocab-too-small"])
def test_sentences_sentencepiece_cannot_train_on_are_one_line(sentences, vocab_size, message):
    with pytest.raises(ZooError, match=message) as error:
        SubwordTokenizer.train(sentences, vocab_size, origin="corpus.de")
    assert "\n" not in str(error.value)


def test_a_damaged_model_file_is_named(tmp_path, pipeline):
    pipeline.save(tmp_path)
    model = tmp_path / TextPipeline.SUBWORD_FILE
    model.write_bytes(model.read_bytes()[:100])
    with pytest.raises(ZooError, match=r"spm\.model: not a SentencePiece model"):
        TextPipeline.load(SUBWORDS, tmp_path)


def tiny_config(max_steps: int, vocab_size: int = 48) -> Config:
    model = BahdanauConfig(embed_dim=8, hidden_dim=8, attention_dim=8, maxout_dim=8, dropout=0.0)
    train_config = TrainConfig(epochs=1, batch_size=8, checkpoint_every=2, max_steps=max_steps)
    data = dataclasses.replace(SUBWORDS, vocab_size=vocab_size)
    return Config(model_name="bahdanau", model=model, data=data, train=train_config)


def losses(workdir):
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if "loss" in r]


def test_train_resume_and_load_with_sentencepiece_from_prepared_data(tmp_path):
    data_dir, cache = write_tiny_multi30k(tmp_path / "data"), tmp_path / "prepared"
    train(tiny_config(max_steps=3), tmp_path / "in-memory", data_dir, progress=False)
    workdir = tmp_path / "run"
    train(tiny_config(max_steps=2), workdir, data_dir, progress=False, prepared_dir=cache)  # checkpoint at step 2
    model_bytes = (workdir / "spm.model").read_bytes()
    assert not (workdir / "src_vocab.json").exists()
    [prepared] = [p for p in cache.iterdir()]
    assert (prepared / "spm.model").read_bytes() == model_bytes
    result = train(tiny_config(max_steps=3), workdir, data_dir, progress=False, prepared_dir=cache)
    assert result["step"] == 3 and (workdir / "spm.model").read_bytes() == model_bytes  # the saved model, reused
    assert losses(workdir) == losses(tmp_path / "in-memory")  # prepared = in memory, and resumed bit for bit
    translator = zoo.load(workdir)
    assert (translator.config.model.src_vocab_size, translator.config.model.tgt_vocab_size) == (48, 48)
    [result] = translator.translate_tokens(["Ein Hund schläft im Park."])
    tokenizer = translator.pipeline.tgt_tokenizer
    assert result.source_tokens == tokenizer.tokenize("Ein Hund schläft im Park.") + ["<eos>"]
    assert result.text == tokenizer.detokenize([t for t in result.tokens if t != "<eos>"])
    exported = load_exported(export_file(translator, tmp_path / "model.zoo"))  # spm.model travels in the file
    sentences = ["Ein Hund schläft im Park.", "Eine Katze singt."]
    assert exported.translate(sentences)[0] == translator.translate(sentences)[0]


def test_a_vocab_size_the_corpus_cannot_give_names_the_files_and_writes_nothing(tmp_path):
    data_dir = write_tiny_multi30k(tmp_path / "data")
    with pytest.raises(ZooError, match=r"train\.de\.gz and \S+train\.en\.gz: gives at most \d+ SentencePiece pieces, "
                                       r"fewer than --data\.vocab-size 8000"):
        train(tiny_config(max_steps=1, vocab_size=8000), tmp_path / "run", data_dir, progress=False)
    assert not (tmp_path / "run").exists()
