"""The text-to-image pipeline's default sampling settings, in one place. Free of torch, so that the command
line's parser can state them without importing it."""

# inference steps of each stage, the prior's and the decoder's
DEFAULT_NUM_INFERENCE_STEPS = 25

# classifier-free guidance scale of each stage (the decoder's towards the image embedding)
DEFAULT_GUIDANCE_SCALE = 4.0

# the decoder's guidance towards the prompt's words on top of the image embedding's: on the shipped pipeline it
# judged better than the joint guidance of both at 4 in every category (see the unCLIP model card)
DEFAULT_TEXT_GUIDANCE = 8.0

# the shipped captioner that `genvl caption` and the commands that caption use unless told otherwise: the wide
# world's, which reads objects at any size, place and ground (genvl-caption-small reads only scenes drawn like the
# first world's templates)
DEFAULT_CAPTIONER = "genvl-caption-wide"
# the captioner of the first world, which the shipped text-to-image stack draws: its evaluations (`eval t2i`'s
# round trips, `eval safety`) caption in that world's words ("a large red apple", where the wide world has no size
# word for a 32 px object)
CLASSIC_CAPTIONER = "genvl-caption-small"


def shipped_pipeline(name: str):
    """The folder of the shipped default pipeline `name` (e.g. "genvl-caption-wide"): in a checkout, its
    `pipelines/` folder; installed from a wheel, `<prefix>/share/genvl/pipelines/` (the venv's, the system's or
    the user's scheme). When neither holds it, the checkout's path, for the error to name."""
    from ..io.shipped import shipped

    return shipped("pipelines", name)
