"""Word timestamps from Whisper's cross-attention, as OpenAI's Whisper computes them (whisper/timing.py).

After a 30 s window is decoded, one extra decoder pass over `<|startoftranscript|> <lang> <task> <|notimestamps|>
text... <|endoftext|>` reads the cross-attention weights of the checkpoint's alignment heads (the heads whose
attention follows the speech: `generation_config.alignment_heads`); normalised and median-filtered, their mean
is a token x audio-frame cost matrix whose dynamic-time-warping path gives each token the frame where it starts.
Tokens are grouped into words (at spaces, or per character for languages written without them), punctuation is
merged into its word, and OpenAI's boundary heuristics keep words from spanning pauses.

The pass reads the window's encoder output and the generated tokens only, so it gives the same timings whichever
decoding path (assisted or plain) produced those tokens.
"""

import string
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers.models.whisper.generation_whisper import _median_filter

SECONDS_PER_ENCODER_FRAME = 0.02  # the encoder halves the 100 mel frames per second
LANGUAGES_WITHOUT_SPACES = {"zh", "ja", "th", "lo", "my", "yue"}
PREPEND_PUNCTUATION = "\"'“¿([{-"
APPEND_PUNCTUATION = "\"'.。,，!！?？:：”)]}、"
SENTENCE_END_MARKS = ".。!！?？"


@dataclass
class WordTiming:
    word: str
    tokens: list[int]
    start: float
    end: float


@dataclass
class TimedSegment:
    """A segment being given word timings; its start and end may move to its first and last word."""

    start: float
    end: float
    text_tokens: list[int]
    words: list[WordTiming] = field(default_factory=list)


def dynamic_time_warping(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cheapest monotonic path through `cost` (tokens x frames), as OpenAI's `dtw_cpu` finds it (same
    tie-breaking), computed one anti-diagonal at a time: each cell depends only on the two diagonals before it."""
    rows, cols = cost.shape
    total = np.full((rows + 1, cols + 1), np.inf, dtype=np.float32)
    trace = np.full((rows + 1, cols + 1), -1, dtype=np.int8)
    total[0, 0] = 0
    for diagonal in range(2, rows + cols + 1):
        i = np.arange(max(1, diagonal - cols), min(rows, diagonal - 1) + 1)
        j = diagonal - i
        diag, up, left = total[i - 1, j - 1], total[i - 1, j], total[i, j - 1]
        step = np.where((diag < up) & (diag < left), 0, np.where((up < diag) & (up < left), 1, 2))
        total[i, j] = cost[i - 1, j - 1] + np.choose(step, [diag, up, left])
        trace[i, j] = step
    trace[0, :] = 2
    trace[:, 0] = 1
    i, j = rows, cols
    text_indices, time_indices = [], []
    while i > 0 or j > 0:
        text_indices.append(i - 1)
        time_indices.append(j - 1)
        step = trace[i, j]
        if step == 0:
            i, j = i - 1, j - 1
        elif step == 1:
            i -= 1
        else:
            j -= 1
    return np.array(text_indices[::-1]), np.array(time_indices[::-1])


def split_to_word_tokens(
    tokenizer, tokens: list[int], language: str | None
) -> tuple[list[str], list[list[int]]]:
    """Words and their tokens: at spaces and punctuation, or per character where the language has no spaces.
    Tokens that only make sense together (a character split across byte-level tokens) stay together."""
    words, word_tokens = _split_on_unicode(tokenizer, tokens)
    if language in LANGUAGES_WITHOUT_SPACES:
        return words, word_tokens
    eot = tokenizer.eos_token_id
    merged_words: list[str] = []
    merged_tokens: list[list[int]] = []
    for piece, piece_tokens in zip(words, word_tokens, strict=True):
        starts_word = (
            piece_tokens[0] >= eot
            or piece.startswith(" ")
            or piece.strip() in string.punctuation
            or not merged_words
        )
        if starts_word:
            merged_words.append(piece)
            merged_tokens.append(list(piece_tokens))
        else:
            merged_words[-1] += piece
            merged_tokens[-1].extend(piece_tokens)
    return merged_words, merged_tokens


def _split_on_unicode(tokenizer, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
    full = tokenizer.decode(tokens)
    replacement = "\ufffd"
    words, word_tokens, current = [], [], []
    offset = 0
    for token in tokens:
        current.append(token)
        decoded = tokenizer.decode(current)
        if replacement not in decoded or full[offset + decoded.index(replacement)] == replacement:
            words.append(decoded)
            word_tokens.append(current)
            current = []
            offset += len(decoded)
    return words, word_tokens


class Aligner:
    """Word timings for one model: its decoder, alignment heads and tokenizer."""

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        config = model.generation_config
        layers = model.config.decoder_layers
        heads = getattr(config, "alignment_heads", None)
        # OpenAI's default for checkpoints without a list: every head of the second half of the decoder.
        self.heads = (
            [tuple(h) for h in heads]
            if heads
            else [
                (layer, head)
                for layer in range(layers // 2, layers)
                for head in range(model.config.decoder_attention_heads)
            ]
        )
        self.median_filter_width = getattr(model.config, "median_filter_width", 7)
        self.no_timestamps = config.no_timestamps_token_id
        self.eot = tokenizer.eos_token_id

    @torch.inference_mode()
    def token_frames(
        self, encoder_hidden: torch.Tensor, num_frames: int, sot_sequence: list[int], text_tokens: list[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """DTW path (token index, encoder frame) of `text_tokens` + end-of-text through the window's audio."""
        decoder = self.model.model.decoder
        ids = [*sot_sequence, self.no_timestamps, *text_tokens, self.eot]
        device = encoder_hidden.device
        input_ids = torch.tensor([ids], device=device)
        queries: dict[int, torch.Tensor] = {}
        wanted = {layer for layer, _ in self.heads}

        def keep_query(layer: int):
            def hook(module, args, kwargs):
                queries[layer] = args[0] if args else kwargs["hidden_states"]

            return hook

        hooks = [
            decoder.layers[layer].encoder_attn.register_forward_pre_hook(keep_query(layer), with_kwargs=True)
            for layer in wanted
        ]
        try:
            decoder(input_ids=input_ids, encoder_hidden_states=encoder_hidden[None], use_cache=False)
        finally:
            for hook in hooks:
                hook.remove()
        frames = num_frames // 2
        weights = []
        for layer, head in self.heads:
            attention = decoder.layers[layer].encoder_attn
            dim = attention.head_dim
            query = (attention.q_proj(queries[layer][0]) * attention.scaling)[
                :, head * dim : (head + 1) * dim
            ]
            key = attention.k_proj(encoder_hidden[:frames])[:, head * dim : (head + 1) * dim]
            weights.append((query.float() @ key.float().T).softmax(dim=-1))
        matrix = torch.stack(weights)  # heads x tokens x frames
        std, mean = torch.std_mean(matrix, dim=-2, keepdim=True, unbiased=False)
        matrix = _median_filter((matrix - mean) / std, self.median_filter_width).mean(dim=0)
        matrix = matrix[len(sot_sequence) : -1]  # rows: <|notimestamps|> and each text token predict the next
        return dynamic_time_warping(-matrix.double().cpu().numpy())

    def words(
        self,
        encoder_hidden: torch.Tensor,
        num_frames: int,
        sot_sequence: list[int],
        text_tokens: list[int],
        language: str | None,
    ) -> list[WordTiming]:
        """Each word of `text_tokens` with its start and end in seconds from the window's start."""
        if not text_tokens:
            return []
        text_indices, time_indices = self.token_frames(encoder_hidden, num_frames, sot_sequence, text_tokens)
        words, word_tokens = split_to_word_tokens(self.tokenizer, [*text_tokens, self.eot], language)
        if len(word_tokens) <= 1:
            return []
        boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
        jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
        jump_times = time_indices[jumps] * SECONDS_PER_ENCODER_FRAME
        starts, ends = jump_times[boundaries[:-1]], jump_times[boundaries[1:]]
        return [
            WordTiming(word, tokens, float(start), float(end))
            for word, tokens, start, end in zip(words, word_tokens, starts, ends, strict=False)
        ]


