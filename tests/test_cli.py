"""Every script refuses a bad number or name before it starts: argparse's one line naming the flag,
exit code 2, no traceback. The flags are found by walking each script's parser, so a flag added
later is checked without a line here."""

import argparse
import importlib
from dataclasses import fields
from unittest import mock

import pytest
import torch

# How each script parses a command line (what main() runs before anything else), and the flags
# every command line needs.
PARSE = {
    "train_gpt2": lambda module: module.parse_config,
    "fineweb": lambda module: module.parse_args,
    "train_tokenizer": lambda module: module.parse_args,
    "hellaswag": lambda module: module.parse_args,
    "generate": lambda module: module.parse_args,
    "bench": lambda module: module.build_parser().parse_args,
    "upload_hf": lambda module: module.build_parser().parse_args,
}
REQUIRED = {"train_tokenizer": ["--vocab-size", "300"], "upload_hf": ["--repo-id", "me/gpt2"]}

# The numeric flags for which 0 is a meaningful value. Each is checked to accept 0 (so an entry
# cannot hide a flag); every other numeric flag must refuse it.
ZERO_ALLOWED = {
    ("train_gpt2", "--muon-momentum"): "Muon takes any momentum in [0, 1); 0 keeps no running average",
    ("train_gpt2", "--muon-weight-decay"): "0 turns Muon's weight decay off (modded-nanogpt's setting)",
    ("train_gpt2", "--min-lr"): "the cosine decay may end at a learning rate of 0",
    ("train_gpt2", "--beta1"): "AdamW takes any beta in [0, 1); 0 keeps no running average",
    ("train_gpt2", "--beta2"): "AdamW takes any beta in [0, 1); 0 keeps no running average",
    ("train_gpt2", "--weight-decay"): "0 turns weight decay off",
    ("train_gpt2", "--grad-clip"): "0 turns gradient clipping off",
    ("train_gpt2", "--seed"): "0 is a seed like any other",
    ("train_gpt2", "--num-samples"): "0 generates no text samples at evaluations",
    ("generate", "--temperature"): "0 is greedy decoding",
    ("generate", "--seed"): "0 is a seed like any other",
    ("bench", "--warmup-steps"): "0 times from the first step",
}
# Refused by every numeric flag: a negative number, words, and the floats that are no number.
BAD_NUMBERS = ["-1", "abc", "nan", "inf"]


def parse(script: str, argv: list[str]):
    return PARSE[script](importlib.import_module(script))([*REQUIRED.get(script, []), *argv])


def parser_of(script: str) -> argparse.ArgumentParser:
    """The script's parser, caught as its parse function is about to use it."""
    caught = []

    def catch(self, *args, **kwargs):
        caught.append(self)
        raise StopIteration

    with mock.patch.object(argparse.ArgumentParser, "parse_args", catch), pytest.raises(StopIteration):
        parse(script, [])
    return caught[0]


def flag_name(action: argparse.Action) -> str:
    return next(option for option in action.option_strings if option.startswith("--"))


def checked_flags(kind: str) -> list:
    """(script, flag) for every numeric flag (kind "number": one with a type other than str) or
    every flag with choices (kind "choice")."""
    found = []
    for script in PARSE:
        for action in parser_of(script)._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            number = action.type not in (None, str)
            if (number and kind == "number") or (action.choices is not None and kind == "choice"):
                found.append((script, flag_name(action)))
    return found


NUMERIC_FLAGS = checked_flags("number")
CHOICE_FLAGS = checked_flags("choice")


