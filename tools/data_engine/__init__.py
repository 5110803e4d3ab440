"""Procedural scene generator for training and evaluating the default samserve model.

Scenes are deterministic functions of an integer seed. Seeds >= HELDOUT_START form
the held-out split: training draws only from [0, HELDOUT_START), so evaluation
scenes are never seen during training.
"""

from .scene import HELDOUT_START, Obj, Scene, centre_point, make_scene

__all__ = ["HELDOUT_START", "Obj", "Scene", "centre_point", "make_scene"]
