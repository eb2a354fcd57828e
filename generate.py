"""Sample text from GPT-2 or GPT-2.5: OpenAI's weights, a Hugging Face folder, or a train_gpt2.py checkpoint.

    python generate.py --prompt "Hello, I'm a language model," --num-samples 5 --max-new-tokens 30
    python generate.py --model log/model_19072.pt --prompt-file prompt.txt --stream
    python generate.py --bench --bench-preset gpt2      # KV cache (eager, compiled) against recomputation, offline
    python generate.py --compare --bench-preset gpt2 --bench-tokens 128  # greedy decoding against transformers' generate

The text is encoded and decoded with the tokenizer the model records (a checkpoint or folder
trained with a tokenizer.json from train_tokenizer.py carries it), else GPT-2's; --tokenizer names
it for a model that records none.

Sampling lives in model.py (GPT.generate), shared with the samples train_gpt2.py prints; this
script only encodes prompts, calls it and prints the text. All samples of a prompt are one batch,
and the sampling generator is seeded afresh for every prompt, so the same seed gives the same
text whatever other prompts are given.
"""

from __future__ import annotations

import argparse
import codecs
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from fineweb import non_negative_float, positive_int, probability, seed_int
from model import GPT, PRESETS, GPTConfig, decode_completion, get_tokenizer, load_model, load_tokenizer
from train_gpt2 import DTYPE_CHOICES, DTYPE_HELP, autocast_context, choose_dtype, dtype_name, resolve_device, synchronize

DEFAULT_PROMPT = "Hello, I'm a language model,"
SEPARATOR = "-" * 40  # printed after every sample


@dataclass
class GenerateConfig:
    model: str = "gpt2"  # Hub name (gpt2, gpt2-medium, ...), Hugging Face folder, or train_gpt2.py checkpoint
    tokenizer: str | None = None  # None: the one the model records (GPT-2's if it records none)
    prompt: list[str] = field(default_factory=lambda: [DEFAULT_PROMPT])  # "" starts from <|endoftext|>
    prompt_file: str | None = None  # one prompt: the file's whole text
    num_samples: int = 1  # samples per prompt, generated as one batch
    max_new_tokens: int = 100
    temperature: float = 1.0  # 0: greedy
    top_k: int | None = 50  # sample among the k most likely tokens (None, from Python only: all)
    top_p: float | None = None  # nucleus sampling; None: off
    seed: int = 1337
    device: str | None = None  # None: cuda, then mps, then cpu
    dtype: str = "auto"  # autocast precision (train_gpt2.DTYPE_CHOICES)
    stream: bool = False  # print tokens as they are produced
    stop: bool = True  # end a sample at <|endoftext|>
    kv_cache: bool = True
    compile: bool | None = None  # torch.compile the KV cache's one-token steps; None: off, but on for --bench on CUDA
    bench: bool = False  # time generation with the KV cache (eager, compiled) and without it instead of printing samples
    bench_preset: str | None = None  # benchmark a randomly initialised model of this size instead of --model
    bench_tokens: int = 256
    compare: bool = False  # time greedy decoding against transformers' generate on the same weights instead of printing samples
    compare_rounds: int = 5


