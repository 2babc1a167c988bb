"""Command line: ``python -m ctbrainage.synth --n N --out DIR --seed S [...]``.

Without --n/--out/--seed/--mode/--schedule/--cues the values come from the profile (default:
demo), so ``python -m ctbrainage.synth --profile demo`` writes the demo cohort into the demo run
directory.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ctbrainage.core.config import ProfileError, load_profile
from ctbrainage.core.layout import RunLayout, SyntheticLayout
from ctbrainage.synth.generate import AGE_LIMITS, CohortError, generate_cohort
from ctbrainage.synth.schedule import ScheduleError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ctbrainage.synth",
        description="Generate a synthetic pediatric head-CT cohort (0-47 months) with a planted "
        "white-matter maturation schedule and full ground truth.",
    )
    p.add_argument("--profile", default="demo", help="profile supplying defaults (default: demo)")
    p.add_argument("--n", type=int, help="number of subjects (demo: 120; the paper had 201)")
    p.add_argument("--out", type=Path, help="output folder (default: <run dir>/synthetic)")
    p.add_argument("--seed", type=int, help="cohort seed (default: the profile's seed)")
    p.add_argument(
        "--schedule",
        help="physiological | staggered | reversed | order=a,b,c,d | null=lobe "
        "(combine with +) | path to a schedule .json",
    )
    p.add_argument(
        "--cues",
        choices=["all", "lobar", "none"],
        help="age cues: all (default) | lobar = lobar white matter only, every other tissue "
        "at the reference age | none = every tissue at the reference age (negative control)",
    )
    p.add_argument("--format", choices=["nifti", "dicom"], help="image format (default nifti)")
    res = p.add_mutually_exclusive_group()
    res.add_argument(
        "--full-res",
        dest="mode",
        action="store_const",
        const="full-res",
        help="512 x 512, 0.35-0.5 mm pixels, 0.625 mm slices (the paper's protocol)",
    )
    res.add_argument(
        "--demo-res",
        dest="mode",
        action="store_const",
        const="demo",
        help="192 x 192, ~1.1 mm pixels, 2 mm slices (default)",
    )
    res.add_argument(
        "--quick-res",
        dest="mode",
        action="store_const",
        const="quick",
        help="128 x 128, ~1.7 mm pixels, 4 mm slices (tests and smoke runs)",
    )
    p.add_argument("--age-min", type=float, default=AGE_LIMITS[0], help="months (default 0)")
    p.add_argument(
        "--age-max", type=float, default=AGE_LIMITS[1], help="months, exclusive (default 48)"
    )
    p.add_argument("--tilt-fraction", type=float, help="share of gantry-tilted scans (10-20°)")
    p.add_argument("--workers", type=int, help="parallel processes (default: all cores)")
    p.add_argument("--figure", type=Path, help="also draw the cohort overview figure here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        profile = load_profile(args.profile)
        synth = profile.synth
        out = SyntheticLayout(args.out) if args.out else RunLayout(profile.run_path).synthetic
        start = time.perf_counter()
        manifest = generate_cohort(
            out.root,
            n=args.n if args.n is not None else synth.n,
            seed=args.seed if args.seed is not None else profile.seed,
            schedule=args.schedule or synth.schedule,
            mode=args.mode or synth.mode,
            fmt=args.format or synth.format,
            age_range=(args.age_min, args.age_max),
            tilt_fraction=(
                args.tilt_fraction if args.tilt_fraction is not None else synth.gantry_tilt_fraction
            ),
            workers=args.workers if args.workers is not None else synth.workers,
            age_group_edges=profile.age_group_edges,
            progress=not args.quiet,
            cues=args.cues or synth.cues,
        )
    except (CohortError, ScheduleError, ProfileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"{len(manifest)} subjects in {out.root} ({time.perf_counter() - start:.1f} s); "
        f"manifest {out.manifest}"
    )
    if args.figure:
        from ctbrainage.views.plots import synthetic_cohort_figure

        synthetic_cohort_figure(out, args.figure)
        print(f"figure {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
