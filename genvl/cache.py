"""An in-memory cache of image encodings, shared by the captioner and the text-to-image pipeline.

    cache = EmbeddingCache()
    captioner.set_embedding_cache(cache)
    generator.set_embedding_cache(cache)
    captioner(images); captioner(images, num_beams=5)       # the ViT runs once per image
    generator.score(images, texts); generator.image_variation(images[0])   # CLIP's image tower runs once

Entries are keyed by the encoder (one key per model object and preprocessing) and by the image's pixels, so
a path and the same image already loaded share an entry. Changing an encoder's weights in place (fusing a
LoRA, say) makes its entries stale: call `clear()` afterwards.
"""

import hashlib
import threading
import uuid
import weakref
from collections import OrderedDict

import torch
from PIL import Image


def image_digest(image: Image.Image | torch.Tensor) -> str:
    """A digest of an image's size, mode and pixels, or of a preprocessed image's pixel values."""
    if isinstance(image, torch.Tensor):
        digest = hashlib.sha1(f"{image.dtype}{tuple(image.shape)}".encode())
        digest.update(image.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()
    digest = hashlib.sha1(f"{image.mode}{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class EmbeddingCache:
    """Least-recently-used cache of per-image encodings (tensors), at most `max_items` of them."""

    def __init__(self, max_items: int = 4096):
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        self.max_items = max_items
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict = OrderedDict()
        self._tokens: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def namespace(self, encoder: torch.nn.Module, *details) -> str:
        """A key for `encoder` (the object, not its class), the dtype and device its weights are in (a pipeline
        moved to bf16 must not get its fp32 encodings back), plus details such as its preprocessing."""
        with self._lock:
            token = self._tokens.setdefault(encoder, uuid.uuid4().hex)
        weight = next(encoder.parameters(), None)
        where = [] if weight is None else [str(weight.dtype), str(weight.device)]
        return ":".join([token, *where, *map(str, details)])

    def forget(self, encoder: torch.nn.Module) -> None:
        """Give `encoder` a fresh key, for when its weights change (e.g. a LoRA adapter is loaded); its old
        entries are never hit again and age out."""
        with self._lock:
            self._tokens.pop(encoder, None)

    def encode(self, namespace: str, images: list, encode_fn) -> torch.Tensor:
        """Encodings (B, ...) of `images` (PIL images, or preprocessed pixel values, one tensor per image); only
        the images not cached go through `encode_fn(images)`, which must return one row per image it is given.
        Safe to call from several threads; the encoder runs outside the lock, so two threads may both encode an
        image that neither had yet."""
        keys = [(namespace, image_digest(image)) for image in images]
        with self._lock:
            # take the cached rows now: another thread may evict them while this one encodes the rest
            found = {key: self._entries[key] for key in keys if key in self._entries}
            for key in found:
                self._entries.move_to_end(key)
            missing = {key: image for key, image in zip(keys, images) if key not in found}
            self.hits += len(keys) - len(missing)
            self.misses += len(missing)
        if missing:
            rows = encode_fn(list(missing.values()))
            if rows.shape[0] != len(missing):
                raise RuntimeError(f"the encoder returned {rows.shape[0]} rows for {len(missing)} images")
            fresh = dict(zip(missing, rows.detach()))
            with self._lock:
                for key, row in fresh.items():
                    self._entries[key] = row
                    self._entries.move_to_end(key)
                    if len(self._entries) > self.max_items:
                        self._entries.popitem(last=False)
            found.update(fresh)
        return torch.stack([found[key] for key in keys])


class EmbeddingCacheMixin:
    """`set_embedding_cache` for pipelines, and `cached_encode` that goes through the cache when one is set."""

    embedding_cache: EmbeddingCache | None = None

    def set_embedding_cache(self, cache: EmbeddingCache | None) -> None:
        """Share `cache` (an `EmbeddingCache`) for image encodings; None turns caching off."""
        if cache is not None and not isinstance(cache, EmbeddingCache):
            raise TypeError(f"cache must be an EmbeddingCache or None, got {type(cache).__name__}")
        self.embedding_cache = cache

    def cached_encode(self, encoder: torch.nn.Module, images: list, encode_fn, *details) -> torch.Tensor:
        if self.embedding_cache is None:
            return encode_fn(images)
        namespace = self.embedding_cache.namespace(encoder, *details)
        return self.embedding_cache.encode(namespace, images, encode_fn)
