"""The training engine: pure PyTorch + transformers, no Django.

Runs inside a Celery worker, on another machine, or under `torchrun` (see cli.py).
Modules, one concern each:

  losses.py        the equations (Bradley-Terry, GAE, whitening, KL estimators, PPO clipping)
  data.py          judgements -> preference examples; prompt-level train/validation split
  text.py          conversation -> model text, tokenization of prompts and replies
  checkpoint.py    loading policies / tokenizers from a local folder, atomic saves
  reward_model.py  backbone + scalar head, shared-prefix scoring, save / load
  reward.py        reward-model training and calibration
  sft.py           supervised fine-tuning on demonstrations
  generation.py    sampling replies with log-probs, best-of-n
  ppo.py           PPO against a frozen reward model and reference policy
  sampling.py      token-by-token sampling with one random generator per row
  evaluation.py    held-out evidence for the gates: policy vs reference head-to-head
  significance.py  the binomial / sign test (plain Python)
  device.py        the device setting (auto / cpu / cuda:N), bf16 autocast, TF32
  adapters.py      LoRA adapters (peft) and gradient checkpointing; merged or adapter-only saves
  distributed.py   torch.distributed (gloo / nccl) set-up and gradient averaging
  bootstrap.py     the small built-in default policy and tokenizer
  hooks.py         progress reporting and cancellation between steps
"""
