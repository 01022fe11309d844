"""Train a CLIP text tower on the prompt grammar against a locked image tower (LiT), with accelerate.

    accelerate launch -m genvl.recipes.train_text_tower --config configs/train_text_tower.json

The image tower of `--image_tower` (a CLIP folder, or a pipeline's `clip/`) is locked, so the image embeddings a
decoder was trained on stay as they are; its embeddings of the training images are computed once. A fresh
tokenizer and text tower learn the language of `genvl.world.prompts`: each scene's own captions and
`--prompts_per_scene` more phrasings of requests it meets, in the training phrasing families only. The loss is
CLIP's symmetric InfoNCE with targets spread over every pair where the text's request holds of the image's scene
(`request_holds`), so "a bicycle" matches every picture of one bicycle alone. With `--filler_words F`, a share F
of the texts each step gets one made-up word, so that words the tower never saw do not throw it.

With `--order_tower` (a CLIP whose image tower tells a scene from its mirror image, as the pipeline's
`reranker/`), the same text tower also learns word order through a second projection scored against that
locked tower: each two-object text's object-swapped twin is an extra negative text, and each two-object image
mirrored across its relation's axis an extra negative image. The text states the decoder reads then carry
which object is where, which the first image tower cannot say (a render and its mirror are 0.99 alike to it).

Ends with a `CLIPModel` (the locked image tower and the new text tower), its tokenizer and image processor in
`output_dir`, and with `--order_tower` a second `CLIPModel` in `output_dir/order_clip` (its locked image tower,
the same text tower and the order projection) that ranks candidates by word order.
"""

import random
import string
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import CLIPModel

from genvl.io.components import load_pretrained
from genvl.io.imagefolder import load_images
from genvl.models.clip import (
    ClipArchitecture,
    build_clip,
    build_clip_image_processor,
    embed_images,
    train_clip_tokenizer,
)
from genvl.training.args import (
    TrainArgs,
    check_at_least,
    check_fraction,
    parse_args,
    run_script,
    save_architecture,
    saving_run,
)
from genvl.training.contrastive import MAX_LOGIT_SCALE, gather_with_grad, matched_loss
from genvl.training.data import pick_phrasings, prompt_rng, read_training_data, tokenize_texts
from genvl.training.features import cached_features, data_stamp, file_stamp, load_or_train_tokenizer
from genvl.training.loop import make_accelerator, train_loop
from genvl.training.pretrained import pretrained_part
from genvl.world.prompts import request_holds, request_key, scene_key, swapped_scene, training_prompts


@dataclass
class TrainTextTowerArgs(TrainArgs):
    """Train a CLIP text tower on the prompt grammar against a locked image tower."""

    output_dir: str = "runs/text_tower"
    image_tower: str = "pipelines/genvl-unclip-small"  # the CLIP whose image tower is locked (or a pipeline)
    order_tower: str | None = None  # a CLIP whose locked image tower teaches word order
    architecture: str = "configs/clip_small.json"
    vocab_size: int = 1024
    prompts_per_scene: int = 6
    filler_words: float = 0.0  # share of training texts given one made-up word, to be read past
    train_batch_size: int = 256

    def __post_init__(self):
        super().__post_init__()
        check_at_least(self, 1, "vocab_size")
        check_at_least(self, 0, "prompts_per_scene")
        check_fraction(self, "filler_words")


class TextTowers(torch.nn.Module):
    """The CLIP being trained (only its text side learns) and, for word order, a second projection of the
    same pooled text state with its own temperature."""

    def __init__(self, clip, order_dim: int | None):
        super().__init__()
        self.clip = clip
        self.order_projection = None
        if order_dim:
            self.order_projection = torch.nn.Linear(clip.config.text_config.hidden_size, order_dim, bias=False)
            self.order_logit_scale = torch.nn.Parameter(torch.tensor(clip.config.logit_scale_init_value))

    def forward(self, input_ids, attention_mask):
        pooled = self.clip.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        order = self.order_projection(pooled) if self.order_projection is not None else None
        return self.clip.text_projection(pooled), order


