"""The grid-centre convention, in one place.

A map cell at (row, col) of a map whose cells are `cell_px` input pixels wide covers input pixels
[col * cell_px, (col + 1) * cell_px) and its centre is at x = (col + 0.5) * cell_px - 0.5 (pixel
centres at integer coordinates). The target encoder evaluates Gaussians and limbs at these centres
and the decoder maps peaks back through the same formula, so encode -> decode is exact up to the
cell size. cv2.resize keeps pixel centres aligned the same way, so an upsampled map (cell_px =
stride / factor) follows the same rule.
"""

import numpy as np


def cell_centers(num_cells, cell_px):
    """Input-pixel coordinates of the centres of `num_cells` cells along one axis."""
    return (np.arange(num_cells, dtype=np.float32) + 0.5) * cell_px - 0.5


def cells_to_pixels(index, cell_px):
    """Cell index (may be fractional, e.g. a refined peak) -> input-pixel coordinate."""
    return (np.asarray(index, dtype=np.float32) + 0.5) * cell_px - 0.5


def pixels_to_cells(coord, cell_px):
    """Input-pixel coordinate -> fractional cell index (inverse of `cells_to_pixels`)."""
    return (np.asarray(coord, dtype=np.float32) + 0.5) / cell_px - 0.5