def parse_args(argv: list[str] | None = None) -> GenerateConfig:
    defaults = GenerateConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-m", "--model", default=defaults.model,
                        help="a Hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl), a Hugging Face folder, or a train_gpt2.py checkpoint "
                             "(a ckpt_NNNNNN.pt file, or a ckpt_NNNNNN.dcp folder from --fsdp)")
    parser.add_argument("--tokenizer", default=defaults.tokenizer, metavar="PATH",
                        help="the model's tokenizer.json, for a model that does not record its tokenizer, or for "
                             "--bench-preset (default: the one the model records, else GPT-2's)")
    prompts = parser.add_mutually_exclusive_group()
    prompts.add_argument("--prompt", action="append",
                         help="text to continue; repeat for several prompts; an empty one starts from <|endoftext|> "
                              f"(default: {DEFAULT_PROMPT!r})")
    prompts.add_argument("--prompt-file", help="continue this file's whole text")
    parser.add_argument("--num-samples", type=positive_int, default=defaults.num_samples,
                        help="samples per prompt, generated as one batch")
    parser.add_argument("--max-new-tokens", type=positive_int, default=defaults.max_new_tokens,
                        help="tokens to generate per sample, at most")
    parser.add_argument("--temperature", type=non_negative_float, default=defaults.temperature,
                        help="softmax temperature; 0 picks the most likely token (greedy)")
    parser.add_argument("--top-k", type=positive_int, default=defaults.top_k,
                        help="sample among the K most likely tokens only (the vocabulary size or more: no limit)")
    parser.add_argument("--top-p", type=probability, default=defaults.top_p,
                        help="nucleus sampling: sample among the most likely tokens whose probabilities add up to P")
    parser.add_argument("--seed", type=seed_int, default=defaults.seed, help="seeds sampling, and --bench-preset's initialisation")
    parser.add_argument("-d", "--device", default=defaults.device, help="cpu, cuda, cuda:N or mps (default: the best available)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default=defaults.dtype, help=DTYPE_HELP)
    parser.add_argument("--stream", action=argparse.BooleanOptionalAction, default=defaults.stream,
                        help="print tokens as they are produced")
    parser.add_argument("--stop", action=argparse.BooleanOptionalAction, default=defaults.stop,
                        help="end each sample at <|endoftext|> (--no-stop: generate all --max-new-tokens and print the marker)")
    parser.add_argument("--kv-cache", action=argparse.BooleanOptionalAction, default=defaults.kv_cache,
                        help="reuse attention keys and values across steps (--no-kv-cache: recompute the whole sequence every step)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=defaults.compile,
                        help="torch.compile each one-token step of the KV cache, on CUDA into a CUDA graph: much faster "
                             "steps at small batches after compiling for a minute or so, worth it for long or many samples "
                             "(default: off; with --bench, on for CUDA, which then times the cache both eager and compiled)")
    parser.add_argument("--bench", action=argparse.BooleanOptionalAction, default=defaults.bench,
                        help="time --bench-tokens new tokens with the KV cache (eager, and compiled with --compile) and "
                             "without it, and print the speed-ups")
    parser.add_argument("--compare", action=argparse.BooleanOptionalAction, default=defaults.compare,
                        help="time greedy decoding of --bench-tokens new tokens with our KV cache and with transformers' "
                             "generate (its own cache) on the same weights, --compare-rounds rounds each, alternating, "
                             "and check that both give the same tokens (needs transformers)")
    parser.add_argument("--compare-rounds", type=positive_int, default=defaults.compare_rounds,
                        help="with --compare: timed rounds of each, after one untimed warm-up each")
    parser.add_argument("--bench-preset", choices=list(PRESETS), default=defaults.bench_preset,
                        help="with --bench or --compare: a randomly initialised model of this size instead of --model (runs offline)")
    parser.add_argument("--bench-tokens", type=positive_int, default=defaults.bench_tokens,
                        help="with --bench or --compare: new tokens to time")
    args = parser.parse_args(argv)
    if args.bench and args.compare:
        parser.error("--bench and --compare are two benchmarks: run one at a time")
    if args.bench_preset is not None and not (args.bench or args.compare):
        parser.error("--bench-preset only applies to --bench and --compare")
    if args.compare and not args.kv_cache:
        parser.error("--compare times our KV cache against transformers' own cache; it does not apply with --no-kv-cache")
    if args.compile and not args.kv_cache:
        parser.error("--compile compiles the KV cache's one-token steps; it does not apply with --no-kv-cache")
    if args.stream and args.num_samples > 1:
        parser.error("--stream prints one sample as it is produced; use it with --num-samples 1")
    if args.prompt_file is not None:
        path = Path(args.prompt_file)
        if not path.is_file():
            parser.error(f"--prompt-file {path}: no such file")
        args.prompt = [path.read_text(encoding="utf-8")]
    elif args.prompt is None:
        args.prompt = list(defaults.prompt)
    return GenerateConfig(**vars(args))


def encode_prompt(prompt: str, enc, block_size: int) -> list[int]:
    """Prompt tokens; an empty prompt is <|endoftext|>, the token every training document follows.

    A prompt longer than the model's context keeps its last block_size tokens, and says so.
    """
    tokens = enc.encode(prompt, allowed_special={"<|endoftext|>"}) or [enc.eot_token]
    if len(tokens) > block_size:
        print(f"prompt of {len(tokens)} tokens is longer than the model's block_size={block_size}: keeping its last {block_size} tokens",
              file=sys.stderr)
        tokens = tokens[-block_size:]
    return tokens


def stream_sample(model: GPT, idx: torch.Tensor, config: GenerateConfig, enc, **sampling) -> str:
    """Print the one sample of idx (1, T) token by token; return its text."""
    # A character can span several tokens (GPT-2's tokens are bytes): decoding the byte stream
    # incrementally prints each character once complete, and gives exactly what
    # enc.decode(all tokens) gives.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces = []
    for token in model.generate_tokens(idx, config.max_new_tokens, **sampling):
        token = token.item()
        if config.stop and token == enc.eot_token:
            break
        pieces.append(decoder.decode(enc.decode_single_token_bytes(token)))
        print(pieces[-1], end="", flush=True)
    pieces.append(decoder.decode(b"", final=True))
    print(pieces[-1])
    return "".join(pieces)


def generate_text(model: GPT, enc, config: GenerateConfig, device: torch.device, dtype: torch.dtype) -> list[list[str]]:
    """Print num_samples continuations of every prompt, each followed by SEPARATOR; return them."""
    texts = []
    for prompt in config.prompt:
        tokens = encode_prompt(prompt, enc, model.config.block_size)
        idx = torch.tensor([tokens] * config.num_samples, dtype=torch.long, device=device)  # (num_samples, T)
        sampling = dict(
            temperature=config.temperature,
            top_k=config.top_k,
            top_p=config.top_p,
            generator=torch.Generator(device=device).manual_seed(config.seed),
            use_kv_cache=config.kv_cache,
            compile=bool(config.compile),
        )
        with autocast_context(device, dtype):
            if config.stream:
                print(prompt, end="", flush=True)
                completions = [stream_sample(model, idx, config, enc, **sampling)]
                print(SEPARATOR)
            else:
                out = model.generate(idx, config.max_new_tokens, stop_token=enc.eot_token if config.stop else None, **sampling)
                completions = [decode_completion(row, config.stop, enc) for row in out[:, len(tokens) :].tolist()]
                for completion in completions:
                    print(prompt + completion)
                    print(SEPARATOR)
        texts.append([prompt + completion for completion in completions])
    return texts


def bench(model: GPT, enc, config: GenerateConfig, device: torch.device, dtype: torch.dtype) -> dict:
    """Time config.bench_tokens new tokens with the KV cache (eager, and compiled with --compile or
    on CUDA) and without it; print and return the timings and speed-ups."""
    tokens = encode_prompt(config.prompt[0], enc, model.config.block_size)
    idx = torch.tensor([tokens] * config.num_samples, dtype=torch.long, device=device)
    total_tokens = len(tokens) + config.bench_tokens
    if total_tokens > model.config.block_size:
        print(f"bench: {total_tokens} tokens exceed block_size={model.config.block_size}; the steps past it recompute "
              "even with the KV cache, so the speed-up understates it", file=sys.stderr)
    use_compile = config.compile if config.compile is not None else device.type == "cuda"

    def run(max_new_tokens: int, use_kv_cache: bool, compiled: bool = False) -> float:
        generator = torch.Generator(device=device).manual_seed(config.seed)
        synchronize(device)
        start = time.perf_counter()
        with autocast_context(device, dtype):
            # No stop token: every run generates exactly max_new_tokens.
            model.generate(idx, max_new_tokens, temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
                           generator=generator, use_kv_cache=use_kv_cache, compile=compiled)
        synchronize(device)
        return (time.perf_counter() - start) * 1000

    # Warm-up (allocations, kernel selection, thread pools) stays out of the timings. The compiled
    # warm-up generates as many tokens as the timed run, so that it compiles for the same cache length.
    run(8, use_kv_cache=True)
    run(8, use_kv_cache=False)
    compile_ms = run(config.bench_tokens, use_kv_cache=True, compiled=True) if use_compile else None
    timings_ms = {"cached": run(config.bench_tokens, use_kv_cache=True)}
    if use_compile:
        timings_ms["compiled"] = run(config.bench_tokens, use_kv_cache=True, compiled=True)
    timings_ms["recompute"] = run(config.bench_tokens, use_kv_cache=False)
    name = config.bench_preset or config.model
    kind = "randomly initialised" if config.bench_preset else "loaded"
    print(f"bench: {name} ({kind}, {model.num_params() / 1e6:.1f}M parameters) on {device}, {dtype_name(dtype)}, "
          f"batch {config.num_samples}, prompt {len(tokens)} tokens, {config.bench_tokens} new tokens")
    labels = {"cached": "KV cache, eager", "compiled": "KV cache, compiled", "recompute": "no KV cache, eager"}
    for path, ms in timings_ms.items():
        print(f"{labels[path] + ':':20s}{ms:10.1f} ms ({ms / config.bench_tokens:8.2f} ms/token)  "
              f"{timings_ms['recompute'] / ms:6.2f}x")
    result = {"dtype": dtype_name(dtype), "cached_ms": timings_ms["cached"], "recompute_ms": timings_ms["recompute"],
              "speedup": timings_ms["recompute"] / timings_ms["cached"]}
    print(f"KV cache speed-up: {result['speedup']:.2f}x")
    if use_compile:
        result.update(compiled_ms=timings_ms["compiled"], compiled_speedup=timings_ms["recompute"] / timings_ms["compiled"],
                      compile_s=compile_ms / 1000)
        print(f"compiled KV cache speed-up: {result['compiled_speedup']:.2f}x "
              f"(its first run, compiling, took {result['compile_s']:.1f} s, not timed)")
    return result


def compare(model: GPT, enc, config: GenerateConfig, device: torch.device, dtype: torch.dtype) -> dict:
    """Time greedy decoding of config.bench_tokens new tokens with our KV cache (GPT.generate) and
    with transformers' generate(do_sample=False, use_cache=True) on the same weights, converted by
    save_pretrained; print and return the timings, their ratio and whether the tokens agree.

    Both run in this process, one untimed warm-up each (allocations, the decode weights, a
    compile with --compile), then config.compare_rounds rounds that alternate which goes first,
    so that a busy host slows both alike. In fp32 both must give the same tokens, or this exits
    with an error; under bf16 or fp16 rounding may make them part, and the shared prefix is reported.
    """
    try:
        import transformers
    except ImportError:
        raise SystemExit("--compare needs transformers, a test-only dependency: pip install -r requirements-dev.txt") from None
    tokens = encode_prompt(config.prompt[0], enc, model.config.block_size)
    idx = torch.tensor([tokens] * config.num_samples, dtype=torch.long, device=device)
    if len(tokens) + config.bench_tokens > model.config.block_size:
        raise SystemExit(f"--bench-tokens {config.bench_tokens}: prompt and new tokens ({len(tokens) + config.bench_tokens}) "
                         f"exceed block_size={model.config.block_size}, past which the two models do not generate alike")
    with tempfile.TemporaryDirectory() as folder:
        try:
            model.save_pretrained(folder)  # the conversion upload_hf.py publishes
        except (ValueError, RuntimeError) as e:
            raise SystemExit(f"--compare: {e}") from None
        theirs = transformers.AutoModelForCausalLM.from_pretrained(folder).to(device).eval()
    # Exactly bench_tokens new tokens: no stop at <|endoftext|>, as GPT.generate without stop_token.
    theirs.generation_config.eos_token_id = None
    theirs.generation_config.pad_token_id = enc.eot_token

    def ours_generate() -> torch.Tensor:
        return model.generate(idx, config.bench_tokens, temperature=0, compile=bool(config.compile))

    def theirs_generate() -> torch.Tensor:
        return theirs.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=config.bench_tokens,
                               do_sample=False, use_cache=True)

    def timed(generate_fn) -> tuple[float, torch.Tensor]:
        synchronize(device)
        start = time.perf_counter()
        with torch.no_grad(), autocast_context(device, dtype):
            out = generate_fn()
        synchronize(device)
        return (time.perf_counter() - start) * 1000, out

    _, ours_out = timed(ours_generate)
    _, theirs_out = timed(theirs_generate)
    agree = (ours_out[:, len(tokens):] == theirs_out[:, len(tokens):]).all(dim=0).int()
    shared_tokens = int(agree.cumprod(0).sum())  # new tokens identical in every row before the first difference
    print(f"compare: {config.bench_preset or config.model} ({model.num_params() / 1e6:.1f}M parameters) on {device}, "
          f"{dtype_name(dtype)}, {torch.get_num_threads()} threads, batch {config.num_samples}, prompt {len(tokens)} tokens, "
          f"{config.bench_tokens} new tokens, greedy; transformers {transformers.__version__} {type(theirs).__name__} "
          f"({theirs.config._attn_implementation} attention), ours {'compiled' if config.compile else 'eager'}")
    timings_ms = {"ours": [], "transformers": []}
    for round_index in range(config.compare_rounds):
        order = ("ours", "transformers") if round_index % 2 == 0 else ("transformers", "ours")
        for name in order:
            ms, _ = timed(ours_generate if name == "ours" else theirs_generate)
            timings_ms[name].append(ms)
        print(f"round {round_index + 1}: ours {timings_ms['ours'][-1]:9.1f} ms, transformers {timings_ms['transformers'][-1]:9.1f} ms")
    result = {"dtype": dtype_name(dtype), "threads": torch.get_num_threads(), "new_tokens": config.bench_tokens,
              "same_tokens": shared_tokens == config.bench_tokens, "shared_tokens": shared_tokens}
    for name, values in timings_ms.items():
        result[f"{name}_median_ms"], result[f"{name}_best_ms"] = statistics.median(values), min(values)
        print(f"{name + ':':14s} median {result[f'{name}_median_ms']:9.1f} ms ({result[f'{name}_median_ms'] / config.bench_tokens:7.2f} ms/token), "
              f"best {result[f'{name}_best_ms']:9.1f} ms ({result[f'{name}_best_ms'] / config.bench_tokens:7.2f} ms/token)")
    result["speedup_median"] = result["transformers_median_ms"] / result["ours_median_ms"]
    result["speedup_best"] = result["transformers_best_ms"] / result["ours_best_ms"]
    print(f"ours against transformers: {result['speedup_median']:.2f}x (medians), {result['speedup_best']:.2f}x (bests); "
          f"above 1: ours is faster")
    print(f"same tokens: {'yes' if result['same_tokens'] else 'no'} ({shared_tokens} of {config.bench_tokens} new tokens agree in every row)")
    if dtype == torch.float32 and not result["same_tokens"]:
        raise SystemExit(f"--compare: in fp32 our greedy tokens should be transformers' but part after {shared_tokens} new tokens")
    return result


