"""A1111 prompt syntax: the parser, the token/weight tables, chunked encoding and emphasis."""

from __future__ import annotations

import pytest
import torch

from gm.errors import UsageError
from gm.models.clip_text import CLIPTextConfig, CLIPTextEmbedder
from gm.models.conditioner import build_conditioner
from gm.models.openclip import OpenCLIPTextConfig, OpenCLIPTextEmbedder
from gm.models.prompt import apply_weights, check_prompt, is_plain, parse_prompt, tokenize_prompts
from gm.models.tokenizer import END_ID, START_ID, tokenize

S, E = START_ID, END_ID
A, CAT, DOG, RED, HAT, SUNSET, BLUE, SKY = 320, 2368, 1929, 736, 3801, 3424, 1746, 2390


@pytest.mark.parametrize("text, expected", [
    # A1111's own documented examples of parse_prompt_attention
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
    # more
    ("a ((cat)) [dog]", [("a ", 1.0), ("cat", 1.2100000000000002), (" ", 1.0), ("dog", 1 / 1.1)]),
    ("(a:0.5) b (c: 2 ) d", [("a", 0.5), (" b ", 1.0), ("c", 2.0), (" d", 1.0)]),
    ("x:y (z:-1)", [("x:y ", 1.0), ("z", -1.0)]),
    ("sunset BREAK blue sky", [("sunset", 1.0), ("BREAK", -1.0), ("blue sky", 1.0)]),
    ("BREAKFAST", [("BREAKFAST", 1.0)]),
    ("", [("", 1.0)]),
])
def test_parse_prompt(text: str, expected: list) -> None:
    assert parse_prompt(text) == expected


def _row(tokens: list[int], pad: int) -> list[int]:
    seq = [S, *tokens, E]
    return seq + [pad] * (77 - len(seq))


@pytest.mark.parametrize("style, pad", [("hf", E), ("open_clip", 0)])
def test_token_and_weight_tables(style, pad) -> None:
    out = tokenize_prompts(["a (red:1.3) hat", "[cat]", "a dog"], style)
    assert out.chunks == 1 and out.ids.shape == (3, 77)
    assert out.ids[0].tolist() == _row([A, RED, HAT], pad)
    assert out.ids[1].tolist() == _row([CAT], pad)
    assert out.ids[2].tolist() == _row([A, DOG], pad)
    w = out.weights
    assert w[0, :5].tolist() == pytest.approx([1.0, 1.0, 1.3, 1.0, 1.0])
    assert w[1, :3].tolist() == pytest.approx([1.0, 1 / 1.1, 1.0])
    assert bool((w[:, 5:] == 1.0).all()) and bool((w[2] == 1.0).all())


def test_break_and_long_prompts_fill_77_token_windows() -> None:
    out = tokenize_prompts(["sunset BREAK blue sky", "dog " * 100], "open_clip")
    assert out.chunks == 2 and out.ids.shape == (2, 154)
    assert out.ids[0, :77].tolist() == _row([SUNSET], 0)
    assert out.ids[0, 77:].tolist() == _row([BLUE, SKY], 0)
    assert out.ids[1, :77].tolist() == [S] + [DOG] * 75 + [E]
    assert out.ids[1, 77:].tolist() == _row([DOG] * 25, 0)
    padded = tokenize_prompts(["a cat"], "hf", min_chunks=3)
    assert padded.ids.shape == (1, 231)
    assert padded.ids[0, 77:154].tolist() == tokenize([""], "hf").ids[0].tolist()


def test_plain_prompts_tokenize_exactly_as_before() -> None:
    texts = ["a photo of a cat", "A  Photo, of:a dog!", "", "x " * 75]
    for style in ("hf", "open_clip"):
        out = tokenize_prompts(texts, style)
        assert torch.equal(out.ids, tokenize(texts, style).ids) and not out.weighted
    assert torch.equal(tokenize_prompts(["a \\(red\\) hat"], "hf").ids, tokenize(["a (red) hat"], "hf").ids)
    assert is_plain("a photo of a cat, 4k") and is_plain("x " * 75)
    assert not is_plain("x " * 76) and not is_plain("a (cat)") and not is_plain("a BREAK b")
    assert not is_plain("a \\(cat\\)")  # same ids as "a (cat)", but not the literal text


def test_lora_tags_are_an_error_pointing_to_the_option() -> None:
    with pytest.raises(UsageError, match="--lora") as info:
        tokenize_prompts(["a cat <lora:film_grain:0.7>"], "hf")
    assert "\n" not in str(info.value) and "film_grain" in info.value.hint
    check_prompt("a <cat> in a box")  # other angle brackets are text
    with pytest.raises(UsageError, match="not a number"):
        parse_prompt("(cat:1.2.3)")


