"""Training a byte-level BPE (train_tokenizer.py), using it as a tiktoken Encoding (model.get_tokenizer),
and carrying it through every stage: shards, training, generation, HellaSwag, export."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tiktoken
import torch
from tokenizers import Tokenizer

import fineweb
import generate
import hellaswag
import model
import train_gpt2
import train_tokenizer
import upload_hf
from conftest import shared_file
from model import EOT_TEXT, GPT, get_tokenizer

VOCAB_SIZE = 1024


def train(out, *args) -> int:
    return train_tokenizer.main(["--vocab-size", str(VOCAB_SIZE), "--out", str(out), *args])


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    """A 1024-token BPE trained on the first 1.5M characters of the Python standard library."""
    path = tmp_path_factory.mktemp("tokenizer") / "pystdlib-1024.json"
    assert train(path, "--dataset", "pystdlib", "--max-chars", "1500000") == 0
    return path


def stdlib_texts(first: int, count: int) -> list[str]:
    return [path.read_text(encoding="utf-8", errors="replace") for path in fineweb.stdlib_files()[first : first + count]]


def assert_same_as_tokenizers(path, texts):
    """tiktoken's encoding of each text is what Hugging Face tokenizers gives, and decodes back to it."""
    enc, reference = get_tokenizer(path), Tokenizer.from_file(str(path))
    for text in texts:
        ids = enc.encode_ordinary(text)
        assert ids == reference.encode(text, add_special_tokens=False).ids
        assert enc.decode(ids) == text
    return enc


# -----------------------------------------------------------------------------
# The tokenizer


def test_trained_tokenizer_is_a_tiktoken_encoding_identical_to_tokenizers(bpe):
    # Files the tokenizer was not trained on (it read about the first 100), and text far from Python.
    texts = stdlib_texts(900, 40) + ["Ünïcödé ✓ 日本語 🙂🙂 \t\r\n\n   x'll 'S 0123456789 \u00a0end  "]
    enc = assert_same_as_tokenizers(bpe, texts)
    assert isinstance(enc, tiktoken.Encoding) and enc.name.startswith(f"bpe{VOCAB_SIZE}-")
    assert enc.n_vocab == VOCAB_SIZE and enc.eot_token == 0 and enc.decode([0]) == EOT_TEXT
    ids = enc.encode("a<|endoftext|>b", allowed_special={EOT_TEXT})
    assert ids.count(enc.eot_token) == 1 and enc.decode(ids) == "a<|endoftext|>b"
    assert enc.eot_token not in enc.encode_ordinary("a<|endoftext|>b")
    assert b"".join(enc.decode_single_token_bytes(t) for t in enc.encode_ordinary("def f():")) == b"def f():"
    # BPE learned Python: about 2.5 bytes per token on files it has not seen, with only 1024 tokens.
    code = "".join(texts[:40])
    assert len(enc.encode_ordinary(code)) < len(code.encode()) / 2


def test_training_is_deterministic(bpe, tmp_path):
    assert train(tmp_path / "again.json", "--dataset", "pystdlib", "--max-chars", "1500000") == 0
    assert (tmp_path / "again.json").read_bytes() == bpe.read_bytes()


def test_tiny_shakespeare_round_trip(tmp_path):
    text_file = shared_file("tinyshakespeare/input.txt")
    out = tmp_path / "shakespeare.json"
    assert train_tokenizer.main(["--input", str(text_file), "--vocab-size", "2048", "--out", str(out)]) == 0
    text = text_file.read_text(encoding="utf-8")
    enc = assert_same_as_tokenizers(out, [text])
    assert enc.n_vocab == 2048 and len(enc.encode_ordinary(text)) < len(text) / 2.5  # GPT-2 50257 tokens: 338k