def build_model(config: GenerateConfig) -> tuple:
    """(the model, its tokenizer: a tiktoken Encoding)."""
    if config.bench_preset is not None:
        try:
            enc = get_tokenizer(config.tokenizer)
        except (OSError, ValueError) as e:
            raise SystemExit(f"--tokenizer {config.tokenizer}: {e}") from None
        return GPT(GPTConfig.from_preset(config.bench_preset, vocab_size=enc.n_vocab), seed=config.seed), enc
    try:
        model = load_model(config.model)
    except (OSError, ValueError) as e:
        hint = ""
        if config.bench or config.compare:
            hint = "; to benchmark offline, --bench-preset gpt2 builds a randomly initialised model of GPT-2 124M's size"
        raise SystemExit(f"--model {config.model}: could not load it ({e}){hint}") from None
    try:
        return model, load_tokenizer(config.model, model.config.vocab_size, config.tokenizer)
    except (OSError, ValueError) as e:
        raise SystemExit(f"the tokenizer of --model {config.model}: {e}") from None


def main(argv: list[str] | None = None):
    config = parse_args(argv)
    print(f"generate config: {json.dumps(asdict(config))}", file=sys.stderr)  # stdout carries only the text
    device = resolve_device(config.device)
    dtype = choose_dtype(config.dtype, device)
    print(f"dtype: {dtype_name(dtype)}", file=sys.stderr)
    model, enc = build_model(config)
    model = model.to(device).eval()
    if config.bench:
        return bench(model, enc, config, device, dtype)
    if config.compare:
        return compare(model, enc, config, device, dtype)
    return generate_text(model, enc, config, device, dtype)


if __name__ == "__main__":
    main()
