"""Decoding loops: greedy, sampling, beam search and beam sampling over a cached decoder (`decoder_for`).

Scores: greedy and sampling report the sum of the generated tokens' log-probabilities (after penalties,
before temperature/top-k/top-p); beam search reports the length-normalised beam score, as transformers'
`sequences_scores` (beam sampling's after the sampling filters, as transformers sums them).
"""

from dataclasses import dataclass

import torch

from .decoder import decoder_for, encode_images
from .processors import apply_penalties, sampling_filters

# what beam search adds to the score of a candidate it masks out (an ended one among the running beams, a running
# one among the finished, an empty finished slot): transformers adds -1e9 rather than -inf, and the ties and the
# scores it reports for unfinished beams come out the same only with this value
MASKED = -1e9


@dataclass
class GenerationResult:
    sequences: list[list[list[int]]]  # [image][candidate] -> generated token ids, without EOS
    scores: list[list[float]]  # [image][candidate], best first


@torch.no_grad()
def generate(
    model, pixel_values, settings, prefix_ids=(), generator=None, encoder_states=None, tokenizer=None
) -> GenerationResult:
    """Caption a batch of images (B, 3, H, W) with `settings` (a `GenerationSettings`).

    `prefix_ids` are tokens every caption must continue; `generator` is a `torch.Generator` or a list of
    one per image (per-image reproducibility) for sampling. `encoder_states` (B, N, C), when given, are the
    images' encodings from `encode_images` (e.g. cached), and `pixel_values` is not used. `tokenizer` is needed
    with `stop_strings` only.
    """
    settings.check_vocabulary(model.decoder.config.vocab_size)
    stop = _stop_matcher(settings, tokenizer)
    states = encode_images(model, pixel_values) if encoder_states is None else encoder_states
    if settings.do_sample and generator is None and settings.seed is not None:
        generator = torch.Generator(device=states.device).manual_seed(settings.seed)
    if isinstance(generator, (list, tuple)) and len(generator) != states.shape[0]:
        raise ValueError(f"got {len(generator)} generators for {states.shape[0]} images")
    prompt = torch.tensor([settings.decoder_start_token_id, *prefix_ids], device=states.device)
    if settings.num_beams > 1:
        return beam_search(model, states, prompt, settings, stop, generator)
    return greedy_or_sample(model, states, prompt, settings, generator, stop)


def _stop_matcher(settings, tokenizer):
    """A function of token ids (R, T) -> whether each row's last token completes one of `settings.stop_strings`
    (R,), by transformers' `StopStringCriteria` on the tokenizer's vocabulary; None without stop strings."""
    if not settings.stop_strings:
        return None
    if tokenizer is None:
        raise ValueError("stop_strings needs the captioner's tokenizer: pass tokenizer= to generate()")
    from transformers import StopStringCriteria

    criteria = StopStringCriteria(tokenizer, list(settings.stop_strings))
    return lambda ids: criteria(ids, None)


def _trim(tokens: list[int], settings) -> list[int]:
    """`tokens` up to the first end token; with stop strings, without the padding after a stop."""
    tokens = next((tokens[:i] for i, token in enumerate(tokens) if token in settings.end_tokens), tokens)
    while settings.stop_strings and tokens and tokens[-1] == settings.pad_token_id:
        tokens = tokens[:-1]
    return tokens


def _sample(probs: torch.Tensor, generator, image_of_row: torch.Tensor, count: int = 1) -> torch.Tensor:
    """Draw `count` different indices per row of `probs` (R, count), row i with the generator of image
    `image_of_row[i]` when there is one per image; draws happen on each generator's device (a CPU generator gives
    the same tokens whatever device the model runs on)."""
    if not isinstance(generator, (list, tuple)):
        device = generator.device if generator is not None else probs.device
        return torch.multinomial(probs.to(device), count, generator=generator).to(probs.device)
    picks = [
        torch.multinomial(p.to(generator[int(i)].device), count, generator=generator[int(i)]).to(probs.device)
        for p, i in zip(probs, image_of_row)
    ]
    return torch.stack(picks)


