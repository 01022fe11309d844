"""The training recipes and the exports that turn their runs into pipeline folders: one module each, run as
`genvl train NAME ...`, `python -m genvl.recipes.train_NAME ...` or `accelerate launch -m genvl.recipes.train_NAME
...` (several processes, FSDP, DeepSpeed). They import from `genvl.training` and the layers below, never each
other."""
