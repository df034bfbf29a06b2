"""Checkpoint safety for fairseq 0.12: atomic copies, and clear errors for unreadable or mismatched checkpoints.

fairseq 0.12 writes the first file of a save (``checkpoint_<epoch>_<updates>.pt`` or ``checkpoint_best.pt``) to a
temporary file and renames it, but then *copies* that file over the others, ``checkpoint_last.pt`` included, in
place: a job killed during the copy leaves a truncated ``checkpoint_last.pt`` behind, and the next run crashes on it
with ``OSError: [Errno 22] Invalid argument`` or an empty ``EOFError``. ``apply()`` (run when the models register)

- makes fairseq's local copies atomic: copy to ``<dst>.tmp``, flush to disk, rename over ``<dst>``;
- turns an unreadable checkpoint into a ``CheckpointError`` that names the file and says what to do;
- refuses a ``--restore-file`` that does not exist (fairseq would train from scratch without a word);
- before a training run restores a checkpoint, checks that it holds the model this run builds (architecture,
  width, depth, expand ratio, vocabulary). Otherwise fairseq either fails with "please ensure that the
  architectures match" or, for a different ``--expand-ratio`` (same parameter shapes), silently trains another
  model from the checkpoint's weights.

``read_checkpoint`` and ``describe_mismatch`` are also what ``scripts/checkpoint_info.py`` and the training and
evaluation scripts use to check their input before starting.
"""
import contextlib
import functools
import os
import pickle
import re
import shutil
import threading
from typing import Any, Dict, Optional


# Fields of the model config that change what a checkpoint's weights mean; all other fields (dropout, ...) may
# change on a resume.
MODEL_FIELDS = ("token_mixer", "expand_ratio", "decoder_embed_dim", "decoder_layers", "glu_dim", "log_decay_clamp")
EMBEDDING_KEY = "decoder.embed_tokens.weight"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used as asked; the message is one line that says what to do."""


def atomic_copy(src: str, dst: str) -> None:
    """Copy ``src`` to ``dst`` so that ``dst`` is at every moment either its old content or a full copy."""
    tmp = f"{dst}.tmp"
    try:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the rename must not reach the disk before the data
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _unreadable(path: str, err: BaseException) -> CheckpointError:
    if isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in str(err):
        # torch names the first class it refused: "Unsupported global: GLOBAL argparse.Namespace was not ..."
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = refused.group(1) if refused else "Python objects"
        return CheckpointError(
            f"torch's safe loader (weights_only=True) refuses {path}: it pickles {what}, as checkpoints of older "
            "fairseq versions do; if you trust the file, convert it once with "
            "torch.serialization.add_safe_globals (README, Reliability)"
        )
    reason = f"{type(err).__name__}: {err}".split("\n")[0].rstrip(": ")
    return CheckpointError(
        f"checkpoint {path} is truncated or corrupt ({reason}); an interrupted copy or a full disk leaves such "
        "files: move it away and resume from another checkpoint of the save dir (or start over)"
    )


def read_checkpoint(path: str, loader=None) -> Dict[str, Any]:
    """The state dict of a fairseq checkpoint, loaded on CPU; raises CheckpointError when it is missing or broken.

    ``loader`` is fairseq's ``checkpoint_utils.load_checkpoint_to_cpu`` (the default) or a wrapped copy of it.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} not found")
    if loader is None:
        from fairseq import checkpoint_utils

        loader = checkpoint_utils.load_checkpoint_to_cpu
    try:
        return loader(path)
    except CheckpointError:
        raise
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as err:
        raise _unreadable(path, err) from err


def model_summary(state: Dict[str, Any]) -> Dict[str, Any]:
    """Architecture, model-defining fields and vocabulary size stored in a checkpoint's state dict."""
    cfg = state.get("cfg")
    model_cfg = cfg["model"] if cfg is not None and cfg.get("model") is not None else vars(state.get("args") or {})
    summary = {"arch": model_cfg.get("arch", model_cfg.get("_name"))}
    summary.update({name: model_cfg.get(name) for name in MODEL_FIELDS})
    embedding = (state.get("model") or {}).get(EMBEDDING_KEY)
    summary["vocab"] = int(embedding.shape[0]) if embedding is not None else None
    return summary