def text_table(records, prompts_per_scene: int, seed: int):
    """(texts, requests, twins, phrasings): every distinct training text with its request, the index of each
    text's object-swapped twin (-1: none), and an (N, P) tensor of each record's P phrasings."""
    texts, requests, position = [], [], {}

    def add(text, request):
        if text not in position:
            position[text] = len(texts)
            texts.append(text)
            requests.append(request)
        return position[text]

    rows, twin_of = [], {}
    for i, record in enumerate(records):
        row = []
        for text, request, twin in training_prompts(record["scene"], prompt_rng(seed, i), prompts_per_scene):
            row.append(add(text, request))
            if twin is not None:
                swapped = {**request, "objects": request["objects"][1::-1] + request["objects"][2:]}
                twin_of[row[-1]] = add(twin, swapped)
        rows.append(row)
    width = max(len(row) for row in rows)
    phrasings = torch.tensor([[row[j % len(row)] for j in range(width)] for row in rows])
    twins = torch.full((len(texts),), -1, dtype=torch.long)
    for text, twin in twin_of.items():
        twins[text] = twin
    return texts, requests, twins, phrasings


def key_ids(keys) -> torch.Tensor:
    """Small integer ids of hashable keys, equal where the keys are."""
    ids: dict = {}
    return torch.tensor([ids.setdefault(key, len(ids)) for key in keys])


class Truth:
    """Which texts are true of which scenes: `request_holds`, checked only where the names and counts agree."""

    def __init__(self, requests, scenes):
        self.requests = requests
        keys = key_ids([request_key(r) for r in requests] + [scene_key(s) for s in scenes])
        self.text_keys, self.scene_keys = keys[: len(requests)], keys[len(requests) :]

    def __call__(self, texts: torch.Tensor, records: torch.Tensor, scenes) -> torch.Tensor:
        """(len(texts), len(records)) float: 1 where text `texts[i]` is true of `scenes[records[j]]` (None: not)."""
        same = self.text_keys[texts][:, None] == self.scene_keys[records][None, :]
        out = torch.zeros(same.shape)
        for i, j in same.nonzero().tolist():
            scene = scenes[int(records[j])]
            out[i, j] = float(scene is not None and request_holds(self.requests[int(texts[i])], scene))
        return out


def locked_clip(path, arch: ClipArchitecture, tokenizer):
    """A fresh CLIP of `arch` whose image tower and projection are those of the CLIP at `path`, locked."""
    source = load_pretrained(CLIPModel, pretrained_part(path, "clip"))
    model = build_clip(arch, tokenizer)
    try:
        model.vision_model.load_state_dict(source.vision_model.state_dict())
        model.visual_projection.load_state_dict(source.visual_projection.state_dict())
    except RuntimeError:
        raise ValueError(f"--image_tower {path}: its image tower is not the one --architecture describes") from None
    for module in (model.vision_model, model.visual_projection):
        module.requires_grad_(False)
    return model


def image_features(accelerator, args, records, clip):
    """The unit embeddings of every training image by `clip`'s locked image tower (`images`), and with
    `--order_tower` the order tower's of every image (`order`) and of every two-object image mirrored
    (`mirrored`; zeros for the others), computed once and cached in `output_dir`."""
    image_size = clip.config.vision_config.image_size
    processor = build_clip_image_processor

    def compute():
        images = load_images(Path(args.train_data_dir), records, args.image_column, image_size)
        out = {"images": embed_images(clip.eval(), processor(image_size), images)}
        if args.order_tower:
            order = load_pretrained(CLIPModel, pretrained_part(args.order_tower, "clip")).eval()
            out["order"] = embed_images(order, processor(image_size), images)
            axes = {"pair_h": -1, "pair_v": -2}
            pairs = [i for i, r in enumerate(records) if r["scene"]["layout"] in axes]
            mirrored = torch.zeros_like(out["order"])
            for axis in (-1, -2):
                rows = [i for i in pairs if axes[records[i]["scene"]["layout"]] == axis]
                if rows:
                    mirrored[rows] = embed_images(order, processor(image_size), images[rows].flip(axis))
            out["mirrored"] = mirrored
        return out

    key = {
        "data": data_stamp(args.train_data_dir),
        "records": len(records),
        "image_tower": file_stamp(pretrained_part(args.image_tower, "clip")),
        "order_tower": file_stamp(pretrained_part(args.order_tower, "clip")) if args.order_tower else None,
        "image_size": image_size,
    }
    path = Path(args.output_dir) / "image_features.safetensors"
    if accelerator.is_main_process:
        cached_features(path, key, compute)
    accelerator.wait_for_everyone()
    return cached_features(path, key, compute)


