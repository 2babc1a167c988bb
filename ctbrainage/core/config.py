"""Profiles: typed, validated run settings loaded from ``configs/<name>.yaml`` plus overrides.

A profile is a tree of dataclasses. Unknown keys and wrongly typed values are errors that name the
offending key (and the nearest valid key). Every output path derives from one run directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ctbrainage.core.sections import (
    AttributionConfig,
    EvaluateConfig,
    LobesConfig,
    ModelConfig,
    MultitaskConfig,
    PerturbConfig,
    PreprocessConfig,
    RobustnessConfig,
    StackingConfig,
    StatsConfig,
    SynthConfig,
    TrainConfig,
    bounded,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "configs"


def repo_path(path: str | Path) -> Path:
    """``path`` as given when absolute, else relative to the repository (not the working
    directory, which differs between the command line and notebooks)."""
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path


def repo_relative(path: str | Path) -> str:
    """``path`` relative to the repository when it lies inside it, else absolute: how paths are
    shown in notebook parameters and outputs (no path of the machine that built them)."""
    path = Path(path).expanduser().resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


class ProfileError(ValueError):
    """A profile file or override that cannot be used."""


@dataclass(frozen=True)
class Profile:
    """All settings of one run."""

    name: str
    seed: int = bounded(42, minimum=0)
    run_dir: str = ""  # empty = runs/<name>, relative to the repository
    data: str = ""  # manifest CSV of a real cohort; empty = the embedded synthetic cohort
    age_range_months: tuple[float, float] = (0.0, 48.0)
    age_group_edges: tuple[float, ...] = (0.0, 12.0, 24.0, 36.0, 48.0)
    synth: SynthConfig = field(default_factory=SynthConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    lobes: LobesConfig = field(default_factory=LobesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    perturb: PerturbConfig = field(default_factory=PerturbConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    stacking: StackingConfig = field(default_factory=StackingConfig)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
    multitask: MultitaskConfig = field(default_factory=MultitaskConfig)

    def __post_init__(self) -> None:
        for problem in _inconsistencies(self):
            raise ProfileError(problem)

    @property
    def run_path(self) -> Path:
        return repo_path(self.run_dir or Path("runs") / self.name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _inconsistencies(p: Profile) -> list[str]:
    """What settings that are each within range contradict in one another."""
    problems = []
    low, high = p.age_range_months
    if not 0 <= low < high:
        problems.append(
            f"age_range_months: {list(p.age_range_months)} must be increasing, from >= 0"
        )
    edges = p.age_group_edges
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        problems.append(f"age_group_edges: {list(edges)} must be at least 2 increasing values")
    elif edges[0] < low or edges[-1] > high:
        problems.append(
            f"age_group_edges: {list(edges)} must lie inside age_range_months {[low, high]}"
        )
    pre = p.preprocess
    if pre.ptile_low >= pre.ptile_high:
        problems.append(
            f"preprocess.ptile_low {pre.ptile_low:g} must be below ptile_high {pre.ptile_high:g}"
        )
    unoise = p.attribution.unoise
    if not any(lo < hi for lo in unoise.v_min for hi in unoise.v_max):
        problems.append(
            f"attribution.unoise: no v_min {list(unoise.v_min)} is below a v_max "
            f"{list(unoise.v_max)}"
        )
    if not p.data and p.synth.n < p.train.folds:
        problems.append(
            f"train.folds: {p.train.folds} folds need at least as many children; the synthetic "
            f"cohort has synth.n = {p.synth.n}"
        )
    outside = [k for k in p.robustness.folds if not 0 <= k < p.train.folds]
    if outside or not p.robustness.folds:
        problems.append(
            f"robustness.folds: {list(p.robustness.folds)} must be folds of 0-{p.train.folds - 1}"
        )
    if pre.size % p.model.grid_multiple:
        problems.append(
            f"preprocess.size: {pre.size} is not a multiple of {p.model.grid_multiple}, which "
            f"model.arch {p.model.arch} needs (it halves the input 5 times)"
        )
    return problems


def encoder_size(p: Profile) -> int:
    """Edge of step 08's cube in voxels (``stacking.size``, or the model grid's)."""
    return p.stacking.size or p.preprocess.size


def stacking_size_problem(p: Profile) -> str:
    """Why step 08 cannot run on its grid, or "" (checked when step 08 is asked)."""
    stacking, size = p.stacking, encoder_size(p)
    if size > p.preprocess.size:
        return (
            f"stacking.size: {size} is larger than preprocess.size {p.preprocess.size} "
            "(step 08 averages the model grid onto a coarser one, never a finer one)"
        )
    unet = 2 ** (len(stacking.synthesis.channels) - 1)
    need = max(stacking.model.grid_multiple, unet)
    if size % need == 0:
        return ""
    which = "stacking.size" if stacking.size else "preprocess.size"
    return (
        f"{which}: {size} is not a multiple of {need}, which step 08 needs "
        f"({stacking.model.arch} and its U-Net of {len(stacking.synthesis.channels)} levels)"
    )


def available_profiles() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_profile(
    profile: str | Path = "demo", overrides: dict[str, Any] | None = None, **kwargs: Any
) -> Profile:
    """Load a profile by name (``configs/<name>.yaml``) or path (a relative one that is not
    found from the working directory: from the repository), then apply overrides.

    Overrides are nested dicts or dotted keys, e.g. ``{"train.epochs": 2}`` or
    ``synth={"n": 12}``; keyword arguments are overrides too (as papermill passes them).
    """
    path = Path(profile)
    if path.suffix in (".yaml", ".yml") and not path.exists():
        path = repo_path(path)
    if path.suffix not in (".yaml", ".yml"):
        path = CONFIG_DIR / f"{profile}.yaml"
        if not path.exists():
            available = available_profiles()
            raise ProfileError(
                f"unknown profile {str(profile)!r}{did_you_mean(str(profile), available)};"
                f" available: {', '.join(available)}"
            )
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ProfileError(f"{path}: expected a mapping at the top level")
    raw.setdefault("name", path.stem)
    for key, value in {**(overrides or {}), **kwargs}.items():
        _set_dotted(raw, key, value)
    return _build(Profile, raw, where="")


def profile_from_dict(values: dict[str, Any]) -> Profile:
    """A profile from its nested dict form (``Profile.to_dict``, e.g. a run's manifest.json or
    a bundle's profile), checked like a profile file."""
    return _build(Profile, dict(values), where="")


def profile_yaml(profile: Profile, header: str = "") -> str:
    """The whole profile as YAML (``load_profile`` reads it back), ``header`` as a comment."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return [plain(v) for v in value] if isinstance(value, list | tuple) else value

    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return comment + yaml.safe_dump(plain(profile.to_dict()), sort_keys=False)


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
        if not isinstance(tree, dict):
            raise ProfileError(f"override {key!r}: {part!r} is not a section")
    if isinstance(value, dict) and isinstance(tree.get(leaf), dict):
        tree[leaf] = {**tree[leaf], **value}
    else:
        tree[leaf] = value


def did_you_mean(name: str, valid: list[str], prefix: str = "") -> str:
    """The hint " (did you mean 'x'?)" naming the entry of ``valid`` closest to ``name``,
    ``prefix`` prepended (e.g. "train."); "" when none is close."""
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ProfileError(f"{where.rstrip('.') or 'profile'}: expected a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ProfileError(
                f"unknown setting {where + key!r}{did_you_mean(key, list(fields), where)};"
                f" valid settings here: {', '.join(fields)}"
            )
        default = fields[key].default_factory
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict) and callable(default):
            # a section whose defaults differ from its class's (stacking.model): given keys
            # replace those defaults, the others keep them
            value = {**dataclasses.asdict(default()), **value}
        kwargs[key] = _coerce(hints[key], value, where + key)
        allowed = fields[key].metadata.get("range")
        items = kwargs[key] if isinstance(kwargs[key], tuple) else (kwargs[key],)
        if allowed is not None and not all(allowed.allows(v) for v in items):
            raise ProfileError(
                f"{where + key}: {value!r} is out of range; allowed: {allowed}"
                + (" (each value)" if isinstance(kwargs[key], tuple) else "")
            )
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise ProfileError(f"{where.rstrip('.') or 'profile'}: {err}") from None


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ProfileError(
                f"{key}: {value!r} is not one of {', '.join(map(repr, choices))}"
                f"{did_you_mean(str(value), [str(c) for c in choices])}"
            )
        return value
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, list | tuple):
            raise ProfileError(f"{key}: expected a list, got {value!r}")
        item_types = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        if len(item_types) != len(value):
            raise ProfileError(f"{key}: expected {len(item_types)} values, got {len(value)}")
        return tuple(_coerce(t, v, key) for t, v in zip(item_types, value, strict=True))
    if origin in (typing.Union, types.UnionType):
        raise ProfileError(f"{key}: union types are not supported in profiles")
    if hint is bool:
        if not isinstance(value, bool):
            raise ProfileError(f"{key}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProfileError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ProfileError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ProfileError(f"{key}: expected a string, got {value!r}")
        return value
    raise ProfileError(f"{key}: unsupported setting type {hint!r}")
