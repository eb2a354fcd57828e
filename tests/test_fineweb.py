"""fineweb.py: sources, shard format, val/train split, resume, safety, and the reader train_gpt2.py uses."""

import fnmatch
import hashlib
import io
import json
import re
import shutil
import socket
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError
from huggingface_hub.utils import httpx

import fineweb
from conftest import shared_file
from fineweb import ShardError, list_shards, load_shard
from model import EOT_TOKEN, get_tokenizer

EOT_TEXT = "<|endoftext|>"


class Crash(Exception):
    """Stands in for a kill in the middle of a run."""


def stream(data_dir):
    """All tokens in stream order: the val shards, then the train shards."""
    return np.concatenate([load_shard(p) for split in ("val", "train") for p in list_shards(data_dir, split)])


def meta_of(data_dir):
    return json.loads((Path(data_dir) / "meta.json").read_text())


def write_docs(folder, texts):
    folder.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(texts):
        (folder / f"doc{i:03d}.txt").write_text(text, encoding="utf-8")
    return str(folder / "*.txt")


def crash_at_save(monkeypatch, argv, saves):
    """fineweb.main(argv), killed as it saves its `saves`-th shard (counting from 1)."""
    real_save, saved = fineweb._save_shard, []

    def save_then_crash(path, tokens):
        saved.append(path)
        if len(saved) == saves:
            raise Crash
        real_save(path, tokens)

    monkeypatch.setattr(fineweb, "_save_shard", save_then_crash)
    with pytest.raises(Crash):
        fineweb.main(argv)
    monkeypatch.setattr(fineweb, "_save_shard", real_save)


POSITION_KEYS = ("source_position", "documents_after_position")


def written(meta):
    """The shard records less the source positions, which depend on where a run's chunks began."""
    return [{key: value for key, value in record.items() if key not in POSITION_KEYS} for record in meta["shards"]]


DOCS = [f"Document {i}: the quick brown fox jumps over {i} lazy dogs. Ünïcödé ✓ {'la ' * (i % 7)}" for i in range(20)]


def test_txt_shards_decode_to_documents_and_match_meta(tmp_path):
    pattern = write_docs(tmp_path / "in", DOCS)
    out = tmp_path / "out"
    assert fineweb.main(["--input", pattern, "--out", str(out), "--shard-size", "50", "--val-tokens", "70", "--workers", "2"]) == 0
    tokens = stream(out)
    assert get_tokenizer().decode(tokens.tolist()) == "".join(EOT_TEXT + text for text in DOCS)
    meta = meta_of(out)
    assert meta["complete"] and meta["documents"] == len(DOCS) == np.count_nonzero(tokens == EOT_TOKEN)
    assert meta["total_tokens"] == len(tokens)
    for record in meta["shards"]:
        assert len(load_shard(out / record["file"])) == record["tokens"] <= 50
    # The first 70 tokens are val (shards of 50 + 20), every later token is train.
    assert [r["tokens"] for r in meta["shards"] if r["split"] == "val"] == [50, 20]
    assert meta["split_tokens"] == {"val": 70, "train": len(tokens) - 70}
    assert [p.name for p in list_shards(out, "val")] == ["custom_val_000000.npy", "custom_val_000001.npy"]
    assert list_shards(out, "train")[0].name == "custom_train_000002.npy"
    assert meta["tokenizer"]["name"] == "gpt2" and meta["tokenizer"]["eot_token"] == EOT_TOKEN


def test_jsonl_json_parquet_inputs(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"body": f"jsonl row {i}", "id": i}) + "\n" for i in range(3)))
    (tmp_path / "b.json").write_text(json.dumps([{"body": "json row"}]))
    pq.write_table(pa.table({"body": ["parquet row 0", "parquet row 1"]}), tmp_path / "c.parquet")
    out = tmp_path / "out"
    inputs = [str(tmp_path / "a.jsonl"), str(tmp_path / "b.json"), str(tmp_path / "c.parquet")]
    assert fineweb.main(["--input", *inputs, "--text-field", "body", "--out", str(out), "--val-tokens", "5"]) == 0
    texts = ["jsonl row 0", "jsonl row 1", "jsonl row 2", "json row", "parquet row 0", "parquet row 1"]
    assert get_tokenizer().decode(stream(out).tolist()) == "".join(EOT_TEXT + text for text in texts)
    assert meta_of(out)["source"]["inputs"] == [str(Path(p).resolve()) for p in inputs]


def test_file_names_with_glob_characters_are_read_as_named(tmp_path, capsys):
    # To datasets a file name is a glob pattern: "a[1].jsonl" would read a1.jsonl, "b*.jsonl" every b...jsonl.
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    folder = tmp_path / "in[1]"  # the folder's name too
    folder.mkdir()
    for name in ("a[1].jsonl", "a1.jsonl", "b*.jsonl", "bx.jsonl", "c?.json", "cx.json"):
        (folder / name).write_text(json.dumps({"text": f"from {name}"}) + ("\n" if name.endswith("l") else ""))
    for name in ("p[1].parquet", "p1.parquet"):
        pq.write_table(pa.table({"text": [f"from {name}"]}), folder / name)
    out = tmp_path / "out"
    assert fineweb.main(["--input", str(folder), "--out", str(out), "--val-tokens", "3", "--workers", "1"]) == 0
    names = sorted(path.name for path in folder.iterdir())
    assert get_tokenizer().decode(stream(out).tolist()) == "".join(f"{EOT_TEXT}from {name}" for name in names)
    assert fineweb.main(["--input", str(folder / "a[1].jsonl"), "--out", str(tmp_path / "one"), "--val-tokens", "3"]) == 0
    assert get_tokenizer().decode(stream(tmp_path / "one").tolist()) == f"{EOT_TEXT}from a[1].jsonl"
    # What datasets cannot read as named is a clear error, not another file or a riddle.
    (tmp_path / "x::y.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    assert fineweb.main(["--input", str(tmp_path / "x::y.jsonl"), "--out", str(tmp_path / "xy")]) == 2
    assert "x::y.jsonl: datasets cannot read a file whose path holds '::': rename it" in capsys.readouterr().err


def test_zero_row_parquet_is_skipped_like_an_empty_jsonl(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "empty.parquet")  # a row group of 0 rows
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "doc.txt").write_text("the only document")
    out = tmp_path / "out"
    assert fineweb.main(["--input", str(tmp_path), "--out", str(out), "--val-tokens", "2", "--workers", "1"]) == 0
    assert meta_of(out)["documents"] == 1
    assert get_tokenizer().decode(stream(out).tolist()) == EOT_TEXT + "the only document"


