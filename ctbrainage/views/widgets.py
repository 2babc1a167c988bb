"""Interactive viewers for notebooks 02 and 05: a slice/lobe viewer and a perturbation viewer.

Everything that decides what a picture shows is a pure function of arrays (:func:`plane`,
:func:`render_slice`, :func:`perturbation_panels`, ...), testable and usable without a browser.
The arrays come from :mod:`ctbrainage.imaging.run_arrays` (the only reader of a run's files and
the only
builder of a lobe-filled volume). The widget classes only wire ipywidgets controls to those
functions and show the result as PNG bytes in an ``ipywidgets.Image`` with an HTML caption, so
they also work headless (no ``Output`` widget, no ``plt.show``).

Orientation follows :func:`ctbrainage.views.plots.common.canonical_slices`: volumes are brought to
the
closest RAS orientation, and slices are shown with anterior up on axial planes and superior up on
coronal and sagittal planes (patient right on the image right, as in ``canonical_slices``).
"""

from __future__ import annotations

import abc
import base64
import html
import io as _io
import textwrap
from collections.abc import Iterable

import ipywidgets as w
import numpy as np
import pandas as pd
from matplotlib.colors import to_rgb

from ctbrainage.core.config import Profile
from ctbrainage.core.labels import LOBES
from ctbrainage.core.layout import RunLayout
from ctbrainage.imaging import run_arrays
from ctbrainage.imaging.run_arrays import SubjectImage, lobe_id
from ctbrainage.views.plots.common import LOBE_COLOURS

AXES = ("axial", "coronal", "sagittal")
_AXIS_DIM = {"axial": 2, "coronal": 1, "sagittal": 0}
DISPLAY_SIZE = 320  # pixels along the longer side of a shown slice


# ---- pure rendering -------------------------------------------------------------------------
def _dim(axis: str) -> int:
    if axis not in _AXIS_DIM:
        raise ValueError(f"unknown axis {axis!r}; choose from {', '.join(AXES)}")
    return _AXIS_DIM[axis]


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
        chosen = tuple(LOBES) if lobes_on is None else [lobe_id(x) for x in lobes_on]
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


def lobe_slice(labels: np.ndarray, lobes: int | str | Iterable[int | str], axis: str) -> int:
    """Index of the slice along ``axis`` with the most voxels of ``lobes`` (one or several, by
    name or label; right-hemisphere labels 11-14 count as their lobe); the middle slice when
    none is there. For a bilateral lobe on sagittal planes this is a slice through one
    hemisphere, not the midline between them."""
    dim = _dim(axis)
    chosen = [lobes] if isinstance(lobes, str | int) else list(lobes)
    labels = np.asarray(labels)
    inside = np.isin(np.where(labels > 10, labels - 10, labels), [lobe_id(x) for x in chosen])
    counts = inside.sum(axis=tuple(d for d in range(3) if d != dim))
    return int(counts.argmax()) if counts.any() else labels.shape[dim] // 2


