"""Interactive viewers for notebooks 02 and 05: a slice/lobe viewer and a perturbation viewer.

Everything that decides what a picture shows is a pure function of arrays (:func:`plane`,
:func:`render_slice`, :func:`perturbed_volume`, :func:`perturbation_panels`, ...), testable and
usable without a browser. The widget classes only wire ipywidgets controls to those functions and
show the result as PNG bytes in an ``ipywidgets.Image`` with an HTML caption, so they also work
headless (no ``Output`` widget, no ``plt.show``).

Orientation follows :func:`ctbrainage.plots.common.canonical_slices`: volumes are brought to the
closest RAS orientation, and slices are shown with anterior up on axial planes and superior up on
coronal and sagittal planes (patient right on the image right, as in ``canonical_slices``).
"""

from __future__ import annotations

import functools
import html
import io as _io
import json
from collections.abc import Iterable
from pathlib import Path

import ipywidgets as w
import nibabel as nib
import numpy as np
import pandas as pd
from matplotlib.colors import to_rgb

from ctbrainage.lobes import LOBE_IDS, LOBES
from ctbrainage.plots.common import LOBE_COLOURS

AXES = ("axial", "coronal", "sagittal")
_AXIS_DIM = {"axial": 2, "coronal": 1, "sagittal": 0}
DEFAULT_SEED = 42  # Profile.seed's default: used when neither the caller nor the run says
DISPLAY_SIZE = 320  # pixels along the longer side of a shown slice


# ---- pure rendering -------------------------------------------------------------------------
def _dim(axis: str) -> int:
    if axis not in _AXIS_DIM:
        raise ValueError(f"unknown axis {axis!r}; choose from {', '.join(AXES)}")
    return _AXIS_DIM[axis]


def _lobe_id(lobe: int | str) -> int:
    """The label of a lobe given by name or label."""
    if isinstance(lobe, str) and lobe in LOBE_IDS:
        return LOBE_IDS[lobe]
    if not isinstance(lobe, str) and int(lobe) in LOBES:
        return int(lobe)
    raise ValueError(f"unknown lobe {lobe!r}; choose from {', '.join(LOBES.values())}")


def plane(volume: np.ndarray, axis: str, index: int) -> np.ndarray:
    """Slice ``index`` of a RAS-ordered volume [i, j, k] along ``axis``, in display order
    (row 0 at the top): anterior up on axial, superior up on coronal and sagittal."""
    dim = _dim(axis)
    n = volume.shape[dim]
    if not 0 <= index < n:
        raise IndexError(f"{axis} slice {index} outside 0..{n - 1}")
    return np.flipud(np.take(volume, index, axis=dim).T)


