"""Write a tiny, randomly initialised Qwen3 model that vLLM can load, without downloading anything.

    python -m dynamo.vllm.tiny_model OUT_DIR [--tokenizer-dir DIR] [--seed 0]

The architecture is Qwen3's with two layers and a 128-wide hidden state (about 20M parameters, 40 MB);
the tokenizer, tokenizer config and generation config are the real Qwen3-0.6B files. It writes
gibberish, but every engine mechanism behind it is real: paged attention, prefix caching, KV events,
sampling, stop tokens. Weights come from a fixed seed, so two runs write the same model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

#: what changes from the real Qwen3-0.6B config; the CPU attention backend needs head_dim 64 (16 fails)
TINY_OVERRIDES = {
    "num_hidden_layers": 2,
    "layer_types": ["full_attention", "full_attention"],
    "max_window_layers": 2,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 64,
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")


def default_tokenizer_dir() -> Path | None:
    """``shared/data/models/Qwen3-0.6B`` beside the repository checkout, when present."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent.parent / "shared" / "data" / "models" / "Qwen3-0.6B"
        if candidate.is_dir():
            return candidate
    return None


def write_tiny_model(out_dir: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """Build the model with ``transformers`` and save it with its tokenizer files; returns ``out_dir``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    missing = [n for n in ("config.json", *TOKENIZER_FILES) if not (tokenizer_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{tokenizer_dir} lacks {', '.join(missing)}")
    cfg = json.loads((tokenizer_dir / "config.json").read_text())
    cfg.update(TINY_OVERRIDES)
    cfg.pop("transformers_version", None)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    config = AutoConfig.from_pretrained(out_dir)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out_dir)
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / name, out_dir / name)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m dynamo.vllm.tiny_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", type=Path, help="Directory to write the model to (created if missing).")
    p.add_argument("--tokenizer-dir", type=Path, default=None,
                   help="Qwen3 folder with config.json and tokenizer files "
                        "(default: ../shared/data/models/Qwen3-0.6B beside the checkout).")
    p.add_argument("--seed", type=int, default=0, help="Seed for the random weights (default 0).")
    args = p.parse_args(argv)
    tok_dir = args.tokenizer_dir or default_tokenizer_dir()
    if tok_dir is None:
        p.error("no Qwen3 tokenizer folder found; pass --tokenizer-dir")
    try:
        out = write_tiny_model(args.out_dir, tok_dir, args.seed)
    except ImportError as exc:
        p.error(f"{exc.name or exc} is not installed: the tiny model needs torch and transformers "
                "(`make vllm` installs them)")
    except FileNotFoundError as exc:
        p.error(str(exc))
    print(out, file=sys.stdout)


if __name__ == "__main__":
    main()
