"""LoRA adapters and gradient checkpointing on tiny random-init Llama and Qwen2 chat models.

The models and their tokenizers (trained here, with a chat template) are saved with
save_pretrained and read through load_policy / RewardModel.from_backbone, exactly as a
user's checkpoint folder would be.
"""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from training.ml.adapters import AdapterConfig, adapters_disabled, has_adapters, prepare_model
from training.ml.checkpoint import load_backbone, load_policy, save_policy
from training.ml.data import build_examples, split_by_prompt
from training.ml.ppo import ValueModel
from training.ml.reward import RewardTrainingConfig, collate, tokenize_examples, train_reward_model
from training.ml.reward_model import RewardModel, RewardScorer
from training.ml.synthetic import corpus, preference_judgements
from training.ml.text import render_prompt, tokenize_prompt, tokenize_reply

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LORA = AdapterConfig(lora_r=4, lora_alpha=8)


def chat_tokenizer(pad: bool) -> PreTrainedTokenizerFast:
    """Byte-level BPE with ChatML specials; Qwen-style (pad = <|endoftext|>) or Llama-style (no pad)."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(corpus(n=200), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>" if pad else None, additional_special_tokens=specials[1:]
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_chat_model(arch: str, tokenizer):
    torch.manual_seed(0)
    common = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
    )
    if arch == "llama":  # untied embeddings, and the tokenizer has no pad: load_policy adds one (a new row)
        return LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=False))
    return Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id))


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def chat_dir(request, tmp_path_factory):
    tokenizer = chat_tokenizer(pad=request.param == "qwen2")
    folder = tmp_path_factory.mktemp("chat") / f"tiny-{request.param}"
    tiny_chat_model(request.param, tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    tokenizer = chat_tokenizer(pad=False)
    folder = tmp_path_factory.mktemp("chat") / "tiny-llama"
    tiny_chat_model("llama", tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


MESSAGES = [{"role": "user", "content": "the river and the stone"}]


def probe(tokenizer) -> torch.Tensor:
    return torch.tensor([tokenize_prompt(tokenizer, MESSAGES, 64) + tokenize_reply(tokenizer, "a clear and kind garden", 32)])


def sft_loss(model, ids) -> torch.Tensor:
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def lora_step(model, ids, lr=1e-2, steps=1) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        sft_loss(model, ids).backward()
        optimizer.step()


def weighted_sum(rewards) -> torch.Tensor:
    """A loss whose gradient reaches every reward differently (no trainer code involved)."""
    return (rewards * torch.linspace(-1.0, 1.0, rewards.shape[0])).mean()


def logits_of(model, ids) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


# ----------------------------------------------------------------------------- options


def test_adapter_config_validates():
    assert not AdapterConfig().lora and AdapterConfig(lora_r=8).alpha == 16.0
    for bad in (dict(lora_r=-1), dict(lora_r=1.5), dict(lora_alpha=0), dict(lora_dropout=1.0), dict(target_modules=[]),
                dict(save="both"), dict(save="adapter"), dict(gradient_checkpointing="yes")):
        with pytest.raises(ValueError):
            AdapterConfig(**bad)
    with pytest.raises(ValueError, match="unknown adapter options: rank"):
        AdapterConfig.from_dict({"rank": 8})
    assert AdapterConfig.from_dict({"lora_r": 8, "save": "adapter"}).save == "adapter"
    with pytest.raises(ValueError, match="task"):
        prepare_model(torch.nn.Linear(2, 2), LORA, task="seq2seq")


# ----------------------------------------------------------------------------- policy, reference, value model


def test_chat_template_is_used_and_tokenizer_gets_a_distinct_pad(chat_dir):
    model, tokenizer = load_policy(chat_dir)
    assert render_prompt(MESSAGES, tokenizer) == "<|im_start|>user\nthe river and the stone<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.get_input_embeddings().num_embeddings >= len(tokenizer)


def test_lora_policy_trains_only_adapters_and_reference_is_the_untouched_base(chat_dir):
    base, tokenizer = load_policy(chat_dir)
    ids = probe(tokenizer)
    expected = logits_of(base, ids)
    policy, _ = load_policy(chat_dir)
    torch.manual_seed(0)
    policy = prepare_model(policy, LORA, task="causal")
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert has_adapters(policy) and not has_adapters(base)
    policy.train()
    lora_step(policy, ids)
    after = logits_of(policy, ids)
    assert not torch.allclose(after, expected, atol=1e-4)  # the step moved the policy
    with adapters_disabled(policy):
        reference = logits_of(policy, ids)
    torch.testing.assert_close(reference, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(logits_of(policy, ids), after, atol=0, rtol=0)  # adapters back on
    assert [n for n, p in policy.named_parameters() if p.requires_grad] == trainable
    with adapters_disabled(base):  # a no-op without adapters
        torch.testing.assert_close(logits_of(base, ids), expected, atol=0, rtol=0)


def test_value_backbone_with_lora_trains(llama_dir):
    backbone, tokenizer = load_backbone(llama_dir)
    torch.manual_seed(0)
    value = ValueModel(prepare_model(backbone, AdapterConfig(lora_r=4, gradient_checkpointing=True), task="feature"))
    trainable = {n.split(".")[0] if n.startswith("head") else "lora" for n, p in value.named_parameters() if p.requires_grad}
    assert trainable == {"head", "lora"} and all("lora_" in n or n.startswith("head") for n, p in value.named_parameters() if p.requires_grad)
    ids = probe(tokenizer)
    query, response = ids[:, :8], ids[:, 8:]
    target = torch.linspace(-1, 1, response.shape[1]).unsqueeze(0)
    optimizer = torch.optim.AdamW([p for p in value.parameters() if p.requires_grad], lr=1e-2)
    value.train()
    losses = []
    for _ in range(8):
        loss = F.mse_loss(value(query, torch.ones_like(query), response, torch.ones_like(response)), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in value.named_parameters() if "lora_B" in n)


# ----------------------------------------------------------------------------- saving and loading


@pytest.mark.parametrize("mode", ["merged", "adapter"])
def test_policy_save_round_trip(chat_dir, tmp_path, mode):
    policy, tokenizer = load_policy(chat_dir)
    torch.manual_seed(0)
    policy = prepare_model(policy, AdapterConfig(lora_r=4, save=mode, gradient_checkpointing=mode == "merged"), task="causal")
    ids = probe(tokenizer)
    policy.train()
    lora_step(policy, ids, steps=2)
    expected = logits_of(policy, ids)
    save_policy(policy, tokenizer, tmp_path / "saved")  # the mode chosen in AdapterConfig.save
    files = {p.name for p in (tmp_path / "saved").iterdir()}
    if mode == "merged":
        assert "adapter_config.json" not in files and "model.safetensors" in files
        plain, info = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", output_loading_info=True)  # no peft
        assert not any(info.values()) and not has_adapters(plain)
        torch.testing.assert_close(logits_of(plain, ids), expected, atol=1e-5, rtol=0)
        # checkpointing switched the cache off for training, not in the saved config
        assert policy.config.use_cache is False and json.loads((tmp_path / "saved" / "config.json").read_text()).get("use_cache", True) is not False
    else:
        assert "adapter_config.json" in files and "model.safetensors" not in files
        assert ("added_embedding_rows.safetensors" in files) == ("llama" in chat_dir.name)  # the pad row Llama's tokenizer lacked
    loaded, loaded_tokenizer = load_policy(tmp_path / "saved")
    assert loaded_tokenizer.chat_template == tokenizer.chat_template and len(loaded_tokenizer) == len(tokenizer)
    assert not has_adapters(loaded)  # merged on loading
    torch.testing.assert_close(logits_of(loaded, ids), expected, atol=1e-5, rtol=0)
    with pytest.raises(FileExistsError):
        save_policy(policy, tokenizer, tmp_path / "saved", mode="merged")


def test_adapter_folder_follows_its_base_and_fails_clearly_without_it(llama_dir, tmp_path):
    """SFT adapters on a base, PPO adapters on the SFT folder: a chain; moved together it still
    loads (relative path); with the base gone the error names it."""
    tree = tmp_path / "tree"
    shutil.copytree(llama_dir, tree / "base")
    policy, tokenizer = load_policy(tree / "base")
    ids = probe(tokenizer)
    torch.manual_seed(0)
    policy = prepare_model(policy, AdapterConfig(lora_r=4, save="adapter"), task="causal")
    lora_step(policy.train(), ids)
    save_policy(policy, tokenizer, tree / "sft")
    second, _ = load_policy(tree / "sft")  # merged: the SFT model is the new base
    second = prepare_model(second, AdapterConfig(lora_r=4, save="adapter"), task="causal")
    lora_step(second.train(), ids)
    expected = logits_of(second, ids)
    save_policy(second, tokenizer, tree / "ppo")
    torch.testing.assert_close(logits_of(load_policy(tree / "ppo")[0], ids), expected, atol=1e-5, rtol=0)
    kept, _ = load_policy(tree / "ppo", merge_adapters=False)  # adapters kept, to train on
    assert has_adapters(kept) and all("lora_" in n for n, p in kept.named_parameters() if p.requires_grad)
    torch.testing.assert_close(logits_of(kept, ids), expected, atol=1e-5, rtol=0)
    with adapters_disabled(second):  # the PPO reference: the SFT model
        torch.testing.assert_close(logits_of(second, ids), logits_of(load_policy(tree / "sft")[0], ids), atol=1e-5, rtol=0)

    moved = tmp_path / "moved"
    shutil.move(tree, moved)
    torch.testing.assert_close(logits_of(load_policy(moved / "ppo")[0], ids), expected, atol=1e-5, rtol=0)
    shutil.rmtree(moved / "base")
    with pytest.raises(FileNotFoundError, match="base model they belong to is gone"):
        load_policy(moved / "sft")
    with pytest.raises(FileNotFoundError, match="base model they belong to is gone"):
        load_policy(moved / "ppo")


# ----------------------------------------------------------------------------- reward model


def rm_examples(n, seed=0):
    return split_by_prompt(build_examples(preference_judgements(n, seed=seed, reply_words=(4, 8), prompt_words=(4, 8))), 0.25, seed=seed)


@pytest.mark.parametrize("mode", ["merged", "adapter"])
def test_reward_model_with_lora_round_trips(chat_dir, tmp_path, mode):
    torch.manual_seed(0)
    model, tokenizer = RewardModel.from_backbone(chat_dir, adapters=AdapterConfig(lora_r=4, save=mode))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert set(trainable) >= {"head.weight", "head.bias"} and all("lora_" in n or n.startswith("head.") for n in trainable)
    train, val = rm_examples(24)
    train_reward_model(model, tokenizer, train, val, RewardTrainingConfig(lr=1e-2, batch_size=6, epochs=1))
    model.save_pretrained(tmp_path / "rm", tokenizer)
    assert (tmp_path / "rm" / "adapter_config.json").exists() == (mode == "adapter")
    loaded, loaded_tokenizer = RewardModel.from_pretrained(tmp_path / "rm")
    prompts, replies = [e.messages for e in val], [e.replies[0] for e in val]
    before = RewardScorer(model, tokenizer)(prompts, replies)
    torch.testing.assert_close(RewardScorer(loaded, loaded_tokenizer)(prompts, replies), before, atol=1e-5, rtol=0)
    assert float(loaded.offset) == float(model.offset) and float(loaded.scale) == float(model.scale)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(llama_dir):
    """Reward model with LoRA, and a fully fine-tuned policy: with and without checkpointing."""
    train, _ = rm_examples(12)
    runs = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model, tokenizer = RewardModel.from_backbone(llama_dir, adapters=AdapterConfig(lora_r=4, gradient_checkpointing=checkpointing))
        with torch.no_grad():  # LoRA B starts at zero; make the adapters matter
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
        batch, _ = collate(tokenize_examples(train, tokenizer, RewardTrainingConfig()), tokenizer.pad_token_id)
        model.train()
        assert model.shared_prefix != checkpointing  # concatenation while a checkpointing backbone trains
        loss = weighted_sum(model(batch, tokenizer.pad_token_id))
        loss.backward()
        model.eval()
        assert model.shared_prefix  # scoring keeps the shared prompt
        with torch.no_grad():
            scores = model(batch, tokenizer.pad_token_id)
        runs.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}, scores))
    (loss_a, grads_a, scores_a), (loss_b, grads_b, scores_b) = runs
    torch.testing.assert_close(loss_b, loss_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(scores_b, scores_a, atol=1e-5, rtol=0)
    assert grads_a.keys() == grads_b.keys() and any("lora_A" in n for n in grads_a)
    for name in grads_a:  # (the two runs also differ in shared prefix vs concatenation: float noise)
        torch.testing.assert_close(grads_b[name], grads_a[name], atol=1e-5, rtol=1e-4)

    grads = []
    for checkpointing in (False, True):
        policy, tokenizer = load_policy(llama_dir)
        policy = prepare_model(policy, AdapterConfig(gradient_checkpointing=checkpointing), task="causal")
        policy.train()
        sft_loss(policy, probe(tokenizer)).backward()
        grads.append({n: p.grad for n, p in policy.named_parameters()})
        assert policy.config.use_cache is not checkpointing
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=0)


def test_reward_model_with_lora_learns_the_synthetic_rule(llama_dir):
    torch.manual_seed(0)
    model, tokenizer = RewardModel.from_backbone(llama_dir, adapters=AdapterConfig(lora_r=8, gradient_checkpointing=True))
    train, val = rm_examples(160)
    metrics = train_reward_model(model, tokenizer, train, val, RewardTrainingConfig(lr=1e-2, epochs=2, batch_size=16))
    assert metrics["val_accuracy"] > 0.75, metrics
    assert not metrics["shared_prefix"]  # it trained with checkpointing, so concatenated


@pytest.mark.gpu
def test_reward_model_scores_and_trains_on_the_gpu(llama_dir):
    """CPU-built batches follow the model to its device; GPU rewards equal CPU rewards."""
    train, val = rm_examples(16)
    torch.manual_seed(0)
    model, tokenizer = RewardModel.from_backbone(llama_dir, adapters=AdapterConfig(lora_r=4, gradient_checkpointing=True))
    prompts, replies = [e.messages for e in train], [e.replies[0] for e in train]
    on_cpu = RewardScorer(model, tokenizer)(prompts, replies)
    for p in model.parameters():
        p.requires_grad_(True)
    model.cuda()
    on_gpu = RewardScorer(model, tokenizer)(prompts, replies)
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=1e-4, rtol=0)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name or name.startswith("head."))
    batch, _ = collate(tokenize_examples(train, tokenizer, RewardTrainingConfig()), tokenizer.pad_token_id)
    for shared_prefix in (True, False):
        model.shared_prefix = shared_prefix
        model.train()
        weighted_sum(model(batch, tokenizer.pad_token_id).cpu()).backward()
        model.eval()
        model(batch, tokenizer.pad_token_id)
    assert model.head.weight.grad is not None and model.head.weight.grad.device.type == "cuda"
