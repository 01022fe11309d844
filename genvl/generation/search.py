"""Decoding loops: greedy, sampling and beam search over a `CachedDecoder`.

Scores: greedy and sampling report the sum of the generated tokens' log-probabilities (after penalties,
before temperature/top-k/top-p); beam search reports the length-normalised beam score, as transformers'
`sequences_scores`.
"""

from dataclasses import dataclass

import torch

from .decoder import CachedDecoder, encode_images
from .processors import apply_penalties, sampling_filters


@dataclass
class GenerationResult:
    sequences: list[list[list[int]]]  # [image][candidate] -> generated token ids, without EOS
    scores: list[list[float]]  # [image][candidate], best first


@torch.no_grad()
def generate(model, pixel_values, settings, prefix_ids=(), generator=None, encoder_states=None) -> GenerationResult:
    """Caption a batch of images (B, 3, H, W) with `settings` (a `GenerationSettings`).

    `prefix_ids` are tokens every caption must continue; `generator` is a `torch.Generator` or a list of
    one per image (per-image reproducibility) for sampling. `encoder_states` (B, N, C), when given, are the
    images' encodings from `encode_images` (e.g. cached), and `pixel_values` is not used.
    """
    states = encode_images(model, pixel_values) if encoder_states is None else encoder_states
    if settings.do_sample and generator is None and settings.seed is not None:
        generator = torch.Generator(device=states.device).manual_seed(settings.seed)
    if isinstance(generator, (list, tuple)) and len(generator) != states.shape[0]:
        raise ValueError(f"got {len(generator)} generators for {states.shape[0]} images")
    prompt = torch.tensor([settings.decoder_start_token_id, *prefix_ids], device=states.device)
    if settings.num_beams > 1:
        return beam_search(model, states, prompt, settings)
    return greedy_or_sample(model, states, prompt, settings, generator)


