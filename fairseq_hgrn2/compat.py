"""Fixes for fairseq 0.12 behaviour that breaks the paper's recipe; applied when the models are registered.

fairseq 0.12 turns ``--bf16`` into ``--tpu`` while parsing the command line (a TPU-era shortcut). Without
torch_xla the trainer then crashes looking for an XLA device, so ``--bf16`` cannot train on a GPU or a CPU.
When torch_xla is not installed, we clear that implied ``tpu`` flag before fairseq's entry points run:
``--bf16`` then does what it says, cast the model to bfloat16 on the device in use.

fairseq 0.12's ``TokenBlockDataset`` with ``--sample-break-mode eos`` (the mode of ``fairseq-interactive``, of the
hub interface's ``sample`` and of ``fairseq-generate --sample-break-mode eos``) asks for ``np.compat.long``, which
numpy 2 removed; we provide that one alias (``np.int64``, what it always meant on Linux) when it is missing.
"""
import functools
import importlib.util
import logging
import types

import numpy as np

logger = logging.getLogger(__name__)


def _clear_implied_tpu(cfg) -> None:
    if not (cfg.common.tpu and cfg.common.bf16) or importlib.util.find_spec("torch_xla") is not None:
        return
    logger.info("--bf16 implies --tpu in fairseq 0.12, but torch_xla is not installed: running bf16 without TPU")
    # the flag was copied into several config groups (distributed_training, task, optimizer, ...)
    for group in cfg.values():
        if hasattr(group, "keys") and "tpu" in group:
            group.tpu = False


def _restore_numpy_compat_long() -> None:
    try:
        np.compat.long
    except AttributeError:
        np.compat = types.SimpleNamespace(long=np.int64)


def apply() -> None:
    """Wrap ``fairseq.distributed.utils.call_main``, which every fairseq command-line tool goes through.

    Also restore ``np.compat.long`` for fairseq's datasets under numpy 2.
    """
    _restore_numpy_compat_long()
    from fairseq.distributed import utils as distributed_utils

    original = distributed_utils.call_main
    if getattr(original, "_hgrn2_wrapped", False):
        return

    @functools.wraps(original)
    def call_main(cfg, main, **kwargs):
        _clear_implied_tpu(cfg)
        return original(cfg, main, **kwargs)

    call_main._hgrn2_wrapped = True
    distributed_utils.call_main = call_main