def test_missing_text_field_names_file_and_field(tmp_path, capsys):
    (tmp_path / "a.jsonl").write_text(json.dumps({"content": "x"}) + "\n")
    assert fineweb.main(["--input", str(tmp_path / "a.jsonl"), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "a.jsonl" in error and "'text'" in error and "content" in error and "--text-field" in error


def test_missing_input_and_empty_corpus_are_clear_errors(tmp_path, capsys):
    assert fineweb.main(["--input", str(tmp_path / "nope*.txt"), "--out", str(tmp_path / "out")]) == 2
    assert "nope*.txt" in capsys.readouterr().err
    (tmp_path / "empty.jsonl").write_text("")
    assert fineweb.main(["--input", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "out")]) == 2
    assert "empty corpus" in capsys.readouterr().err


def test_bad_flag_combinations(tmp_path, capsys):
    assert fineweb.main(["--dataset", "pystdlib", "--val-tokens", "10", "--max-tokens", "10", "--out", str(tmp_path)]) == 2
    assert "--val-tokens" in capsys.readouterr().err
    assert fineweb.main(["--dataset", "pystdlib", "--input", "x.txt"]) == 2
    assert "only one of" in capsys.readouterr().err
    # One token cannot be split into val and train: argparse refuses it (tests/test_cli.py walks the
    # other ranges), before anything is written.
    with pytest.raises(SystemExit) as exit_info:
        fineweb.main(["--dataset", "pystdlib", "--max-tokens", "1", "--out", str(tmp_path / "one")])
    assert exit_info.value.code == 2 and not (tmp_path / "one").exists()
    assert "--max-tokens: must be an integer of at least 2, not 1" in capsys.readouterr().err


def test_val_split_too_large_for_corpus_says_what_to_do(tmp_path, capsys):
    pattern = write_docs(tmp_path / "in", DOCS[:2])
    assert fineweb.main(["--input", pattern, "--out", str(tmp_path / "out")]) == 2  # default val: 100,000 tokens
    assert "smaller --val-tokens" in capsys.readouterr().err
    # A corpus of fewer than 10 tokens: the --val-tokens suggested is one that works.
    tiny = ["--input", write_docs(tmp_path / "tiny", ["Hello world"]), "--out", str(tmp_path / "tiny-out")]
    assert fineweb.main(tiny) == 2
    suggested = re.search(r"smaller --val-tokens, e\.g\. (\d+)", capsys.readouterr().err).group(1)
    assert fineweb.main([*tiny, "--val-tokens", suggested, "--overwrite"]) == 0
    assert meta_of(tmp_path / "tiny-out")["split_tokens"] == {"val": 1, "train": 2}
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "blank.txt").write_text("")  # one document of one token, <|endoftext|>
    assert fineweb.main(["--input", str(tmp_path / "empty"), "--out", str(tmp_path / "empty-out"), "--val-tokens", "1"]) == 2
    assert "need at least 2 tokens" in capsys.readouterr().err


def test_undecodable_bytes_are_replaced_and_counted(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.txt").write_bytes(b"good start \xff\xfe bad middle \xc3 end")
    (tmp_path / "in" / "good.txt").write_text("all fine here, and long enough to train on")
    out = tmp_path / "out"
    assert fineweb.main(["--input", str(tmp_path / "in"), "--out", str(out), "--val-tokens", "3"]) == 0
    assert meta_of(out)["replaced_bytes"] == 3
    assert "good start \ufffd\ufffd bad middle \ufffd end" in get_tokenizer().decode(stream(out).tolist())


def test_token_ids_must_fit_uint16():
    class WideTokenizer:
        name, max_token_value = "wide", 70_000

    with pytest.raises(ShardError, match="uint16"):
        fineweb.check_fits_uint16(WideTokenizer())
    fineweb.check_fits_uint16(get_tokenizer())


def test_crash_mid_write_leaves_no_file_under_the_final_name(tmp_path):
    target = tmp_path / "x_train_000000.npy"

    def write_half_then_die(file):
        file.write(b"\x93NUMPY half")
        raise Crash

    with pytest.raises(Crash):
        fineweb.write_atomic(target, write_half_then_die)
    assert not target.exists()
    fineweb._save_shard(target, np.arange(5, dtype=np.uint16))
    with pytest.raises(Crash):
        fineweb.write_atomic(target, write_half_then_die)
    assert load_shard(target).tolist() == [0, 1, 2, 3, 4]  # the previous complete file survives


def test_resume_after_crash_equals_uninterrupted_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fineweb, "CHUNK_CHARS", 150)  # chunks of 2 documents, so positions are recorded at many files
    pattern = write_docs(tmp_path / "in", DOCS)
    args = ["--input", pattern, "--shard-size", "50", "--val-tokens", "70", "--workers", "2"]
    assert fineweb.main([*args, "--out", str(tmp_path / "ref")]) == 0

    out = tmp_path / "out"
    crash_at_save(monkeypatch, [*args, "--out", str(out)], saves=4)
    meta = meta_of(out)
    assert not meta["complete"] and len(meta["shards"]) == 3
    last = meta["shards"][-1]
    assert last["offset_tokens"] > 0  # the crash came in the middle of a document
    with pytest.raises(ShardError, match="unfinished"):
        list_shards(out, "train")
    # The recorded position is after `files_read` files (a document each), and those are not read again.
    files_read = last["source_position"]["file"] + last["source_position"]["row"]
    assert files_read + last["documents_after_position"] == last["documents_done"] and files_read >= 2
    for path in sorted((tmp_path / "in").iterdir())[:files_read]:
        path.write_text("changed after the crash")

    capsys.readouterr()
    assert fineweb.main([*args, "--out", str(out)]) == 0
    assert (f"resuming after custom_train_000002.npy ({last['documents_done']} documents done): reading the source from "
            f"its recorded position, skipping {last['documents_after_position']} documents") in capsys.readouterr().out
    assert np.array_equal(stream(out), stream(tmp_path / "ref"))
    assert written(meta_of(out)) == written(meta_of(tmp_path / "ref"))


