"""Read a Lightning ``.ckpt`` safely, and the tokenizers every rnnzoo checkpoint carries."""

import os
import pickle
from pathlib import Path

import torch
from tokenizers import Tokenizer


def read_checkpoint(ckpt_path: str | os.PathLike) -> dict:
    """The contents of a local ``.ckpt``, unpickled with ``weights_only=True``: tensors and plain data
    only, so a crafted file cannot run code. Remote ``.ckpt`` files are refused (a pickle from a URL is
    a stranger's code); pretrained folders are what rnnzoo shares."""
    text = str(ckpt_path)
    if "://" in text:
        raise ValueError(
            f"{text}: remote .ckpt files are not loaded (unpickling a stranger's file can run code); "
            "share a pretrained folder instead (`rnnzoo zoo publish`) and pass its URL"
        )
    if not Path(text).is_file():
        raise FileNotFoundError(f"no checkpoint at {text}")
    try:
        checkpoint = torch.load(text, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" in str(err):  # torch's weights-only unpickler met a class or function
            raise ValueError(
                f"{text}: refused: it holds Python objects other than tensors and plain data, which could run "
                "code when loaded; load only .ckpt files written by `rnnzoo fit`"
            ) from None
        raise ValueError(f"{text}: not a readable checkpoint (corrupted); copy or train it again") from None
    except Exception as err:  # torch raises RuntimeError, KeyError, UnicodeDecodeError... for damaged files
        first_line = str(err).split(". ")[0].splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"{text}: not a readable checkpoint (truncated or corrupted: {first_line}); copy or train it again"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{text}: not a Lightning checkpoint (no state_dict)")
    return checkpoint


def checkpoint_tokenizers(ckpt_path: str | os.PathLike) -> dict[str, Tokenizer]:
    """The tokenizers an rnnzoo ``.ckpt`` stores by name (``tokenizer``, ``char_tokenizer``...)."""
    checkpoint = read_checkpoint(ckpt_path)
    names = [key for key, value in checkpoint.items() if key.endswith("tokenizer") and isinstance(value, str)]
    return {name: Tokenizer.from_str(checkpoint[name]) for name in names}
