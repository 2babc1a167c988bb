"""Preprocessing does not see maturation: the same child at two ages through step 01."""

from ctbrainage.core.layout import RunLayout
from ctbrainage.synth.invariance import maturation_leak
from ctbrainage.views import docs


def test_one_lobe_maturing_moves_neither_the_mask_nor_the_ptile_levels_nor_the_grid(tmp_path):
    """Seed 21 at 2 and 30 months differs only in lobar white matter (three lobes matured).
    Before the skull strip kept unmyelinated white matter, its mask grew 739 → 873 mL (Dice
    0.92), the lower P-tile level fell 20.4 → 12.1 HU, the grid turned 1.2° and 98 % of the
    brain outside the maturing white matter changed."""
    table = maturation_leak(seeds=[21], ages=[2.0, 30.0], mode="quick", spacing_mm=4.0, size=48)
    first, later = table.iloc[0], table.iloc[1]
    assert later.mask_dice_vs_first > 0.99
    assert abs(later.mask_ml - first.mask_ml) < 0.01 * first.mask_ml
    assert abs(later.ptile_low_hu - first.ptile_low_hu) < 0.5
    assert abs(later.ptile_high_hu - first.ptile_high_hu) < 0.5
    assert later.grid_turn_deg < 0.05 and later.grid_shift_mm < 0.05
    assert later.share_changed_outside < 0.05
    # the docs block that shows it
    layout = RunLayout(tmp_path)
    table.to_csv(layout.maturation_leak, index=False)
    text = docs.render("leak", tmp_path)
    row = next(line for line in text.splitlines() if line.startswith("| seed 21, 2–30 months |"))
    assert f"| {later.mask_dice_vs_first:.3f} |" in row
    assert f"| {min(table.ptile_low_hu):.2f}–{max(table.ptile_low_hu):.2f} |" in row
