"""Bundled presets as YAML data (see :mod:`ditf_track.presets`)."""
