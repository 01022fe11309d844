"""The procedural vision-language world: sprites, scenes, captions and datasets."""

from .captions import parse_caption, scene_captions, scene_facts
from .scenes import render_scene, sample_scene
from .sprites import COLOURS, OBJECTS

__all__ = ["COLOURS", "OBJECTS", "parse_caption", "render_scene", "sample_scene", "scene_captions", "scene_facts"]
