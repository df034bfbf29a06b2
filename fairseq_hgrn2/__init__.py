"""fairseq-hgrn2: HGRN2 (gated linear RNNs with state expansion) as a fairseq ``--user-dir`` plugin.

``fairseq-train --user-dir fairseq_hgrn2`` imports ``fairseq_hgrn2.models``, which registers the model and its
architectures. Importing this package alone (or ``fairseq_hgrn2.ops``) needs neither fairseq nor triton; import
``fairseq_hgrn2.models`` to register the architectures in-process.
"""
__version__ = "0.1.0"
