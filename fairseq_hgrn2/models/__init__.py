"""fairseq models of the plugin; importing this package registers them."""
from .. import checkpoints, compat
from . import hgrn2_lm  # noqa: F401  (registers hgrn2_lm and its architectures)

compat.apply()
checkpoints.apply()
