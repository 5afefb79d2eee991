"""Inference: letterbox pre-processing, post-processing (NMS) and the runtimes of exported models.

What detkd's evaluation, its export gates and every deployment bundle's ``infer.py`` share; numpy and OpenCV only
(each runtime imports its own engine when built). :func:`detkd.infer.script.standalone_script` writes the bundle's
self-contained script from these modules.
"""

from detkd.infer.decode import MAX_NMS_CANDIDATES, nms, postprocess
from detkd.infer.letterboxing import PAD_VALUE, LetterboxMeta, letterbox, preprocess
from detkd.infer.runtimes import RUNTIMES, Runtime, load_bundle, strip_engine_header

__all__ = [
    "MAX_NMS_CANDIDATES",
    "PAD_VALUE",
    "RUNTIMES",
    "LetterboxMeta",
    "Runtime",
    "letterbox",
    "load_bundle",
    "nms",
    "postprocess",
    "preprocess",
    "strip_engine_header",
]