def _trim(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


def _sample(probs: torch.Tensor, generator, image_of_row: torch.Tensor) -> torch.Tensor:
    """Draw one token per row; draws happen on each generator's device (a CPU generator gives the same
    tokens whatever device the model runs on)."""
    if not isinstance(generator, (list, tuple)):
        device = generator.device if generator is not None else probs.device
        return torch.multinomial(probs.to(device), 1, generator=generator).squeeze(1).to(probs.device)
    picks = [torch.multinomial(p.to(generator[int(i)].device), 1, generator=generator[int(i)]).to(probs.device)
             for p, i in zip(probs, image_of_row)]
    return torch.cat(picks)


def greedy_or_sample(model, states, prompt, settings, generator=None) -> GenerationResult:
    images = states.shape[0]
    copies = settings.num_return_sequences if settings.do_sample else 1
    eos, pad = settings.eos_token_id, settings.pad_token_id
    decoder = CachedDecoder(model, states, len(prompt) + settings.max_new_tokens)
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
    history = settings.repetition_penalty != 1.0 or settings.no_repeat_ngram_size > 0  # penalties read it
    for step in range(settings.max_new_tokens):
        input_ids = torch.cat([prompt.expand(len(live), -1), tokens[:, :step]], dim=1) if history else None
        scores = apply_penalties(logits, input_ids, step, settings)
        log_probs = scores.log_softmax(dim=-1)
        if settings.do_sample:
            probs = sampling_filters(scores, settings).softmax(dim=-1)
            next_tokens = _sample(probs, generator, live // copies)
        else:
            next_tokens = scores.argmax(dim=-1)
        picked = log_probs.gather(1, next_tokens[:, None]).squeeze(1)
        if copies > 1:  # a row that has finished while its image's other rows go on only pads
            next_tokens = next_tokens.masked_fill(finished, pad)
            picked = picked.masked_fill(finished, 0.0)
        tokens[:, step] = next_tokens
        totals += picked
        finished |= next_tokens == eos
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
        sequences.append([_trim(all_tokens[r].tolist(), eos) for r in ranked])
        scores.append([float(all_totals[r]) for r in ranked])
    return GenerationResult(sequences=sequences, scores=scores)


def beam_search(model, states, prompt, settings) -> GenerationResult:
    """Beam search with transformers' semantics (top 2K candidates, length penalty, early stopping rules).

    Masked scores are pushed down by adding -1e9, in the same order as transformers, so that ties and the
    scores reported for unfinished beams come out the same.
    """
    images, beams = states.shape[0], settings.num_beams
    eos, pad = settings.eos_token_id, settings.pad_token_id
    prompt_len = len(prompt)
    max_length = prompt_len + settings.max_new_tokens
    device = states.device
    decoder = CachedDecoder(model, states, max_length)
    logits = decoder.step(prompt.expand(images, -1))  # one row per image: all beams start identical
    decoder.expand(beams)
    logits = logits.repeat_interleave(beams, dim=0)  # (B * K, V)
    vocab = logits.shape[-1]
    keep = 2 * beams
    history = settings.repetition_penalty != 1.0 or settings.no_repeat_ngram_size > 0  # penalties read it

    running = torch.full((images, beams, max_length), pad, dtype=torch.long, device=device)
    running[:, :, :prompt_len] = prompt
    running_scores = torch.zeros(images, beams, device=device)
    running_scores[:, 1:] = -1e9  # only the first beam may expand at the first step
    done_seqs = running.clone()
    done_scores = torch.full((images, beams), -1e9, device=device)
    done = torch.zeros(images, beams, dtype=torch.bool, device=device)
    first_k = torch.arange(keep, device=device) < beams
    row_offset = torch.arange(images, device=device)[:, None] * beams  # first decoder row of each image
    live = torch.arange(images, device=device)  # the images still searching (the decoder holds only their rows)
    result_seqs, result_scores = done_seqs.clone(), done_scores.clone()
    cur_len = prompt_len
    while True:
        # 1. accumulate log-probabilities over every (beam, token) continuation
        log_probs = logits.log_softmax(dim=-1)
        input_ids = running[:, :, :cur_len].flatten(0, 1) if history else None
        log_probs = apply_penalties(log_probs, input_ids, cur_len - prompt_len, settings)
        totals = (log_probs.view(len(live), beams, vocab) + running_scores[:, :, None]).view(len(live), -1)
        top_scores, top_index = torch.topk(totals, keep)  # (B, 2K)
        source, tokens = top_index // vocab, top_index % vocab
        candidates = torch.take_along_dim(running, source[:, :, None], dim=1)
        candidates[:, :, cur_len] = tokens
        hits = tokens == eos
        if cur_len + 1 >= max_length:
            hits.fill_(True)
        # 2. the best K candidates that have not ended keep running
        open_scores = top_scores.add(hits, alpha=-1e9)
        pick = torch.topk(open_scores, beams).indices
        running = torch.take_along_dim(candidates, pick[:, :, None], dim=1)
        running_scores = open_scores.gather(1, pick)
        parents = source.gather(1, pick)
        # 3. ended candidates among the top K join the finished set if they beat it (every image here can still
        # improve and, with early_stopping=True, is not full: the others were settled and dropped below)
        ended = hits & first_k
        final_scores = (top_scores / ((cur_len + 1 - prompt_len) ** settings.length_penalty)).add(~ended, alpha=-1e9)
        merged_scores = torch.cat([done_scores, final_scores], dim=1)
        best = torch.topk(merged_scores, beams).indices
        done_seqs = torch.take_along_dim(torch.cat([done_seqs, candidates], dim=1), best[:, :, None], dim=1)
        done_scores = merged_scores.gather(1, best)
        done = torch.cat([done, ended], dim=1).gather(1, best)
        cur_len += 1
        # 4. an image is settled when no running beam can beat its finished ones (transformers' heuristic) or,
        # with early_stopping=True, when it has num_beams finished ones: its finished set cannot change any more
        if settings.early_stopping == "never" and settings.length_penalty > 0.0:
            best_length = max_length - prompt_len
        else:
            best_length = cur_len - prompt_len
        best_running = running_scores[:, :1] / (best_length**settings.length_penalty)
        worst_done = torch.where(done, done_scores.min(dim=1, keepdim=True).values, -1.0e9)
        settled = ~(best_running > worst_done).any(dim=1)
        if settings.early_stopping is True:
            settled |= done.all(dim=1)
        if bool(settled.all()) or bool(hits.all()):
            break
        rows = parents + row_offset[: len(live)]  # the rows whose histories the next step's beams continue
        if bool(settled.any()):
            # store the settled images' results and stop decoding them
            result_seqs[live[settled]], result_scores[live[settled]] = done_seqs[settled], done_scores[settled]
            kept = (~settled).nonzero().squeeze(1)
            decoder.keep(rows[kept].flatten(), kept)
            live, running, running_scores = live[kept], running[kept], running_scores[kept]
            done_seqs, done_scores, done = done_seqs[kept], done_scores[kept], done[kept]
        else:
            decoder.reorder(rows.flatten())
        logits = decoder.step(running[:, :, cur_len - 1].reshape(-1, 1))
    result_seqs[live], result_scores[live] = done_seqs, done_scores

    count = settings.num_return_sequences
    sequences = [[_trim(result_seqs[i, j, prompt_len:].tolist(), eos) for j in range(count)] for i in range(images)]
    scores = [[float(result_scores[i, j]) for j in range(count)] for i in range(images)]
    return GenerationResult(sequences=sequences, scores=scores)
