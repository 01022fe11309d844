"""The safety checker of generated images: a detector of the world's objects whose blocked concepts, each with a
threshold, flag an image (diffusers' `StableDiffusionSafetyChecker` in role: a component of the pipeline folder,
run on every decoded image, flagged images blacked out).

diffusers' checker compares a CLIP image embedding with concept embeddings. The shipped CLIP's pooled image
embedding does not tell the world's objects apart well enough for that: on classic renders a "snake" concept
scored AUC 0.70 against its other objects from the text embedding of "a snake", and a linear probe trained on the
embeddings kept 0.34 of the other renders above the threshold that found 0.70 of the snakes. So the concept
embeddings here are the rows of a detector's object head, scored against each cell of its feature grid: the
judge of `genvl eval t2i` (`SceneJudge`), trained on real renders only. A concept's score is the highest, over the
cells, of the probability that an object is centred there times the probability that it is this concept; the
image is flagged for every blocked concept whose score is above its threshold.

The checker also reads the request (`check_text`, on unless `check_prompts=False`): a prompt that names a blocked
concept flags every image made for it, whatever the generator drew. The image stage alone cannot flag an image in
which the generator drew some other object than the one asked for; the prompt stage refuses the request itself, as
moderation of a text-to-image service does before and after drawing.
"""

import re

import torch
from diffusers.configuration_utils import register_to_config

from .judge import SceneJudge


class SafetyChecker(SceneJudge):
    """A `SceneJudge` with `blocked` concepts (object names of its head) and their `blocked_thresholds` in (0, 1).

    `check(images)` -> for each image, the blocked concepts it shows; `check_text(prompts)` -> for each prompt, those
    it names (with `check_prompts`). `from_judge` makes one of a trained judge."""

    @register_to_config
    def __init__(
        self,
        object_names: list,
        colour_names: list,
        channels: tuple = (32, 64, 128),
        image_size: int = 64,
        threshold: float = 0.5,
        nms_distance: float | None = None,
        predict_size: bool = False,
        blocked: list = (),
        blocked_thresholds: list = (),
        check_prompts: bool = True,
    ):
        super().__init__(object_names, colour_names, channels, image_size, threshold, nms_distance, predict_size)
        check_blocked(list(object_names), list(blocked), list(blocked_thresholds))

    @classmethod
    def from_judge(
        cls, judge: SceneJudge, blocked: list[str], thresholds: list[float], check_prompts: bool = True
    ) -> "SafetyChecker":
        """A checker with `judge`'s weights that blocks `blocked`, each above its threshold (and, with
        `check_prompts`, in the prompts that name it)."""
        config = {key: value for key, value in judge.config.items() if not key.startswith("_")}
        thresholds = [float(t) for t in thresholds]
        checker = cls(**config, blocked=list(blocked), blocked_thresholds=thresholds, check_prompts=check_prompts)
        checker.load_state_dict(judge.state_dict())
        return checker.eval()

    @torch.no_grad()
    def concept_scores(self, images: torch.Tensor) -> torch.Tensor:
        """(N, len(blocked)) scores in [0, 1] of (N, 3, H, W) images in [-1, 1] (resized to the detector's size)."""
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            images = torch.nn.functional.interpolate(
                images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        outputs = self(images.to(device=self.device, dtype=self.dtype))
        rows = [self.config.object_names.index(name) for name in self.config.blocked]
        present = outputs["objectness"].float().sigmoid()[..., None]
        which = outputs["objects"].float().softmax(-1)[..., rows]
        return (present * which).flatten(1, 2).amax(1).cpu()

    def check(self, images: torch.Tensor) -> list[list[str]]:
        """For each of (N, 3, H, W) images in [-1, 1], the blocked concepts whose score is above their threshold."""
        if not self.config.blocked:
            return [[] for _ in images]
        above = self.concept_scores(images) > torch.tensor(self.config.blocked_thresholds)
        return [[name for name, hit in zip(self.config.blocked, row) if hit] for row in above.tolist()]

    def check_text(self, prompts: list[str]) -> list[list[str]]:
        """For each prompt, the blocked concepts it names (`named_concepts`); none with `check_prompts=False`."""
        if not self.config.check_prompts:
            return [[] for _ in prompts]
        return [named_concepts(prompt, self.config.blocked) for prompt in prompts]

    def either(self, shown: list[list[str]], named: list[list[str]]) -> list[list[str]]:
        """Per image, the concepts its image stage (`shown`) or its prompt stage (`named`) found, in the checker's
        order."""
        return [sorted({*image, *prompt}, key=self.config.blocked.index) for image, prompt in zip(shown, named)]


def named_concepts(text: str, concepts: list[str]) -> list[str]:
    """The `concepts` (object names) that `text` names: for an object of the world, any word or phrase the world's
    prompt readers take for it (`object_words`: its name, plural and other words, "bunny" for a rabbit), else the
    name; as whole words in any case, a hyphen read as a space ("t-shirt"), the text read as the prompt readers
    read it (`plain_text`: "ｓｎａｋｅ" is a snake)."""
    from ..world.sprites import OBJECTS
    from ..world.typed import object_words, plain_text

    text = " ".join(plain_text(text).lower().replace("-", " ").split())
    found = []
    for name in concepts:
        forms = object_words(name) if name in OBJECTS else {name.lower()}
        if any(re.search(rf"\b{re.escape(form)}\b", text) for form in forms):
            found.append(name)
    return found


def request_texts(asked: list[str], drawn: list[str] | None) -> list[str]:
    """Per image, the text the prompt stage reads: the prompt as typed (`asked`) and, where the pipeline rewrote it
    (`drawn`: the text the image was drawn from), as drawn too, so that no rewriting draws what it blocks."""
    if drawn is None:
        return list(asked)
    return [typed if typed == used else f"{typed}\n{used}" for typed, used in zip(asked, drawn, strict=True)]


def check_blocked(names: list, blocked: list, thresholds: list) -> None:
    """Refuse a blocked concept the detector does not know, a repeated one, or thresholds that are not one number
    in (0, 1) per concept."""
    if len(thresholds) != len(blocked):
        raise ValueError(f"blocked_thresholds must give one threshold per blocked concept ({len(blocked)})")
    for name in blocked:
        if name not in names:
            raise ValueError(f"blocked concept {name!r} is not one of the checker's objects")
    if len(set(blocked)) != len(blocked):
        raise ValueError("blocked names a concept twice")
    for value in thresholds:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ValueError(f"blocked_thresholds must be numbers in (0, 1), got {value!r}")
