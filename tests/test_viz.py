"""Figures: what their colours and axes mean must not depend on the data drawn."""
from __future__ import annotations

import numpy as np
import pytest

from selfsup_lab import viz


def heatmap_image(count_rows):
    fig = viz.occupancy_heatmap(count_rows)  # viz draws with the Agg backend outside notebooks
    image = fig.axes[0].images[0]
    viz._plt().close(fig)
    return image


def test_occupancy_heatmap_has_one_colour_scale_for_every_run():
    collapsed = heatmap_image([[1000] + [0] * 19] * 2)  # K = 20: the one full cluster is 20× uniform
    balanced = heatmap_image([[250, 250, 250, 250], [260, 250, 250, 240]])
    skewed = heatmap_image([[700, 200, 100, 0]])
    scales = {(im.norm.vmin, im.norm.vmax) for im in (collapsed, balanced, skewed)}
    assert len(scales) == 1, f"each figure chose its own colour scale: {scales}"
    assert balanced.norm(1.0) == pytest.approx(0.5)  # uniform occupancy sits mid-scale
    # Empty clusters get a colour (the darkest), not a masked hole, and the collapsed cluster the brightest.
    values = np.ma.getdata(collapsed.get_array())
    assert not np.ma.getmaskarray(collapsed.get_array()).any()
    assert collapsed.norm(values[1:, :]).max() == pytest.approx(0.0)
    assert collapsed.norm(values[0, :]).min() == pytest.approx(1.0)
    # Rows are clusters sorted by size in every column: largest share on top.
    skewed_values = np.ma.getdata(skewed.get_array())[:, 0]
    assert list(skewed_values) == sorted(skewed_values, reverse=True)