def test_resume_jsonl_files_at_a_row_inside_a_file_and_from_an_old_record(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fineweb, "CHUNK_CHARS", 250)  # chunks of ~4 rows, so positions fall inside files
    (tmp_path / "in").mkdir()
    files = [tmp_path / "in" / f"part{f}.jsonl" for f in range(4)]
    for f, path in enumerate(files):
        path.write_text("".join(json.dumps({"text": text}) + "\n" for text in DOCS[5 * f : 5 * f + 5]))
    args = ["--input", *map(str, files), "--shard-size", "60", "--val-tokens", "60", "--workers", "2"]
    assert fineweb.main([*args, "--out", str(tmp_path / "ref")]) == 0
    ref_tokens, ref_meta = stream(tmp_path / "ref"), meta_of(tmp_path / "ref")

    crash_at_save(monkeypatch, [*args, "--out", str(tmp_path / "crashed")], saves=7)
    last = meta_of(tmp_path / "crashed")["shards"][-1]
    assert last["source_position"]["file"] == 2 and last["source_position"]["row"] > 0
    assert last["documents_after_position"] > 0 and last["offset_tokens"] > 0

    # From the recorded position: the files before it may even be unreadable now. The resumed run is
    # killed once more, so that it resumes from a position it recorded itself.
    out = tmp_path / "out"
    shutil.copytree(tmp_path / "crashed", out)
    originals = {path: path.read_bytes() for path in files[:2]}
    for path in originals:
        path.write_text("{not json")
    crash_at_save(monkeypatch, [*args, "--out", str(out)], saves=2)
    # Its one new shard ended in its first chunk, which starts after the documents it skipped.
    start = last["source_position"]["row"] + last["documents_after_position"]
    assert meta_of(out)["shards"][-1]["source_position"] == {"file": 2, "row": start}
    assert fineweb.main([*args, "--out", str(out)]) == 0
    assert np.array_equal(stream(out), ref_tokens) and written(meta_of(out)) == written(ref_meta)

    # A meta.json from before positions were kept: the source is read again from its beginning.
    for path, data in originals.items():
        path.write_bytes(data)
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "crashed", old)
    meta = meta_of(old)
    meta["shards"] = written(meta)
    (old / "meta.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert fineweb.main([*args, "--out", str(old)]) == 0
    assert f"from the beginning, skipping {last['documents_done']} documents" in capsys.readouterr().out
    assert np.array_equal(stream(old), ref_tokens) and written(meta_of(old)) == written(ref_meta)


def test_resume_when_only_the_completion_mark_is_missing(tmp_path):
    # A kill after the last --max-tokens shard but before meta.json said "complete".
    out = tmp_path / "out"
    args = ["--input", write_docs(tmp_path / "in", DOCS), "--out", str(out), "--shard-size", "50", "--max-tokens", "200"]
    assert fineweb.main(args) == 0
    tokens, meta = stream(out), meta_of(out)
    (out / "meta.json").write_text(json.dumps({**meta, "complete": False}))
    assert fineweb.main(args) == 0
    assert np.array_equal(stream(out), tokens) and meta_of(out) == meta


def test_rerun_is_done_other_settings_refused_overwrite_keeps_other_files(tmp_path, capsys):
    pattern = write_docs(tmp_path / "in", DOCS)
    out = tmp_path / "out"
    args = ["--input", pattern, "--out", str(out), "--val-tokens", "70"]
    assert fineweb.main([*args, "--shard-size", "50"]) == 0
    first_shards = sorted(out.glob("*.npy"))
    mtimes = [p.stat().st_mtime_ns for p in first_shards]
    (out / "notes.txt").write_text("mine")

    capsys.readouterr()
    assert fineweb.main([*args, "--shard-size", "50"]) == 0
    assert "already holds this corpus" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in first_shards] == mtimes

    assert fineweb.main([*args, "--shard-size", "500"]) == 2
    error = capsys.readouterr().err
    assert "another run" in error and "--overwrite" in error
    assert sorted(out.glob("*.npy")) == first_shards and meta_of(out)["settings"]["shard_size"] == 50

    assert fineweb.main([*args, "--shard-size", "500", "--overwrite"]) == 0
    meta = meta_of(out)
    assert meta["settings"]["shard_size"] == 500
    assert sorted(p.name for p in out.glob("*.npy")) == sorted(r["file"] for r in meta["shards"])
    assert len(meta["shards"]) < len(first_shards)
    assert (out / "notes.txt").read_text() == "mine"


