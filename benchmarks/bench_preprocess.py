"""Seconds and peak memory per full-res scan for the whole preprocessing, on two cores.

Targets (issue): <= 10 s and <= 3 GB per full-res scan (512x512, ~250 slices) on 2 cores.
Peer, measured in the same run and process on the same input: the resample + crop + rescale
stages done with the equivalent TorchIO transforms; ours must not be slower (ratio <= 1.0).

Each scan runs in a fresh process (peak RSS is per process) limited to two threads; peak memory
is taken right after the whole preprocessing, before the stage comparison. Synthetic subjects are
generated once into a temporary folder, or completed/reused in --cohort.
Usage: python benchmarks/bench_preprocess.py [--n 2] [--cohort DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, os, resource, sys, time
os.environ["OMP_NUM_THREADS"] = "2"
import numpy as np, SimpleITK as sitk, torch, torchio as tio
from ctbrainage.imaging import ctio
from ctbrainage.imaging import preprocess as pp
sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
torch.set_num_threads(2)
SPACING, SIZE, PTILE = 1.5, 128, (0.5, 99.5)  # the paper profile's settings

t = time.perf_counter()
scan = ctio.read_ct(sys.argv[1])
read_s = time.perf_counter() - t
t = time.perf_counter()
result = pp.preprocess_scan(scan.image, spacing_mm=SPACING, size=SIZE, ptile=PTILE)
prep_s = time.perf_counter() - t
peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

# stage comparison: mask and orientation as found above (not timed), same working-grid HU image
work = pp.to_working_grid(scan.image)
mask, orientation = result.work_mask, result.orientation

t = time.perf_counter()  # ours: the stages that follow orient() in preprocess_scan
ours_img, ours_brain, _ = pp.sample_model_input(
    work, mask, result.intracranial, pp.output_grid(orientation, SPACING, SIZE), PTILE
)
ours_s = time.perf_counter() - t

# peer: TorchIO resamples along the image's own axes (no PCA rotation onto the brain's axes)
# (anti-aliased like ours), so it does slightly less work than ours
hu, affine = ctio.sitk_to_ras(work)
brain_work, _ = ctio.sitk_to_ras(mask)
subject = tio.Subject(
    ct=tio.ScalarImage(tensor=torch.from_numpy(hu[None]), affine=affine),
    brain=tio.LabelMap(tensor=torch.from_numpy(brain_work[None]), affine=affine),
)
peer = tio.Compose([
    tio.RescaleIntensity(out_min_max=(0, 1), percentiles=PTILE, masking_method="brain"),
    tio.Resample(SPACING, antialias=True),  # ours anti-aliases too
    tio.CropOrPad(SIZE, mask_name="brain"),
])
t = time.perf_counter()
out = peer(subject)
tio_s = time.perf_counter() - t

shapes = [list(ours_img.shape), list(out["ct"].shape[1:]), list(out["brain"].shape[1:])]
assert all(s == [SIZE] * 3 for s in shapes), shapes
ours_ml = float(ours_brain.sum()) * SPACING**3 / 1000
tio_ml = float((out["brain"].data > 0).sum()) * SPACING**3 / 1000
assert abs(ours_ml - tio_ml) <= 0.2 * tio_ml, (ours_ml, tio_ml)
print(json.dumps({
    "shape": list(scan.image.GetSize()), "read": read_s, "prep": prep_s, "peak_gb": peak_gb,
    "ours": ours_s, "tio": tio_s, "ours_ml": ours_ml, "tio_ml": tio_ml,
}))
"""


def measure(image: Path) -> dict:
    env = {**os.environ, **{f"{v}_NUM_THREADS": "2" for v in ("OMP", "OPENBLAS", "MKL")}}
    cmd = [sys.executable, "-c", CHILD, str(image)]
    if os.path.exists("/usr/bin/taskset") and (os.cpu_count() or 1) >= 2:
        cmd = ["taskset", "-c", "0,1", *cmd]  # two cores where available
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"child failed on {image.name}:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(cohort: Path, n: int) -> bool:
    # generated in its own process: a child's ru_maxrss starts from its parent's peak (it is kept
    # across fork/exec), so the parent must stay small
    make = "from ctbrainage.synth import generate_cohort as g; import sys; "
    make += "g(sys.argv[1], int(sys.argv[2]), seed=1, mode='full-res', workers=1, progress=False)"
    subprocess.run([sys.executable, "-c", make, str(cohort), str(n)], check=True)
    with open(cohort / "cohort.csv", newline="") as f:
        manifest = list(csv.DictReader(f))
    print(
        f"{'subject':10} {'shape':>12} {'read s':>7} {'prep s':>7} {'target':>6} {'peak GB':>8} "
        f"{'target':>6} {'ours s':>7} {'tio s':>6} {'ratio':>6} {'target':>6} {'brain mL':>13}"
    )
    ok = True
    for row in manifest:
        sid, r = row["subject_id"], measure(cohort / row["image"])
        ratio = r["ours"] / r["tio"]
        ok &= r["prep"] <= 10.0 and r["peak_gb"] <= 3.0 and ratio <= 1.0
        print(
            f"{sid:10} {'x'.join(map(str, r['shape'])):>12} {r['read']:7.2f} {r['prep']:7.2f} "
            f"{10.0:6.1f} {r['peak_gb']:8.2f} {3.0:6.1f} {r['ours']:7.2f} {r['tio']:6.2f} "
            f"{ratio:6.2f} {1.0:6.1f} {r['ours_ml']:6.0f}/{r['tio_ml']:<6.0f}"
        )
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2, help="full-res subjects")
    parser.add_argument("--cohort", type=Path, help="folder to generate into or reuse")
    args = parser.parse_args()
    if args.cohort:
        ok = run(args.cohort, args.n)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            ok = run(Path(tmp), args.n)
    print("targets met" if ok else "TARGETS MISSED")


if __name__ == "__main__":
    main()
