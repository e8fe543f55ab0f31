"""The evaluation runs: each owns an output folder and is a resumable run (``eval/_run.py``).

``pairs`` (image pairs: SPair-71k / PF-PASCAL / AP-10K PCK, HPatches homographies, driven by the
:class:`~ditf_track.match.Matcher`), ``points`` (query points tracked through videos: TAP-Vid and
BADJA / JHMDB keypoints) and ``davis`` (DAVIS masks propagated, then scored by
``eval/davis_folders.py``) drive the :class:`~ditf_track.tracker.Tracker`. The metrics they
score with live one level up (``correspondence``, ``hpatches``, ``tapvid``, ``keypoints``,
``davis``); the runs never import one another.
"""