def test_unrecorded_shards_are_never_mixed_in(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    np.save(out / "someone_train_000000.npy", np.zeros(4, dtype=np.uint16))
    pattern = write_docs(tmp_path / "in", DOCS)
    assert fineweb.main(["--input", pattern, "--out", str(out), "--val-tokens", "70"]) == 2
    assert "no meta.json" in capsys.readouterr().err


def test_out_inside_an_input_folder_is_not_read_so_reruns_and_resumes_work(tmp_path, monkeypatch, capsys):
    corpus = tmp_path / "corpus"
    write_docs(corpus, DOCS)
    args = ["--input", str(corpus), "--shard-size", "50", "--val-tokens", "70", "--workers", "1"]
    assert fineweb.main([*args, "--out", str(tmp_path / "ref")]) == 0
    out = corpus / "shards"
    crash_at_save(monkeypatch, [*args, "--out", str(out)], saves=3)
    (out / ".from_hub").mkdir()
    (out / ".from_hub" / "meta.json").write_text("{}")  # what an interrupted --from-hub leaves
    assert fineweb.main([*args, "--out", str(out)]) == 0  # resumes: its own meta.json is not an input
    assert np.array_equal(stream(out), stream(tmp_path / "ref"))
    assert meta_of(out)["source"]["inputs"] == meta_of(tmp_path / "ref")["source"]["inputs"]
    capsys.readouterr()
    assert fineweb.main([*args, "--out", str(out)]) == 0
    assert "already holds this corpus" in capsys.readouterr().out
    assert fineweb.main([*args, "--out", str(out), "--overwrite"]) == 0
    assert np.array_equal(stream(out), stream(tmp_path / "ref"))


def test_truncated_wrong_dtype_and_wrong_length_shards_are_detected(tmp_path):
    pattern = write_docs(tmp_path / "in", DOCS)
    out = tmp_path / "out"
    assert fineweb.main(["--input", pattern, "--out", str(out), "--val-tokens", "70"]) == 0
    shard = list_shards(out, "train")[0]
    good = shard.read_bytes()

    shard.write_bytes(good[: len(good) // 2])
    for read in (lambda: load_shard(shard), lambda: list_shards(out, "train")):
        with pytest.raises(ShardError) as error:
            read()
        assert shard.name in str(error.value) and "python fineweb.py --input" in str(error.value)

    np.save(shard, np.zeros(10, dtype=np.int32))
    with pytest.raises(ShardError, match="int32"):
        load_shard(shard)
    with pytest.raises(ShardError, match="int32"):
        load_shard(shard, mmap=True)

    np.save(shard, np.zeros(10, dtype=np.uint16))
    with pytest.raises(ShardError, match="meta.json records"):
        list_shards(out, "train")


def test_missing_folder_names_the_command_to_run(tmp_path):
    with pytest.raises(ShardError, match="python fineweb.py --dataset pystdlib"):
        list_shards(tmp_path / "pystdlib", "train")


def test_pystdlib_smoke_command_runs_offline(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("fineweb.py --dataset pystdlib tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    out = tmp_path / "pystdlib"
    assert fineweb.main(["--dataset", "pystdlib", "--max-tokens", "2000000", "--out", str(out)]) == 0
    meta = meta_of(out)
    assert meta["split_tokens"] == {"val": 200_000, "train": 1_800_000}
    assert meta["command"] == f"python fineweb.py --dataset pystdlib --max-tokens 2000000 --out {out}"  # how to rebuild it
    first_file = fineweb.stdlib_files()[0].read_text(encoding="utf-8")
    first_val_shard = load_shard(list_shards(out, "val")[0])
    assert get_tokenizer().decode(first_val_shard[:2000].tolist()).startswith(EOT_TEXT + first_file[:200])


def test_tinyshakespeare_from_local_copy(tmp_path, monkeypatch):
    local = shared_file("tinyshakespeare/input.txt")
    def copy_local(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, path)

    monkeypatch.setattr(fineweb, "download_tinyshakespeare", copy_local)
    out = tmp_path / "ts"
    assert fineweb.main(["--dataset", "tinyshakespeare", "--out", str(out)]) == 0
    text = local.read_text()
    meta = meta_of(out)
    assert meta["documents"] == 1 and meta["split_tokens"]["val"] == 32_768
    assert meta["total_tokens"] == len(get_tokenizer().encode_ordinary(text)) + 1
    assert get_tokenizer().decode(stream(out).tolist()) == EOT_TEXT + text


def test_tinyshakespeare_download_rejects_wrong_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"not shakespeare"))
    with pytest.raises(ShardError, match="sha256"):
        fineweb.download_tinyshakespeare(tmp_path / "input.txt")
    assert list(tmp_path.iterdir()) == []


def test_tinyshakespeare_local_copy_with_other_bytes_is_never_replaced(tmp_path, monkeypatch, capsys):
    def no_download(url, timeout):
        raise AssertionError("a local input.txt with other bytes was about to be replaced")

    monkeypatch.setattr(urllib.request, "urlopen", no_download)
    path = tmp_path / "ts" / "input.txt"
    path.parent.mkdir()
    mine = b"First Citizen:\r\nBefore we proceed any further, hear me speak.\r\n"  # CRLF line endings
    path.write_bytes(mine)
    assert fineweb.main(["--dataset", "tinyshakespeare", "--out", str(path.parent)]) == 2
    error = capsys.readouterr().err
    assert str(path) in error and hashlib.sha256(mine).hexdigest() in error and fineweb.TINYSHAKESPEARE_SHA256 in error
    assert "delete it to download it again" in error and f"--input {path}" in error
    assert path.read_bytes() == mine and [p.name for p in path.parent.iterdir()] == ["input.txt"]


def test_tinyshakespeare_failed_write_leaves_no_file(tmp_path, monkeypatch):
    served = b"First Citizen:\n"
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(served))
    monkeypatch.setattr(fineweb, "TINYSHAKESPEARE_SHA256", hashlib.sha256(served).hexdigest())

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fineweb.os, "fsync", disk_full)
    with pytest.raises(ShardError, match="cannot write .*input.txt .*No space left on device"):
        fineweb.download_tinyshakespeare(tmp_path / "input.txt")
    assert list(tmp_path.iterdir()) == []  # neither input.txt nor input.txt.tmp


def test_tinyshakespeare_download_writes_the_checked_bytes_once(tmp_path, monkeypatch):
    served = b"First Citizen:\nBefore we proceed any further, hear me speak.\n"
    requested = []

    def fake_urlopen(url, timeout):
        requested.append(url)
        return io.BytesIO(served)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    monkeypatch.setattr(fineweb, "TINYSHAKESPEARE_SHA256", hashlib.sha256(served).hexdigest())
    path = tmp_path / "ts" / "input.txt"
    fineweb.download_tinyshakespeare(path)
    assert path.read_bytes() == served and requested == [fineweb.TINYSHAKESPEARE_URL]
    assert [p.name for p in path.parent.iterdir()] == ["input.txt"]  # no temporary file left
    fineweb.download_tinyshakespeare(path)
    assert len(requested) == 1  # checked on disk, not downloaded again


def hub_path(path):
    """Where a file of a fake repository folder lies in the repository: shards in a subfolder, to find them there."""
    return f"shards/{path.name}" if path.suffix == ".npy" else path.name


def fake_hub(monkeypatch, repos, snapshot_download=None):
    """Stands in for the Hub: `repos` maps repository ids to local folders. repo_info lists a folder's files;
    snapshot_download (unless given) copies those matching its patterns."""
    def repo_info(self, repo_id, repo_type):
        assert repo_type == "dataset"
        siblings = [SimpleNamespace(rfilename=hub_path(path)) for path in sorted(repos[repo_id].iterdir())]
        return SimpleNamespace(sha="0" * 40, siblings=siblings)

    def download(repo_id, repo_type, revision, local_dir, allow_patterns):
        assert repo_type == "dataset" and revision == "0" * 40
        for path in sorted(repos[repo_id].iterdir()):
            if any(fnmatch.fnmatch(hub_path(path), pattern) for pattern in allow_patterns):
                Path(local_dir, hub_path(path)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, Path(local_dir, hub_path(path)))
        return local_dir

    monkeypatch.setattr("huggingface_hub.HfApi.repo_info", repo_info)
    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download or download)