def merge_punctuations(alignment: list[WordTiming]) -> None:
    """Opening punctuation joins the word after it, closing punctuation the word before it."""
    i, j = len(alignment) - 2, len(alignment) - 1
    while i >= 0:
        previous, following = alignment[i], alignment[j]
        if previous.word.startswith(" ") and previous.word.strip() in PREPEND_PUNCTUATION:
            following.word = previous.word + following.word
            following.tokens = previous.tokens + following.tokens
            previous.word, previous.tokens = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(alignment):
        previous, following = alignment[i], alignment[j]
        if not previous.word.endswith(" ") and following.word in APPEND_PUNCTUATION:
            previous.word = previous.word + following.word
            previous.tokens = previous.tokens + following.tokens
            following.word, following.tokens = "", []
        else:
            i = j
        j += 1


def assign_words(
    alignment: list[WordTiming], segments: list[TimedSegment], window_start: float, last_speech: float
) -> float:
    """Give each segment its words (absolute times), with OpenAI's heuristics: words at sentence ends and after
    pauses are kept within twice the median word length, and a segment's start and end move to its first and
    last word unless that word is implausibly long. Returns when speech was last heard."""
    durations = np.array([w.end - w.start for w in alignment])
    durations = durations[durations.nonzero()]
    median = min(0.7, float(np.median(durations))) if len(durations) else 0.0
    longest = median * 2
    if len(durations):
        for i in range(1, len(alignment)):
            if alignment[i].end - alignment[i].start > longest:
                if alignment[i].word in SENTENCE_END_MARKS:
                    alignment[i].end = alignment[i].start + longest
                elif alignment[i - 1].word in SENTENCE_END_MARKS:
                    alignment[i].start = alignment[i].end - longest
    merge_punctuations(alignment)
    index = 0
    for segment in segments:
        taken = 0
        words: list[WordTiming] = []
        while index < len(alignment) and taken < len(segment.text_tokens):
            timing = alignment[index]
            if timing.word:
                words.append(
                    WordTiming(
                        timing.word,
                        timing.tokens,
                        round(window_start + timing.start, 2),
                        round(window_start + timing.end, 2),
                    )
                )
            taken += len(timing.tokens)
            index += 1
        if words:
            first = words[0]
            after_pause = first.end - last_speech > median * 4
            if after_pause and (
                first.end - first.start > longest
                or (len(words) > 1 and words[1].end - first.start > longest * 2)
            ):
                if len(words) > 1 and words[1].end - words[1].start > longest:
                    boundary = max(words[1].end / 2, words[1].end - longest)
                    first.end = words[1].start = boundary
                first.start = max(0.0, first.end - longest)
            if segment.start < first.end and segment.start - 0.5 > first.start:
                first.start = max(0.0, min(first.end - median, segment.start))
            else:
                segment.start = first.start
            last = words[-1]
            if segment.end > last.start and segment.end + 0.5 < last.end:
                last.end = max(last.start + median, segment.end)
            else:
                segment.end = last.end
            last_speech = segment.end
        segment.words = words
    return last_speech
