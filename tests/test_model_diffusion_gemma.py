"""diffusion_gemma: dlm's encoder, decoder and self-conditioning give transformers' DiffusionGemma logits."""

from __future__ import annotations

import json

import pytest
import torch

from dgemma_helpers import CANVAS, VOCAB, reference, write_checkpoint
from transformers import DiffusionGemmaForBlockDiffusion
from transformers.cache_utils import DynamicCache

from dlm.errors import CheckpointError
from dlm.models.diffusion_gemma import DiffusionGemmaConfig, DiffusionGemmaModel
from dlm.models.gemma import EncoderCache


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("dgemma"))


def ours(directory, dtype):
    return DiffusionGemmaModel.load(DiffusionGemmaConfig(path=directory), dtype=dtype, device=torch.device("cpu"))


def both_logits(checkpoint, dtype, prompt, canvases, soft):
    """Reference and dlm logits of the last canvas after the prompt and the earlier canvases went through the
    encoder (its cache), with ``soft`` as self-conditioning logits."""
    ref, model = reference(checkpoint, dtype), ours(checkpoint, dtype).net
    b = prompt.shape[0]
    total = prompt.shape[1] + sum(c.shape[1] for c in canvases)
    cache = EncoderCache.empty(model.spec, b, total, dtype, torch.device("cpu"))
    rows = torch.arange(b)
    with torch.no_grad():
        ref_cache = DynamicCache(config=ref.config.get_text_config(decoder=True))
        done = 0
        for block in [prompt] + canvases[:-1]:
            n = block.shape[1]
            pos = torch.arange(done, done + n)[None]
            ref.model.encoder(input_ids=block, cache=ref_cache, position_ids=pos)
            model.encode(block, pos.expand(b, -1), cache, rows, done, torch.ones(b, done + n, dtype=torch.bool))
            done += n
        canvas = canvases[-1]
        pos = torch.arange(done, done + canvas.shape[1])[None]
        expected = ref(decoder_input_ids=canvas, cache=ref_cache, decoder_position_ids=pos,
                       self_conditioning_logits=None if soft is None else soft.to(dtype)).logits
        got = model.decode(canvas, pos.expand(b, -1), cache, rows, done, torch.ones(b, done, dtype=torch.bool),
                           None if soft is None else model.soft_embedding(soft.to(dtype)))
    return expected, got


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 2e-6), (torch.float32, 1e-5)])
@pytest.mark.parametrize("seed", [0, 1])
def test_logits_equal_transformers_with_encoder_cache_and_self_conditioning(checkpoint, dtype, tol, seed):
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, VOCAB, (2, 5 + seed), generator=g)  # longer than the sliding window of 4
    canvases = [torch.randint(0, VOCAB, (2, CANVAS), generator=g) for _ in range(2)]
    soft = torch.randn(2, CANVAS, VOCAB, generator=g) * 3
    for s in (None, soft):
        expected, got = both_logits(checkpoint, dtype, prompt, canvases, s)
        assert expected.dtype == got.dtype == torch.float32  # the reference casts the logits to float32
        assert torch.allclose(got, expected, atol=tol, rtol=0), (got - expected).abs().max()
        assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_self_conditioning_changes_the_logits(checkpoint):
    prompt = torch.randint(0, VOCAB, (1, 4))
    canvas = [torch.randint(0, VOCAB, (1, CANVAS))]
    _, without = both_logits(checkpoint, torch.float64, prompt, canvas, None)
    _, with_soft = both_logits(checkpoint, torch.float64, prompt, canvas, torch.randn(1, CANVAS, VOCAB) * 3)
    assert (without - with_soft).abs().max() > 1e-3


def test_reads_released_layout_and_ignores_only_the_vision_tower_and_tied_copies(checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(checkpoint / "model.safetensors")
    assert any(k.startswith("model.encoder.vision_tower.") for k in tensors)
    assert tensors["model.decoder.layers.0.experts.gate_up_proj"].dim() == 3  # stored fused, not per expert
    for name in ("config.json", "generation_config.json"):
        (tmp_path / name).write_text((checkpoint / name).read_text())
    tensors["model.encoder.language_model.layers.0.mlp.up_proj.weight"] = tensors[
        "model.decoder.layers.0.mlp.up_proj.weight"].clone()  # a tied copy, as a hub file may hold it
    save_file(tensors, tmp_path / "model.safetensors")
    ours(tmp_path, torch.float32)
    tensors["model.decoder.layers.0.extra.weight"] = torch.zeros(2)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="unexpected tensor 'model.decoder.layers.0.extra.weight'"):
        ours(tmp_path, torch.float32)


def test_refuses_a_bidirectional_encoder(checkpoint, tmp_path):
    cfg = json.loads((checkpoint / "config.json").read_text())
    cfg["text_config"]["use_bidirectional_attention"] = "all"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="use_bidirectional_attention='all' is not supported"):
        ours(tmp_path, torch.float32)


def test_dlms_own_writer_gives_a_checkpoint_transformers_loads_whole_with_the_same_logits(tmp_path):
    """dlm.tools.diffusion_gemma_checkpoints (the contract kit's noise-canvas model) writes transformers' layout:
    every text weight is read (none missing, none unexpected) and the logits are dlm's."""
    from dlm.tools.diffusion_gemma_checkpoints import make_diffusion_gemma_checkpoint

    directory = make_diffusion_gemma_checkpoint(tmp_path / "dg", seed=3, generation={"max_denoising_steps": 5,
                                                                                     "entropy_bound": 0.3})
    _, info = DiffusionGemmaForBlockDiffusion.from_pretrained(directory, output_loading_info=True)
    assert not [k for k in info["missing_keys"] if "vision" not in k]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    model = ours(directory, torch.float64)
    assert model.generation_defaults["max_denoising_steps"] == 5 and model.generation_defaults["entropy_bound"] == 0.3
    vocab = model.capabilities.vocab_size
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, vocab, (2, 6), generator=g)
    canvases = [torch.randint(0, vocab, (2, 8), generator=g) for _ in range(2)]
    for soft in (None, torch.randn(2, 8, vocab, generator=g) * 3):
        expected, got = both_logits(directory, torch.float64, prompt, canvases, soft)
        assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()
        assert torch.equal(got.argmax(-1), expected.argmax(-1))
