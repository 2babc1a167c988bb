"""Wall time and peak memory of brain age for new scans (``python -m ctbrainage.apps.predict``).

Target (issue 16): 20 new demo-size scans (preprocessing + lobes + the fold ensemble, pages
included) in <= 2 minutes on 2 cores with <= 4 GB peak memory (all processes together).
Peer, measured in the same run on the same scans: steps 01 and 02 of the training pipeline alone
(validation, preprocessing and lobe labels with the same settings); the ratio ours / peer is what
the ensemble, the lobe ΔAE and the report pages add on top of the preprocessing every scan needs.

The bundle is exported from a finished demo run (``make demo``) and the scans are a new synthetic
cohort with another seed; neither is timed. Each side runs in a fresh process from an empty
output folder; memory is the largest sum of the resident sets of the process and its workers,
sampled every 0.1 s. Usage: python benchmarks/bench_predict.py [--run runs/demo] [--n 20]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

PEER = r"""
import sys
from pathlib import Path
from ctbrainage.apps.bundle import load_bundle
from ctbrainage.apps.predict import prediction_profile
from ctbrainage.steps import s01_preprocess, s02_lobes
profile = prediction_profile(load_bundle(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), 0)
s01_preprocess.run(profile, progress=False)
s02_lobes.run(profile, progress=False)
"""


def measure(command: list[str]) -> tuple[float, float]:
    """(seconds, peak GB of the process tree) of one command."""
    start = time.perf_counter()
    process = subprocess.Popen(command)
    root, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.1)
    if process.returncode:
        sys.exit(f"{' '.join(command[:4])} … failed with exit code {process.returncode}")
    return time.perf_counter() - start, peak / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="a finished run")
    parser.add_argument("--n", type=int, default=20, help="new scans")
    parser.add_argument("--seed", type=int, default=2027, help="seed of the new cohort")
    args = parser.parse_args()
    python = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run(
            [
                python,
                "-m",
                "ctbrainage.apps.bundle",
                "export",
                str(args.run),
                str(tmp / "bundle"),
                "--no-progress",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        subprocess.run(
            [
                python,
                "-m",
                "ctbrainage.synth",
                "--n",
                str(args.n),
                "--seed",
                str(args.seed),
                "--out",
                str(tmp / "new"),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        manifest = tmp / "new" / "cohort.csv"
        peer_s, peer_gb = measure(
            [python, "-c", PEER, str(tmp / "bundle"), str(manifest), str(tmp / "peer")]
        )
        ours_s, ours_gb = measure(
            [
                python,
                "-m",
                "ctbrainage.apps.predict",
                "--bundle",
                str(tmp / "bundle"),
                "--data",
                str(manifest),
                "--out",
                str(tmp / "ours"),
                "--no-progress",
            ]
        )
    print(f"{args.n} new scans, 2 cores; bundle from {args.run}")
    print(f"{'':34}{'seconds':>10}{'peak GB':>10}")
    print(f"{'peer: steps 01 + 02 alone':34}{peer_s:10.1f}{peer_gb:10.2f}")
    print(f"{'ours: ctbrainage.apps.predict':34}{ours_s:10.1f}{ours_gb:10.2f}")
    print(f"ratio ours / peer: time {ours_s / peer_s:.2f}x, memory {ours_gb / peer_gb:.2f}x")
    if args.n == 20:
        verdict = "met" if ours_s <= 120 and ours_gb <= 4 else "NOT met"
        print(f"target <= 120 s and <= 4 GB: {verdict} ({ours_s:.0f} s, {ours_gb:.2f} GB)")
    else:
        print("(the target, <= 120 s and <= 4 GB, is for 20 scans: --n 20)")


if __name__ == "__main__":
    main()