def pixel_aspect(spacing, axis: str) -> float:
    """Height / width of one pixel of a slice along ``axis`` (voxel ``spacing`` in i, j, k)."""
    _dim(axis)
    sx, sy, sz = (float(s) for s in spacing)
    return {"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}[axis]


def window_grey(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Intensities mapped linearly from ``window`` (lo, hi) to 0..255 grey levels (uint8)."""
    lo, hi = float(window[0]), float(window[1])
    scaled = (np.asarray(values, np.float64) - lo) / max(hi - lo, 1e-12)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


def render_slice(
    volume: np.ndarray,
    labels: np.ndarray | None,
    axis: str,
    index: int,
    window: tuple[float, float] = (0.0, 1.0),
    lobes_on: Iterable[int | str] | None = None,
    opacity: float = 0.4,
) -> np.ndarray:
    """One slice as an RGB image (uint8 [rows, columns, 3], display order): the windowed grey
    volume, with each lobe in ``lobes_on`` (names or labels; default all) blended in its
    :data:`LOBE_COLOURS` colour at ``opacity``. Right-hemisphere labels (11-14) count as their
    lobe."""
    grey = window_grey(plane(volume, axis, index), window).astype(np.float64)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if labels is not None and opacity > 0:
        if labels.shape != volume.shape:
            raise ValueError(f"lobe labels {labels.shape} do not match the volume {volume.shape}")
        lab = plane(labels, axis, index).astype(np.int64)
        lobe = np.where(lab > 10, lab - 10, lab)
        chosen = tuple(LOBES) if lobes_on is None else [_lobe_id(x) for x in lobes_on]
        alpha = float(np.clip(opacity, 0.0, 1.0))
        for k in chosen:
            inside = lobe == k
            colour = 255 * np.asarray(to_rgb(LOBE_COLOURS[LOBES[k]]))
            rgb[inside] = (1 - alpha) * rgb[inside] + alpha * colour
    return np.round(rgb).astype(np.uint8)


def to_png(rgb: np.ndarray, aspect: float = 1.0, size: int = DISPLAY_SIZE) -> bytes:
    """PNG bytes of an RGB image, enlarged (nearest neighbour) so its longer side is about
    ``size`` pixels, with pixels ``aspect`` times taller than wide."""
    from PIL import Image

    rows, cols = rgb.shape[:2]
    scale = size / max(cols, rows * aspect)
    shape = (max(1, round(cols * scale)), max(1, round(rows * aspect * scale)))
    buffer = _io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).resize(shape, Image.NEAREST).save(buffer, "png")
    return buffer.getvalue()


def lobe_centre(labels: np.ndarray, lobe: int | str, axis: str) -> int:
    """Index of the slice along ``axis`` through the centre of ``lobe`` (the middle slice when
    the lobe is absent)."""
    where = np.nonzero(labels == _lobe_id(lobe))[_dim(axis)]
    return int(round(where.mean())) if where.size else labels.shape[_dim(axis)] // 2


def perturbed_volume(
    volume: np.ndarray,
    labels: np.ndarray,
    lobe: int | str,
    *,
    subject_id: str,
    seed: int,
    fill: str = "noise",
    repeat: int = 0,
) -> np.ndarray:
    """``volume`` with one lobe replaced by the fill of step 05 (the exact input the model saw
    for this subject, lobe and repeat). Arrays in the on-disk voxel order: the noise is drawn in
    that order."""
    from ctbrainage.perturb import fill_baseline

    k = _lobe_id(lobe)
    filled = fill_baseline(
        volume, labels, repeat, subject_id=subject_id, seed=seed, fill=fill, lobes=(k,)
    )
    return np.where(labels == k, filled[0].numpy(), volume).astype(np.float32)


def perturbation_caption(
    subject_id: str, age: float, lobe: str, fill: str, seed: int, rows: pd.DataFrame, repeat: int
) -> str:
    """What masking ``lobe`` did to one subject's prediction: whole and masked prediction and
    ΔAE of the shown ``repeat``, and their means when there are several repeats."""
    head = f"{subject_id} · age {age:.2f} months · {lobe} lobe, {fill} fill (seed {seed})"
    if rows.empty:
        return f"{head}\nno perturbation results for this subject and lobe"
    shown = rows[rows["repeat"] == repeat]
    if shown.empty:
        raise ValueError(
            f"{subject_id}: no repeat {repeat} of the {lobe} lobe (repeats "
            f"{', '.join(map(str, sorted(rows['repeat'])))})"
        )
    row = shown.iloc[0]
    text = (
        f"{head}, repeat {repeat} of {len(rows)}\n"
        f"whole prediction {row['pred_whole']:.2f} months, masked {row['pred_masked']:.2f} months,"
        f" ΔAE {row['delta_ae']:+.2f} months"
    )
    if len(rows) > 1:
        text += (
            f"\nmean over {len(rows)} repeats: masked {rows['pred_masked'].mean():.2f} months,"
            f" ΔAE {rows['delta_ae'].mean():+.2f} months"
        )
    return text


# ---- run-directory access -------------------------------------------------------------------
def _run_path(run_dir) -> Path:
    """A run directory given as a path or a :class:`~ctbrainage.config.Profile`."""
    return Path(getattr(run_dir, "run_path", run_dir))


def _canonical(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return np.asarray(nib.as_closest_canonical(nib.Nifti1Image(array, affine)).dataobj)


@functools.lru_cache(maxsize=8)
def _read_subject(folder: str, subject_id: str, stamp: tuple):
    run = Path(folder)
    image = nib.load(run / "preprocessed" / f"{subject_id}.nii.gz")
    volume = np.asarray(image.dataobj, np.float32)
    path = run / "lobes" / f"{subject_id}.nii.gz"
    labels = np.asarray(nib.load(path).dataobj).astype(np.uint8) if path.exists() else None
    canon = nib.as_closest_canonical(image)
    spacing = tuple(float(z) for z in canon.header.get_zooms()[:3])
    return volume, labels, image.affine, spacing


def load_subject(run_dir, subject_id: str):
    """(volume, labels or None, affine, RAS spacing) of one subject of a run, in the on-disk
    voxel order; cached while the files are unchanged."""
    run = _run_path(run_dir)
    path = run / "preprocessed" / f"{subject_id}.nii.gz"
    if not path.exists():
        raise ValueError(f"unknown subject {subject_id!r}: no preprocessed volume {path}")
    lobes = run / "lobes" / f"{subject_id}.nii.gz"
    stamp = tuple(p.stat().st_mtime_ns if p.exists() else 0 for p in (path, lobes))
    return _read_subject(str(run), subject_id, stamp)


def load_perturbation(run_dir, perturbation=None, fill: str | None = None) -> pd.DataFrame | None:
    """The perturbation table (a DataFrame, a CSV path, or by default the run's
    ``perturbation_<fill>.csv`` or ``perturbation.csv``), restricted to ``fill`` when given;
    None when the run has none."""
    if isinstance(perturbation, pd.DataFrame):
        table = perturbation.copy()
    else:
        run = _run_path(run_dir)
        candidates = [Path(perturbation)] if perturbation is not None else []
        if perturbation is None and fill:
            candidates.append(run / f"perturbation_{fill}.csv")
        candidates.append(run / "perturbation.csv")
        found = next((p for p in candidates if p.exists()), None)
        if found is None:
            if perturbation is not None:
                raise ValueError(f"no perturbation table {perturbation}")
            return None
        table = pd.read_csv(found, dtype={"subject_id": str})
        table.attrs["path"] = str(found)
    if fill and "fill" in table:
        table = table[table["fill"] == fill]
        if table.empty:
            raise ValueError(f"the perturbation table has no rows with fill {fill!r}")
    return table


def _table_settings(table: pd.DataFrame | None, fill: str | None, seed: int | None):
    """Fill and seed: the caller's, else the table's (its fill column and the ``.json`` record
    beside its file), else ``noise`` and :data:`DEFAULT_SEED`."""
    if fill is None and table is not None and "fill" in table and table["fill"].nunique() == 1:
        fill = str(table["fill"].iloc[0])
    path = Path(table.attrs.get("path", "")) if table is not None else None
    if path is not None and path.suffix == ".csv" and path.with_suffix(".json").exists():
        params = json.loads(path.with_suffix(".json").read_text()).get("params", {})
        seed = params.get("seed") if seed is None else seed
        fill = params.get("fill") if fill is None else fill
    return fill or "noise", DEFAULT_SEED if seed is None else int(seed)


def _predictions(run: Path) -> pd.DataFrame:
    path = run / "predictions.csv"
    if not path.exists():
        raise ValueError(f"no predictions in {run} (predictions.csv; run step 03)")
    return pd.read_csv(path, dtype={"subject_id": str}).set_index("subject_id")


def perturbation_panels(
    run_dir,
    subject_id: str,
    lobe: int | str,
    fill: str = "noise",
    seed: int = DEFAULT_SEED,
    perturbation_table: pd.DataFrame | None = None,
    axis: str = "axial",
    index: int | None = None,
    repeat: int = 0,
    window: tuple[float, float] = (0.0, 1.0),
) -> tuple[np.ndarray, np.ndarray, str]:
    """(original RGB, perturbed RGB, caption) of one subject with ``lobe`` filled: the slice
    ``index`` along ``axis`` (default: through the lobe's centre) of the model input and of the
    input of perturbation ``repeat``; the caption gives age, whole and masked prediction and
    ΔAE from the table's row of that repeat (and the mean over repeats)."""
    run = _run_path(run_dir)
    predictions = _predictions(run)
    if subject_id not in predictions.index:
        raise ValueError(f"unknown subject {subject_id!r}: not in {run / 'predictions.csv'}")
    volume, labels, affine, _ = load_subject(run, subject_id)
    if labels is None:
        raise ValueError(f"{subject_id}: lobe labels missing (lobes/{subject_id}.nii.gz)")
    name = LOBES[_lobe_id(lobe)]
    changed = perturbed_volume(
        volume, labels, name, subject_id=subject_id, seed=seed, fill=fill, repeat=repeat
    )
    original, perturbed = _canonical(volume, affine), _canonical(changed, affine)
    if index is None:
        index = lobe_centre(_canonical(labels, affine), name, axis)
    rows = pd.DataFrame(columns=["repeat", "pred_whole", "pred_masked", "delta_ae"])
    if perturbation_table is not None:
        table = perturbation_table
        keep = (table["subject_id"].astype(str) == subject_id) & (table["lobe"] == name)
        if "fill" in table:
            keep &= table["fill"] == fill
        rows = table[keep].sort_values("repeat")
    age = float(predictions.loc[subject_id, "age_months"])
    text = perturbation_caption(subject_id, age, name, fill, seed, rows, repeat)
    if rows.empty:
        text += f"; whole prediction {predictions.loc[subject_id, 'predicted_months']:.2f} months"
    return (
        render_slice(original, None, axis, index, window),
        render_slice(perturbed, None, axis, index, window),
        text,
    )


# ---- widgets --------------------------------------------------------------------------------
def _caption_html(text: str) -> str:
    return "<br>".join(html.escape(line) for line in text.splitlines())


class _Displayable:
    widget: w.Widget

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


class SliceViewer(_Displayable):
    """A volume with optional lobe labels (RAS-ordered arrays [i, j, k]): axis, slice,
    window, per-lobe overlay toggles and opacity. ``.image`` holds the PNG, ``.rgb`` the
    rendered array, ``.caption`` the text; display the viewer (or ``.widget``) in a notebook."""

    def __init__(
        self,
        volume: np.ndarray,
        labels: np.ndarray | None = None,
        spacing=None,
        window: tuple[float, float] | None = None,
        opacity: float = 0.4,
        title: str = "",
        size: int = DISPLAY_SIZE,
    ):
        self.volume = np.asarray(volume, np.float32)
        if self.volume.ndim != 3:
            raise ValueError(f"expected a 3-D volume, got shape {self.volume.shape}")
        self.labels = None if labels is None else np.asarray(labels)
        if self.labels is not None and self.labels.shape != self.volume.shape:
            raise ValueError(
                f"lobe labels {self.labels.shape} do not match the volume {self.volume.shape}"
            )
        self.spacing = (1.0, 1.0, 1.0) if spacing is None else tuple(map(float, spacing))
        self.title, self.size = title, size
        lo, hi = float(self.volume.min()), float(self.volume.max())
        hi = hi if hi > lo else lo + 1.0
        self.axis = w.ToggleButtons(options=AXES, value="axial", description="axis")
        self.slice = w.IntSlider(description="slice", continuous_update=False)
        self.window = w.FloatRangeSlider(
            value=window or (lo, hi),
            min=min(lo, *(window or (lo,))),
            max=max(hi, *(window or (hi,))),
            step=(hi - lo) / 200,
            description="window",
            continuous_update=False,
            readout_format=".2f",
        )
        self.lobes = {
            name: w.Checkbox(value=True, description=name, indent=False) for name in LOBES.values()
        }
        self.opacity = w.FloatSlider(
            value=opacity, min=0.0, max=1.0, step=0.05, description="opacity"
        )
        self.image = w.Image(format="png")
        self.caption = w.HTML()
        self.rgb = np.zeros((0, 0, 3), np.uint8)
        self._updating = False
        self._set_axis_range()
        self.axis.observe(self._on_axis, "value")
        for control in (self.slice, self.window, self.opacity, *self.lobes.values()):
            control.observe(self._on_change, "value")
        overlay = []
        if self.labels is not None:
            overlay = [w.HBox(list(self.lobes.values())), self.opacity]
        controls = w.VBox([self.axis, self.slice, self.window, *overlay])
        self.widget = w.VBox([w.HBox([self.image, controls]), self.caption])
        self.update()

    @classmethod
    def from_run(cls, run_dir, subject_id: str, **kwargs) -> SliceViewer:
        """The preprocessed volume of ``subject_id`` with its lobe labels (if made), in RAS
        orientation."""
        volume, labels, affine, spacing = load_subject(run_dir, subject_id)
        return cls(
            _canonical(volume, affine),
            None if labels is None else _canonical(labels, affine),
            spacing,
            window=kwargs.pop("window", (0.0, 1.0)),
            title=kwargs.pop("title", subject_id),
            **kwargs,
        )

    @property
    def lobes_on(self) -> list[str]:
        return [name for name, box in self.lobes.items() if box.value]

    def _set_axis_range(self) -> None:
        n = self.volume.shape[_dim(self.axis.value)]
        self._updating = True
        try:
            self.slice.value = 0
            self.slice.max = n - 1
            self.slice.value = n // 2
        finally:
            self._updating = False

    def _on_axis(self, _change) -> None:
        self._set_axis_range()
        self.update()

    def _on_change(self, _change) -> None:
        if not self._updating:
            self.update()

    def update(self) -> None:
        """Render the current slice into ``.image`` and describe it in ``.caption``."""
        axis, index = self.axis.value, self.slice.value
        lo, hi = self.window.value
        self.rgb = render_slice(
            self.volume, self.labels, axis, index, (lo, hi), self.lobes_on, self.opacity.value
        )
        self.image.value = to_png(self.rgb, pixel_aspect(self.spacing, axis), self.size)
        parts = [
            f"{self.title + ' · ' if self.title else ''}{axis} slice {index} of {self.slice.max}",
            f"window [{lo:.2f}, {hi:.2f}] (width {hi - lo:.2f}, level {(lo + hi) / 2:.2f})",
        ]
        if self.labels is not None:
            shown = ", ".join(self.lobes_on) or "none"
            parts.append(f"lobes: {shown} at opacity {self.opacity.value:.2f}")
        self.caption.value = _caption_html(" · ".join(parts))


class PerturbationViewer(_Displayable):
    """One subject's model input beside its input with one lobe filled (step 05), with whole
    vs masked prediction and ΔAE from the perturbation table. Subject, lobe, repeat, axis and
    slice are controls; ``.original`` / ``.perturbed`` hold the PNGs, ``.original_rgb`` /
    ``.perturbed_rgb`` the arrays and ``.caption`` the text."""

    def __init__(
        self,
        run_dir,
        perturbation=None,
        fill: str | None = None,
        seed: int | None = None,
        size: int = DISPLAY_SIZE,
    ):
        self.run = _run_path(run_dir)
        self.table = load_perturbation(self.run, perturbation, fill)
        self.fill, self.seed = _table_settings(self.table, fill, seed)
        self.size = size
        predictions = _predictions(self.run)
        ids = list(predictions.index)
        if self.table is not None and not self.table.empty:
            done = set(self.table["subject_id"].astype(str))
            ids = [sid for sid in ids if sid in done]
        if not ids:
            raise ValueError(f"no subjects to show in {self.run}")
        ages = predictions["age_months"]
        repeats = 1
        if self.table is not None and not self.table.empty:
            repeats = int(self.table["repeat"].max()) + 1
        self.subject = w.Dropdown(
            options=[(f"{sid} ({ages[sid]:.1f} months)", sid) for sid in ids],
            description="subject",
        )
        self.lobe = w.Dropdown(options=list(LOBES.values()), description="lobe")
        self.repeat = w.IntSlider(
            value=0, min=0, max=repeats - 1, description="repeat", disabled=repeats == 1
        )
        self.axis = w.ToggleButtons(options=AXES, value="axial", description="axis")
        self.slice = w.IntSlider(description="slice", continuous_update=False)
        self.original, self.perturbed = w.Image(format="png"), w.Image(format="png")
        self.caption = w.HTML()
        self.original_rgb = self.perturbed_rgb = np.zeros((0, 0, 3), np.uint8)
        self.text = ""
        self._updating = False
        self._recentre()
        for control in (self.subject, self.lobe, self.axis):
            control.observe(self._on_view, "value")
        for control in (self.slice, self.repeat):
            control.observe(self._on_change, "value")
        titles = [w.HTML("<b>original</b>"), w.HTML("<b>lobe filled</b>")]
        panels = w.HBox([w.VBox([titles[0], self.original]), w.VBox([titles[1], self.perturbed])])
        controls = w.VBox([w.HBox([self.subject, self.lobe, self.repeat]), self.axis, self.slice])
        self.widget = w.VBox([controls, panels, self.caption])
        self.update()

    def _recentre(self) -> None:
        """Slice range for the axis, and the slice through the chosen lobe's centre."""
        _, labels, affine, self._spacing = load_subject(self.run, self.subject.value)
        if labels is None:
            raise ValueError(f"{self.subject.value}: lobe labels missing")
        canon = _canonical(labels, affine)
        axis = self.axis.value
        self._updating = True
        try:
            self.slice.value = 0
            self.slice.max = canon.shape[_dim(axis)] - 1
            self.slice.value = lobe_centre(canon, self.lobe.value, axis)
        finally:
            self._updating = False

    def _on_view(self, _change) -> None:
        if not self._updating:
            self._recentre()
            self.update()

    def _on_change(self, _change) -> None:
        if not self._updating:
            self.update()

    def show(self, subject: str | None = None, lobe: str | None = None) -> PerturbationViewer:
        """Select a subject and/or lobe (names checked, with a clear error); returns self."""
        if subject is not None:
            ids = [value for _, value in self.subject.options]
            if subject not in ids:
                raise ValueError(
                    f"unknown subject {subject!r}; this run shows {', '.join(ids[:5])}"
                    + (", ..." if len(ids) > 5 else "")
                )
        if lobe is not None:
            lobe = LOBES[_lobe_id(lobe)]
        self._updating = True
        try:
            if subject is not None:
                self.subject.value = subject
            if lobe is not None:
                self.lobe.value = lobe
        finally:
            self._updating = False
        self._recentre()
        self.update()
        return self

    def update(self) -> None:
        """Render both panels and the caption for the current controls."""
        self.original_rgb, self.perturbed_rgb, self.text = perturbation_panels(
            self.run,
            self.subject.value,
            self.lobe.value,
            fill=self.fill,
            seed=self.seed,
            perturbation_table=self.table,
            axis=self.axis.value,
            index=self.slice.value,
            repeat=self.repeat.value,
        )
        aspect = pixel_aspect(self._spacing, self.axis.value)
        self.original.value = to_png(self.original_rgb, aspect, self.size)
        self.perturbed.value = to_png(self.perturbed_rgb, aspect, self.size)
        self.caption.value = _caption_html(self.text)