def greedy_or_sample(model, states, prompt, settings, generator=None, stop=None) -> GenerationResult:
    images = states.shape[0]
    copies = settings.num_return_sequences if settings.do_sample else 1
    pad = settings.pad_token_id
    ends = torch.tensor(settings.end_tokens, device=states.device)
    decoder = decoder_for(model, states, len(prompt) + settings.max_new_tokens)
    logits = decoder.step(prompt.expand(images, -1))  # (B, V)
    if copies > 1:
        decoder.expand(copies)
        logits = logits.repeat_interleave(copies, dim=0)
    rows = images * copies
    device = states.device
    # per-row state of the rows the decoder still holds; `live` are their indices in the full batch, and rows
    # whose image has finished move to `all_tokens` / `all_totals`
    live = torch.arange(rows, device=device)
    tokens = torch.full((rows, settings.max_new_tokens), pad, dtype=torch.long, device=device)
    totals = torch.zeros(rows, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    all_tokens, all_totals = tokens.clone(), totals.clone()
    history = settings.reads_history  # penalties and bans read the tokens so far
    for step in range(settings.max_new_tokens):
        input_ids = torch.cat([prompt.expand(len(live), -1), tokens[:, :step]], dim=1) if history else None
        scores = apply_penalties(logits, input_ids, step, settings, len(prompt))
        log_probs = scores.log_softmax(dim=-1)
        if settings.do_sample:
            probs = sampling_filters(scores, settings).softmax(dim=-1)
            next_tokens = _sample(probs, generator, live // copies).squeeze(1)
        else:
            next_tokens = scores.argmax(dim=-1)
        picked = log_probs.gather(1, next_tokens[:, None]).squeeze(1)
        if copies > 1:  # a row that has finished while its image's other rows go on only pads
            next_tokens = next_tokens.masked_fill(finished, pad)
            picked = picked.masked_fill(finished, 0.0)
        tokens[:, step] = next_tokens
        totals += picked
        finished |= torch.isin(next_tokens, ends)
        if stop is not None:
            finished |= stop(torch.cat([prompt.expand(len(live), -1), tokens[:, : step + 1]], dim=1))
        if step == settings.max_new_tokens - 1:
            break
        open_images = ~finished.view(-1, copies).all(dim=1)
        if not bool(open_images.all()):
            if not bool(open_images.any()):
                break
            # drop images whose rows have all finished
            keep_rows = open_images.repeat_interleave(copies)
            gone = ~keep_rows
            all_tokens[live[gone]], all_totals[live[gone]] = tokens[gone], totals[gone]
            keep_rows = keep_rows.nonzero().squeeze(1)
            decoder.keep(keep_rows, open_images.nonzero().squeeze(1))
            live, tokens, totals, finished = live[keep_rows], tokens[keep_rows], totals[keep_rows], finished[keep_rows]
            next_tokens = next_tokens[keep_rows]
        logits = decoder.step(next_tokens[:, None])
    all_tokens[live], all_totals[live] = tokens, totals
    sequences, scores = [], []
    for image in range(images):
        block = range(image * copies, (image + 1) * copies)
        ranked = sorted(block, key=lambda r: -float(all_totals[r]))
        sequences.append([_trim(all_tokens[r].tolist(), settings) for r in ranked])
        scores.append([float(all_totals[r]) for r in ranked])
    return GenerationResult(sequences=sequences, scores=scores)


@dataclass
class _Beams:
    """The search state of the images still searching, one row per image and K beams each, every sequence
    `max_length` tokens long (prompt included, padded)."""

    running: torch.Tensor  # (B, K, max_length) the beams still running
    running_scores: torch.Tensor  # (B, K) their summed log-probabilities
    done_seqs: torch.Tensor  # (B, K, max_length) the best finished sequences so far
    done_scores: torch.Tensor  # (B, K) their length-normalised scores, MASKED in a slot not yet filled
    done: torch.Tensor  # (B, K) which slots hold a finished sequence

    def select(self, images: torch.Tensor) -> "_Beams":
        """The state of `images` (indices into the rows) only."""
        return _Beams(
            self.running[images],
            self.running_scores[images],
            self.done_seqs[images],
            self.done_scores[images],
            self.done[images],
        )


@dataclass
class _Candidates:
    """The best C continuations (a beam and one more token) of each image at one step, best first: C = 2K, or K more
    per extra end token, as in transformers, so that K of them can always go on running."""

    scores: torch.Tensor  # (B, C) summed log-probabilities
    parents: torch.Tensor  # (B, C) the beam each one continues
    sequences: torch.Tensor  # (B, C, max_length) the beam's tokens with the new one
    ended: torch.Tensor  # (B, C) whether the new token ends the caption (an end token, or it completes a stop string)
    # or is the last one there is room for


def _best_continuations(
    logits,
    beams: _Beams,
    cur_len: int,
    prompt_len: int,
    settings,
    history: bool,
    ends: torch.Tensor,
    stop=None,
    draw=None,
) -> _Candidates:
    """Phase 1: add each next token's log-probability (B * K, V) to its beam's score and keep the best C, or, with
    `draw` (beam sampling: a function of probabilities (B, K * V) and a count), C drawn from the sampling filters'
    scores and sorted."""
    images, num_beams, max_length = beams.running.shape
    vocab = logits.shape[-1]
    log_probs = logits.log_softmax(dim=-1)
    input_ids = beams.running[:, :, :cur_len].flatten(0, 1) if history else None
    log_probs = apply_penalties(log_probs, input_ids, cur_len - prompt_len, settings, prompt_len)
    count = max(2, 1 + len(ends)) * num_beams
    if draw is not None:  # at least one token more than there are end tokens stays in every beam
        log_probs = sampling_filters(log_probs, settings, keep=1 + len(ends), shift=False)
    totals = (log_probs.view(images, num_beams, vocab) + beams.running_scores[:, :, None]).view(images, -1)
    if draw is None:
        top_scores, top_index = torch.topk(totals, count)
    else:
        drawn = draw(totals.softmax(dim=-1), count)
        top_scores, order = totals.gather(1, drawn).sort(dim=-1, descending=True)
        top_index = drawn.gather(1, order)
    parents, tokens = top_index // vocab, top_index % vocab
    sequences = torch.take_along_dim(beams.running, parents[:, :, None], dim=1)
    sequences[:, :, cur_len] = tokens
    ended = torch.isin(tokens, ends)
    if stop is not None:
        ended |= stop(sequences[:, :, : cur_len + 1].flatten(0, 1)).view(ended.shape)
    if cur_len + 1 >= max_length:
        ended.fill_(True)
    return _Candidates(top_scores, parents, sequences, ended)


def _keep_running(beams: _Beams, candidates: _Candidates) -> torch.Tensor:
    """Phase 2: the best K candidates that have not ended become the running beams. Returns each new beam's parent
    beam (B, K)."""
    num_beams = beams.running.shape[1]
    open_scores = candidates.scores.add(candidates.ended, alpha=MASKED)
    pick = torch.topk(open_scores, num_beams).indices
    beams.running = torch.take_along_dim(candidates.sequences, pick[:, :, None], dim=1)
    beams.running_scores = open_scores.gather(1, pick)
    return candidates.parents.gather(1, pick)


def _keep_finished(beams: _Beams, candidates: _Candidates, generated: int, length_penalty: float) -> None:
    """Phase 3: ended candidates among the top K, scored per `generated` tokens to the `length_penalty`, join the
    finished set if they beat it (every image here can still improve and, with early_stopping=True, is not full:
    the others were settled and dropped)."""
    num_beams = beams.running.shape[1]
    ended = candidates.ended & (torch.arange(candidates.ended.shape[1], device=candidates.ended.device) < num_beams)
    final_scores = (candidates.scores / (generated**length_penalty)).add(~ended, alpha=MASKED)
    merged_scores = torch.cat([beams.done_scores, final_scores], dim=1)
    best = torch.topk(merged_scores, num_beams).indices
    beams.done_seqs = torch.take_along_dim(
        torch.cat([beams.done_seqs, candidates.sequences], dim=1), best[:, :, None], dim=1
    )
    beams.done_scores = merged_scores.gather(1, best)
    beams.done = torch.cat([beams.done, ended], dim=1).gather(1, best)


def _settled(beams: _Beams, generated: int, most_generated: int, settings) -> torch.Tensor:
    """Phase 4: which images (B,) are settled, after `generated` of at most `most_generated` new tokens: no running
    beam can beat their finished ones (transformers' heuristic) or, with early_stopping=True, they have num_beams
    finished ones. Their finished sets cannot change any more."""
    if settings.early_stopping == "never" and settings.length_penalty > 0.0:
        best_length = most_generated
    else:
        best_length = generated
    best_running = beams.running_scores[:, :1] / (best_length**settings.length_penalty)
    worst_done = torch.where(beams.done, beams.done_scores.min(dim=1, keepdim=True).values, MASKED)
    settled = ~(best_running > worst_done).any(dim=1)
    if settings.early_stopping is True:
        settled |= beams.done.all(dim=1)
    return settled


def beam_search(model, states, prompt, settings, stop=None, generator=None) -> GenerationResult:
    """Beam search, or with `do_sample` beam sampling, with transformers' semantics (the top 2K or more candidates,
    or as many drawn without replacement, length penalty, early stopping rules).

    Masked scores are pushed down by adding `MASKED`, in the same order as transformers, so that ties and the
    scores reported for unfinished beams come out the same.
    """
    images, num_beams = states.shape[0], settings.num_beams
    prompt_len = len(prompt)
    max_length = prompt_len + settings.max_new_tokens
    device = states.device
    decoder = decoder_for(model, states, max_length)
    logits = decoder.step(prompt.expand(images, -1))  # one row per image: all beams start identical
    decoder.expand(num_beams)
    logits = logits.repeat_interleave(num_beams, dim=0)  # (B * K, V)
    history = settings.reads_history  # penalties and bans read the tokens so far
    ends = torch.tensor(settings.end_tokens, device=device)

    running = torch.full((images, num_beams, max_length), settings.pad_token_id, dtype=torch.long, device=device)
    running[:, :, :prompt_len] = prompt
    running_scores = torch.zeros(images, num_beams, device=device)
    running_scores[:, 1:] = MASKED  # only the first beam may expand at the first step
    beams = _Beams(
        running,
        running_scores,
        running.clone(),
        torch.full((images, num_beams), MASKED, device=device),
        torch.zeros(images, num_beams, dtype=torch.bool, device=device),
    )
    row_offset = torch.arange(images, device=device)[:, None] * num_beams  # first decoder row of each image
    live = torch.arange(images, device=device)  # the images still searching (the decoder holds only their rows)
    result_seqs, result_scores = beams.done_seqs.clone(), beams.done_scores.clone()
    cur_len = prompt_len
    draw = None
    if settings.do_sample:  # beam sampling: each image's candidates drawn with its generator (`live` as it is then)

        def draw(probs, count):
            return _sample(probs, generator, live, count)

    while True:
        candidates = _best_continuations(logits, beams, cur_len, prompt_len, settings, history, ends, stop, draw)
        parents = _keep_running(beams, candidates)
        _keep_finished(beams, candidates, cur_len + 1 - prompt_len, settings.length_penalty)
        cur_len += 1
        settled = _settled(beams, cur_len - prompt_len, max_length - prompt_len, settings)
        if bool(settled.all()) or bool(candidates.ended.all()):
            break
        rows = parents + row_offset[: len(live)]  # the rows whose histories the next step's beams continue
        if bool(settled.any()):
            # store the settled images' results and stop decoding them
            finished = beams.select(settled)
            result_seqs[live[settled]], result_scores[live[settled]] = finished.done_seqs, finished.done_scores
            kept = (~settled).nonzero().squeeze(1)
            decoder.keep(rows[kept].flatten(), kept)
            live, beams = live[kept], beams.select(kept)
        else:
            decoder.reorder(rows.flatten())
        logits = decoder.step(beams.running[:, :, cur_len - 1].reshape(-1, 1))
    result_seqs[live], result_scores[live] = beams.done_seqs, beams.done_scores

    count = settings.num_return_sequences
    sequences = [
        [_trim(result_seqs[i, j, prompt_len:].tolist(), settings) for j in range(count)] for i in range(images)
    ]
    scores = [[float(result_scores[i, j]) for j in range(count)] for i in range(images)]
    return GenerationResult(sequences=sequences, scores=scores)