def assert_refused(script: str, argv: list[str], flag: str, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(script, argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, f"{script} {argv}: exit code {exit_info.value.code}, stderr {err!r}"
    assert "Traceback" not in err
    last_line = err.strip().splitlines()[-1]
    assert "error: argument" in last_line and flag in last_line, f"{script} {argv}: {err!r}"
    return last_line


@pytest.mark.parametrize("script, flag", NUMERIC_FLAGS, ids=[f"{s}.py {f}" for s, f in NUMERIC_FLAGS])
def test_numeric_flag_refuses_bad_values(script, flag, capsys):
    for value in BAD_NUMBERS:
        assert_refused(script, [flag, value], flag, capsys)
    if (script, flag) in ZERO_ALLOWED:
        dest = flag[2:].replace("-", "_")
        assert getattr(parse(script, [flag, "0"]), dest) == 0
    else:
        message = assert_refused(script, [flag, "0"], flag, capsys)
        assert "must be" in message  # says what it accepts


@pytest.mark.parametrize("script, flag", CHOICE_FLAGS, ids=[f"{s}.py {f}" for s, f in CHOICE_FLAGS])
def test_choice_flag_refuses_unknown_names(script, flag, capsys):
    message = assert_refused(script, [flag, "no-such-name"], flag, capsys)
    assert "choose from" in message


def test_the_walk_finds_the_flags_and_the_zero_table_names_real_ones():
    # A broken walk (no parser caught, the types not recognised) would make the tests above vacuous.
    for expected in [("train_gpt2", "--max-lr"), ("train_gpt2", "--seq-len"), ("fineweb", "--workers"),
                     ("hellaswag", "--limit"), ("generate", "--top-p"), ("bench", "--steps"), ("train_tokenizer", "--vocab-size")]:
        assert expected in NUMERIC_FLAGS
    assert {("train_gpt2", "--model"), ("train_gpt2", "--dtype"), ("bench", "--model"), ("fineweb", "--dataset")} <= set(CHOICE_FLAGS)
    assert set(ZERO_ALLOWED) <= set(NUMERIC_FLAGS)


def test_every_numeric_train_field_has_a_range():
    # build_parser makes a field missing from FLAG_TYPES a string flag, which the walk would not see.
    import train_gpt2

    numeric = [f.name for f in fields(train_gpt2.TrainConfig) if f.type in ("int", "float", "int | None", "float | None")]
    assert numeric and all(name in train_gpt2.FLAG_TYPES for name in numeric), set(numeric) - set(train_gpt2.FLAG_TYPES)


@pytest.mark.parametrize("value", ["0", "-1", "abc"])
def test_train_micro_batch_refuses_bad_values(value, capsys):
    # --micro-batch is "auto" or a number: a type of its own, pinned here whether or not the walk sees it.
    assert_refused("train_gpt2", ["--micro-batch", value], "--micro-batch", capsys)


def test_train_micro_batch_accepts_auto_and_a_number():
    assert parse("train_gpt2", ["--micro-batch", "auto"]).micro_batch == "auto"
    assert parse("train_gpt2", ["--micro-batch", "16"]).micro_batch == 16


def test_the_messages_name_the_range(capsys):
    assert assert_refused("train_gpt2", ["--max-lr", "-1"], "--max-lr", capsys).endswith("must be a number above 0, not -1")
    assert "an integer from 258 to 65536" in assert_refused("train_tokenizer", ["--vocab-size", "257"], "--vocab-size", capsys)
    assert "at least 2" in assert_refused("fineweb", ["--max-tokens", "1"], "--max-tokens", capsys)
    assert "gpt2-medium" in assert_refused("train_gpt2", ["--model", "gpt3"], "--model", capsys)


def test_train_min_lr_above_max_lr_is_refused():
    import train_gpt2

    with pytest.raises(train_gpt2.TrainError, match="--min-lr 0.01 is above --max-lr 0.001"):
        parse("train_gpt2", ["--max-lr", "1e-3", "--min-lr", "1e-2"])
    assert parse("train_gpt2", ["--max-lr", "1e-3", "--min-lr", "1e-3"]).min_lr == 1e-3


def test_train_main_refuses_bad_flags_before_starting(tmp_path, capsys):
    import train_gpt2

    with pytest.raises(SystemExit) as exit_info:
        train_gpt2.main(["--num-samples", "-1", "--log-dir", str(tmp_path / "log")])
    assert exit_info.value.code == 2 and not (tmp_path / "log").exists()
    assert train_gpt2.main(["--max-lr", "1e-3", "--min-lr", "1", "--log-dir", str(tmp_path / "log")]) == 2
    assert "--min-lr" in capsys.readouterr().err and not (tmp_path / "log").exists()


def test_no_text_samples_with_num_samples_0():
    import train_gpt2
    from model import GPT, GPTConfig, get_tokenizer

    model = GPT(GPTConfig.from_preset("tiny"), seed=0)
    enc, cpu = get_tokenizer(), torch.device("cpu")
    cfg = train_gpt2.TrainConfig(num_samples=0, sample_tokens=3)
    assert train_gpt2.text_samples(model, cfg, cpu, enc) == []
    samples = train_gpt2.text_samples(model, train_gpt2.TrainConfig(num_samples=2, sample_tokens=3), cpu, enc)
    assert len(samples) == 2 and all(text.startswith(cfg.sample_prompt) for text in samples)
