"""workflow.txt, the runbook for an 8-GPU node, README.md's commands and results/gpu_suite.sh's:
every python and torchrun command in them names a script that exists, with flags (and values) that
the script's argument parser accepts."""

import importlib
import os
import re
import shlex
import shutil
import subprocess

import pytest
from conftest import REPO_ROOT

WORKFLOW = REPO_ROOT / "workflow.txt"
README = REPO_ROOT / "README.md"
GPU_SUITE = REPO_ROOT / "results" / "gpu_suite.sh"
STAGES = {"fineweb.py", "train_gpt2.py", "hellaswag.py", "generate.py", "upload_hf.py"}


def command_lines(text: str) -> list[str]:
    """The commands of the runbook or README.md: their lines indented by four spaces (prose is not indented)."""
    return [line.strip() for line in text.splitlines() if line.startswith("    ") and line.strip()]


def shell_commands(line: str) -> list[list[str]]:
    """The simple commands of a shell line, split at && ; | & and cut at redirections."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, current = [], []
    for token in lexer:
        if token in ("&&", "||", ";", "|", "&"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    # `cmd >> file 2>&1`: what follows the first redirection is not the command's arguments.
    return [command[: next((i for i, t in enumerate(command) if set(t) <= set("<>&|")), len(command))] for command in commands if command]


def script_invocations(text: str) -> list[tuple[str, list[str], list[str], str]]:
    """(script, its arguments, torchrun's arguments or None, the line) for each python X.py / torchrun ... X.py."""
    found = []
    for line in command_lines(text):
        for command in shell_commands(line):
            while command and command[0] in ("nohup", "time"):
                command = command[1:]
            if len(command) >= 2 and command[0] in ("python", "python3") and command[1].endswith(".py"):
                found.append((command[1], command[2:], None, line))
            elif command and command[0] == "torchrun":
                index = next(i for i, token in enumerate(command) if token.endswith(".py"))
                found.append((command[index], command[index + 1 :], command[1:index], line))
    return found


TEXT = WORKFLOW.read_text() if WORKFLOW.is_file() else ""
INVOCATIONS = script_invocations(TEXT)
README_INVOCATIONS = script_invocations(README.read_text())


def test_workflow_covers_every_stage():
    assert WORKFLOW.is_file(), f"{WORKFLOW} is missing"
    assert {script for script, *_ in INVOCATIONS} >= STAGES
    assert any(torchrun is not None for _, _, torchrun, _ in INVOCATIONS)


def test_every_script_the_workflow_mentions_exists():
    mentioned = set(re.findall(r"\b[\w/]+\.py\b", TEXT))
    assert mentioned, "workflow.txt names no script"
    missing = sorted(name for name in mentioned if not (REPO_ROOT / name).is_file())
    assert not missing, f"workflow.txt mentions scripts that do not exist: {missing}"


def test_pip_requirement_files_exist():
    for line in command_lines(TEXT):
        for command in shell_commands(line):
            if "pip" in command and "-r" in command:
                assert (REPO_ROOT / command[command.index("-r") + 1]).is_file(), line


def flags(args: list[str]) -> list[str]:
    return [arg.split("=")[0] for arg in args if arg.startswith("-") and not re.fullmatch(r"-[\d.]+", arg)]


def assert_accepted(script: str, args: list[str], torchrun: list[str] | None, line: str, capsys):
    """The script exists, and its parser (torchrun's too) accepts these flags and values."""
    path = REPO_ROOT / script
    assert path.is_file(), f"{line}: {script} does not exist"
    if torchrun is not None:
        from torch.distributed.run import get_args_parser

        parsed = get_args_parser().parse_args([*torchrun, script, *args])
        assert parsed.training_script == script and parsed.training_script_args == args
    module = importlib.import_module(path.stem)
    if hasattr(module, "build_parser"):
        parser = module.build_parser()
        known, parse = parser._option_string_actions, parser.parse_args
    else:  # no parser to ask: the flag must at least be spelled out in the source
        source = path.read_text()
        known, parse = [flag for flag in flags(args) if f'"{flag}"' in source], getattr(module, "parse_args", None)
    unknown = [flag for flag in flags(args) if flag not in known]
    assert not unknown, f"{line}: {script} has no flag {', '.join(unknown)}"
    if parse is None:
        return
    try:
        parse(args)  # values too: choices, types, required flags
    except SystemExit:
        pytest.fail(f"{line}: {script} rejects these arguments: {capsys.readouterr().err.strip()}")


@pytest.mark.parametrize(
    "script, args, torchrun, line",
    [pytest.param(*invocation, id=f"workflow.txt: {invocation[-1]}") for invocation in INVOCATIONS]
    + [pytest.param(*invocation, id=f"README.md: {invocation[-1]}") for invocation in README_INVOCATIONS],
)
def test_command_is_accepted_by_the_scripts_parser(script, args, torchrun, line, capsys):
    assert_accepted(script, args, torchrun, line, capsys)


def test_readme_commands_cover_every_stage():
    assert {script for script, *_ in README_INVOCATIONS} >= STAGES | {"train_tokenizer.py"}
    assert any(torchrun is not None for _, _, torchrun, _ in README_INVOCATIONS)
    # The smoke run is one line of three commands joined by &&: each is checked.
    smoke = [(script, args) for script, args, _, line in README_INVOCATIONS if "--preset smoke --stop-at-step" in line]
    assert [script for script, _ in smoke] == ["fineweb.py", "train_gpt2.py", "train_gpt2.py"]
    assert smoke[-1][1][-2:] == ["--resume", "auto"]


RECORDING_STUB = """#!/usr/bin/env bash
# Stands in for python, torchrun and nvidia-smi: appends its command line, shell-quoted, to $GPU_SUITE_RECORD.
printf '%q ' "${0##*/}" "$@" >>"$GPU_SUITE_RECORD"
echo >>"$GPU_SUITE_RECORD"
"""


@pytest.mark.parametrize("cpu_check", ["", "1"], ids=["gpu", "cpu-check"])
def test_gpu_suite_commands_are_accepted_by_the_scripts_parsers(tmp_path, capsys, cpu_check):
    """gpu_suite.sh's command lines are built from shell variables and arrays, which only bash
    expands: run the whole script (every part) with python, torchrun and nvidia-smi replaced by a
    stub that records its arguments, then check each recorded python and torchrun command."""
    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("gpu_suite.sh needs bash and coreutils' timeout")
    stubs, record = tmp_path / "bin", tmp_path / "commands.txt"
    stubs.mkdir()
    for name in ("python", "torchrun", "nvidia-smi"):  # a torchrun beside PYTHON: the script calls it, not python -m
        (stubs / name).write_text(RECORDING_STUB)
        (stubs / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_SUITE_")}
    env.update(PATH=f"{stubs}{os.pathsep}{env.get('PATH', '')}", PYTHON=str(stubs / "python"), GPU_SUITE_RECORD=str(record),
               GPU_SUITE_CPU_CHECK=cpu_check, GPU_SUITE_WORK=str(tmp_path / "work"), GPU_SUITE_PYSITE=str(tmp_path / "no_site"))
    proc = subprocess.run(["bash", str(GPU_SUITE), "bench,ladder,evals,train", str(tmp_path / "out")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    invocations = script_invocations("".join(f"    {line}\n" for line in record.read_text().splitlines()))
    assert {script for script, *_ in invocations} >= {"bench.py", "hellaswag.py", "generate.py", "fineweb.py", "train_gpt2.py"}
    assert sum(torchrun is not None for _, _, torchrun, _ in invocations) >= 3  # train, resume, FSDP
    assert ("--device", "cpu" if cpu_check else "cuda") in {tuple(args[i : i + 2]) for _, args, _, _ in invocations for i in range(len(args))}
    for invocation in invocations:
        assert_accepted(*invocation, capsys)


TRAIN_RUNS = [invocation for invocation in INVOCATIONS + README_INVOCATIONS
              if invocation[0] == "train_gpt2.py" and "--convert-checkpoint" not in invocation[1]]


@pytest.mark.parametrize("script, args, torchrun, line", TRAIN_RUNS, ids=[line for *_, line in TRAIN_RUNS])
def test_training_batch_divides_over_the_processes_it_names(script, args, torchrun, line):
    """The batch arithmetic that train_gpt2.py checks at start-up, for the processes the command
    starts (nproc_per_node x nnodes): a runbook command that stops at once on every GPU is caught here."""
    from model import GPTConfig
    from train_gpt2 import TrainError, make_plan, parse_config

    world_size = 1
    for option in ("--nproc_per_node", "--nproc-per-node", "--nnodes"):
        values = [arg.split("=", 1)[1] for arg in torchrun or [] if arg.startswith(option + "=")]
        values += [torchrun[i + 1] for i, arg in enumerate(torchrun or []) if arg == option]
        world_size *= int(values[0]) if values else 1
    cfg = parse_config(args)
    # A fine-tune's model is its source's (--init-from gpt2 and the like, here all model.py presets).
    try:
        make_plan(cfg, world_size, GPTConfig.from_preset(cfg.model or cfg.init_from).block_size)
    except TrainError as error:
        pytest.fail(f"{line}: {error}")


@pytest.mark.parametrize("invocations", [INVOCATIONS, README_INVOCATIONS], ids=["workflow.txt", "README.md"])
def test_each_fresh_training_run_has_its_own_log_dir(invocations):
    """Followed in order, a document must not start a run in a log dir that an earlier command of
    it filled: train_gpt2.py refuses that (it never overwrites checkpoints)."""
    from train_gpt2 import parse_config

    fresh = [(parse_config(args).log_dir, line) for script, args, _, line in invocations
             if script == "train_gpt2.py" and "--resume" not in args and "--convert-checkpoint" not in args]
    log_dirs = [log_dir for log_dir, _ in fresh]
    assert len(set(log_dirs)) == len(log_dirs), [line for log_dir, line in fresh if log_dirs.count(log_dir) > 1]


def test_final_checkpoint_name_matches_the_gpt2_preset():
    from train_gpt2 import TrainConfig

    # train_gpt2.py saves at the end as ckpt_{step:06d}.pt, step = max_steps of the default (gpt2) preset.
    final = f"ckpt_{TrainConfig().max_steps:06d}.pt"
    named = set(re.findall(r"ckpt_\d{6}\.pt", TEXT))
    assert named == {final}, f"workflow.txt names {sorted(named)}, but the gpt2 preset ends with {final}"
