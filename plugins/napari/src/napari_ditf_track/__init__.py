"""napari plugin for ditf-track: propagate painted masks and keypoints through a video.

Contributions (``napari.yaml``): a reader (videos, frame folders, DAVIS annotation folders,
points CSVs), writers (DAVIS palette PNGs, tracks CSV), a sample clip and the
:class:`PropagationWidget` dock widget. :func:`set_reader_preference` makes the reader napari's
choice for videos (:func:`reset_reader_preference` undoes it). Importing this package does not
import Qt; the widget module does.
"""

from __future__ import annotations

from typing import Any

from ._preference import reset_reader_preference, set_reader_preference
from ._reader import napari_get_reader
from ._sample_data import make_sample_data, make_shapes_clip
from ._version import __version__
from ._writer import write_davis_labels, write_points_layer, write_tracks_layer

__all__ = [
    "PropagationWidget",
    "__version__",
    "make_sample_data",
    "make_shapes_clip",
    "napari_get_reader",
    "reset_reader_preference",
    "set_reader_preference",
    "write_davis_labels",
    "write_points_layer",
    "write_tracks_layer",
]


def __getattr__(name: str) -> Any:
    if name == "PropagationWidget":  # imported on demand: it needs Qt
        from ._widget import PropagationWidget

        return PropagationWidget
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
