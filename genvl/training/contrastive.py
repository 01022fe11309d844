"""Training CLIP contrastively: the symmetric InfoNCE loss over the global batch (embeddings gathered with their
gradients), with extra negative texts or images, and the object-swapped twins of two-object captions that make
those negatives."""

import functools
import math

import torch
import torch.nn.functional as F

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps its temperature so that logits scale by at most 100


def gather_with_grad(x, accelerator):
    """Every process's `x` (the same shape on each), concatenated in process order, with gradients flowing
    back to the process each row came from: the sum over processes of the loss gradients for its rows."""
    if accelerator.num_processes == 1:
        return x
    return _gather_function().apply(x)


@functools.cache
def _gather_function():
    import torch.distributed as dist

    class GatherWithGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
            parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, x.contiguous())
            return torch.cat(parts)

        @staticmethod
        def backward(ctx, grad):
            grad = grad.contiguous()
            dist.all_reduce(grad)  # a sum; gloo has no reduce-scatter
            return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]

    return GatherWithGrad


def contrastive_loss(
    image_embeds,
    text_embeds,
    logit_scale,
    caption_ids,
    accelerator,
    negative_embeds=None,
    negative_ids=None,
    mirror_embeds=None,
    mirror_ids=None,
) -> torch.Tensor:
    """Symmetric cross-entropy of this process's images and texts against the whole global batch's texts and
    images, with targets spread evenly over every pair sharing a caption.

    `negative_embeds` (B, E) are extra texts for the image-to-text side, one per row, with the canonical caption
    ids `negative_ids` (-1: the row has none, and its text is left out). A negative that is some image's own
    caption still counts as that image's match. `mirror_embeds` and `mirror_ids` are extra images for the
    text-to-image side, in the same way.

    Each process scores its own rows against every process's embeddings (gathered with their gradients), so
    the loss averaged over processes, and its gradient, are those of one process holding the global batch.
    """
    all_images, all_texts = gather_with_grad(image_embeds, accelerator), gather_with_grad(text_embeds, accelerator)
    all_ids = accelerator.gather(caption_ids)
    image_targets = text_targets = (caption_ids[:, None] == all_ids[None, :]).float()
    text_columns = image_columns = None
    if negative_embeds is not None:
        all_texts, image_targets, text_columns = _extra_columns(
            all_texts, image_targets, negative_embeds, negative_ids, caption_ids, accelerator
        )
    if mirror_embeds is not None:
        all_images, text_targets, image_columns = _extra_columns(
            all_images, text_targets, mirror_embeds, mirror_ids, caption_ids, accelerator
        )
    return matched_loss(
        image_embeds,
        text_embeds,
        all_images,
        all_texts,
        logit_scale,
        image_targets,
        text_targets,
        text_columns,
        image_columns,
    )


def _extra_columns(columns, targets, extra_embeds, extra_ids, caption_ids, accelerator):
    """`columns` (the gathered embeddings scored against) and `targets` with every process's `extra_embeds`
    appended, and which columns count: rows whose id is -1 are left out, and an extra column is a match of the
    queries sharing its caption id."""
    all_extra_ids = accelerator.gather(extra_ids)
    columns = torch.cat([columns, gather_with_grad(extra_embeds, accelerator)])
    targets = torch.cat([targets, (caption_ids[:, None] == all_extra_ids[None, :]).float()], dim=1)
    kept = torch.cat(
        [torch.ones(len(columns) - len(all_extra_ids), dtype=torch.bool, device=columns.device), all_extra_ids >= 0]
    )
    return columns, targets, kept


def matched_loss(
    own_images,
    own_texts,
    all_images,
    all_texts,
    scale,
    image_matches,
    text_matches,
    text_columns=None,
    image_columns=None,
):
    """CLIP's symmetric cross-entropy of this process's images against every text (`image_matches`: which of
    them are true of each image) and of its texts against every image (`text_matches`), each target spread
    evenly over the matches; columns left out by `text_columns` / `image_columns` (False) score -inf."""
    image_logits = scale * own_images @ all_texts.T
    text_logits = scale * own_texts @ all_images.T
    if text_columns is not None:
        image_logits = image_logits.masked_fill(~text_columns, float("-inf"))
    if image_columns is not None:
        text_logits = text_logits.masked_fill(~image_columns, float("-inf"))
    image_loss = _soft_cross_entropy(image_logits, image_matches)
    text_loss = _soft_cross_entropy(text_logits, text_matches)
    return (image_loss.mean() + text_loss.mean()) / 2


def _soft_cross_entropy(logits, targets):
    """Cross-entropy of each row's logits against its targets spread evenly over its matches; columns that are
    no row's match may be -inf."""
    log_probs = F.log_softmax(logits, dim=1)
    targets = targets / targets.sum(dim=1, keepdim=True)
    return -torch.where(targets > 0, targets * log_probs, 0.0).sum(dim=1)


def swapped_phrasings(records, texts, phrasings, caption_id):
    """For each record, its phrasings' twins (indices into `texts`, extended in place): the same phrasing of its
    scene with the two objects exchanged, "there is a blue car above a red apple" for "there is a red apple above
    a blue car"; and the swapped scene's canonical caption id (`caption_id(its canonical caption)`). Rows are -1
    where a record is not two distinct objects, and columns where a phrasing is not one of the world's."""
    from ..world.captions import scene_captions, swapped_captions

    index = torch.full_like(phrasings, -1)
    ids = torch.full((len(records),), -1, dtype=torch.long)
    position = {text: i for i, text in enumerate(texts)}
    for row, record in enumerate(records):
        scene = record.get("scene")
        twins = swapped_captions(scene) if isinstance(scene, dict) else None
        if twins is None:
            continue
        own = scene_captions(scene)  # unshuffled, so that phrasing k of the scene and of its twin match
        for column, text_index in enumerate(phrasings[row].tolist()):
            if texts[text_index] in own:
                twin = twins[own.index(texts[text_index])]
                index[row, column] = position.setdefault(twin, len(texts))
                if index[row, column] == len(texts):
                    texts.append(twin)
        ids[row] = caption_id(twins[0])
    return index, ids
