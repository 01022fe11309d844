"""Training samples streamed from WebDataset shards, so that a run's memory does not grow with its data.

The samples flow through a webdataset `DataPipeline`: the shards of an epoch in an order fixed by (seed, epoch),
this process's share of the samples, then webdataset's shuffle buffer, seeded per epoch and process. The tar
members are read by genvl's own reader (`genvl.io.shards.iter_samples`), which checks each member's size in its
header before reading it, where webdataset's would read any member whole (a 2 GB "image" into memory). A sample
is decoded only when a batch takes it; a bad one (no caption, an image that does not decode, a member over its
cap, a shard cut off) is logged, counted, skipped, and the batch takes the next.

Processes split the stream by position: process p of P takes the samples p, p + P, p + 2P, ... of each epoch, so
no sample is seen twice in an epoch and each is some process's. The stream's place (epoch,
samples taken this epoch) is saved with every checkpoint, so a resumed run goes on with the samples an
uninterrupted one would see: the samples before that place are read again, not decoded.
"""

import functools
import json
import random
from pathlib import Path

from ..io.shards import iter_samples, sample_fields, sample_record, shard_paths

SHUFFLE_BUFFER = 1000  # samples held by the shuffle: the memory of the stream, whatever the size of the data


class ShardStream:
    """One process's stream of decoded samples of the shards `source` names (a brace pattern, or several joined
    by `::`). `decode(record)` turns a sample's record (`sample_record`: the caption column, the JSON fields, the
    encoded image under "image_bytes") into what a batch holds, raising ValueError for a bad sample.
    `on_error(message)` hears of each bad sample: "skipping shard#key: reason"."""

    def __init__(
        self,
        source,
        decode,
        caption_column: str,
        image_column: str,
        seed: int,
        process_index: int = 0,
        num_processes: int = 1,
        buffer: int = SHUFFLE_BUFFER,
        on_error=None,
    ):
        self.paths = shard_paths(source)
        self.decode, self.columns = decode, (image_column, caption_column)
        self.seed, self.process, self.processes, self.buffer = seed, process_index, num_processes, buffer
        self.on_error = on_error
        self.skipped: list[dict] = []  # {"sample", "reason"} of every bad sample this process met
        self.taken = 0  # good samples handed out
        self.epoch, self.consumed = 0, 0  # the stream's place: samples of this epoch's stream taken so far
        self._samples, self._replaying, self._good_this_epoch = None, False, 0
        self._met: set = set()  # (sample, reason) of `skipped`

    def _skip(self, where: str, reason: str) -> None:
        if self._replaying:  # a resumed run reads again what the first one met and reported
            return
        if (where, reason) in self._met:  # again in a later epoch: logged and counted once, the list stays bounded
            return
        self._met.add((where, reason))
        self.skipped.append({"sample": where, "reason": reason})
        if self.on_error is not None:
            self.on_error(f"skipping {where}: {reason}")

    def _open(self):
        import webdataset as wds

        order = list(self.paths)
        random.Random(f"{self.seed}/{self.epoch}").shuffle(order)  # the same shard order in every process

        def share(samples):
            return (sample for i, sample in enumerate(samples) if i % self.processes == self.process)

        rng = random.Random(f"{self.seed}/{self.epoch}/{self.process}")
        return iter(
            wds.DataPipeline(
                lambda: iter_samples(order, self._skip),
                share,
                wds.shuffle(self.buffer, initial=self.buffer, rng=rng),
            )
        )

    def _next_sample(self) -> dict:
        """The next raw sample of the stream, opening the next epoch when this one ends."""
        while True:
            if self._samples is None:
                self._samples = self._open()
            try:
                sample = next(self._samples)
            except StopIteration:
                if self._good_this_epoch == 0 and not self._replaying:
                    raise ValueError(
                        f"{len(self.paths)} shards: no usable samples for process {self.process} of "
                        f"{self.processes} ({len(self.skipped)} skipped)"
                    ) from None
                self.epoch, self.consumed, self._samples, self._good_this_epoch = self.epoch + 1, 0, None, 0
                continue
            self.consumed += 1
            return sample

    def take(self, count: int) -> list:
        """The next `count` good samples, decoded."""
        batch = []
        while len(batch) < count:
            sample = self._next_sample()
            where = f"{sample['__url__']}#{sample['__key__']}"
            try:
                batch.append(self.decode(sample_record(sample, *self.columns)))
            except ValueError as err:
                self._skip(where, str(err))
                continue
            self._good_this_epoch += 1
        self.taken += len(batch)
        return batch

    def head(self, count: int) -> list:
        """Up to `count` good samples from where the stream is, no further than the end of its epoch (for
        statistics of the data, which a small set should not weigh twice)."""
        epoch, out = self.epoch, []
        while len(out) < count:
            [sample] = self.take(1)
            if self.epoch != epoch:
                break
            out.append(sample)
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def restore(self, state: dict) -> None:
        """Go to the place `state` (from `state()`) names: the samples before it are read, not decoded."""
        self.epoch, self.consumed, self._samples = int(state["epoch"]), 0, None
        self._replaying, self._good_this_epoch = True, 1  # the epoch had good samples before the resume
        try:
            for _ in range(int(state["consumed"])):
                self._next_sample()
        finally:
            self._replaying = False
        if self.epoch != int(state["epoch"]):
            raise ValueError(f"the data ended before the place the checkpoint saved ({state}): is it the same?")

    # the loop's view: one micro-batch per call, in order, and the place to save
    def batch(self, micro_step: int, batch_size: int):
        return self.take(batch_size)