def test_apply_weights_restores_each_chunk_mean() -> None:
    z = torch.randn(2, 154, 8, generator=torch.Generator().manual_seed(0)) + 0.5
    w = torch.ones(2, 154)
    w[0, 3], w[1, 80] = 1.5, 0.5
    out = apply_weights(z, w)
    ref = z * w[..., None]
    for b in range(2):
        for c in range(2):
            sl = slice(77 * c, 77 * (c + 1))
            expected = ref[b, sl] * (z[b, sl].mean() / ref[b, sl].mean())
            torch.testing.assert_close(out[b, sl], expected)
    assert apply_weights(z, torch.ones(2, 154)) is z


def _tiny_towers() -> tuple[CLIPTextEmbedder, OpenCLIPTextEmbedder]:
    torch.manual_seed(0)
    clip = CLIPTextEmbedder(CLIPTextConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                           num_attention_heads=2, layer_idx=1, pooled_output="vector"))
    oc = OpenCLIPTextEmbedder(OpenCLIPTextConfig(width=16, layers=2, heads=2, embed_dim=8, legacy=False,
                                                 pooled_output="vector"))
    for p in [*clip.parameters(), *oc.parameters()]:
        torch.nn.init.normal_(p, std=0.2)
    return clip.eval(), oc.eval()


@torch.no_grad()
def test_towers_encode_windows_separately_with_pooled_from_the_first() -> None:
    clip, oc = _tiny_towers()
    for emb, style in ((clip, "hf"), (oc, "open_clip")):
        text = "sunset BREAK blue sky"
        ids = tokenize_prompts([text], style).ids
        outs = emb([text])
        first, second = emb(ids[:, :77]), emb(ids[:, 77:])
        assert outs[0].shape[1] == 154
        assert torch.equal(outs[0][:, :77], first[0]) and torch.equal(outs[0][:, 77:], second[0])
        assert len(outs) == 2 and torch.equal(outs[1], first[1])
        plain = "a photo of a cat"
        assert torch.equal(emb([plain])[0], emb(tokenize([plain], style).ids)[0])


@torch.no_grad()
def test_emphasis_scales_token_states_and_keeps_the_mean() -> None:
    _, oc = _tiny_towers()
    z = oc(tokenize_prompts(["a red hat"], "open_clip").ids)[0]
    weighted, pooled = oc(["a (red:1.3) hat"])
    w = torch.ones(1, 77)
    w[0, 2] = 1.3
    ref = z * w[..., None]
    torch.testing.assert_close(weighted, ref * (z.mean() / ref.mean()))
    assert torch.equal(pooled, oc(["a red hat"])[1])  # the pooled vector is not weighted


@torch.no_grad()
def test_conditioner_aligns_the_towers_and_the_negative() -> None:
    tiny_clip = dict(kind="clip_l_text", hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                     num_attention_heads=2, layer_idx=1)
    tiny_oc = dict(kind="openclip_text", width=16, layers=2, heads=2, embed_dim=8, legacy=False,
                   pooled_output="vector")
    cond = build_conditioner([tiny_clip, tiny_oc], "test")
    long = "dog " * 80
    c = cond({"txt": [long]})
    assert c["crossattn"].shape == (1, 154, 32) and c["vector"].shape == (1, 8)
    n = cond.prompt_chunks([long, "blurry"])
    uc = cond({"txt": ["blurry"]}, text_chunks=n)
    assert uc["crossattn"].shape == c["crossattn"].shape
    short = cond({"txt": ["blurry"]})
    assert torch.equal(uc["crossattn"][:, :77], short["crossattn"]) and torch.equal(uc["vector"], short["vector"])
    c2, uc2 = cond.with_uncond({"txt": [long]}, uc_zero={"txt"})
    assert torch.equal(c2["crossattn"], c["crossattn"]) and not uc2["crossattn"].any()


def test_long_prompt_and_short_negative_batch_together() -> None:
    from gm.diffusion.guiders import VanillaCFG, guided, match_text_lengths

    c = {"crossattn": torch.randn(1, 154, 8), "vector": torch.randn(1, 4)}
    uc = {"crossattn": torch.randn(1, 77, 8), "vector": torch.randn(1, 4)}
    c2, uc2 = match_text_lengths(c, uc)
    assert c2["crossattn"] is c["crossattn"] and uc2["crossattn"].shape == (1, 154, 8)
    q = torch.randn(1, 5, 8)
    attend = torch.nn.functional.scaled_dot_product_attention
    torch.testing.assert_close(attend(q, uc2["crossattn"], uc2["crossattn"]), attend(q, uc["crossattn"], uc["crossattn"]))
    seen = []

    def denoiser(x, sigma, cond):
        seen.append(cond["crossattn"].shape)
        return x

    guided(denoiser, VanillaCFG(scale=5.0), c, uc)(torch.zeros(1, 4, 2, 2), torch.ones(1))
    assert seen == [(2, 154, 8)]
