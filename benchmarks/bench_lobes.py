"""Seconds per subject for the atlas lobe method on 2 cores (target <= 30 s), at the demo grid
(64³ at 3 mm) and the paper grid (128³ at 1.5 mm).

Peer: TotalSegmentator's ``brain_structures`` cannot run here (licensed weights, no network), so
its cost is the documented one, not measured: the 3D Slicer TotalSegmentator extension documents
40-50 min on CPU and a few minutes on GPU for a full-quality segmentation (SlicerTotalSegmentator
README). Usage: python benchmarks/bench_lobes.py [--n 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

from ctbrainage.imaging import ctio
from ctbrainage.imaging.preprocess import preprocess_scan
from ctbrainage.lobes.segment import atlas_lobes, build_atlas
from ctbrainage.synth import generate_cohort

GRIDS = {"demo": (3.0, 64), "paper": (1.5, 128)}
TOTALSEG_CPU_S = (40 * 60, 50 * 60)  # documented, full-quality, CPU


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3)
    args = parser.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = generate_cohort(Path(tmp), n=args.n, seed=3, workers=2, progress=False)
        scans = [ctio.read_ct(Path(tmp) / image).image for image in manifest["image"]]
    print(
        f"{'grid':6} {'atlas build s':>13} {'s/subject':>10} {'target':>7} "
        f"{'TotalSegmentator CPU (documented)':>34}"
    )
    ok = True
    for name, (spacing, size) in GRIDS.items():
        start = time.perf_counter()
        build_atlas(spacing, size)
        build_s = time.perf_counter() - start
        inputs = [preprocess_scan(scan, spacing, size, (0.5, 99.5)) for scan in scans]
        start = time.perf_counter()
        for result in inputs:
            atlas_lobes(result.image, result.brain, result.affine)
        per_subject = (time.perf_counter() - start) / len(inputs)
        ok &= per_subject <= 30.0
        lo, hi = (t / per_subject for t in TOTALSEG_CPU_S)
        print(
            f"{name:6} {build_s:13.1f} {per_subject:10.2f} {30.0:7.1f} "
            f"{'40-50 min (' + f'{lo:.0f}-{hi:.0f}x ours)':>34}"
        )
    print("targets met" if ok else "TARGETS MISSED")


if __name__ == "__main__":
    main()
