"""Evaluation of captioners: COCO caption metrics and scene-graph accuracy on the procedural world."""

from .captioning import caption_metrics, evaluate_captioner, scene_graph_accuracy

__all__ = ["caption_metrics", "evaluate_captioner", "scene_graph_accuracy"]
