"""Muon against AdamW (issue 18): the same model on the same shards, trained with each optimizer and
a few seeds, and the steps each needs to reach the validation loss the AdamW run of its seed ends at.

    python fineweb.py --dataset pystdlib --max-tokens 2000000 --out /tmp/muon_data
    python compare_optimizers.py --data /tmp/muon_data --out /tmp/muon_compare --max-steps 1000 --seeds 1 2 3

Every run is `train_gpt2.py --preset smoke` (the tiny model) with --optimizer adamw or muon and the
optimizers' defaults, in a process of its own (--jobs at a time, each on --threads threads), logging
to {out}/{optimizer}_seed{seed}/; flags after `--` go to every run (--muon-lr 0.02, ...). A
run that stopped early continues from its checkpoint when this is started again (--resume auto). The
table and the plot ({out}/val_loss.png) are made from the runs' metrics.jsonl files.

Validation loss is measured every --eval-every steps on the same --val-steps batches in every run,
so "steps to reach" has that resolution: the first evaluation at or below the target.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fineweb import positive_int
from train_gpt2 import latest_per_step, read_metrics

OPTIMIZERS = ("adamw", "muon")
REPO_ROOT = Path(__file__).resolve().parent


def run_dir(out: Path, optimizer: str, seed: int) -> Path:
    return out / f"{optimizer}_seed{seed}"


def train_command(args: argparse.Namespace, optimizer: str, seed: int) -> list[str]:
    """The train_gpt2.py command line of one run: no HellaSwag, no text samples, one checkpoint at the end."""
    return [sys.executable, str(REPO_ROOT / "train_gpt2.py"), "--preset", "smoke", "--data", str(args.data),
            "--log-dir", str(run_dir(args.out, optimizer, seed)), "--device", "cpu", "--optimizer", optimizer,
            "--seed", str(seed), "--max-steps", str(args.max_steps), "--warmup-steps", str(args.warmup_steps),
            "--seq-len", str(args.seq_len), "--micro-batch", str(args.micro_batch), "--total-batch", str(args.total_batch),
            "--eval-every", str(args.eval_every),
            "--val-steps", str(args.val_steps), "--save-every", str(args.max_steps), "--log-every", "50",
            "--no-hellaswag", "--num-samples", "0", "--resume", "auto", *args.train_args]


def run(args: argparse.Namespace, optimizer: str, seed: int) -> int:
    """One training run, its console output in {run dir}/console.txt; its exit code."""
    log_dir = run_dir(args.out, optimizer, seed)
    log_dir.mkdir(parents=True, exist_ok=True)
    command = train_command(args, optimizer, seed)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    with open(log_dir / "console.txt", "a") as console:
        console.write("$ " + " ".join(command) + "\n")
        console.flush()
        return subprocess.run(command, stdout=console, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT).returncode


def val_curve(log_dir: Path) -> list[tuple[int, float]]:
    """(step, validation loss) of every evaluation a run logged, the latest per step after a resume."""
    path = log_dir / "metrics.jsonl"
    records = read_metrics(path) if path.exists() else []
    return [(r["step"], r["val_loss"]) for r in latest_per_step(records, "eval")]


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first evaluated step whose validation loss is at or below target (None: never)."""
    return next((step for step, loss in curve if loss <= target), None)


def summarize(out: Path, seeds: list[int], max_steps: int) -> list[dict]:
    """Per seed: the AdamW run's final validation loss (the target), and the steps each optimizer
    needs to reach it. A seed whose AdamW run did not reach max_steps has no target."""
    rows = []
    for seed in seeds:
        curves = {name: val_curve(run_dir(out, name, seed)) for name in OPTIMIZERS}
        adamw = curves["adamw"]
        target = adamw[-1][1] if adamw and adamw[-1][0] == max_steps else None
        row = {"seed": seed, "target": target}
        for name in OPTIMIZERS:
            curve = curves[name]
            row[f"{name}_final"] = curve[-1][1] if curve and curve[-1][0] == max_steps else None
            row[f"{name}_steps"] = steps_to_reach(curve, target) if target is not None else None
        row["ratio"] = row["muon_steps"] / row["adamw_steps"] if row["muon_steps"] and row["adamw_steps"] else None
        rows.append(row)
    return rows