def test_gpt2s_own_tokenizer_json_converts_to_gpt2(tmp_path):
    """GPT-2's vocabulary in tokenizers' format gives exactly tiktoken's GPT-2 encoding: the
    conversion is right for a real 50k-token BPE, merges and all."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers

    vocab_bpe, encoder_json = model.gpt2_bpe_files()
    gpt2 = Tokenizer(models.BPE.from_file(str(encoder_json), str(vocab_bpe)))
    gpt2.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    gpt2.decoder = decoders.ByteLevel()
    gpt2.add_special_tokens([AddedToken(EOT_TEXT, special=True)])
    gpt2.save(str(tmp_path / "gpt2.json"))
    enc, reference = get_tokenizer(tmp_path / "gpt2.json"), get_tokenizer()
    assert (enc.n_vocab, enc.eot_token) == (50257, 50256)
    assert model.vocab_sha256(enc) == model.vocab_sha256(reference)
    for text in stdlib_texts(0, 5) + ["Hello, I'm a language model, 🙂 日本語"]:
        assert enc.encode_ordinary(text) == reference.encode_ordinary(text)


def edited(bpe, tmp_path, edit) -> str:
    spec = json.loads(bpe.read_text())
    edit(spec)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(spec))
    return str(path)


def swap_merged_ids(spec):
    vocab = spec["model"]["vocab"]
    first, second = ("".join(m) if isinstance(m, list) else m.replace(" ", "") for m in spec["model"]["merges"][:2])
    vocab[first], vocab[second] = vocab[second], vocab[first]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda spec: spec["model"].update(type="WordPiece"), "is not a BPE tokenizer"),
        (lambda spec: spec.update(normalizer={"type": "NFC"}), "is not a GPT-2-style byte-level BPE"),
        (lambda spec: spec["pre_tokenizer"].update(add_prefix_space=True), "no prefix space"),
        (lambda spec: spec.update(added_tokens=[]), "has no <|endoftext|> token"),
        (swap_merged_ids, "not in merge order"),
        (lambda spec: spec["model"]["vocab"].pop("Ā"), "lacks some of the 256 single-byte tokens"),
    ],
)
def test_tokenizers_tiktoken_cannot_reproduce_are_refused(bpe, tmp_path, edit, message):
    path = edited(bpe, tmp_path, edit)
    with pytest.raises(ValueError, match=message) as error:
        get_tokenizer(path)
    assert path in str(error.value)


def test_unreadable_tokenizer_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json cannot be read"):
        get_tokenizer(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ValueError, match="junk.json is not a tokenizer.json"):
        get_tokenizer(tmp_path / "junk.json")


def test_train_tokenizer_errors_are_one_line(bpe, tmp_path, capsys):
    for vocab_size in ("257", "65537"):  # argparse refuses these, before the config is printed
        with pytest.raises(SystemExit) as exit_info:
            train_tokenizer.main(["--vocab-size", vocab_size, "--dataset", "pystdlib", "--out", str(tmp_path / "a.json")])
        captured = capsys.readouterr()
        assert exit_info.value.code == 2 and not captured.out
        assert f"--vocab-size: must be an integer from 258 to 65536, not {vocab_size}" in captured.err
    before = bpe.read_bytes()
    assert train(bpe, "--dataset", "pystdlib", "--max-chars", "1000") == 2
    assert "pass --overwrite to replace it" in capsys.readouterr().err and bpe.read_bytes() == before
    assert train(tmp_path / "b.json", "--input", str(tmp_path / "nothing*.txt")) == 2
    assert "--input" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("")
    assert train(tmp_path / "b.json", "--input", str(tmp_path / "empty.txt")) == 2
    assert "empty corpus" in capsys.readouterr().err and not (tmp_path / "b.json").exists()


def test_out_that_is_a_folder_or_cannot_be_made_is_refused_before_training(tmp_path, monkeypatch, capsys):
    def no_training(*args, **kwargs):
        raise AssertionError("trained although --out cannot be written")

    monkeypatch.setattr(train_tokenizer, "limited_texts", no_training)
    (tmp_path / "doc.txt").write_text("some text to train on")
    folder = tmp_path / "tokenizers"
    folder.mkdir()
    for overwrite in ([], ["--overwrite"]):
        assert train(folder, "--input", str(tmp_path / "doc.txt"), *overwrite) == 2
        assert f"--out {folder} is a folder: pass the tokenizer.json file to write, e.g. {folder}/custom-1024.json" in capsys.readouterr().err
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["doc.txt", "tokenizers"]
    assert train(tmp_path / "doc.txt" / "tok.json", "--input", str(tmp_path / "doc.txt")) == 2  # its folder is a file
    assert f"cannot create its folder {tmp_path / 'doc.txt'}" in capsys.readouterr().err


def test_a_trained_tokenizer_that_fails_the_check_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    def refuse(tokenizer_json, source):
        raise ValueError(f"{source} is not a GPT-2-style byte-level BPE")

    monkeypatch.setattr(train_tokenizer, "tokenizer_from_json", refuse)
    (tmp_path / "doc.txt").write_text("some text to train on")
    out = tmp_path / "tok.json"
    assert train_tokenizer.main(["--vocab-size", "300", "--input", str(tmp_path / "doc.txt"), "--out", str(out)]) == 2
    assert f"train_tokenizer.py: error: the trained tokenizer cannot be used, so {out} was not written" in capsys.readouterr().err
    assert not out.exists()


def test_input_file_named_like_a_glob_is_the_file_read(tmp_path, capsys):
    # datasets would read "a[1].jsonl" as the pattern matching a1.jsonl.
    (tmp_path / "a[1].jsonl").write_text(json.dumps({"text": "forty characters of text from a[1].jsonl"}) + "\n")
    (tmp_path / "a1.jsonl").write_text(json.dumps({"text": "a1 text"}) + "\n")
    out = tmp_path / "tok.json"
    assert train_tokenizer.main(["--vocab-size", "300", "--input", str(tmp_path / "a[1].jsonl"), "--out", str(out)]) == 0
    assert "on 40 characters in 1 documents" in capsys.readouterr().out


# -----------------------------------------------------------------------------
# Through the stages


DOCS = [f"def function_{i}(x):\n    return x * {i}  # Ünïcödé ✓\n" for i in range(30)]


def test_fineweb_shards_with_a_trained_tokenizer(bpe, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i, text in enumerate(DOCS):
        (inputs / f"doc{i:03d}.txt").write_text(text, encoding="utf-8")
    out = tmp_path / "shards"
    args = ["--input", str(inputs / "*.txt"), "--out", str(out), "--val-tokens", "100", "--workers", "2"]
    assert fineweb.main([*args, "--tokenizer", str(bpe)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    enc = get_tokenizer(bpe)
    assert meta["tokenizer"] == {"name": enc.name, "vocab_sha256": model.vocab_sha256(enc), "eot_token": 0,
                                 "n_vocab": VOCAB_SIZE, "path": str(bpe.resolve())}
    assert f"--tokenizer {bpe.resolve()}" in meta["command"]
    tokens = np.concatenate([fineweb.load_shard(p) for split in ("val", "train") for p in fineweb.list_shards(out, split)])
    assert enc.decode(tokens.tolist()) == "".join(EOT_TEXT + text for text in DOCS)
    assert np.count_nonzero(tokens == enc.eot_token) == meta["documents"] == len(DOCS)
    assert int(tokens.max()) < VOCAB_SIZE
    capsys.readouterr()
    assert fineweb.main([*args, "--tokenizer", str(bpe)]) == 0
    assert "already holds this corpus" in capsys.readouterr().out
    # A record without the vocabulary size and path (as fineweb.py wrote them before) is the same
    # tokenizer: the folder is done, and its record is completed.
    meta["tokenizer"] = {key: meta["tokenizer"][key] for key in ("name", "vocab_sha256", "eot_token")}
    (out / "meta.json").write_text(json.dumps(meta))
    assert fineweb.main([*args, "--tokenizer", str(bpe)]) == 0
    assert "already holds this corpus" in capsys.readouterr().out
    assert json.loads((out / "meta.json").read_text())["tokenizer"]["n_vocab"] == VOCAB_SIZE
    assert fineweb.main(args) == 2  # GPT-2's tokenizer into the same folder
    assert "holds shards of another run (tokenizer:" in capsys.readouterr().err
    assert fineweb.main([*args, "--tokenizer", str(tmp_path / "missing.json"), "--overwrite"]) == 2
    assert "--tokenizer " in capsys.readouterr().err


def train_args(data, log_dir, *extra):
    return ["--preset", "smoke", "--model", "tiny-2.5", "--data", str(data), "--log-dir", str(log_dir), "--device", "cpu",
            "--micro-batch", "4", "--seq-len", "32", "--total-batch", "256", "--max-steps", "6", "--warmup-steps", "2",
            "--eval-every", "6", "--save-every", "6", "--val-steps", "2", "--no-hellaswag", "--sample-tokens", "4",
            # A learning rate high enough for the loss to fall visibly in 6 steps (the smoke preset's is
            # lower, for 100 steps without a spike).
            "--max-lr", "3e-3", "--min-lr", "3e-4", *extra]


def make_shards(out, tokenizer, max_tokens=40000):
    assert fineweb.main(["--dataset", "pystdlib", "--max-tokens", str(max_tokens), "--val-tokens", "4000", "--out", str(out),
                         "--workers", "1", "--tokenizer", str(tokenizer)]) == 0
    return out


@pytest.fixture(scope="module")
def run(bpe, tmp_path_factory):
    """tiny-2.5 trained on shards made with the BPE: train_gpt2.py takes the vocabulary from their
    meta.json and records the tokenizer in its checkpoints. "old" is the checkpoint without that
    record, as train_gpt2.py wrote checkpoints before it kept one."""
    root = tmp_path_factory.mktemp("bpe-run")
    data = make_shards(root / "data", bpe)
    assert train_gpt2.main(train_args(data, root / "log")) == 0
    recording = root / "log" / "ckpt_000006.pt"
    checkpoint = torch.load(recording, weights_only=True)
    assert checkpoint["tokenizer_json"] == bpe.read_text()
    (root / "old").mkdir()
    torch.save({k: v for k, v in checkpoint.items() if k != "tokenizer_json"}, root / "old" / "ckpt_000006.pt")
    return {"data": data, "log": root / "log", "old": root / "old" / "ckpt_000006.pt", "recording": recording}


def test_shards_made_with_it_train_a_model_of_its_vocabulary(run):
    m = GPT.from_checkpoint(run["recording"])
    assert m.config.vocab_size == VOCAB_SIZE and m.config.positions == "rope"
    records = train_gpt2.read_metrics(run["log"] / "metrics.jsonl")
    losses = [r["train_loss"] for r in records if r["type"] == "train"]
    assert abs(losses[0] - np.log(VOCAB_SIZE)) < 0.5 and losses[-1] < losses[0] - 0.2
    # The text samples are encoded and decoded with the data's tokenizer.
    samples = [r["text"] for r in records if r["type"] == "sample"]
    assert samples and all(text.startswith("Hello, I'm a language model,") for text in samples)


def test_train_gpt2_finds_the_tokenizer_and_refuses_another(run, bpe, tmp_path, capsys):
    # A moved tokenizer file: meta.json's path leads nowhere, --tokenizer points to it.
    data = Path(shutil.copytree(run["data"], tmp_path / "data"))
    meta = json.loads((data / "meta.json").read_text())
    meta["tokenizer"]["path"] = str(tmp_path / "moved.json")
    (data / "meta.json").write_text(json.dumps(meta))
    assert train_gpt2.main(train_args(data, tmp_path / "a", "--stop-at-step", "1")) == 2
    err = capsys.readouterr().err
    assert "moved.json cannot be read" in err and "pass its tokenizer.json as --tokenizer" in err
    assert train_gpt2.main(train_args(data, tmp_path / "a", "--stop-at-step", "1", "--tokenizer", str(bpe))) == 0
    other = tmp_path / "other.json"
    assert train(other, "--dataset", "pystdlib", "--max-chars", "300000") == 0
    capsys.readouterr()
    assert train_gpt2.main(train_args(data, tmp_path / "b", "--tokenizer", str(other))) == 2
    assert f"other.json's tokenizer is not {get_tokenizer(bpe).name}, which {data} was tokenized with" in capsys.readouterr().err
    # Resuming on the data of another tokenizer of the same size is refused.
    other_data = make_shards(tmp_path / "other-data", other)
    assert train_gpt2.main(train_args(other_data, run["log"], "--resume", "auto")) == 2
    assert "was trained with another tokenizer" in capsys.readouterr().err


def test_generate_uses_the_tokenizer_the_checkpoint_records(run, bpe, tmp_path, capsys):
    args = ["--prompt", "import os\n", "--temperature", "0", "--max-new-tokens", "20", "--no-stop", "-d", "cpu"]
    with pytest.raises(SystemExit, match="has a vocabulary of 1024 tokens, but its tokenizer gpt2 has 50257: pass the tokenizer.json"):
        generate.main(["-m", str(run["old"]), *args])
    given = generate.main(["-m", str(run["old"]), "--tokenizer", str(bpe), *args])
    recorded = generate.main(["-m", str(run["recording"]), *args])
    assert recorded == given and recorded[0][0].startswith("import os\n")
    m, enc = GPT.from_checkpoint(run["old"]).eval(), get_tokenizer(bpe)
    prompt = enc.encode("import os\n")
    expected = m.generate(torch.tensor([prompt]), 20, temperature=0)[0, len(prompt) :].tolist()
    assert recorded[0][0] == "import os\n" + enc.decode(expected)
    # A tokenizer other than the recorded one is refused, never silently used.
    other = tmp_path / "other.json"
    assert train(other, "--dataset", "pystdlib", "--max-chars", "300000") == 0
    with pytest.raises(SystemExit, match="other.json is not the tokenizer .* was trained with"):
        generate.main(["-m", str(run["recording"]), "--tokenizer", str(other), *args])


def test_hellaswag_scores_with_the_recorded_tokenizer(run, bpe, tmp_path):
    examples = [{"ctx": "for i in range(10):", "endings": ["print(i)", "return", "x = 1", "pass"], "label": 0}] * 2
    data = tmp_path / "hs.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in examples))
    result = hellaswag.main(["-m", str(run["recording"]), "--data", str(data), "-d", "cpu"])
    assert result.n == 2
    given = hellaswag.main(["-m", str(run["old"]), "--tokenizer", str(bpe), "--data", str(data), "-d", "cpu"])
    assert [p["sum_losses"] for p in given.predictions] == [p["sum_losses"] for p in result.predictions]
    with pytest.raises(SystemExit, match="pass the tokenizer.json it was trained with as --tokenizer"):
        hellaswag.main(["-m", str(run["old"]), "--data", str(data), "-d", "cpu"])


@pytest.mark.parametrize("recorded", [True, False])
def test_export_carries_the_tokenizer_to_transformers(run, bpe, tmp_path, monkeypatch, capsys, recorded):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "hf"
    checkpoint = run["recording"] if recorded else run["old"]
    args = ["--checkpoint", str(checkpoint), "--repo-id", "me/tiny-bpe", "--dry-run", "--out", str(out)]
    if not recorded:
        assert upload_hf.main(args) == 2
        assert "pass the tokenizer.json it was trained with as --tokenizer" in capsys.readouterr().err
        args += ["--tokenizer", str(bpe)]
    assert upload_hf.main(args) == 0
    assert (out / "tokenizer.json").read_text() == bpe.read_text() and not (out / "vocab.json").exists()
    assert "its own byte-level BPE tokenizer of 1,024 tokens" in (out / "README.md").read_text()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    enc = get_tokenizer(bpe)
    text = stdlib_texts(1000, 1)[0][:3000]
    assert tokenizer(text)["input_ids"] == enc.encode_ordinary(text)
    assert tokenizer.eos_token_id == enc.eot_token == 0
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    x = torch.tensor([enc.encode_ordinary(text)[:64]])
    with torch.no_grad():
        expected, _ = GPT.from_checkpoint(checkpoint).eval()(x)
        assert (hf(x).logits - expected).abs().max().item() <= 1e-5
    # Our loader reads the export back with its tokenizer.
    assert model.load_tokenizer(out, VOCAB_SIZE).encode_ordinary(text) == enc.encode_ordinary(text)
