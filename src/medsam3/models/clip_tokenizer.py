"""Offline CLIP BPE tokenizer for SAM 3, built from the vocabulary that open-clip-torch ships.

SAM 3's text encoder is a CLIP text transformer with CLIP's 49408-token byte-level BPE
vocabulary. open-clip-torch ships that vocabulary as ``open_clip/bpe_simple_vocab_16e6.txt.gz``
(the merges list of OpenAI's CLIP). This module derives ``vocab.json`` + ``merges.txt`` from it
exactly the way CLIP's ``SimpleTokenizer`` builds its encoder (256 byte symbols, the same with
``</w>``, one token per merge, then ``<|startoftext|>`` / ``<|endoftext|>``), caches them under
``$MEDSAM3_CACHE/clip_bpe_16e6`` (default ``~/.cache/medsam3``), and builds a transformers
``CLIPTokenizer`` from them. Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

from medsam3.io.atomic import write_text_atomic
from medsam3.models.feature_cache import cache_dir

NUM_MERGES = 49152 - 256 - 2  # CLIP uses the first 48894 merges of the 16e6 vocabulary file
VOCAB_SIZE = 49408
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
CACHE_SUBDIR = "clip_bpe_16e6"
# open_clip and transformers are imported when a tokenizer is built, not by this module's
# importers (sam3_checkpoint): open_clip alone takes 0.35 s.


def open_clip_bpe_path() -> Path:
    """Path of ``bpe_simple_vocab_16e6.txt.gz`` inside the installed open-clip-torch package."""
    try:
        import open_clip
    except ImportError as err:  # pragma: no cover - open-clip-torch is a pinned dependency
        raise ImportError(
            "the offline CLIP tokenizer needs open-clip-torch (pip install open-clip-torch)"
        ) from err
    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall open-clip-torch")
    return path


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte -> printable unicode character table (256 entries)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def derive_vocab(bpe_path: Path) -> tuple[dict[str, int], list[str]]:
    """Build CLIP's token -> id table and merges list from the gzipped BPE file.

    Args:
        bpe_path: ``bpe_simple_vocab_16e6.txt.gz`` (first line is a version header).

    Returns:
        (vocab, merges): 49408 tokens with ids 0..49407; 48894 merges as "a b" strings.
    """
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [" ".join(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += ["".join(m.split()) for m in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"{bpe_path} gave {len(vocab)} tokens, expected {VOCAB_SIZE}")
    return vocab, merges


def clip_vocab_files(directory: Path | None = None) -> Path:
    """Write (once) ``vocab.json`` and ``merges.txt`` derived from open_clip's BPE file.

    Args:
        directory: where to put them; default ``cache_dir() / "clip_bpe_16e6"``.

    Returns:
        The folder holding ``vocab.json`` and ``merges.txt``.
    """
    out = Path(directory) if directory is not None else cache_dir() / CACHE_SUBDIR
    if (out / "vocab.json").is_file() and (out / "merges.txt").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = derive_vocab(open_clip_bpe_path())
    write_text_atomic(out / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    write_text_atomic(out / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    return out


@lru_cache(maxsize=2)
def offline_clip_tokenizer(model_max_length: int = 32):
    """A transformers ``CLIPTokenizer`` with CLIP's vocabulary, built without any download.

    Args:
        model_max_length: maximum sequence length (SAM 3 pads/truncates text to 32 tokens).

    Returns:
        ``transformers.CLIPTokenizer``; pad token is ``<|endoftext|>`` (id 49407), as in the
        SAM 3 checkpoints on the Hugging Face hub. Shared between callers (cached).
    """
    from transformers import CLIPTokenizer

    folder = clip_vocab_files()
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    merges = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")[1:]
    merges = [tuple(m.split()) for m in merges if m.strip()]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