def describe_mismatch(path: str, stored: Dict[str, Any], wanted: Dict[str, Any]) -> Optional[str]:
    """One line saying how checkpoint ``path`` (``stored``, from model_summary) differs from ``wanted``, or None.

    Only keys present (not None) on both sides are compared, so a caller may check just the vocabulary.
    """
    differ = [k for k in stored if stored.get(k) is not None and wanted.get(k) is not None and stored[k] != wanted[k]]
    # architectures of the same model may differ in name only (e.g. outproduct_16 with --expand-ratio 8)
    if differ == ["arch"] and all(stored.get(k) == wanted.get(k) for k in MODEL_FIELDS):
        differ = []
    if not differ:
        return None
    if differ == ["vocab"]:
        return (
            f"checkpoint {path} has a vocabulary of {stored['vocab']} entries but the data's dict.txt gives "
            f"{wanted['vocab']}: use the data-bin (dict.txt) the model was trained with"
        )
    have = ", ".join(f"{k}={stored[k]}" for k in differ)
    want = ", ".join(f"{k}={wanted[k]}" for k in differ)
    return (
        f"checkpoint {path} holds another model ({have}) than this run builds ({want}): give the checkpoint's "
        "--arch and model flags, or use another --save-dir (SAVE_ROOT) for a new model"
    )


# The model config and vocabulary size of the run whose Trainer is restoring a checkpoint (see apply()).
_restoring = threading.local()


def apply() -> None:
    """Patch fairseq 0.12's checkpoint copy, loader and trainer restore as described in the module docstring."""
    from fairseq import checkpoint_utils
    from fairseq.file_io import PathManager
    from fairseq.trainer import Trainer

    if getattr(checkpoint_utils.load_checkpoint_to_cpu, "_hgrn2_wrapped", False):
        return

    original_copy = PathManager.copy

    def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        local = not (PathManager.path_requires_pathmanager(src_path) or PathManager.path_requires_pathmanager(dst_path))
        if not local or (os.path.exists(dst_path) and not overwrite):
            return original_copy(src_path, dst_path, overwrite=overwrite)
        atomic_copy(src_path, dst_path)
        return True

    PathManager.copy = staticmethod(copy)

    original_load = checkpoint_utils.load_checkpoint_to_cpu

    @functools.wraps(original_load)
    def load_checkpoint_to_cpu(path, arg_overrides=None, load_on_all_ranks=False):
        state = read_checkpoint(
            path, lambda p: original_load(p, arg_overrides=arg_overrides, load_on_all_ranks=load_on_all_ranks)
        )
        wanted = getattr(_restoring, "wanted", None)
        if wanted is not None:
            problem = describe_mismatch(path, model_summary(state), wanted)
            if problem:
                raise CheckpointError(problem)
        return state

    load_checkpoint_to_cpu._hgrn2_wrapped = True
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu

    original_restore = Trainer.load_checkpoint

    @functools.wraps(original_restore)
    def restore(self, filename, *args, **kwargs):
        # fairseq starts from scratch, silently, when an explicit --restore-file does not exist
        if self.cfg.checkpoint.restore_file != "checkpoint_last.pt" and not PathManager.isfile(filename):
            raise CheckpointError(f"--restore-file {filename} not found: give an existing checkpoint")
        model_cfg = self.cfg.model
        wanted = {"arch": model_cfg.get("arch", model_cfg.get("_name"))}
        wanted.update({name: model_cfg.get(name) for name in MODEL_FIELDS})
        wanted["vocab"] = len(self.task.target_dictionary)
        _restoring.wanted = wanted
        try:
            return original_restore(self, filename, *args, **kwargs)
        finally:
            _restoring.wanted = None

    Trainer.load_checkpoint = restore
