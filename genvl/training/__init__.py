"""What the recipes in `genvl.recipes` share, one concern per module; the recipes import from the modules.

- `args`: typed flags (`TrainArgs`, `LoraTrainArgs`, `parse_args`), their checks, the saved run config, `run_script`
- `loop`: `make_accelerator` and `train_loop` (optimiser, schedule, EMA, logging, checkpoints, resuming)
- `checkpoints`: crash-safe checkpoints and the EMA weights they carry
- `data`: reading and checking the training records, the epoch order, the phrasing of each step
- `seeds`: the seed of every per-step random draw
- `features`: features of frozen models and the run's tokenizer, computed once and kept for resumed runs
- `pretrained`: starting from a saved model, with or without an adapter
- `autoencoder`, `diffusion`, `contrastive`: the training modules and losses of the autoencoder, the diffusion
  stages (prior and decoder) and CLIP, which the export scripts rebuild too
- `measure`: a training script run in a child process, timed and its peak memory read
"""
