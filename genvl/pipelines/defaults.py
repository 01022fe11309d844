"""The text-to-image pipeline's default sampling settings, in one place. Free of torch, so that the command
line's parser can state them without importing it."""

# inference steps of each stage, the prior's and the decoder's
DEFAULT_NUM_INFERENCE_STEPS = 25

# classifier-free guidance scale of each stage (the decoder's towards the image embedding)
DEFAULT_GUIDANCE_SCALE = 4.0

# the decoder's guidance towards the prompt's words on top of the image embedding's: on the shipped pipeline it
# judged better than the joint guidance of both at 4 in every category (see the unCLIP model card)
DEFAULT_TEXT_GUIDANCE = 8.0
