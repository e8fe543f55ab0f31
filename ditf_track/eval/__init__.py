"""The standard evaluators: DAVIS J&F, TAP-Vid, keypoint PCK, image-pair PCK, HPatches."""
