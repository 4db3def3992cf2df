"""The last block at the read positions only (training/ml/tail.py) equals the full forward there."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model, LlamaConfig, LlamaForCausalLM

from training.ml.adapters import AdapterConfig, prepare_model
from training.ml.generation import forward_response
from training.ml.ppo import ValueModel
from training.ml.tail import last_layer_tail

VOCAB = 97


def gpt2(attn: str = "sdpa", **extra) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=3, n_head=4, attn_implementation=attn, **extra)
    return GPT2LMHeadModel(config).eval()


def batch(padded: bool):
    """Prompts (left-padded when `padded`) and replies with padding after an EOS, as PPO has them."""
    generator = torch.Generator().manual_seed(1)
    query = torch.randint(1, VOCAB, (3, 12), generator=generator)
    query_mask = torch.ones_like(query)
    if padded:
        query_mask[0, :5] = 0
        query_mask[2, :1] = 0
        query = query * query_mask
    response = torch.randint(1, VOCAB, (3, 6), generator=generator)
    response_mask = torch.ones_like(response)
    response_mask[1, 4:] = 0
    return query, query_mask, response, response_mask


def compare(model, run):
    """run(tail: bool) -> output tensor; outputs and every parameter's gradient must agree."""
    results = []
    for tail in (False, True):
        model.zero_grad(set_to_none=True)
        out = run(tail)
        out.pow(2).sum().backward()
        results.append((out.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}))
    (full, full_grads), (tail, tail_grads) = results
    torch.testing.assert_close(tail, full, rtol=1e-4, atol=1e-5)
    assert full_grads.keys() == tail_grads.keys() and full_grads
    for name in full_grads:
        torch.testing.assert_close(tail_grads[name], full_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def policy_run(model, padded):
    query, query_mask, response, response_mask = batch(padded)

    def run(tail: bool):
        if tail:
            return forward_response(model, query, query_mask, response, response_mask, 0.7)[0]
        # the full forward: the tail's context made a no-op by holding the block's forward
        block = model.transformer.h[-1]
        block.forward = block.forward  # an instance attribute: last_layer_tail leaves the block alone
        try:
            return forward_response(model, query, query_mask, response, response_mask, 0.7)[0]
        finally:
            del block.forward

    return run


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("padded", [False, True])
def test_policy_logprobs_and_gradients_match_the_full_forward(attn, padded):
    model = gpt2(attn)
    compare(model, policy_run(model, padded))


def test_the_tail_really_skips_the_prompt_positions():
    """The block's MLP sees only the kept positions while the context is open (so the test above compares two paths)."""
    model = gpt2()
    seen = []
    hook = model.transformer.h[-1].mlp.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1]))
    query, query_mask, response, response_mask = batch(True)
    forward_response(model, query, query_mask, response, response_mask, 1.0)
    with last_layer_tail(model, 4) as applied:
        assert applied
        model(input_ids=query, use_cache=False)
    lora = prepare_model(gpt2(), AdapterConfig(lora_r=4, gradient_checkpointing=True), task="causal")
    lora_block = next(m for m in lora.modules() if type(m).__name__ == "GPT2Model").h[-1]
    lora_block.mlp.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1]))
    forward_response(lora, query, query_mask, response, response_mask, 1.0)  # no cache through the peft wrapper either
    hook.remove()
    assert seen == [response.shape[1] + 1, 4, response.shape[1] + 1]
    assert "forward" not in vars(model.transformer.h[-1])  # restored


def test_value_model_matches_the_full_forward():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=3, n_head=4)
    value_model = ValueModel(GPT2Model(config)).eval()
    torch.nn.init.normal_(value_model.head.weight)  # a head at zero would hide any difference
    query, query_mask, response, response_mask = batch(True)

    def run(tail: bool):
        block = value_model.backbone.h[-1]
        if not tail:
            block.forward = block.forward
        try:
            return value_model(query, query_mask, response, response_mask)
        finally:
            if not tail:
                del block.forward

    compare(value_model, run)


def test_lora_and_gradient_checkpointing_keep_working():
    model = prepare_model(gpt2(), AdapterConfig(lora_r=4, gradient_checkpointing=True), task="causal")
    model.train()
    for module in model.modules():  # dropout off, as PPO has it
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    block = next(m for m in model.modules() if type(m).__name__ == "GPT2Model").h[-1]
    query, query_mask, response, response_mask = batch(True)

    def run(tail: bool):
        if not tail:
            block.forward = block.forward
        try:
            return forward_response(model, query, query_mask, response, response_mask, 1.0)[0]
        finally:
            if not tail:
                del block.forward

    compare(model, run)


def test_other_architectures_run_unchanged():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)).eval()
    with last_layer_tail(model, 3) as applied:
        assert not applied
    query, query_mask, response, response_mask = batch(True)
    with torch.no_grad():
        logprobs, _ = forward_response(model, query, query_mask, response, response_mask, 1.0)
    assert logprobs.shape == response.shape and torch.isfinite(logprobs).all()
