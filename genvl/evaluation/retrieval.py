"""Image <-> text retrieval with a CLIP model on a held-out imagefolder.

The world repeats captions ("a red apple" describes many scenes), so a retrieved item counts as correct when
its caption is identical to the query's: image -> text ranks the distinct captions, text -> image ranks the
images and takes the best-placed one with that caption.

Where the folder has scene graphs, word order is tested too: for each two-object scene, does CLIP score its
caption above the same caption with the two objects exchanged ("a red apple above a blue car" against "a blue
car above a red apple")? A model that reads captions as bags of words scores 0.5. And for each left/right
scene, does CLIP score its caption higher against the image than against the image mirrored left to right
(the objects' places exchanged, the sprites mirrored too)? An image tower blind to where objects are scores 0.5
there, and its embedding of the mirrored image is nearly the same (`mirror_cosine` near 1). And for prompts as
people type them (`free_prompt_retrieval`), is the best-scoring image one the prompt is true of?
"""

from pathlib import Path

import torch

from ..io.imagefolder import load_images, read_metadata
from ..models.clip import clip_text_length, embed_images, embed_texts
from ..world.captions import swapped_caption


def rank_metrics(ranks: torch.Tensor, prefix: str) -> dict:
    """R@1/5/10 and median/mean rank of 1-based ranks."""
    ranks = ranks.float()
    report = {f"{prefix}_R@{k}": float((ranks <= k).float().mean()) for k in (1, 5, 10)}
    report[f"{prefix}_median_rank"] = float(ranks.median())
    report[f"{prefix}_mean_rank"] = float(ranks.mean())
    return report


def retrieval_ranks(similarity: torch.Tensor, caption_of_image: torch.Tensor):
    """(image->text ranks per image, text->image ranks per caption) from an (images, captions) similarity."""
    true = similarity.gather(1, caption_of_image[:, None])
    image_to_text = (similarity > true).sum(1) + 1
    images_of = [torch.nonzero(caption_of_image == c).squeeze(1) for c in range(similarity.shape[1])]
    text_to_image = torch.stack(
        [(similarity[:, c] > similarity[rows, c].max()).sum() + 1 for c, rows in enumerate(images_of)]
    )
    return image_to_text, text_to_image


def order_accuracy(
    clip, tokenizer, records, image_embeds, length: int, batch_size: int, caption_column: str = "text"
) -> dict:
    """Share of two-object images whose caption CLIP scores above its object-swapped twin (`swapped_caption`)."""
    rows = [(i, swapped_caption(r["scene"])) for i, r in enumerate(records) if isinstance(r.get("scene"), dict)]
    rows = [(i, swapped) for i, swapped in rows if swapped is not None]
    if not rows:
        return {}
    true = embed_texts(clip, tokenizer, [records[i][caption_column] for i, _ in rows], length, batch_size)[0]
    swapped = embed_texts(clip, tokenizer, [text for _, text in rows], length, batch_size)[0]
    images = image_embeds[[i for i, _ in rows]].float()
    wins = (images * true.float()).sum(-1) > (images * swapped.float()).sum(-1)
    return {"order_images": len(rows), "order_accuracy": float(wins.float().mean())}


def mirror_rows(records) -> list[int]:
    """Indices of the left/right two-object scenes (`pair_h`) whose object-swapped twin differs from them."""
    return [
        i
        for i, r in enumerate(records)
        if isinstance(r.get("scene"), dict)
        and r["scene"].get("layout") == "pair_h"
        and swapped_caption(r["scene"]) is not None
    ]


def mirror_scores(
    clip, image_processor, records, images, image_embeds, text_embeds, caption_of_image, batch_size: int
) -> dict:
    """Over left/right two-object images (`mirror_rows`): the share whose own caption scores higher against the
    image than against its left-right mirror, and the mean cosine of the two images' embeddings."""
    rows = mirror_rows(records)
    if not rows:
        return {}
    mirrored = embed_images(clip, image_processor, images[rows].flip(-1), batch_size).float()
    own, texts = image_embeds[rows].float(), text_embeds[caption_of_image[rows]].float()
    wins = (own * texts).sum(-1) > (mirrored * texts).sum(-1)
    return {
        "mirror_images": len(rows),
        "mirror_accuracy": float(wins.float().mean()),
        "mirror_cosine": float((own * mirrored).sum(-1).mean()),
    }


def free_prompt_retrieval(clip, tokenizer, records, image_embeds, length: int, batch_size: int) -> dict:
    """For the prompts of the free-form suite (`free_prompt_suite`, 50 scenes per GenEval category, each phrased
    in a seen and a held-out family): the share whose best-scoring image of the folder is one the prompt is true
    of (`request_holds`), per category, for the seen and held-out phrasings apart."""
    from ..evaluation.free_prompts import free_prompt_suite
    from ..world.prompts import request_holds

    rows = free_prompt_suite(records, 50)
    if not rows:
        return {}
    text_embeds = embed_texts(clip, tokenizer, [row["prompt"] for row in rows], length, batch_size)[0]
    best = (text_embeds.float() @ image_embeds.float().T).argmax(1).tolist()
    hits: dict = {}
    for row, image in zip(rows, best):
        group = hits.setdefault("held_out" if row["held_out"] else "seen", {})
        group.setdefault(row["request"]["category"], []).append(request_holds(row["request"], records[image]["scene"]))
    return {
        "free_prompts_top1": {
            group: {category: sum(h) / len(h) for category, h in sorted(by_category.items())}
            for group, by_category in hits.items()
        }
    }


def evaluate_retrieval(
    clip,
    tokenizer,
    image_processor,
    data_dir,
    limit=None,
    batch_size: int = 256,
    caption_column: str = "text",
    image_column: str = "file_name",
) -> dict:
    records = read_metadata(Path(data_dir), caption_column, image_column)[:limit]
    captions = sorted({r[caption_column] for r in records})
    index = {c: i for i, c in enumerate(captions)}
    caption_of_image = torch.tensor([index[r[caption_column]] for r in records])
    images = load_images(data_dir, records, image_column, clip.config.vision_config.image_size)
    image_embeds = embed_images(clip, image_processor, images, batch_size)
    length = clip_text_length(clip, tokenizer)
    text_embeds = embed_texts(clip, tokenizer, captions, length, batch_size)[0]
    image_to_text, text_to_image = retrieval_ranks(image_embeds.float() @ text_embeds.float().T, caption_of_image)
    report = {"images": len(records), "distinct_captions": len(captions)}
    report.update(rank_metrics(image_to_text, "image_to_text"))
    report.update(rank_metrics(text_to_image, "text_to_image"))
    report.update(order_accuracy(clip, tokenizer, records, image_embeds, length, batch_size, caption_column))
    report.update(
        mirror_scores(clip, image_processor, records, images, image_embeds, text_embeds, caption_of_image, batch_size)
    )
    if all(isinstance(r.get("scene"), dict) for r in records):
        report.update(free_prompt_retrieval(clip, tokenizer, records, image_embeds, length, batch_size))
    return report
