"""Root of every test directory (tests/, plugins/napari/tests/): the shared fixtures, defined
once in :mod:`ditf_track.testing.fixtures`."""

pytest_plugins = ["ditf_track.testing.fixtures"]
