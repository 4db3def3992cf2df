"""`manage.py serve_policies`: the policy server. The app's policies (the built-in default and
every saved version) answered over the OpenAI chat-completions protocol, so that the live
page, the batch generation runs and any other tool can use them like any model endpoint.

It runs `transformers serve` (the transformers CLI's OpenAI-compatible server) in place of
this process: a request's `model` is a policy folder (the built-in endpoints send their
version's folder), loaded on first use and unloaded after --model-timeout idle seconds.
Every policy the app saves carries the chat template and generation config this needs
(training/ml/checkpoint.py: make_servable). Offline: nothing is fetched from a hub.

It listens where POLICY_SERVER_URL points (default http://127.0.0.1:8001/v1). Keep it on
loopback: it has no authentication and loads any folder a request names.
"""

import os
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


def serve_command(*, host: str, port: int, device: str, model_timeout: int, model: str | None = None) -> list[str]:
    """The `transformers serve` command line (the venv's own CLI)."""
    cli = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which("transformers")
    if cli is None:
        raise CommandError("the transformers CLI is not installed: pip install 'transformers[serving]'")
    command = [cli, "serve", "--host", host, "--port", str(port), "--device", device, "--dtype", "auto",
               "--model-timeout", str(model_timeout), "--log-level", "warning"]
    return command + ([model] if model else [])


def serve_environment(var_dir: Path) -> dict[str, str]:
    """Offline (no hub, no update check), with a hub cache folder of our own (the server's
    /v1/models answers 500 when the folder is missing)."""
    cache = var_dir / "hf_cache"
    cache.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1", "HF_HUB_CACHE": str(cache), "TOKENIZERS_PARALLELISM": "false"}


class Command(BaseCommand):
    help = "Serve the app's policies over the OpenAI chat-completions protocol (transformers serve) at POLICY_SERVER_URL."

    def add_arguments(self, parser):
        parser.add_argument("--model-timeout", type=int, default=900, help="unload a policy idle this many seconds (default 900)")
        parser.add_argument("--device", default="", help="cpu, cuda, cuda:N or auto (default: TRAINING_DEVICE)")
        parser.add_argument("--model", default="", help="serve only this folder, loaded at start (requests may leave `model` out)")
        parser.add_argument("--print", action="store_true", help="print the command instead of running it")

    def handle(self, *args, model_timeout, device, model, **options):
        parts = urlsplit(settings.POLICY_SERVER_URL)
        if parts.scheme != "http" or not parts.hostname or parts.path.rstrip("/") != "/v1":
            raise CommandError(f"POLICY_SERVER_URL must look like http://127.0.0.1:8001/v1, not {settings.POLICY_SERVER_URL!r}")
        if model and not (Path(model) / "config.json").exists():
            raise CommandError(f"--model {model!r} is not a checkpoint folder (no config.json)")
        command = serve_command(
            host=parts.hostname, port=parts.port or 80, device=device or settings.TRAINING_DEVICE, model_timeout=model_timeout,
            model=str(Path(model).resolve()) if model else None,
        )
        if options["print"]:
            self.stdout.write(" ".join(command))
            return
        self.stderr.write(f"policy server on {settings.POLICY_SERVER_URL}: {' '.join(command)}")
        sys.stderr.flush()
        os.execve(command[0], command, serve_environment(Path(settings.VAR_DIR)))
