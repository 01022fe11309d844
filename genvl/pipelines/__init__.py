"""Inference pipelines (diffusers-style: from_pretrained, save_pretrained, to, __call__)."""
