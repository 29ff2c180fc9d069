"""Text sources and windows: calibration sampling and the paper's perplexity protocol."""
import pytest
import torch

from bip_core.data import calibration_windows, load_texts, perplexity_windows, save_user_text, token_stream
from bip_core.errors import DataError, OfflineError


def test_wiki_bb_splits_are_disjoint_english_articles():
    splits = {s: load_texts("wiki-bb", s) for s in ("train", "valid", "test")}
    assert len(splits["train"]) > 500 and len(splits["test"]) > 50 and len(splits["valid"]) > 50
    assert not set(splits["train"]) & set(splits["test"])
    assert not set(splits["valid"]) & set(splits["test"])
    sample = " ".join(splits["test"][:5]).lower()
    assert sample.count(" the ") > 20


def test_calibration_windows_are_seeded(tokenizer):
    a = calibration_windows(tokenizer, "wiki-bb", samples=8, seq_len=32, seed=0)
    b = calibration_windows(tokenizer, "wiki-bb", samples=8, seq_len=32, seed=0)
    c = calibration_windows(tokenizer, "wiki-bb", samples=8, seq_len=32, seed=1)
    assert a.shape == (8, 32) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    stream = token_stream(tokenizer, "wiki-bb", "train")
    row = a[0].tolist()  # every window is a contiguous slice of the train stream
    starts = (stream == row[0]).nonzero().flatten().tolist()
    assert any(stream[s:s + 32].tolist() == row for s in starts)


def test_perplexity_windows_follow_the_paper_protocol(tokenizer, tmp_path):
    docs = [("alpha beta gamma delta " * 30).strip(), ("epsilon zeta eta theta " * 30).strip()]
    path = tmp_path / "text.txt"
    path.write_text("\n\n".join(docs))
    full = tokenizer("\n\n".join(docs), add_special_tokens=False).input_ids
    w = perplexity_windows(tokenizer, f"file:{path}", "test", seq_len=16)
    assert w.total_windows == len(full) // 16  # remainder dropped
    assert w.tokens == w.windows * 16
    assert w.input_ids.flatten().tolist() == full[: w.tokens]  # non-overlapping, in order
    limited = perplexity_windows(tokenizer, f"file:{path}", "test", seq_len=16, limit=3)
    assert limited.windows == 3 and torch.equal(limited.input_ids, w.input_ids[:3])
    proto = limited.protocol()
    assert proto == {"dataset": f"file:{path}", "split": "test", "seq_len": 16, "windows": 3,
                     "tokens": 48, "total_windows": w.total_windows}


def test_bad_sources_give_clear_errors(tokenizer, tmp_path, monkeypatch):
    with pytest.raises(DataError, match="Unknown data source"):
        load_texts("nope")
    with pytest.raises(DataError, match="not found"):
        load_texts(f"file:{tmp_path}/missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(DataError, match="empty"):
        load_texts(f"file:{empty}")
    short = tmp_path / "short.txt"
    short.write_text("just a few words")
    with pytest.raises(DataError, match="fewer than one window"):
        calibration_windows(tokenizer, f"file:{short}", samples=2, seq_len=128)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError):
        load_texts("wikitext2", "test")


def test_token_streams_are_keyed_by_the_tokenizer_object_and_bounded(tokenizer, tmp_path, monkeypatch):
    """Two tokenizers with the same class, name and length must not share a stream; the cache is bounded
    and never keeps a tokenizer alive."""
    import copy
    import gc
    import weakref

    from bip_core import data

    monkeypatch.setattr(data, "_STREAMS", type(data._STREAMS)())
    path = tmp_path / "text.txt"
    path.write_text("alpha beta gamma delta " * 20)
    source = f"file:{path}"
    other = copy.deepcopy(tokenizer)
    other.add_tokens(["alpha beta"])  # same class and name_or_path
    other.name_or_path = tokenizer.name_or_path
    text = "\n\n".join(load_texts(source, "test"))
    a = token_stream(tokenizer, source, "test")
    b = token_stream(other, source, "test")
    assert torch.equal(a, torch.tensor(tokenizer(text, add_special_tokens=False).input_ids))
    assert torch.equal(b, torch.tensor(other(text, add_special_tokens=False).input_ids))
    assert a.numel() != b.numel()
    assert token_stream(tokenizer, source, "test") is a  # memoised

    ref = weakref.ref(other)
    del other, b
    gc.collect()
    assert ref() is None  # the cache holds no strong reference

    for i in range(data.MAX_STREAMS + 3):
        (tmp_path / f"{i}.txt").write_text(f"text number {i}")
        token_stream(tokenizer, f"file:{tmp_path / f'{i}.txt'}", "test")
    assert len(data._STREAMS) == data.MAX_STREAMS


def test_user_text_is_checked_and_stored_for_the_file_source(tokenizer, tmp_path):
    text = "\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog." for i in range(200))
    path = save_user_text(text.replace("\n", "\r\n").encode("utf-8"), tmp_path)
    assert path.parent == tmp_path and path.name.startswith("calibration-") and "\r" not in path.read_text()
    assert save_user_text(text, tmp_path) == path  # same text, same file
    assert save_user_text(text + " More.", tmp_path) != path  # another text never shares the cached tokens
    assert len(load_texts(f"file:{path}")) == 200
    assert calibration_windows(tokenizer, f"file:{path}", samples=4, seq_len=32, seed=0).shape == (4, 32)
    with pytest.raises(DataError, match="not UTF-8.*Save it as UTF-8"):
        save_user_text("café".encode("latin-1"), tmp_path)
    with pytest.raises(DataError, match="larger than the limit of 0.0 MiB"):
        save_user_text("x" * 2000, tmp_path, max_bytes=1000)
    with pytest.raises(DataError, match="empty"):
        save_user_text(" \n\n ", tmp_path)
