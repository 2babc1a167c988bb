"""Seconds and peak memory per synthetic subject, demo and full-res, on one core.

Targets (issue #2): demo subject <= 2 s; full-res subject <= 20 s and <= 3 GB.
Peer, measured in the same run: reading the generated image back with nibabel (decompression
alone) — the ratio says how much more a subject costs to make than to load.

Each measurement runs in a fresh process (peak RSS is per process); the template is cached first
so its one-off construction is not counted. Usage: python benchmarks/bench_synth.py [--full-res-n 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, os, resource, sys, time
os.environ.setdefault("OMP_NUM_THREADS", "1")
import nibabel as nib, numpy as np
from ctbrainage.imaging import ctio
from ctbrainage.synth.generate import cohort_specs
from ctbrainage.synth.head import cached_template, ACQUISITIONS, simulate_head
from ctbrainage.synth.schedule import MaturationSchedule
mode, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cached_template(ACQUISITIONS[mode].template_mm)
schedule = MaturationSchedule()
make, load = [], []
for spec in cohort_specs(n, seed=1):
    t = time.perf_counter()
    head = simulate_head(spec, schedule, mode)
    path = os.path.join(out, spec.subject_id + ".nii.gz")
    ctio.write_nifti(path, head.hu, head.affine)
    make.append(time.perf_counter() - t)
    t = time.perf_counter()
    np.asarray(nib.load(path).dataobj)
    load.append(time.perf_counter() - t)
peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"make": make, "load": load, "peak_gb": peak_gb, "shape": list(head.hu.shape)}))
"""


def measure(mode: str, n: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as out:
        # taskset pins the process to one core where available
        cmd = [sys.executable, "-c", CHILD, mode, str(n), out]
        if os.path.exists("/usr/bin/taskset"):
            cmd = ["taskset", "-c", "0", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-n", type=int, default=6)
    parser.add_argument("--full-res-n", type=int, default=2)
    args = parser.parse_args()
    targets = {"demo": (2.0, None), "full-res": (20.0, 3.0)}
    print(
        f"{'mode':9} {'shape':>16} {'s/subject':>10} {'target':>7} {'load s':>7} "
        f"{'make/load':>9} {'peak GB':>8} {'target':>7}"
    )
    ok = True
    for mode, n in (("demo", args.demo_n), ("full-res", args.full_res_n)):
        r = measure(mode, n)
        make = sum(r["make"]) / n
        load = sum(r["load"]) / n
        t_sec, t_gb = targets[mode]
        ok &= make <= t_sec and (t_gb is None or r["peak_gb"] <= t_gb)
        print(
            f"{mode:9} {'x'.join(map(str, r['shape'])):>16} {make:10.2f} {t_sec:7.1f} "
            f"{load:7.2f} {make / load:9.1f} {r['peak_gb']:8.2f} "
            f"{'-' if t_gb is None else f'{t_gb:.1f}':>7}"
        )
    print("targets met" if ok else "TARGETS MISSED")


if __name__ == "__main__":
    main()