def format_table(rows: list[dict], max_steps: int, threshold: float) -> str:
    def number(value, spec):
        return "n/a" if value is None else format(value, spec)

    lines = ["| seed | AdamW final val loss (target) | AdamW steps to target | Muon steps to target | Muon / AdamW | Muon final val loss |",
             "|-----:|-----------------------------:|----------------------:|---------------------:|-------------:|--------------------:|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {number(r['target'], '.4f')} | {number(r['adamw_steps'], 'd')} | "
                     f"{number(r['muon_steps'], 'd')} | {number(r['ratio'], '.0%')} | {number(r['muon_final'], '.4f')} |")
    met = sum(r["ratio"] is not None and r["ratio"] <= threshold for r in rows)
    lines.append(f"Muon reached the AdamW run's final validation loss (step {max_steps}) within {threshold:.0%} of "
                 f"its steps in {met} of {len(rows)} seeds")
    return "\n".join(lines)


def plot(out: Path, seeds: list[int], rows: list[dict]) -> Path:
    """Validation loss of every run against the step, AdamW's and Muon's in two colours, each seed's
    target as a dotted line; drawn from the runs' metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colors = {"adamw": "tab:blue", "muon": "tab:orange"}
    for name in OPTIMIZERS:
        for i, seed in enumerate(seeds):
            curve = val_curve(run_dir(out, name, seed))
            ax.plot([s for s, _ in curve], [v for _, v in curve], "o-", ms=2, lw=1, color=colors[name], alpha=0.8,
                    label=name if i == 0 else None)
    for r in rows:
        if r["target"] is not None:
            ax.axhline(r["target"], color="gray", ls=":", lw=0.8)
    ax.set(xlabel="step", ylabel="validation loss", title="Muon vs AdamW (dotted: each seed's AdamW final loss)")
    losses = [v for name in OPTIMIZERS for seed in seeds for _, v in val_curve(run_dir(out, name, seed))[1:]]
    if losses:
        ax.set_ylim(min(losses) - 0.1, max(losses) + 0.1)  # step 0's loss (about ln(50257)) would flatten the rest
    ax.legend()
    fig.tight_layout()
    path = out / "val_loss.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="fineweb.py shards (the smoke preset's pystdlib)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs' log dirs, the plot")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="one AdamW and one Muon run per seed")
    parser.add_argument("--max-steps", type=positive_int, default=1000, help="steps of every run (the schedule's length)")
    parser.add_argument("--warmup-steps", type=positive_int, default=10, help="warm-up steps (the smoke preset's 10)")
    parser.add_argument("--seq-len", type=positive_int, default=64, help="tokens per sequence (the smoke preset's 64)")
    parser.add_argument("--micro-batch", type=positive_int, default=8, help="sequences per forward pass (the smoke preset's 8)")
    parser.add_argument("--total-batch", type=positive_int, default=1024, help="tokens per step (the smoke preset's 1024)")
    parser.add_argument("--eval-every", type=positive_int, default=50, help="validation loss every N steps")
    parser.add_argument("--val-steps", type=positive_int, default=4, help="validation micro-batches per evaluation")
    parser.add_argument("--jobs", type=positive_int, default=2, help="runs at a time")
    parser.add_argument("--threads", type=positive_int, default=1, help="CPU threads per run (OMP_NUM_THREADS)")
    parser.add_argument("--threshold", type=float, default=0.75,
                        help="the issue's target: Muon needs at most this fraction of AdamW's steps")
    parser.add_argument("--summary-only", action="store_true", help="train nothing; table and plot from the runs there")
    parser.add_argument("train_args", nargs="*", help="after --: more train_gpt2.py flags for every run")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not args.summary_only:
        if not (args.data / "meta.json").exists():
            print(f"error: --data {args.data} holds no fineweb.py shards; make them with: python fineweb.py "
                  f"--dataset pystdlib --max-tokens 2000000 --out {args.data}", file=sys.stderr)
            return 2
        jobs = [(name, seed) for seed in args.seeds for name in OPTIMIZERS]
        with ThreadPoolExecutor(args.jobs) as pool:
            codes = list(pool.map(lambda job: run(args, *job), jobs))
        for (name, seed), code in zip(jobs, codes):
            if code != 0:
                print(f"{name} seed {seed}: train_gpt2.py exited with {code}; see {run_dir(args.out, name, seed) / 'console.txt'}")
    rows = summarize(args.out, args.seeds, args.max_steps)
    print(format_table(rows, args.max_steps, args.threshold))
    print(f"plot: {plot(args.out, args.seeds, rows)}")
    return 0 if all(r["target"] is not None and r["muon_final"] is not None for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
