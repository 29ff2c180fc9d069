"""Small shared helpers: atomic writes, KEY=VALUE options, parameter counts as text, per-layer seeds."""
import pytest
import torch

from bip_core.atomic import write_if_changed, write_text_atomic
from bip_core.errors import BipError
from bip_core.formatting import format_params
from bip_core.options import parse_options
from bip_core.scoring.seeds import layer_generator, layer_seed


def test_write_text_atomic_writes_all_or_nothing(tmp_path):
    path = write_text_atomic(tmp_path / "a" / "f.jsonl", (f"{i}\n" for i in range(3)))
    assert path.read_text() == "0\n1\n2\n" and path.stat().st_mode & 0o777 == 0o644

    def failing():
        yield "half"
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_text_atomic(path, failing())
    assert path.read_text() == "0\n1\n2\n" and list(path.parent.iterdir()) == [path]
    assert write_if_changed(path, "0\n1\n2\n") is False and write_if_changed(path, "new") is True
    assert path.read_text() == "new"


def test_parse_options():
    assert parse_options([" norm = l1", "weights=output"], "--option", "norm=l1") == {"norm": "l1", "weights": "output"}
    with pytest.raises(BipError, match="--option: option 'l1' is not KEY=VALUE"):
        parse_options(["l1"], "--option", "norm=l1")
    with pytest.raises(BipError, match="KEY=VALUE"):
        parse_options(["=l1"], "--option", "norm=l1")


def test_format_params():
    assert format_params(134_515_008) == "134.5M" and format_params(134_515_008, 2) == "134.52M"
    assert format_params(1_234_000_000) == "1.23B" and format_params(1_234_000_000, 2) == "1.234B"
    assert format_params(None) == "?"


def test_layer_seeds_keep_their_numbers():
    assert layer_seed(0, 5) == 5 and layer_seed(3, 7) == 3 * 100_003 + 7
    assert torch.equal(torch.rand(4, generator=layer_generator(2, 1)),
                       torch.rand(4, generator=torch.Generator().manual_seed(200_007)))
