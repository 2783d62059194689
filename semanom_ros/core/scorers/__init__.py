"""One Scorer interface, one scorer per Monitor mode: patch, instance (and combined), scene."""
from .base import Scorer
from .instance import CombinedScorer, InstanceScorer
from .patch import PatchScorer
from .scene import SceneModeScorer, SceneScorer

__all__ = ["CombinedScorer", "InstanceScorer", "PatchScorer", "SceneModeScorer", "SceneScorer", "Scorer"]