def static_picture(
    panels: list[tuple[str, np.ndarray, float]], caption: str, size: int = DISPLAY_SIZE
) -> bytes:
    """PNG of ``panels`` (title, RGB image, pixel aspect) side by side with ``caption`` below:
    what a viewer shows where no kernel runs it (a stored notebook, an exported page)."""
    from matplotlib.figure import Figure

    width = int(len(panels) * size / 6.2)  # characters of 8 pt per line
    caption = "\n".join(textwrap.fill(line, width) for line in caption.splitlines())
    lines = caption.count("\n") + 1
    inches = size / 100
    fig = Figure(figsize=(inches * len(panels), inches + 0.3 + 0.17 * lines), layout="constrained")
    for ax, (title, rgb, aspect) in zip(
        fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True
    ):
        ax.imshow(rgb, aspect=aspect, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.supxlabel(caption, fontsize=8)
    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


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


def perturbation_panels(
    subject: SubjectImage,
    filled: np.ndarray,
    lobe: int | str,
    rows: pd.DataFrame | None,
    age: float,
    predicted: float,
    fill: str,
    seed: int,
    axis: str = "axial",
    index: int | None = None,
    repeat: int = 0,
    window: tuple[float, float] = (0.0, 1.0),
) -> tuple[np.ndarray, np.ndarray, str]:
    """(original RGB, perturbed RGB, caption) of one subject with ``lobe`` filled.

    ``filled``: the subject's input with the lobe filled, in the on-disk voxel order of
    ``subject.volume`` (:func:`ctbrainage.interpret.perturb.filled_volume`). The panels are slice
    ``index`` along ``axis`` (default: the one with most of the lobe, which needs
    ``subject.labels``) of both volumes in RAS display orientation. ``rows``: perturbation-table
    rows (kept here: this subject, lobe and ``fill``; None or empty: no results); the caption
    gives ``age``, the whole and masked prediction and ΔAE of ``repeat`` (and the means over
    repeats), or the whole prediction ``predicted`` when there are no rows."""
    name = LOBES[lobe_id(lobe)]
    filled = np.asarray(filled, np.float32)
    if filled.shape != subject.volume.shape:
        raise ValueError(
            f"{subject.subject_id}: filled volume {filled.shape} does not match the input"
            f" {subject.volume.shape}"
        )
    original, perturbed = subject.canonical(subject.volume), subject.canonical(filled)
    if index is None:
        if subject.labels is None:
            raise ValueError(f"{subject.subject_id}: lobe labels missing (run step 02)")
        index = lobe_slice(subject.canonical(subject.labels), name, axis)
    shown = _rows_of(rows, subject.subject_id, name, fill)
    text = perturbation_caption(subject.subject_id, age, name, fill, seed, shown, repeat)
    if shown.empty:
        text += f"; whole prediction {predicted:.2f} months"
    return (
        render_slice(original, None, axis, index, window),
        render_slice(perturbed, None, axis, index, window),
        text,
    )


def _rows_of(table: pd.DataFrame | None, subject_id: str, lobe: str, fill: str) -> pd.DataFrame:
    """The rows of one subject, lobe and fill, by repeat (empty when there are none)."""
    if table is None or table.empty:
        return pd.DataFrame(columns=["repeat", "pred_whole", "pred_masked", "delta_ae"])
    keep = (table["subject_id"].astype(str) == subject_id) & (table["lobe"] == lobe)
    if "fill" in table:
        keep &= table["fill"] == fill
    return table[keep].sort_values("repeat")


# ---- widgets --------------------------------------------------------------------------------
def _layout(run) -> RunLayout:
    """A run given as a :class:`RunLayout`, a run directory or a :class:`Profile`."""
    return run if isinstance(run, RunLayout) else RunLayout(getattr(run, "run_path", run))


def _caption_html(text: str) -> str:
    return "<br>".join(html.escape(line) for line in text.splitlines())


class _Displayable(abc.ABC):
    """Displays the live widget; its stored output also carries the current picture
    (``image/png``) and caption (``text/plain``), shown where no kernel runs the widget."""

    widget: w.Widget
    text: str

    @abc.abstractmethod
    def picture(self) -> bytes:
        """PNG of what the viewer shows now, with its caption."""

    def _repr_mimebundle_(self, **kwargs):
        bundle = dict(self.widget._repr_mimebundle_(**kwargs))
        bundle["image/png"] = base64.b64encode(self.picture()).decode("ascii")
        bundle["text/plain"] = f"{type(self).__name__}: {self.text}"
        return bundle


SLIDER = w.Layout(width="40em")  # a track of about 4 px per slice for 64 slices


class SliceViewer(_Displayable):
    """A volume with optional lobe labels (RAS-ordered arrays [i, j, k]): axis, slice,
    window, per-lobe overlay toggles and opacity; made with :meth:`from_run`, also a subject
    picker. A new axis or subject starts at the slice with the most voxels of the lobes shown
    (without labels: the middle one). ``.image`` holds the PNG, ``.rgb`` the rendered array,
    ``.text`` (``.caption``: as HTML) the caption; display the viewer in a notebook."""

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
        self.size = size
        self._set_data(volume, labels, spacing, title)
        lo, hi = float(self.volume.min()), float(self.volume.max())
        hi = hi if hi > lo else lo + 1.0
        self.subject: w.Dropdown | None = None
        self.axis = w.ToggleButtons(
            options=AXES, value="axial", description="axis", style={"button_width": "6em"}
        )
        self.slice = w.IntSlider(description="slice", continuous_update=False, layout=SLIDER)
        self.window = w.FloatRangeSlider(
            value=window or (lo, hi),
            min=min(lo, *(window or (lo,))),
            max=max(hi, *(window or (hi,))),
            step=(hi - lo) / 200,
            description="window",
            continuous_update=False,
            readout_format=".2f",
            layout=SLIDER,
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
        self.text = ""
        self._updating = False
        self._set_axis_range()
        self.axis.observe(self._on_view, "value")
        for control in (self.slice, self.window, self.opacity, *self.lobes.values()):
            control.observe(self._on_change, "value")
        overlay = []
        if self.labels is not None:
            overlay = [w.HBox(list(self.lobes.values())), self.opacity]
        self.controls = w.VBox([self.axis, self.slice, self.window, *overlay])
        self.widget = w.VBox([w.HBox([self.image, self.controls]), self.caption])
        self.update()

    def _set_data(self, volume, labels, spacing, title: str) -> None:
        volume = np.asarray(volume, np.float32)
        if volume.ndim != 3:
            raise ValueError(f"expected a 3-D volume, got shape {volume.shape}")
        labels = None if labels is None else np.asarray(labels)
        if labels is not None and labels.shape != volume.shape:
            raise ValueError(f"lobe labels {labels.shape} do not match the volume {volume.shape}")
        self.volume, self.labels, self.title = volume, labels, title
        self.spacing = (1.0, 1.0, 1.0) if spacing is None else tuple(map(float, spacing))

    @classmethod
    def from_subject(cls, subject: SubjectImage, **kwargs) -> SliceViewer:
        """A subject's model input with its lobe labels (if made), in RAS orientation; window
        (0, 1) and the subject's id as title unless given."""
        return cls(
            subject.canonical(subject.volume),
            None if subject.labels is None else subject.canonical(subject.labels),
            subject.spacing,
            window=kwargs.pop("window", (0.0, 1.0)),
            title=kwargs.pop("title", subject.subject_id),
            **kwargs,
        )

    @classmethod
    def from_run(cls, layout_or_run_dir, subject_id: str | None = None, **kwargs) -> SliceViewer:
        """The preprocessed volumes of a run with their lobe labels (if made), in RAS
        orientation, with a picker of every preprocessed subject (youngest first), starting at
        ``subject_id`` (default: the youngest). The run: a
        :class:`~ctbrainage.core.layout.RunLayout`, a run directory or a
        :class:`~ctbrainage.core.config.Profile`."""
        layout = _layout(layout_or_run_dir)
        ages = run_arrays.preprocessed_subjects(layout)
        if subject_id is None:
            if ages.empty:
                raise ValueError(f"no preprocessed volume in {layout.root} (run step 01)")
            subject_id = str(ages.index[0])
        viewer = cls.from_subject(run_arrays.subject_image(layout, subject_id), **kwargs)
        options = [
            (sid if np.isnan(age) else f"{sid} ({age:.1f} months)", sid)
            for sid, age in ages.items()
        ]
        viewer.subject = w.Dropdown(options=options, value=subject_id, description="subject")
        viewer.subject.observe(
            lambda change: viewer._show(run_arrays.subject_image(layout, change["new"])), "value"
        )
        viewer.controls.children = (viewer.subject, *viewer.controls.children)
        return viewer

    def _show(self, subject: SubjectImage) -> None:
        labels = None if subject.labels is None else subject.canonical(subject.labels)
        self._set_data(
            subject.canonical(subject.volume), labels, subject.spacing, subject.subject_id
        )
        self._on_view(None)

    @property
    def lobes_on(self) -> list[str]:
        return [name for name, box in self.lobes.items() if box.value]

    def _set_axis_range(self) -> None:
        """The slider's range for the axis, at the slice with the most of the lobes shown."""
        axis = self.axis.value
        if self.labels is not None and self.lobes_on:
            start = lobe_slice(self.labels, self.lobes_on, axis)
        else:
            start = self.volume.shape[_dim(axis)] // 2
        self._updating = True
        try:
            self.slice.value = 0
            self.slice.max = self.volume.shape[_dim(axis)] - 1
            self.slice.value = start
        finally:
            self._updating = False

    def _on_view(self, _change) -> None:
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
        self.text = " · ".join(parts)
        self.caption.value = _caption_html(self.text)

    def picture(self) -> bytes:
        aspect = pixel_aspect(self.spacing, self.axis.value)
        return static_picture([(self.title, self.rgb, aspect)], self.text, self.size)


class PerturbationViewer(_Displayable):
    """One subject's model input beside its input with one lobe filled (step 05), with whole
    vs masked prediction and ΔAE from the perturbation table of ``fill`` (default: the
    profile's). Subject, lobe, repeat, axis and slice are controls; ``.original`` /
    ``.perturbed`` hold the PNGs, ``.original_rgb`` / ``.perturbed_rgb`` the arrays and
    ``.text`` (``.caption``: as HTML) the caption. Without the fill's table (step 05 not run)
    every predicted subject is shown, and the caption says there are no results."""

    def __init__(self, profile: Profile, fill: str | None = None, size: int = DISPLAY_SIZE):
        if not isinstance(profile, Profile):
            raise TypeError(
                f"PerturbationViewer takes the run's Profile (config.load_profile), not {profile!r}"
            )
        self.profile = profile
        self.layout = RunLayout(profile.run_path)
        self.fill, self.seed, self.size = fill or profile.perturb.fill, int(profile.seed), size
        self.table = None
        if self.layout.perturbation(self.fill, profile.perturb.fill).exists():
            self.table = run_arrays.perturbation(profile, self.fill)
            if "fill" in self.table:
                self.table = self.table[self.table["fill"] == self.fill]
                if self.table.empty:
                    raise ValueError(f"the perturbation table has no rows with fill {self.fill!r}")
        self.predictions = run_arrays.predictions(self.layout)
        ids = list(self.predictions.index)
        repeats = 1
        if self.table is not None and not self.table.empty:
            done = set(self.table["subject_id"].astype(str))
            ids = [sid for sid in ids if sid in done]
            repeats = int(self.table["repeat"].max()) + 1
        if not ids:
            raise ValueError(f"no subjects to show in {self.layout.root}")
        ages = self.predictions["age_months"]
        self.subject = w.Dropdown(
            options=[(f"{sid} ({ages[sid]:.1f} months)", sid) for sid in ids],
            description="subject",
        )
        self.lobe = w.Dropdown(options=list(LOBES.values()), description="lobe")
        self.repeat = w.IntSlider(
            value=0, min=0, max=repeats - 1, description="repeat", disabled=repeats == 1
        )
        self.axis = w.ToggleButtons(
            options=AXES, value="axial", description="axis", style={"button_width": "6em"}
        )
        self.slice = w.IntSlider(description="slice", continuous_update=False, layout=SLIDER)
        self.original, self.perturbed = w.Image(format="png"), w.Image(format="png")
        self.caption = w.HTML()
        self.original_rgb = self.perturbed_rgb = np.zeros((0, 0, 3), np.uint8)
        self.text = ""
        self._filled: tuple[tuple, np.ndarray] | None = None
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

    def _subject(self) -> SubjectImage:
        return run_arrays.subject_image(self.layout, self.subject.value, need_labels=True)

    def filled(self) -> np.ndarray:
        """The shown subject's input with the shown lobe filled for the shown repeat (on-disk
        voxel order; :func:`ctbrainage.interpret.perturb.filled_volume`)."""
        key = (self.subject.value, self.lobe.value, self.repeat.value)
        if self._filled is None or self._filled[0] != key:
            from ctbrainage.interpret.perturb import filled_volume  # torch: only when filling

            volume = filled_volume(self.profile, *key[:2], self.fill, key[2])
            self._filled = (key, volume)
        return self._filled[1]

    def _recentre(self) -> None:
        """Slice range for the axis, and the slice with the most voxels of the chosen lobe."""
        canon = (subject := self._subject()).canonical(subject.labels)
        axis = self.axis.value
        self._updating = True
        try:
            self.slice.value = 0
            self.slice.max = canon.shape[_dim(axis)] - 1
            self.slice.value = lobe_slice(canon, self.lobe.value, axis)
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
            lobe = LOBES[lobe_id(lobe)]
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
        subject, sid = self._subject(), self.subject.value
        self.original_rgb, self.perturbed_rgb, self.text = perturbation_panels(
            subject,
            self.filled(),
            self.lobe.value,
            self.table,
            age=float(self.predictions.loc[sid, "age_months"]),
            predicted=float(self.predictions.loc[sid, "predicted_months"]),
            fill=self.fill,
            seed=self.seed,
            axis=self.axis.value,
            index=self.slice.value,
            repeat=self.repeat.value,
        )
        aspect = pixel_aspect(subject.spacing, self.axis.value)
        self.original.value = to_png(self.original_rgb, aspect, self.size)
        self.perturbed.value = to_png(self.perturbed_rgb, aspect, self.size)
        self.caption.value = _caption_html(self.text)

    def picture(self) -> bytes:
        aspect = pixel_aspect(
            run_arrays.subject_image(self.layout, self.subject.value).spacing, self.axis.value
        )
        panels = [
            ("original", self.original_rgb, aspect),
            ("lobe filled", self.perturbed_rgb, aspect),
        ]
        return static_picture(panels, self.text, self.size)
