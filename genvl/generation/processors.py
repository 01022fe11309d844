"""Score processing for decoding: penalties, bans and sampling filters.

Each function takes `scores` (R, V) and returns the processed scores; they match the order and arithmetic of
transformers' logits processors so that greedy and beam search pick the same tokens.
"""

from functools import lru_cache

import torch

NEG_INF = float("-inf")


def repetition_penalty(scores: torch.Tensor, input_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make tokens already in `input_ids` (R, T) less likely: divide positive scores, multiply negative ones."""
    seen = torch.gather(scores, 1, input_ids)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    # a penalty far below 1 could push a score to +inf, and +inf turns the softmax into NaN
    return scores.scatter(1, input_ids, seen.clamp(max=torch.finfo(seen.dtype).max))


def no_repeat_ngram(scores: torch.Tensor, input_ids: torch.Tensor, size: int) -> torch.Tensor:
    """Ban every token that would complete an n-gram of `size` already present in `input_ids` (R, T)."""
    length = input_ids.shape[1]
    if length < size:  # no complete n-gram yet
        return scores
    windows = input_ids.unfold(1, size, 1)  # (R, W, size): every n-gram so far
    tail = input_ids[:, length - size + 1 :]  # (R, size - 1): the prefix the next token would extend
    match = (windows[:, :, :-1] == tail[:, None, :]).all(dim=-1)  # (R, W)
    rows, which = match.nonzero(as_tuple=True)
    banned = windows[rows, which, -1]
    scores = scores.clone()
    scores[rows, banned] = NEG_INF
    return scores


@lru_cache(maxsize=16)
def _grouped(sequences: tuple, device: torch.device, lone_tokens_left_out: tuple = ()) -> tuple:
    """`sequences` (tuples of token ids) grouped by prefix length, once per decoding: ((prefixes (N, L), last tokens
    (N,), the sequences' indices (N,)), ...), without the one-token sequences of `lone_tokens_left_out`."""
    groups = {}
    for index, sequence in enumerate(sequences):
        if len(sequence) > 1 or sequence[0] not in lone_tokens_left_out:
            groups.setdefault(len(sequence) - 1, []).append(index)
    return tuple(
        (
            torch.tensor([sequences[i][:-1] for i in group], dtype=torch.long, device=device).reshape(
                len(group), length
            ),
            torch.tensor([sequences[i][-1] for i in group], dtype=torch.long, device=device),
            torch.tensor(group, dtype=torch.long, device=device),
        )
        for length, group in sorted(groups.items())
    )


def _completions(input_ids: torch.Tensor, sequences: tuple, device: torch.device, lone_tokens_left_out: tuple = ()):
    """(rows, tokens, sequence indices) of the sequences the next token would complete after `input_ids` (R, T): a
    one-token sequence at every step, a longer one where the rows end with all but its last token."""
    for prefixes, last, index in _grouped(sequences, device, lone_tokens_left_out):
        length = prefixes.shape[1]
        if length > input_ids.shape[1]:  # longer than what has been written: it cannot be completed yet
            continue
        match = (input_ids[:, None, input_ids.shape[1] - length :] == prefixes[None]).all(dim=-1)  # (R, N)
        rows, which = match.nonzero(as_tuple=True)
        yield rows, last[which], index[which]


def bad_words(scores: torch.Tensor, input_ids: torch.Tensor, sequences: tuple, end_tokens: tuple) -> torch.Tensor:
    """Ban every token that would complete one of `sequences` after `input_ids` (R, T), as transformers'
    `bad_words_ids` does. A lone end token is left out, as transformers leaves it out, so that a ban can never stop a
    caption from ending."""
    scores = scores.clone()
    for rows, tokens, _ in _completions(input_ids, sequences, scores.device, end_tokens):
        scores[rows, tokens] = NEG_INF
    return scores


def sequence_bias(scores: torch.Tensor, input_ids: torch.Tensor, biases: tuple) -> torch.Tensor:
    """Add each bias of `biases` ((token sequence, bias), ...) to the token that would complete its sequence after
    `input_ids` (R, T), as transformers' `sequence_bias` does (the biases of one token summed first)."""
    sequences = tuple(sequence for sequence, _ in biases)
    values = torch.tensor([bias for _, bias in biases], dtype=scores.dtype, device=scores.device)
    bias = torch.zeros_like(scores)
    for rows, tokens, index in _completions(input_ids, sequences, scores.device):
        bias.index_put_((rows, tokens), values[index], accumulate=True)
    return scores + bias


def min_new_tokens(scores: torch.Tensor, generated: int, minimum: int, end_tokens: tuple) -> torch.Tensor:
    if generated < minimum:
        scores = scores.clone()
        scores[:, list(end_tokens)] = NEG_INF
    return scores


def end_decay(scores: torch.Tensor, end_tokens: tuple, factor: float) -> torch.Tensor:
    """Raise each end token's score by |score| * (factor - 1), where it is finite: transformers'
    `exponential_decay_length_penalty`, with factor = decay ** (tokens past its start)."""
    ends = list(end_tokens)
    current = scores[:, ends]
    raised = torch.zeros_like(scores)
    raised[:, ends] = (current.abs() * (factor - 1)).masked_fill(~torch.isfinite(current), 0.0)
    return scores + raised


def suppress(scores: torch.Tensor, tokens: tuple) -> torch.Tensor:
    """`tokens` may not come next."""
    scores = scores.clone()
    scores[:, list(tokens)] = NEG_INF
    return scores


def forced_token(scores: torch.Tensor, token) -> torch.Tensor:
    """Only `token` (an id, or a tuple of ids all scored 0) may come next."""
    forced = torch.full_like(scores, NEG_INF)
    forced[:, list(token) if isinstance(token, tuple) else token] = 0.0
    return forced


def apply_penalties(
    scores: torch.Tensor, input_ids: torch.Tensor, generated: int, settings, prompt_length: int = 1
) -> torch.Tensor:
    """Sequence biases, repetition penalty, n-gram ban, banned sequences, minimum length, the forced first and last
    tokens, the end tokens' length decay, suppressed tokens, then renormalisation, in transformers' order; `generated`
    tokens follow a prompt of `prompt_length` (the start token and any prefix)."""
    if settings.sequence_bias:
        scores = sequence_bias(scores, input_ids, settings.sequence_bias)
    if settings.repetition_penalty != 1.0:
        scores = repetition_penalty(scores, input_ids, settings.repetition_penalty)
    if settings.no_repeat_ngram_size > 0:
        scores = no_repeat_ngram(scores, input_ids, settings.no_repeat_ngram_size)
    if settings.bad_words_ids:
        scores = bad_words(scores, input_ids, settings.bad_words_ids, settings.end_tokens)
    if settings.min_new_tokens > 0:
        scores = min_new_tokens(scores, generated, settings.min_new_tokens, settings.end_tokens)
    length = prompt_length + generated
    if settings.forced_bos_token_id is not None and length == 1:
        scores = forced_token(scores, settings.forced_bos_token_id)
    if settings.forced_eos_token_id is not None and generated == settings.max_new_tokens - 1:
        scores = forced_token(scores, settings.forced_eos_token_id)
    decay = settings.exponential_decay_length_penalty
    if decay is not None and generated > decay[0]:
        scores = end_decay(scores, settings.end_tokens, decay[1] ** (generated - decay[0]))
    if settings.suppress_tokens:
        scores = suppress(scores, settings.suppress_tokens)
    # the first token the model itself chooses: the one after a forced first token, when the prompt is the start alone
    first = prompt_length + (1 if prompt_length == 1 and settings.forced_bos_token_id is not None else 0)
    if settings.begin_suppress_tokens and length == first:
        scores = suppress(scores, settings.begin_suppress_tokens)
    if settings.renormalize_logits:
        # transformers renormalises after the sampling filters too; they all read the scores up to a shift, so
        # renormalising here gives the same distribution, and beam search the same log-probabilities
        scores = scores.log_softmax(dim=-1)
    return scores


def top_h_filter(scores: torch.Tensor, top_h: float) -> torch.Tensor:
    """Top-H sampling: of the 100 likeliest tokens, keep the likeliest while their entropy terms (-p log p, p over
    those 100) add up to at most `top_h` of those tokens' entropy; the likeliest always stays."""
    top, index = torch.topk(scores, min(100, scores.shape[-1]))
    distribution = torch.distributions.Categorical(logits=top)
    probs = distribution.probs
    kept = (-probs * torch.log(probs)).cumsum(dim=-1) <= distribution.entropy()[:, None] * top_h
    kept[:, 0] = True
    return scores.masked_fill(~torch.zeros_like(scores, dtype=torch.bool).scatter_(1, index, kept), NEG_INF)


def top_k_filter(scores: torch.Tensor, top_k: int, keep: int = 1) -> torch.Tensor:
    top_k = min(max(top_k, keep), scores.shape[-1])
    kth = torch.topk(scores, top_k).values[..., -1:]
    return scores.masked_fill(scores < kth, NEG_INF)


def top_p_filter(scores: torch.Tensor, top_p: float, keep: int = 1) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probability reaches `top_p`."""
    sorted_scores, order = torch.sort(scores, descending=False)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)
    remove[..., -keep:] = False  # always keep the `keep` most likely tokens
    return scores.masked_fill(remove.scatter(1, order, remove), NEG_INF)


def min_p_filter(scores: torch.Tensor, min_p: float, keep: int = 1) -> torch.Tensor:
    """Keep the tokens at least `min_p` times as likely as the likeliest."""
    probs = scores.softmax(dim=-1)
    remove = probs < min_p * probs.amax(dim=-1, keepdim=True)
    remove.scatter_(1, torch.topk(probs, min(keep, probs.shape[-1])).indices, False)
    return scores.masked_fill(remove, NEG_INF)


def typical_filter(scores: torch.Tensor, mass: float, keep: int = 1) -> torch.Tensor:
    """Locally typical sampling: keep the tokens whose surprisal is closest to the entropy, up to `mass` of the
    probability."""
    log_probs = scores.log_softmax(dim=-1)
    entropy = -(log_probs * log_probs.exp()).nansum(dim=-1, keepdim=True)
    distance, order = torch.sort((-log_probs - entropy).abs())
    cumulative = scores.gather(1, order).softmax(dim=-1).cumsum(dim=-1)
    last = (cumulative < mass).sum(dim=1).clamp_(max=scores.shape[-1] - 1)
    remove = distance > distance.gather(1, last[:, None])
    remove[:, :keep] = False  # always keep the `keep` most typical tokens
    return scores.masked_fill(remove.scatter(1, order, remove), NEG_INF)


def cutoff_filter(scores: torch.Tensor, epsilon: float, eta: bool = False, keep: int = 1) -> torch.Tensor:
    """Truncation sampling: drop the tokens less likely than `epsilon` (epsilon sampling) or, with `eta`, than
    min(epsilon, sqrt(epsilon) * exp(-entropy)) (eta sampling); the `keep` likeliest tokens always stay."""
    probs = scores.softmax(dim=-1)
    threshold = torch.tensor(epsilon, device=scores.device)
    if eta:
        entropy = torch.distributions.Categorical(logits=scores).entropy()
        threshold = torch.minimum(threshold, threshold.sqrt() * torch.exp(-entropy))[:, None]
    kth = torch.topk(scores, min(keep, scores.shape[-1])).values[..., -1:]
    remove = (probs < threshold) & (scores < kth)
    return scores.masked_fill(remove, NEG_INF)


def sampling_filters(scores: torch.Tensor, settings, keep: int = 1, shift: bool = True) -> torch.Tensor:
    """Temperature, then top-h, top-k, top-p, min-p, typical, epsilon and eta filtering, in transformers' order; each
    filter but top-h keeps at least the `keep` likeliest tokens (beam sampling keeps one more than there are end
    tokens), as transformers' do. `shift` subtracts the best score before the temperature divides: the same
    distribution, and no overflow at tiny temperatures; beam sampling adds the divided scores up, so it divides them
    as they are, as transformers does."""
    if settings.temperature != 1.0:
        scores = (scores - scores.amax(dim=-1, keepdim=True) if shift else scores) / settings.temperature
    if settings.top_h is not None:
        scores = top_h_filter(scores, settings.top_h)
    if settings.top_k > 0:
        scores = top_k_filter(scores, settings.top_k, keep)
    if settings.top_p < 1.0:
        scores = top_p_filter(scores, settings.top_p, keep)
    if settings.min_p is not None:
        scores = min_p_filter(scores, settings.min_p, keep)
    if settings.typical_p < 1.0:
        scores = typical_filter(scores, settings.typical_p, keep)
    if 0.0 < settings.epsilon_cutoff:
        scores = cutoff_filter(scores, settings.epsilon_cutoff, keep=keep)
    if 0.0 < settings.eta_cutoff:
        scores = cutoff_filter(scores, settings.eta_cutoff, eta=True, keep=keep)
    return scores
