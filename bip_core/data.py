"""Text sources for calibration and perplexity, behind one interface.

Source names (the same in the CLI `--data`, the app and the Python API):
  wiki-bb      offline: English Wikipedia articles from the BIG-bench package (train/valid/test)
  wikitext2    online: WikiText-2 raw (train/validation/test) via `datasets`
  ptb          online: Penn Treebank, text only (train/validation/test)
  c4           online: the first shard of allenai/c4 en (train/validation)
  file:PATH    a UTF-8 text file; documents separated by blank lines; the same text for every split
               (`save_user_text` checks and stores a user's own text for it)

Calibration draws N seeded windows of L tokens from the train split; perplexity uses the paper
protocol (METHOD.md section 5): join the split's texts with "\\n\\n", tokenize once, cut into
non-overlapping windows of `seq_len` tokens, drop the remainder.
"""
from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .bigbench_data import read_jsonl, wiki_dir
from .atomic import write_text_atomic
from .errors import DataError
from .network import require_hub

SOURCES = ("wiki-bb", "wikitext2", "ptb", "c4")
SPLITS = ("train", "valid", "test")
_HUB_SPLIT = {"train": "train", "valid": "validation", "test": "test"}


def describe_sources() -> list[str]:
    return list(SOURCES) + ["file:PATH"]


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise DataError(f"Unknown split '{split}'; choose one of {SPLITS}.")
    return split


def _hub_texts(source: str, split: str) -> list[str]:
    require_hub(f"The data source '{source}'")
    import datasets

    hub_split = _HUB_SPLIT[split]
    try:
        if source == "wikitext2":
            ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=hub_split)
            return list(ds["text"])
        if source == "ptb":
            ds = datasets.load_dataset("ptb-text-only/ptb_text_only", split=hub_split)
            return list(ds["sentence"])
        if source == "c4":
            if split == "test":
                raise DataError("c4 has no test split; use 'train' or 'valid'.")
            files = {"train": "en/c4-train.00000-of-01024.json.gz",
                     "validation": "en/c4-validation.00000-of-00008.json.gz"}
            ds = datasets.load_dataset("allenai/c4", data_files={hub_split: files[hub_split]}, split=hub_split)
            return list(ds["text"])
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"Could not load '{source}' ({split}) from the Hub: {err}") from err
    raise DataError(f"Unknown data source '{source}'")


def load_texts(source: str, split: str = "train") -> list[str]:
    """The documents of a source's split, as a list of strings."""
    split = _check_split(split)
    source = (source or "").strip()
    if source.startswith("file:"):
        path = Path(source[5:]).expanduser()
        if not path.is_file():
            raise DataError(f"Text file {path} not found.")
        text = path.read_text(encoding="utf-8", errors="replace")
        docs = [d.strip() for d in text.split("\n\n") if d.strip()]
        if not docs:
            raise DataError(f"Text file {path} is empty.")
        return docs
    if source == "wiki-bb":
        return [row["text"] for row in read_jsonl(wiki_dir() / f"{split}.jsonl")]
    if source in SOURCES:
        return _hub_texts(source, split)
    raise DataError(f"Unknown data source '{source}'. Choose one of {describe_sources()}.")


MAX_STREAMS = 16  # token streams kept: (tokenizer, source, split) triples, least recently used dropped first
_STREAMS: OrderedDict[tuple, tuple[weakref.ref, torch.Tensor]] = OrderedDict()
_STREAMS_LOCK = threading.Lock()


MAX_USER_TEXT_BYTES = 4 * 2**20


def save_user_text(data: bytes | str, folder, max_bytes: int = MAX_USER_TEXT_BYTES) -> Path:
    """Check a user's own calibration text and store it for the `file:PATH` source.

    `data` is the text or the bytes of an uploaded file: it must be UTF-8, at most `max_bytes`, and hold
    some text. It is written (line ends normalised) to `folder/calibration-<content hash>.txt`, so
    different texts never share a cached token stream. Returns the path; use `f"file:{path}"`."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise DataError(f"The calibration text is larger than the limit of {max_bytes / 2**20:.1f} MiB. Use a "
                        "shorter excerpt (a few hundred KB is plenty).")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"The calibration text is not UTF-8 (byte {err.start} cannot be read). Save it as "
                        "UTF-8 plain text (.txt) and try again.") from err
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\x00" in text or not text.strip():
        raise DataError("The calibration text is empty or not plain text. Give some plain text: documents "
                        "separated by blank lines.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"calibration-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:16]}.txt"
    return write_text_atomic(path, text)


def _tokenize(tokenizer, source: str, split: str) -> torch.Tensor:
    text = "\n\n".join(load_texts(source, split))
    if not text.strip():
        raise DataError(f"The data source '{source}' ({split}) holds no text.")
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def token_stream(tokenizer, source: str, split: str) -> torch.Tensor:
    """The split's texts joined with "\\n\\n" and tokenized once: memoised for the last `MAX_STREAMS`
    (tokenizer, source, split), keyed by the tokenizer object itself (a weak reference: the cache never
    keeps a tokenizer alive, and a new tokenizer at a reused address is not mistaken for the old one)."""
    key = (id(tokenizer), source, split)
    with _STREAMS_LOCK:
        hit = _STREAMS.get(key)
        if hit is not None and hit[0]() is tokenizer:
            _STREAMS.move_to_end(key)
            return hit[1]
    stream = _tokenize(tokenizer, source, split)
    with _STREAMS_LOCK:
        _STREAMS[key] = (weakref.ref(tokenizer), stream)
        _STREAMS.move_to_end(key)
        while len(_STREAMS) > MAX_STREAMS:
            _STREAMS.popitem(last=False)
    return stream


def calibration_windows(tokenizer, source: str = "wiki-bb", samples: int = 64, seq_len: int = 128,
                        seed: int = 0, split: str = "train") -> torch.Tensor:
    """`samples` windows of `seq_len` tokens at seeded random offsets: LongTensor [samples, seq_len]."""
    if samples < 1 or seq_len < 2:
        raise DataError(f"Need at least 1 sample of at least 2 tokens (got samples={samples}, seq_len={seq_len}).")
    stream = token_stream(tokenizer, source, split)
    if stream.numel() < seq_len + 1:
        raise DataError(f"'{source}' ({split}) has {stream.numel()} tokens, fewer than one window of {seq_len}.")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - seq_len, (samples,), generator=generator)
    return torch.stack([stream[s:s + seq_len] for s in starts.tolist()])


@dataclass
class PerplexityWindows:
    """Non-overlapping windows plus the protocol fields printed next to every perplexity."""

    input_ids: torch.Tensor  # [windows, seq_len]
    dataset: str
    split: str
    seq_len: int
    windows: int
    tokens: int  # tokens in the windows that are scored
    total_windows: int  # windows available before any limit

    def protocol(self) -> dict:
        d = asdict(self)
        d.pop("input_ids")
        return d


def perplexity_windows(tokenizer, source: str = "wiki-bb", split: str = "test", seq_len: int = 128,
                       limit: int | None = None) -> PerplexityWindows:
    """Paper protocol windows (METHOD.md section 5), optionally only the first `limit` of them."""
    stream = token_stream(tokenizer, source, split)
    total = stream.numel() // seq_len
    if total < 1:
        raise DataError(f"'{source}' ({split}) has {stream.numel()} tokens, fewer than one window of {seq_len}.")
    n = total if limit is None else max(1, min(int(limit), total))
    ids = stream[: n * seq_len].view(n, seq_len)
    return PerplexityWindows(ids, source, split, seq_len, n, n * seq_len, total)