def no_hub(monkeypatch):
    def refused(*args, **kwargs):
        raise AssertionError("fineweb.py --from-hub went to the Hub although it should have refused")

    monkeypatch.setattr("huggingface_hub.HfApi.repo_info", refused)
    monkeypatch.setattr("huggingface_hub.snapshot_download", refused)


def build_nanogpt_repo(folder, first_token, train_shards):
    """Shards as build-nanogpt uploads them, without a meta.json: a val shard and train shards of 2 tokens."""
    folder.mkdir(parents=True)
    np.save(folder / "edufineweb_val_000000.npy", np.array([EOT_TOKEN, first_token], dtype=np.uint16))
    for i in range(1, train_shards + 1):
        np.save(folder / f"edufineweb_train_{i:06d}.npy", np.array([EOT_TOKEN, first_token + i], dtype=np.uint16))
    return folder


def test_from_hub_with_meta_json(tmp_path, monkeypatch, capsys):
    repo = tmp_path / "repo"
    assert fineweb.main(["--input", write_docs(tmp_path / "in", DOCS), "--out", str(repo), "--val-tokens", "70"]) == 0
    (repo / "README.md").write_text("not a shard")
    fake_hub(monkeypatch, {"someone/tokens": repo})
    out = tmp_path / "out"
    assert fineweb.main(["--from-hub", "someone/tokens", "--out", str(out)]) == 0
    assert np.array_equal(stream(out), stream(repo))
    assert meta_of(out)["from_hub"] == "someone/tokens" and not (out / "README.md").exists()
    capsys.readouterr()
    assert fineweb.main(["--from-hub", "someone/tokens", "--out", str(out)]) == 0
    assert "already holds someone/tokens" in capsys.readouterr().out

    meta = meta_of(repo)
    meta["tokenizer"]["vocab_sha256"] = "0" * 64
    (repo / "meta.json").write_text(json.dumps(meta))
    assert fineweb.main(["--from-hub", "someone/tokens", "--out", str(out), "--overwrite"]) == 2
    assert "not this GPT-2 tokenizer" in capsys.readouterr().err


def test_from_hub_without_meta_json_like_build_nanogpt(tmp_path, monkeypatch, capsys):
    repo = tmp_path / "repo"
    repo.mkdir()
    val = np.array([EOT_TOKEN, 10, 11, EOT_TOKEN, 12], dtype=np.uint16)
    train = np.array([13, EOT_TOKEN, 14, 15], dtype=np.uint16)
    np.save(repo / "edufineweb_val_000000.npy", val)
    np.save(repo / "edufineweb_train_000001.npy", train)
    fake_hub(monkeypatch, {"someone/edu": repo})
    out = tmp_path / "out"
    assert fineweb.main(["--from-hub", "someone/edu", "--out", str(out)]) == 0
    meta = meta_of(out)
    assert [(r["split"], r["tokens"], r["documents"]) for r in meta["shards"]] == [("val", 5, 2), ("train", 4, 1)]
    assert np.array_equal(load_shard(list_shards(out, "train")[0]), train)

    np.save(repo / "edufineweb_train_000001.npy", train.astype(np.int32))
    assert fineweb.main(["--from-hub", "someone/edu", "--out", str(out), "--overwrite"]) == 2
    error = capsys.readouterr().err
    assert "edufineweb_train_000001.npy" in error and "int32" in error

    (repo / "edufineweb_train_000001.npy").unlink()
    assert fineweb.main(["--from-hub", "someone/edu", "--out", str(out), "--overwrite"]) == 2
    assert "*_train_*.npy and *_val_*.npy are both needed" in capsys.readouterr().err


