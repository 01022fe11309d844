"""Input and output: images, output files, WebDataset shards, imagefolders, and model folders (their checks and
the allow-listed loading of their components). The bottom layer: it imports nothing else of genvl."""