def main(argv=None):
    args = parse_args(TrainTextTowerArgs, argv)
    accelerator = make_accelerator(args, "train_text_tower")
    output_dir = Path(args.output_dir)
    records = read_training_data(accelerator, args)
    if any(not isinstance(r.get("scene"), dict) for r in records):
        raise ValueError(f"{args.train_data_dir}: every record needs a scene graph (genvl data scenes writes them)")
    scenes = [r["scene"] for r in records]

    # 1. the language: every record's phrasings with what each asks for, a tokenizer trained on them
    texts, requests, twins, phrasings = text_table(records, args.prompts_per_scene, args.seed)
    accelerator.print(f"{len(texts)} distinct training texts, {int((twins >= 0).sum())} with a swapped twin")
    arch = ClipArchitecture.from_json(args.architecture)
    arch.image_size = args.resolution
    save_architecture(accelerator, args, arch)
    tokenizer = load_or_train_tokenizer(
        accelerator, output_dir, lambda: train_clip_tokenizer(texts, args.vocab_size, arch.max_positions)
    )
    clip = locked_clip(args.image_tower, arch, tokenizer)
    features = image_features(accelerator, args, records, clip)
    order_dim = features["order"].shape[1] if args.order_tower else None
    model = TextTowers(clip, order_dim)
    ids, lengths = tokenize_texts(tokenizer, texts, arch.max_positions)
    truth = Truth(requests, scenes)
    mirrored_scenes = [swapped_scene(scene) for scene in scenes]

    # 2. the loss: content against the locked image tower, word order against the order tower
    device = accelerator.device
    is_pair = torch.tensor([scene is not None for scene in mirrored_scenes])

    def compute_loss(model, batch, step):
        chosen = pick_phrasings(phrasings, batch, args.seed, step, accelerator.process_index, accelerator.num_processes)
        twin = twins[chosen]
        rows = len(batch)
        with_twin = (twin >= 0).nonzero().squeeze(1) if order_dim else torch.zeros(0, dtype=torch.long)
        text_ids = torch.cat([chosen, twin[with_twin]])
        input_ids, length = ids[text_ids], lengths[text_ids]
        if args.filler_words:
            first_row = accelerator.process_index * rows
            strings = with_filler_words([texts[t] for t in text_ids.tolist()], with_twin, args, step, first_row)
            input_ids, length = tokenize_texts(tokenizer, strings, arch.max_positions)
        input_ids = input_ids[:, : int(length.max())]
        mask = (torch.arange(input_ids.shape[1]) < length[:, None]).long()
        content, order = model(input_ids.to(device), mask.to(device))
        every_record, every_text, every_twin = (accelerator.gather(x.to(device)).cpu() for x in (batch, chosen, twin))
        towers = accelerator.unwrap_model(model)
        with torch.no_grad():
            towers.clip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        # which texts are true of which images: this process's images x every text, its texts x every image
        image_matches, text_matches = truth(every_text, batch, scenes).T, truth(chosen, every_record, scenes)
        content = torch.nn.functional.normalize(content[:rows].float(), dim=-1)
        images = features["images"]
        loss = matched_loss(
            images[batch].to(device),
            content,
            images[every_record].to(device),
            gather_with_grad(content, accelerator),
            towers.clip.logit_scale.exp(),
            image_matches.to(device),
            text_matches.to(device),
        )
        if order is None:
            return loss
        # word order: every text and every twin (a negative) for this process's images; every image and every
        # two-object image mirrored (a negative) for its texts
        order = torch.nn.functional.normalize(order.float(), dim=-1)
        twin_rows = order.new_zeros(rows, order.shape[1]).index_copy(0, with_twin.to(device), order[rows:])
        order = torch.cat([order[:rows], twin_rows])  # a row without a twin: zeros, left out below
        has_twin = every_twin >= 0
        twin_matches = truth(torch.where(has_twin, every_twin, every_text), batch, scenes).T * has_twin
        mirror_matches = truth(chosen, every_record, mirrored_scenes)
        order_loss = matched_loss(
            features["order"][batch].to(device),
            order[:rows],
            torch.cat([features["order"][every_record], features["mirrored"][every_record]]).to(device),
            texts_then_twins(gather_with_grad(order, accelerator), accelerator.num_processes),
            towers.order_logit_scale.clamp(0, MAX_LOGIT_SCALE).exp(),
            torch.cat([image_matches, twin_matches], dim=1).to(device),
            torch.cat([text_matches, mirror_matches], dim=1).to(device),
            text_columns=torch.cat([torch.ones_like(has_twin), has_twin]).to(device),
            image_columns=torch.cat([torch.ones_like(is_pair[every_record]), is_pair[every_record]]).to(device),
        )
        return loss + order_loss

    parameters = [p for p in model.parameters() if p.requires_grad]
    losses = train_loop(accelerator, args, model, parameters, len(records), compute_loss)

    # 3. save: the CLIP (locked image tower, new text tower), and the order CLIP
    if accelerator.is_main_process:
        towers = accelerator.unwrap_model(model)
        with saving_run(output_dir, losses):
            towers.clip.save_pretrained(output_dir, safe_serialization=True)
            tokenizer.save_pretrained(output_dir)
            build_clip_image_processor(arch.image_size).save_pretrained(output_dir)
            if args.order_tower:
                save_order_clip(towers, args.order_tower, output_dir / "order_clip", tokenizer, arch.image_size)
    accelerator.end_training()
    return losses