def test_from_hub_refuses_tokenizing_flags_it_would_ignore(tmp_path, monkeypatch, capsys):
    no_hub(monkeypatch)
    for flag, value in (("--max-tokens", "1500"), ("--val-tokens", "100"), ("--shard-size", "100000000"),
                        ("--text-field", "text"), ("--workers", "1")):  # refused even at their default values
        assert fineweb.main(["--from-hub", "someone/edu", "--out", str(tmp_path / "out"), flag, value]) == 2
        assert f"so {flag} would be ignored" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    # Left out, they take their defaults.
    config = fineweb.parse_args(["--dataset", "pystdlib"])
    assert (config.shard_size, config.text_field, config.workers) == (100_000_000, "text", fineweb.FinewebConfig().workers)


def test_from_hub_refuses_a_folder_of_shards_without_meta_json(tmp_path, monkeypatch, capsys):
    out = tmp_path / "edu_fineweb10B"  # e.g. made by build-nanogpt's own fineweb.py
    out.mkdir()
    mine = np.arange(1000, 1100, dtype=np.uint16)
    np.save(out / "edufineweb_val_000000.npy", mine)
    no_hub(monkeypatch)
    assert fineweb.main(["--from-hub", "someone/edu", "--out", str(out)]) == 2
    assert "holds shards but no meta.json: pass --overwrite" in capsys.readouterr().err
    assert np.array_equal(load_shard(out / "edufineweb_val_000000.npy"), mine)
    assert [p.name for p in out.iterdir()] == ["edufineweb_val_000000.npy"]


