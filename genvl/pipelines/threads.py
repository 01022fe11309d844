"""Images that are the same bit for bit whatever the batch size: each made alone, on one CPU thread, with its own
generator. Matrix kernels round differently for other batch shapes and thread splits, so this is the price of an
image that its seed alone reproduces."""

import collections
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager


@contextmanager
def one_torch_thread():
    """torch's intra-op threads set to 1 inside (yielding the previous count), restored afterwards: kernels then
    split their work the same way however many cores the machine has."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)


def one_image_each(pipeline, make, num_images: int, base_seed: int, batch_size: int | None = None, quiet: bool = False):
    """Yield (index, seed, image) of `num_images` images, in order, image i made alone by
    `make(pipeline, generators)` with its own generator seeded `base_seed + i`, on one CPU thread.

    Args:
        pipeline: a pipeline with `for_another_thread()`; each worker thread makes its images with its own copy
            (its own schedulers and tokenizer, the networks shared).
        make: `make(pipeline, [generator])` -> a list whose first item is the image.
        batch_size: images made at once, one per thread (default: one per core).
        quiet: no progress bar on stderr.
    """
    import torch
    from tqdm import tqdm

    local = threading.local()

    def one(i):
        if not hasattr(local, "pipeline"):
            local.pipeline = pipeline.for_another_thread()
            local.pipeline.set_progress_bar_config(disable=True)  # one bar over the images instead
        return make(local.pipeline, [torch.Generator().manual_seed(base_seed + i)])[0]

    with one_torch_thread() as threads:
        workers = min(batch_size or threads, num_images)
        pool = ThreadPoolExecutor(workers)
        # at most two images per thread are under way or waiting to be used, whatever num_images is
        pending = collections.deque()
        try:
            with tqdm(total=num_images, unit="img", file=sys.stderr, disable=quiet) as bar:
                for i in range(num_images):
                    pending.append(pool.submit(one, i))
                    while pending and (len(pending) >= 2 * workers or i == num_images - 1):
                        index = i - len(pending) + 1
                        image = pending.popleft().result()
                        bar.update()
                        yield index, base_seed + index, image
        finally:  # on an error or Ctrl-C, images not yet started are dropped
            pool.shutdown(wait=True, cancel_futures=True)
