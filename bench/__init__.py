"""Benchmarks (`python -m bench.bench_build`, ...). `SHARED`: where the real tokenizers and datasets are,
the folder SFTDATA_SHARED names, else `shared/` beside the repository (as for the tests). `make_corpus`:
the shared datasets cycled to a number of conversations, as JSON Lines, for every benchmark."""

import itertools
import json
import os
from pathlib import Path

SHARED = Path(os.environ.get("SFTDATA_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def make_corpus(folder: Path, conversations: int, names: tuple[str, ...] | None = None) -> list[Path]:
    """The shared datasets (or those `names`), each cycled to its share of `conversations`, one JSON Lines
    file each in `folder`."""
    sources = sorted(p for p in (SHARED / "datasets").iterdir() if p.suffix in (".json", ".jsonl")
                     and (names is None or p.name in names))
    records = {p: ([json.loads(line) for line in p.open()] if p.suffix == ".jsonl" else json.loads(p.read_text()))
               for p in sources}
    total = sum(len(r) for r in records.values())
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for path, recs in records.items():
        out = folder / f"{path.stem}.jsonl"
        with out.open("w") as f:
            for record in itertools.islice(itertools.cycle(recs), round(len(recs) * conversations / total)):
                f.write(json.dumps(record) + "\n")
        paths.append(out)
    return paths