def test_from_hub_discards_an_interrupted_download_of_another_repo(tmp_path, monkeypatch, capsys):
    repos = {"someone/A": build_nanogpt_repo(tmp_path / "A", 100, 3), "someone/B": build_nanogpt_repo(tmp_path / "B", 200, 1)}

    def snapshot_download(repo_id, repo_type, revision, local_dir, allow_patterns):
        started_with[repo_id] = sorted(path.name for path in Path(local_dir).rglob("*.npy"))
        for k, path in enumerate(sorted(repos[repo_id].iterdir())):
            if repo_id == "someone/A" and k == 2:
                raise ConnectionError("connection lost")  # A's download stops after two files
            Path(local_dir, hub_path(path)).parent.mkdir(exist_ok=True)
            shutil.copy(path, Path(local_dir, hub_path(path)))
        return local_dir

    started_with = {}

    fake_hub(monkeypatch, repos, snapshot_download)
    out = tmp_path / "out"
    assert fineweb.main(["--from-hub", "someone/A", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "cannot download someone/A" in error and "connection lost" in error and "rerun the same command" in error
    assert len(list((out / ".from_hub").rglob("*.npy"))) == 2
    assert fineweb.main(["--from-hub", "someone/B", "--out", str(out)]) == 0
    assert started_with["someone/B"] == []  # A's files were gone before B's download began
    assert [load_shard(p).tolist() for p in list_shards(out, "train")] == [[EOT_TOKEN, 201]]  # B's one train shard only
    assert [r["file"] for r in meta_of(out)["shards"]] == ["edufineweb_val_000000.npy", "edufineweb_train_000001.npy"]


def test_from_hub_never_takes_a_partial_download_for_the_repo(tmp_path, monkeypatch, capsys):
    # Where the Hub cannot be reached after listing the files, snapshot_download returns its folder as it
    # is, without an error: here, an earlier attempt's two files of four.
    repo = build_nanogpt_repo(tmp_path / "repo", 100, 3)
    out = tmp_path / "out"
    (out / ".from_hub" / "shards").mkdir(parents=True)
    (out / ".from_hub" / ".repo_id").write_text("someone/edu")
    for path in sorted(repo.iterdir())[:2]:
        shutil.copy(path, out / ".from_hub" / hub_path(path))
    fake_hub(monkeypatch, {"someone/edu": repo}, lambda repo_id, repo_type, revision, local_dir, allow_patterns: local_dir)
    assert fineweb.main(["--from-hub", "someone/edu", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "the download of someone/edu is incomplete (2 files missing" in error and "rerun the same command" in error
    assert not (out / "meta.json").exists()
    fake_hub(monkeypatch, {"someone/edu": repo})  # the rerun, online, continues the download
    assert fineweb.main(["--from-hub", "someone/edu", "--out", str(out)]) == 0
    assert len(list_shards(out, "train")) == 3


@pytest.mark.parametrize("failure", ["network", "damaged"])
def test_from_hub_overwrite_keeps_the_old_shards_until_the_new_ones_are_checked(tmp_path, monkeypatch, capsys, failure):
    repo = build_nanogpt_repo(tmp_path / "repo", 100, 2)
    fake_hub(monkeypatch, {"someone/edu": repo})
    out = tmp_path / "out"
    assert fineweb.main(["--from-hub", "someone/edu", "--out", str(out)]) == 0
    before = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}
    if failure == "network":
        def snapshot_download(*args, **kwargs):
            raise httpx.ConnectError("[Errno -2] Name or service not known")

        fake_hub(monkeypatch, {"someone/edu": repo}, snapshot_download)
    else:
        np.save(repo / "edufineweb_train_000002.npy", np.zeros(2, dtype=np.int32))
    assert fineweb.main(["--from-hub", "someone/edu", "--out", str(out), "--overwrite"]) == 2
    assert ("Name or service not known" if failure == "network" else "int32") in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()} == before
    assert len(list_shards(out, "train")) == 2


def test_one_line_joins_an_error_and_cuts_it_to_a_limit():
    error = RuntimeError("first line\n  second   line\n" + "x" * 500)
    assert fineweb.one_line(error).startswith("first line second line xxx")
    assert len(fineweb.one_line(error)) == len("first line second line ") + 500
    cut = fineweb.one_line(error, 40)
    assert len(cut) == 40 and cut.startswith("first line second line x") and cut.endswith("...")
    assert fineweb.one_line(RuntimeError("short"), 40) == "short"


def test_from_hub_errors_are_one_line_and_name_the_repo(tmp_path, monkeypatch, capsys):
    request = httpx.Request("GET", "https://huggingface.co/api/datasets/someone/typo")
    for error, expected in (
        (RepositoryNotFoundError("404 Client Error. Repository Not Found", response=httpx.Response(404, request=request)),
         "`hf auth login`"),
        (OfflineModeIsEnabled("Cannot reach https://huggingface.co/api/datasets/someone/typo: offline mode is enabled.\n"
                              "To disable it, please unset the `HF_HUB_OFFLINE` environment variable."),
         "offline mode is enabled. To disable it"),
        (httpx.ConnectError("[Errno -2] Name or service not known"), "ConnectError: [Errno -2]"),
        (HfHubHTTPError("502 Server Error: Bad Gateway", response=httpx.Response(502, request=request)),
         "HfHubHTTPError: 502 Server Error"),
    ):
        def repo_info(self, repo_id, repo_type, error=error):
            raise error

        monkeypatch.setattr("huggingface_hub.HfApi.repo_info", repo_info)
        assert fineweb.main(["--from-hub", "someone/typo", "--out", str(tmp_path / "out")]) == 2
        message = capsys.readouterr().err
        assert message.startswith("fineweb.py: error: ") and message.count("\n") == 1
        assert "someone/typo" in message and expected in message
    no_hub(monkeypatch)
    assert fineweb.main(["--from-hub", "not a repo!", "--out", str(tmp_path / "out")]) == 2
    assert "--from-hub not a repo! is not a Hub repository id" in capsys.readouterr().err


def fake_fineweb_edu(monkeypatch, files):
    """Stands in for the Hub: FineWeb-Edu becomes a real streaming dataset over local .jsonl or .parquet
    files, and the returned list collects the arguments of each load_dataset call for it."""
    datasets = pytest.importorskip("datasets")
    real_load_dataset, calls = datasets.load_dataset, []
    builder = "parquet" if files[0].suffix == ".parquet" else "json"

    def load_dataset(path, name=None, split=None, streaming=False):
        calls.append((path, name, split, streaming))
        # Features given, as the Hub's dataset card gives them, so loading reads no file before iterating.
        features = datasets.Features({"text": datasets.Value("string")})
        return real_load_dataset(builder, data_files=[str(f) for f in files], features=features, split=split, streaming=streaming)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def edu_page(file, row):
    return f"Educational page {file}-{row}, with some words."


def write_edu_pages(folder, files, rows, suffix=".jsonl"):
    """FineWeb-Edu-like files; parquet ones in row groups of 2 rows, so that a file holds several Arrow tables."""
    folder.mkdir()
    paths = [folder / f"{f:03d}_00000{suffix}" for f in range(files)]
    for f, path in enumerate(paths):
        texts = [edu_page(f, i) for i in range(rows)]
        if suffix == ".parquet":
            pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
            pq.write_table(pa.table({"text": texts}), path, row_group_size=2)
        else:
            path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    return paths


def restarts(make_source, count):
    """For every k, the documents of a source started at the position it gave after its first k documents."""
    source, positions = make_source(None), []
    for _ in range(count):
        positions.append(source.position())
        next(source)
    assert next(source, None) is None
    for k, position in enumerate([*positions, source.position()]):
        restarted = make_source(json.loads(json.dumps(position)))  # as meta.json stores it
        assert restarted.position() == position  # also before reading a document
        yield k, [text for text, _ in restarted]


def test_file_documents_restart_at_the_exact_row(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    (tmp_path / "a.txt").write_text("text file a")
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": f"jsonl {i}"}) + "\n" for i in range(3)))
    (tmp_path / "c.jsonl").write_text("")
    (tmp_path / "d.txt").write_text("text file d")
    pq.write_table(pa.table({"text": [f"parquet {i}" for i in range(5)]}), tmp_path / "e.parquet", row_group_size=2)
    paths = sorted(tmp_path.iterdir())
    texts = ["text file a", "jsonl 0", "jsonl 1", "jsonl 2", "text file d", *[f"parquet {i}" for i in range(5)]]
    for k, rest in restarts(lambda start: fineweb.FileDocuments(paths, "text", start), len(texts)):
        assert rest == texts[k:]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_fineweb_edu_position_is_the_datasets_state_and_restarts_at_the_exact_row(tmp_path, monkeypatch, suffix):
    fake_fineweb_edu(monkeypatch, write_edu_pages(tmp_path / "hub", files=3, rows=5, suffix=suffix))
    texts = [edu_page(f, i) for f in range(3) for i in range(5)]
    for k, rest in restarts(fineweb.FinewebEduDocuments, len(texts)):
        assert rest == texts[k:]


def test_fineweb_edu_streams_sample_10bt(tmp_path, monkeypatch):
    calls = fake_fineweb_edu(monkeypatch, write_edu_pages(tmp_path / "hub", files=1, rows=30))
    out = tmp_path / "edu"
    assert fineweb.main(["--out", str(out), "--shard-size", "40"]) == 0
    assert calls == [("HuggingFaceFW/fineweb-edu", "sample-10BT", "train", True)]
    shards = meta_of(out)["shards"]
    # As in build-nanogpt, the whole first shard is val.
    assert (shards[0]["file"], shards[0]["tokens"]) == ("edufineweb_val_000000.npy", 40)
    assert {r["split"] for r in shards[1:]} == {"train"}
    assert get_tokenizer().decode(stream(out).tolist()).startswith(EOT_TEXT + edu_page(0, 0))


def test_fineweb_edu_resumes_from_the_datasets_state(tmp_path, monkeypatch, capsys):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(fineweb, "CHUNK_CHARS", 150)  # chunks of 4 rows, so positions fall inside files
    files = write_edu_pages(tmp_path / "hub", files=8, rows=5)
    calls = fake_fineweb_edu(monkeypatch, files)
    args = ["--shard-size", "40", "--workers", "2"]
    assert fineweb.main([*args, "--out", str(tmp_path / "ref")]) == 0
    out = tmp_path / "out"
    crash_at_save(monkeypatch, [*args, "--out", str(out)], saves=11)
    last = meta_of(out)["shards"][-1]
    first_new_row = last["documents_done"] - last["documents_after_position"]  # the recorded chunk's first
    assert (first_new_row // 5, first_new_row % 5) == (6, 2) and last["documents_after_position"] > 0  # file 6, row 2

    real_load_state_dict, loaded = datasets.IterableDataset.load_state_dict, []

    def load_state_dict(self, state_dict):
        loaded.append(state_dict)
        real_load_state_dict(self, state_dict)

    monkeypatch.setattr(datasets.IterableDataset, "load_state_dict", load_state_dict)
    # datasets restarts from a checkpoint up to two Arrow tables back (here one file each), so files
    # 4 and 5 stay; reading any earlier one again would now fail.
    for path in files[:4]:
        path.write_text("{not json")
    calls.clear()
    capsys.readouterr()
    assert fineweb.main([*args, "--out", str(out)]) == 0
    assert "from its recorded position" in capsys.readouterr().out
    assert len(calls) == 1 and loaded == [last["source_position"]]
    assert np.array_equal(stream(out), stream(tmp_path / "ref")) and written(meta_of(out)) == written(meta_of(tmp_path / "ref"))


class FailingStream:
    """A streaming dataset whose connection drops after `rows` rows."""

    def __init__(self, rows, error, after):
        self.rows, self.error, self.after = rows, error, after

    def __iter__(self):
        for index, row in enumerate(self.rows):
            if index == self.after:
                raise self.error
            yield row

    def state_dict(self):
        return self.rows.state_dict()

    def load_state_dict(self, state_dict):
        self.rows.load_state_dict(state_dict)


NETWORK_ERRORS = [  # what a dropped connection surfaces as from datasets, fsspec, huggingface_hub and httpx
    httpx.ReadTimeout("The read operation timed out"),
    TimeoutError("timed out"),  # an OSError, though not a ConnectionError
    HfHubHTTPError("503 Server Error", response=httpx.Response(503, request=httpx.Request("GET", "https://huggingface.co"))),
]


@pytest.mark.parametrize("error", NETWORK_ERRORS, ids=lambda error: type(error).__name__)
def test_fineweb_edu_network_error_mid_stream_keeps_the_shards_and_resumes(tmp_path, monkeypatch, capsys, error):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(fineweb, "CHUNK_CHARS", 150)
    fake_fineweb_edu(monkeypatch, write_edu_pages(tmp_path / "hub", files=4, rows=5))
    args = ["--shard-size", "40", "--workers", "1"]
    assert fineweb.main([*args, "--out", str(tmp_path / "ref")]) == 0
    streamed = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: FailingStream(streamed(*a, **k), error, after=14))
    out = tmp_path / "out"
    assert fineweb.main([*args, "--out", str(out)]) == 2
    message = capsys.readouterr().err
    assert f"({type(error).__name__}: " in message and "rerun the same command (it resumes)" in message
    assert len(meta_of(out)["shards"]) >= 3 and not meta_of(out)["complete"]
    monkeypatch.setattr(datasets, "load_dataset", streamed)
    assert fineweb.main([*args, "--out", str(out)]) == 0
    assert "resuming after" in capsys.readouterr().out
    assert np.array_equal(stream(out), stream(tmp_path / "ref")) and written(meta_of(out)) == written(meta_of(tmp_path / "ref"))


def test_bench_reports_both_rates_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "untouched"
    argv = ["--dataset", "pystdlib", "--max-tokens", "50000", "--bench", "--bench-repeats", "2", "--workers", "2", "--out", str(out)]
    assert fineweb.main(argv) == 0
    printed = capsys.readouterr().out
    assert [line.split(":")[0] for line in printed.splitlines() if line.startswith("round")] == ["round 1", "round 2"]
    assert "pipeline, 2 workers: 50,000 tokens, best" in printed
    # The reference encodes the documents the pipeline read, whole: at least the tokens the pipeline kept.
    single = int(re.search(r"encode_ordinary, 1 thread: ([\d,]+) tokens", printed).group(1).replace(",", ""))
    assert single >= 50_000
    assert re.search(r"speedup: \d+\.\d\dx best to best \(median \d+\.\d\dx\) with 2 workers", printed)
    assert re.search(r"ceiling, 2 copies of encode_ordinary at once: \d+\.\d\dx", printed)
    assert not out.exists()
