"""Loading from folders (user checkpoints and ours), distinct pad token, atomic writes, no Django."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from training.ml.checkpoint import load_policy, save_policy, write_atomically

ROOT = Path(__file__).resolve().parents[2]


def test_user_style_folder_loads_through_the_same_path(tiny_tokenizer, tmp_path):
    """A folder as a user has it: config + weights by save_pretrained, a tokenizer whose pad is EOS."""
    folder = tmp_path / "my-model"
    user_tokenizer = PreTrainedTokenizerFast(tokenizer_object=tiny_tokenizer.backend_tokenizer, eos_token="<|endoftext|>")
    user_tokenizer.pad_token = user_tokenizer.eos_token  # a common (and harmful) habit
    GPT2LMHeadModel(GPT2Config(vocab_size=user_tokenizer.vocab_size, n_layer=1, n_embd=32, n_head=2)).save_pretrained(folder)
    user_tokenizer.save_pretrained(folder)
    model, tokenizer = load_policy(folder)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.get_input_embeddings().num_embeddings >= len(tokenizer)
    assert model.config.pad_token_id == tokenizer.pad_token_id
    again, _ = load_policy(folder)  # the added pad row is the same on every load (policy = reference)
    assert torch.equal(model.get_input_embeddings().weight, again.get_input_embeddings().weight)
    assert torch.equal(model.get_output_embeddings().weight, again.get_output_embeddings().weight)


def test_save_and_load_round_trip_gives_identical_outputs(tiny_policy_dir, tmp_path):
    model, tokenizer = load_policy(tiny_policy_dir)
    ids = torch.tensor([tokenizer("the river and the stone")["input_ids"]])
    save_policy(model, tokenizer, tmp_path / "copy")
    again, _ = load_policy(tmp_path / "copy")
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path):
    def crash(tmp: Path) -> None:
        (tmp / "half-written.bin").write_bytes(b"x")
        raise RuntimeError("worker died")

    with pytest.raises(RuntimeError):
        write_atomically(tmp_path / "version-7", crash)
    assert list(tmp_path.iterdir()) == []
    write_atomically(tmp_path / "version-7", lambda tmp: (tmp / "ok").write_text("1"))
    with pytest.raises(FileExistsError):
        write_atomically(tmp_path / "version-7", lambda tmp: None)


def test_engine_imports_without_django():
    code = (
        "import sys; sys.modules['django'] = None\n"  # any `import django` now fails
        "import training.ml.cli, training.ml.adapters, training.ml.reward, training.ml.ppo, training.ml.sft, training.ml.generation, training.ml.bootstrap\n"
        "assert 'django' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]\n"
        "print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
