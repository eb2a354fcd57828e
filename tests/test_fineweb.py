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

import numpy as np
import pytest

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
    for flag in ("--workers", "--bench-repeats"):
        assert fineweb.main(["--dataset", "pystdlib", flag, "0", "--bench"]) == 2
        assert f"{flag} must be at least 1, not 0" in capsys.readouterr().err


def test_val_split_too_large_for_corpus_says_what_to_do(tmp_path, capsys):
    pattern = write_docs(tmp_path / "in", DOCS[:2])
    assert fineweb.main(["--input", pattern, "--out", str(tmp_path / "out")]) == 2  # default val: 100,000 tokens
    assert "smaller --val-tokens" in capsys.readouterr().err


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


def fake_snapshot_download(repo_dir):
    def snapshot_download(repo_id, repo_type, local_dir, allow_patterns):
        assert repo_type == "dataset"
        for path in repo_dir.iterdir():
            if any(fnmatch.fnmatch(path.name, pattern) for pattern in allow_patterns):
                Path(local_dir, "shards").mkdir(parents=True, exist_ok=True)
                shutil.copy(path, Path(local_dir, "shards" if path.suffix == ".npy" else "", path.name))
        return local_dir

    return snapshot_download


def test_from_hub_with_meta_json(tmp_path, monkeypatch, capsys):
    repo = tmp_path / "repo"
    assert fineweb.main(["--input", write_docs(tmp_path / "in", DOCS), "--out", str(repo), "--val-tokens", "70"]) == 0
    (repo / "README.md").write_text("not a shard")
    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download(repo))
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
    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download(repo))
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
