"""Evaluation helpers: Dice and the presence-threshold choice."""

from __future__ import annotations

import numpy as np

from medsam3.training.evaluate import dice, plateau_centre


def test_threshold_is_the_middle_of_the_best_mcc_plateau():
    grid = np.round(np.arange(0.05, 0.96, 0.05), 2)
    flat_then_falling = np.r_[np.full(10, 0.93), np.linspace(0.9, 0.5, 9)]
    assert plateau_centre(grid, flat_then_falling) == 0.3
    peaked = np.zeros(len(grid))
    peaked[12] = 0.8
    assert plateau_centre(grid, peaked) == grid[12]


def test_dice_of_empty_and_overlapping_masks():
    a = np.zeros((4, 4), bool)
    assert dice(a, a) == 1.0
    b = a.copy()
    b[:2] = True
    c = a.copy()
    c[1:3] = True
    assert dice(b, c) == 0.5 and dice(b, a) == 0.0
