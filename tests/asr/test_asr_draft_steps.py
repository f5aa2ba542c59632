"""The draft loop's own decoder code gives the draft decoder's hidden states exactly, through prompts, single
steps, several tokens at once and crops back to an accepted prefix (tiny random assistant)."""

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from services.asr.drafting import DraftSteps, cross_attention_kv


@pytest.fixture(scope="module")
def decoder(whisper_dirs):
    _, assistant_dir = whisper_dirs
    assistant = AutoModelForCausalLM.from_pretrained(assistant_dir, dtype=torch.float32).eval()
    return assistant.model.decoder


def test_draft_steps_match_the_decoder_through_steps_and_crops(decoder):
    torch.manual_seed(0)
    encoder_hidden = torch.randn(1, 30, decoder.config.d_model)
    layers = decoder.layers
    steps = DraftSteps(
        decoder, [cross_attention_kv(layer.encoder_attn, encoder_hidden) for layer in layers], 32
    )
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    tokens = torch.randint(0, decoder.config.vocab_size, (1, 12))

    def reference(ids):
        out = decoder(input_ids=ids, encoder_hidden_states=encoder_hidden, cache=cache, use_cache=True)
        return out.last_hidden_state[:, -1]

    with torch.inference_mode():
        # prompt, one token, a round rejected after its first token (crop), then two tokens at once
        for start, end, keep in ((0, 4, None), (4, 5, None), (5, 8, 6), (6, 8, None), (8, 9, None)):
            got, expected = steps(tokens[:, start:end]), reference(tokens[:, start:end])
            assert torch.equal(got, expected), (start, end)
            if keep is not None:
                steps.crop(keep)
                cache.crop(keep - cache.get_seq_length())  # transformers crops by a negative count
                assert steps.length == keep
