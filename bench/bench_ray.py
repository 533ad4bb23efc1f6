"""The Ray executor against the local executor on the same corpus, on this machine:
`python -m bench.bench_ray [--conversations 20000] [--large 200000] [--cpus 2]`.

The corpus is ../shared/datasets/dummy_conversation.json cycled to the requested size (one JSONL file),
built with the Llama-3.1 tokenizer, unpacked and packed to 4096. Both executors get the same CPUs: the
local one `--workers CPUS`; the Ray one a cluster of this machine started beforehand with `ray start
--head --num-cpus CPUS` (a build joins a running cluster; starting one is not the build's cost).
Each build runs in a fresh process, which reports its wall time and its own peak memory (for Ray, the
driver's: the actors are the cluster's processes). The local run comes first, so the page cache
holds the corpus for both.

Projection to N nodes of c CPUs, from the Ray run's own timings (the model, stated): the map phase's
work (the sum of its units' seconds, measured in the actors) divides over N x c actors, but no faster
than its longest unit; shard writing divides over min(N x c, shards); the rest (joining the cluster,
starting the actors, planning rows, merging rejects, the manifest) stays as measured, serial:
    T(N) = serial + max(unit_seconds / (N c), longest_unit) + write_seconds / min(N c, shards)
It assumes the inputs and OUT are on storage whose bandwidth grows with the nodes (object storage),
and one planning task per input file (so a corpus of many files plans in parallel too).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import SHARED, make_corpus

TOKENIZER = SHARED / "tokenizers" / "llama3_1"
REPO = Path(__file__).resolve().parents[1]

RUN = """
import json, resource, sys, time
from sftdata.builder import build
from sftdata.config import BuildConfig

settings = json.loads(sys.argv[3])
started = time.perf_counter()
manifest = build([sys.argv[1]], sys.argv[2], BuildConfig(**settings), overwrite=True)
print(json.dumps({"wall": time.perf_counter() - started,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": manifest.seconds, "units": -(-manifest.counts.records // settings["unit_records"]),
                  "shards": len(manifest.shards), "sha": [s.sha256 for s in manifest.shards]}))
"""


def run(corpus: Path, out: Path, settings: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", RUN, str(corpus), str(out), json.dumps(settings)], env=env,
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def projection(result: dict, cpus: int, nodes: int) -> float:
    """Seconds on `nodes` nodes of `cpus` CPUs, by the model in the module's docstring."""
    seconds = result["seconds"]
    map_work, write_work = seconds["map"] * cpus, seconds["write"] * min(cpus, result["shards"])
    serial = result["wall"] - seconds["map"] - seconds["write"]
    actors = nodes * cpus
    longest_unit = map_work / result["units"]
    return serial + max(map_work / actors, longest_unit) + write_work / min(actors, result["shards"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conversations", type=int, default=20_000)
    parser.add_argument("--large", type=int, default=200_000, help="0: skip the driver-memory run at this size")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--unit-records", type=int, default=2048)
    args = parser.parse_args()
    subprocess.run(["ray", "start", "--head", f"--num-cpus={args.cpus}", "--include-dashboard=false",
                    "--port=0"], check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            base = {"tokenizer": str(TOKENIZER), "max_length": 4096, "unit_records": args.unit_records}
            rows = []
            for size in [args.conversations] + ([args.large] if args.large else []):
                (corpus,) = make_corpus(tmp / f"corpus-{size}", size, ("dummy_conversation.json",))
                for pack in (False, True):
                    settings = {**base, "pack": pack}
                    local = run(corpus, tmp / "local", {**settings, "workers": args.cpus})
                    dist = run(corpus, tmp / "ray", {**settings, "executor": "ray", "ray_address": "auto"})
                    assert local["sha"] == dist["sha"], "the Ray build's shards differ from the local build's"
                    rows.append((size, pack, local, dist))
    finally:
        subprocess.run(["ray", "stop", "--force"], check=True, capture_output=True)
    print("| conversations | packed | local s | Ray s | Ray / local | local driver MB | Ray driver MB |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for size, pack, local, dist in rows:
        print(f"| {size:,} | {'yes' if pack else 'no'} | {local['wall']:.2f} | {dist['wall']:.2f} | "
              f"{dist['wall'] / local['wall']:.2f} | {local['rss_mb']:.0f} | {dist['rss_mb']:.0f} |")
    print()
    print("| conversations | packed | map s | per unit s | write s | serial s | projected conversations/s on 1 / 2 / 4 / 8 / 16 nodes |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | --- |")
    for size, pack, _, dist in rows:
        s = dist["seconds"]
        serial = dist["wall"] - s["map"] - s["write"]
        rates = " / ".join(f"{size / projection(dist, args.cpus, n):,.0f}" for n in (1, 2, 4, 8, 16))
        print(f"| {size:,} | {'yes' if pack else 'no'} | {s['map']:.2f} | {s['map'] * args.cpus / dist['units']:.2f} | "
              f"{s['write']:.2f} | {serial:.2f} | {rates} |")


if __name__ == "__main__":
    main()