def with_filler_words(strings: list[str], with_twin, args, step: int, first_row: int) -> list[str]:
    """The step's texts (its rows, then the twins of rows `with_twin`) with one made-up word of 3-9 letters put
    between two words of `args.filler_words` of the rows, and of their twins at the same place. The word means
    nothing, so the text still says what it said: the tower learns to read past words it has never seen."""
    strings = list(strings)
    twin_of = {int(row): len(strings) - len(with_twin) + k for k, row in enumerate(with_twin.tolist())}
    for row in range(len(strings) - len(with_twin)):
        rng = random.Random(f"{args.seed}/{step}/{first_row + row}")
        if rng.random() >= args.filler_words:
            continue
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 9)))
        spot = rng.randint(0, len(strings[row].split()))
        for i in (row, twin_of.get(row)):
            if i is not None:
                words = strings[i].split()
                strings[i] = " ".join(words[:spot] + [word] + words[spot:])
    return strings


def texts_then_twins(gathered, num_processes: int):
    """Every process's texts, then every process's twins, from the gathered [texts, twins] of each process."""
    parts = gathered.chunk(num_processes)
    return torch.cat([part[: len(part) // 2] for part in parts] + [part[len(part) // 2 :] for part in parts])


def save_order_clip(towers, order_tower, path: Path, tokenizer, image_size: int) -> None:
    """The word-order CLIP: the trained text tower with the order projection, and the order tower's image side."""
    import copy

    order = load_pretrained(CLIPModel, pretrained_part(order_tower, "clip"))
    model = copy.deepcopy(towers.clip)
    try:
        model.vision_model.load_state_dict(order.vision_model.state_dict())
        model.visual_projection.load_state_dict(order.visual_projection.state_dict())
        model.text_projection.load_state_dict(towers.order_projection.state_dict())
    except RuntimeError:
        raise ValueError(f"--order_tower {order_tower}: its image tower is not the shape of --image_tower's") from None
    model.logit_scale.data.copy_(towers.order_logit_scale.data)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    build_clip_image_processor(image_size).save_pretrained(path)


if __name__ == "__main__":
    run_script(main)
