"""Offline text and multiple-choice data from the `bigbench==1.0.0` sdist on PyPI.

The sdist is downloaded once with `pip download --no-deps` (about 360 MB), the few task files we
need are read straight out of the tarball in one pass, turned into small JSONL files in the cache,
and the tarball is deleted. BIG-bench asks that its data never appear in training corpora: we use
it for calibration and evaluation only.

Produces, under `$BIP_CACHE/data`:
  wiki-bb/{train,valid,test}.jsonl   English Wikipedia articles ({"text": ...}), split by article
  bigbench-mc/<task>.jsonl           {"question", "choices", "label"} per example
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from .atomic import write_text_atomic
from .errors import DataError
from .paths import data_dir

SDIST = "bigbench==1.0.0"
TASK_ROOT = "bigbench/benchmark_tasks/"
WIKI_TASK = "paragraph_segmentation/task.json"
# task name in our cache -> path of its task.json under benchmark_tasks/
MC_TASKS = {
    "social_iqa": "social_iqa/task.json",
    "winowhy": "winowhy/task.json",
    "strategyqa": "strategyqa/task.json",
    "goal_step_wikihow_goal": "goal_step_wikihow/goal_inference/task.json",
    "goal_step_wikihow_step": "goal_step_wikihow/step_inference/task.json",
    "epistemic_reasoning": "epistemic_reasoning/task.json",
    "navigate": "navigate/task.json",
    "sports_understanding": "sports_understanding/task.json",
}
SPLIT_FRACTIONS = {"train": 0.8, "valid": 0.1, "test": 0.1}
EN_STOP = set("the of and in to is was a for as by with that on at from his he it are were an which "
              "also be this has had or its their after first".split())


def wiki_dir() -> Path:
    return data_dir() / "wiki-bb"


def mc_dir() -> Path:
    return data_dir() / "bigbench-mc"


def is_prepared() -> bool:
    return all((wiki_dir() / f"{s}.jsonl").is_file() for s in SPLIT_FRACTIONS) and \
        all((mc_dir() / f"{t}.jsonl").is_file() for t in MC_TASKS)


def _is_english(text: str) -> bool:
    words = re.findall(r"[a-z]+", text.lower())
    if len(words) < 100:
        return False
    stop = sum(w in EN_STOP for w in words) / len(words)
    return stop > 0.25 and words.count("the") / len(words) > 0.03


def _rebuild_article(example: dict) -> str:
    """Sentences are one per line; target has a 1 for each sentence that ends a paragraph."""
    sentences = example["input"].split("\n")
    marks = example["target"].split()
    paragraphs, current = [], []
    for i, sentence in enumerate(sentences):
        current.append(sentence.strip())
        if i < len(marks) and marks[i] == "1":
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n".join(p for p in paragraphs if p)


def _write_jsonl(path: Path, rows) -> None:
    write_text_atomic(path, (json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _convert_wiki(task: dict) -> dict[str, int]:
    articles = [_rebuild_article(ex) for ex in task["examples"]]
    english = [a for a in articles if _is_english(a)]
    random.Random(0).shuffle(english)
    n = len(english)
    n_train, n_valid = int(n * SPLIT_FRACTIONS["train"]), int(n * SPLIT_FRACTIONS["valid"])
    splits = {"train": english[:n_train], "valid": english[n_train:n_train + n_valid],
              "test": english[n_train + n_valid:]}
    wiki_dir().mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        _write_jsonl(wiki_dir() / f"{name}.jsonl", ({"text": t} for t in rows))
    return {name: len(rows) for name, rows in splits.items()}


def convert_mc_example(example: dict) -> dict | None:
    """BIG-bench `target_scores` example -> {question, choices, label} (label = best choice)."""
    scores = example.get("target_scores")
    if not scores or len(scores) < 2:
        return None
    choices = list(scores)
    best = max(range(len(choices)), key=lambda i: scores[choices[i]])
    return {"question": example["input"].strip(), "choices": choices, "label": best}


def _convert_mc(name: str, task: dict) -> int:
    rows = [r for r in (convert_mc_example(ex) for ex in task["examples"]) if r is not None]
    mc_dir().mkdir(parents=True, exist_ok=True)
    _write_jsonl(mc_dir() / f"{name}.jsonl", rows)
    return len(rows)


def download_sdist(folder: Path) -> Path:
    """Fetch the sdist through PyPI's simple index (PEP 691 JSON), checking its sha256.

    `pip download` would do, but recent pip versions build the sdist's metadata, which fails for
    bigbench (it declares a direct-URL dependency), so we read the index ourselves.
    """
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    name, version = SDIST.split("==")
    filename = f"{name}-{version}.tar.gz"
    request = urllib.request.Request(f"{index}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            files = json.load(response)["files"]
        entry = next(f for f in files if f["filename"] == filename)
        target = folder / filename
        digest = hashlib.sha256()
        with urllib.request.urlopen(entry["url"], timeout=60) as response, target.open("wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except (OSError, StopIteration, KeyError, ValueError) as err:
        raise DataError(f"Could not download {filename} from the package index {index}: {err}") from err
    expected = entry.get("hashes", {}).get("sha256")
    if expected and digest.hexdigest() != expected:
        raise DataError(f"{filename}: sha256 mismatch (download corrupted); run the set-up again.")
    return target


def prepare_bigbench(verbose: bool = True) -> dict:
    """Download the sdist, extract what we need, delete the sdist. Idempotent."""
    if is_prepared():
        return {"status": "cached", "dir": str(data_dir())}
    wanted = {TASK_ROOT + WIKI_TASK: "wiki", **{TASK_ROOT + p: n for n, p in MC_TASKS.items()}}
    tmp = Path(tempfile.mkdtemp(prefix="bigbench-", dir=data_dir()))
    report = {}
    try:
        if verbose:
            print(f"Downloading the {SDIST} sdist (about 360 MB) for offline data ...", flush=True)
        archive = download_sdist(tmp)
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                rel = member.name.split("/", 1)[-1]  # drop 'bigbench-1.0.0/'
                name = wanted.get(rel)
                if name is None:
                    continue
                task = json.load(tar.extractfile(member))
                report[name] = _convert_wiki(task) if name == "wiki" else _convert_mc(name, task)
        missing = set(wanted.values()) - set(report)
        if missing:
            raise DataError(f"{SDIST} lacks the expected task files: {sorted(missing)}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if verbose:
        print(f"Offline data ready in {data_dir()}: {report}", flush=True)
    return {"status": "prepared", "dir": str(data_dir()), **report}


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"{path} is missing: run `python -m bip_core prepare` (or `make setup`) first.")
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]