def phrasings(record: dict, caption_column: str) -> list[str]:
    """A sample's phrasings: its record's `captions`, else its caption alone. Raises ValueError if they are not a
    list of non-empty strings."""
    captions = record.get("captions") or [record.get(caption_column)]
    if not isinstance(captions, list) or not all(isinstance(text, str) and text.strip() for text in captions):
        raise ValueError("'captions' is not a list of non-empty strings")
    return captions


def decoded_sample(record: dict, resolution: int, caption_column: str | None = None, need_scene: bool = False):
    """A streamed sample as a batch holds it: its pixels (3, R, R) uint8 at `resolution` (`rgb_at`, as
    `load_images` brings images in memory to it), its caption, its phrasings (the record's `captions`, else the
    caption alone; both None without `caption_column`) and its scene graph (required with `need_scene`)."""
    import torch

    from ..io.imagefolder import rgb_at
    from ..io.images import load_image

    if need_scene and "scene" not in record:
        raise ValueError("no scene graph, which --augment flip and shift need")
    caption = record.get(caption_column) if caption_column else None
    captions = phrasings(record, caption_column) if caption_column else None
    image = rgb_at(load_image(record["image_bytes"], name="the image"), resolution)
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(resolution, resolution, 3)
    return {"pixels": pixels.permute(2, 0, 1), "caption": caption, "captions": captions, "scene": record.get("scene")}


def open_stream(accelerator, args, resolution: int | None = None, shared: bool = False, **decoding) -> ShardStream:
    """This process's stream of `--train_data_dir` for a run: samples decoded by `decoded_sample` at `resolution`
    (default: the run's; `decoding`: its other arguments), bad ones logged on stderr by the main process. With
    `shared`, every process reads the whole stream, as a single process would (for statistics all must agree on)."""
    from .checkpoints import warn

    return ShardStream(
        args.train_data_dir,
        functools.partial(decoded_sample, resolution=resolution or args.resolution, **decoding),
        args.caption_column,
        args.image_column,
        args.seed,
        0 if shared else accelerator.process_index,
        1 if shared else accelerator.num_processes,
        on_error=functools.partial(warn, accelerator=accelerator),
    )


def write_stream_summary(accelerator, args, stream: ShardStream) -> None:
    """`output_dir/data_summary.json` of a streamed run: the samples every process took and the bad ones it met."""
    from accelerate.utils import gather_object

    seen = gather_object([{"taken": stream.taken, "skipped": stream.skipped}])
    if accelerator.is_main_process:
        skipped = [entry for process in seen for entry in process["skipped"]]
        summary = {
            "source": str(args.train_data_dir),
            "streamed": True,
            "samples_taken": sum(process["taken"] for process in seen),
            "skipped": len(skipped),
            "skipped_samples": skipped,
        }
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_dir) / "data_summary.json").write_text(json.dumps(summary, indent=2))


def stream_captions(source, caption_column: str):
    """Every phrasing of the shards `source` names (the caption, or the sample's `captions`), read from their text
    members alone (the images are skipped unread); a sample whose text is bad, which training skips, is left out:
    what a run's new tokenizer is trained on."""

    def text_members(key, ext):
        return ext in ("txt", "json")

    for sample in iter_samples(shard_paths(source), lambda where, reason: None, text_members):
        try:
            yield from phrasings(sample_fields(sample, caption_column), caption_column)
        except ValueError:
            continue
