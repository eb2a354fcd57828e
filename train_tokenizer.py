"""Train a byte-level BPE tokenizer, GPT-2's kind, on any corpus fineweb.py reads: one tokenizer.json.

    python train_tokenizer.py --dataset pystdlib --vocab-size 8192 --max-chars 20000000   # offline
    python train_tokenizer.py --dataset fineweb-edu --vocab-size 50257 --max-chars 2000000000
    python train_tokenizer.py --input 'corpus/*.jsonl' --text-field content --vocab-size 32768 --out data/tokenizers/mine.json

then tokenize and train with it (the model's vocab_size comes from the shards' meta.json):

    python fineweb.py --dataset pystdlib --max-tokens 2000000 --tokenizer data/tokenizers/pystdlib-8192.json --out data/pystdlib-bpe8k
    python train_gpt2.py --preset smoke --model tiny-2.5 --data data/pystdlib-bpe8k

The tokenizer is trained with Hugging Face `tokenizers`, as GPT-2's was built: text is split with
GPT-2's pattern (words with their leading space, numbers, punctuation, whitespace), and BPE merges
the UTF-8 bytes of each piece, so any text encodes and there is no unknown token
(https://arxiv.org/abs/1508.07909, GPT-2 paper section 2.2). <|endoftext|> is its one special
token (id 0), which fineweb.py puts before every document. model.get_tokenizer(path) turns the file
into a tiktoken Encoding, so every script encodes with it exactly as with GPT-2's tokenizer, and
train_gpt2.py checkpoints and save_pretrained exports carry it along.

Documents come from the same sources as fineweb.py's (--dataset, --input, --text-field); --max-chars
caps the text read, which FineWeb-Edu needs (its sample-10BT is ~45 GB of text; a few GB is plenty
for a tokenizer). Sizes for reference: the whole Python standard library (~55M characters) trains
an 8192-token vocabulary in about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fineweb import SOURCES, FinewebConfig, ShardError, download_tinyshakespeare, int_range, make_plan, positive_int, write_atomic
from model import EOT_TEXT, tokenizer_from_json

# 256 single bytes and <|endoftext|> come first; fineweb.py stores ids as uint16.
MIN_VOCAB_SIZE, MAX_VOCAB_SIZE = 257, 2**16


class TokenizerError(ValueError):
    """A problem the user can fix; the message names the flag or file."""


@dataclass
class TokenizerConfig:
    vocab_size: int  # tokens in all: 256 bytes, <|endoftext|>, and the merges learned
    dataset: str | None = None  # a fineweb.py --dataset; None: fineweb-edu, unless --input is given
    input: list[str] = field(default_factory=list)
    text_field: str = "text"
    max_chars: int | None = None  # read at most this many characters of text; None: the whole corpus
    out: str | None = None  # None: data/tokenizers/{dataset}-{vocab_size}.json
    overwrite: bool = False


def limited_texts(documents: Iterator[tuple[str, int]], max_chars: int | None, counts: dict) -> Iterator[str]:
    """The documents' texts, the last one cut so that at most max_chars characters are read;
    `counts` tallies documents and characters as they go."""
    for text, _ in documents:
        if max_chars is not None:
            text = text[: max_chars - counts["chars"]]
        counts["documents"] += 1
        counts["chars"] += len(text)
        yield text
        if max_chars is not None and counts["chars"] >= max_chars:
            return


def train(config: TokenizerConfig) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if config.dataset and config.input:
        raise TokenizerError("pass only one of --dataset and --input")
    # Its output is a file, not fineweb.py's folder, so no folder is left out of --input.
    plan = make_plan(FinewebConfig(dataset=config.dataset, input=config.input, text_field=config.text_field), exclude_out_dir=False)
    out = Path(config.out or f"data/tokenizers/{plan.dataset}-{config.vocab_size}.json")
    if out.is_dir():
        example = out / f"{plan.dataset}-{config.vocab_size}.json"
        raise TokenizerError(f"--out {out} is a folder: pass the tokenizer.json file to write, e.g. {example}")
    if out.exists() and not config.overwrite:
        raise TokenizerError(
            f"--out {out} exists: token shards made with it would no longer match it if it changed; "
            "pass --overwrite to replace it, or choose another --out"
        )
    try:  # before training, not after it
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TokenizerError(f"--out {out}: cannot create its folder {out.parent} ({error}): choose another --out") from error
    if plan.dataset == "tinyshakespeare":
        download_tinyshakespeare(plan.out_dir / "input.txt")

    tokenizer = Tokenizer(models.BPE())
    # GPT-2's split pattern (use_regex) and no space added before the text: tiktoken's r50k pattern,
    # which model.get_tokenizer uses to encode with this vocabulary.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        special_tokens=[EOT_TEXT],
        # Every byte is a token from the start, even bytes the corpus lacks: any text can be encoded.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    counts = {"documents": 0, "chars": 0}
    start = time.perf_counter()
    tokenizer.train_from_iterator(limited_texts(plan.documents(), config.max_chars, counts), trainer)
    elapsed_s = time.perf_counter() - start
    if counts["chars"] == 0:
        raise TokenizerError(f"empty corpus: {plan.source} holds no text")
    tokenizer_json = tokenizer.to_str(pretty=True)
    try:
        encoding = tokenizer_from_json(tokenizer_json, source=str(out))  # the check every later stage makes, made now
    except ValueError as error:
        raise TokenizerError(f"the trained tokenizer cannot be used, so {out} was not written: {error}") from error
    write_atomic(out, lambda file: file.write(tokenizer_json.encode("utf-8")))
    if encoding.n_vocab < config.vocab_size:
        print(f"note: the corpus ran out of pairs to merge at {encoding.n_vocab} tokens, short of --vocab-size {config.vocab_size}")
    print(f"trained {encoding.n_vocab:,} tokens on {counts['chars']:,} characters in {counts['documents']:,} documents "
          f"in {elapsed_s:.1f} s; wrote {out}")
    print(f"next: python fineweb.py --tokenizer {out} ... (with --dataset or --input, and an --out of its own)")
    return out


def parse_args(argv: list[str] | None = None) -> TokenizerConfig:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:3]))
    parser.add_argument("--vocab-size", type=int_range(MIN_VOCAB_SIZE + 1, MAX_VOCAB_SIZE), required=True,
                        help=f"tokens in all: the 256 bytes, {EOT_TEXT} and the merges learned (GPT-2 has 50257); more than "
                             f"{MIN_VOCAB_SIZE}, so that one merge is learned, and at most {MAX_VOCAB_SIZE}, as fineweb.py's "
                             "shards hold uint16 token ids")
    parser.add_argument("--dataset", choices=[d for d in SOURCES if d != "custom"], help="named corpus, as in fineweb.py (default: fineweb-edu)")
    parser.add_argument("--input", nargs="+", default=[], metavar="PATH_OR_GLOB",
                        help="local corpus: .txt files (one document each), .jsonl/.json/.parquet (one per row), or folders of them")
    parser.add_argument("--text-field", default=TokenizerConfig.text_field, help="column holding the text in .jsonl/.json/.parquet inputs")
    parser.add_argument("--max-chars", type=positive_int, help="read at most this many characters (default: the whole corpus)")
    parser.add_argument("--out", help="the tokenizer.json to write (default: data/tokenizers/DATASET-VOCAB_SIZE.json)")
    parser.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=TokenizerConfig.overwrite,
                        help="replace an existing --out file")
    return TokenizerConfig(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    print(f"train_tokenizer.py config: {json.dumps(asdict(config))}")
    try:
        train(config)
    except (TokenizerError, ShardError) as error:
        print(f"train_tokenizer.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
