"""Other tools' SAE directories (SAELens, sparsify, dictionary_learning) as plain tensors and JSON.

This layer sits below `saekit.sae` so that `Sae.load` can open foreign directories; it knows nothing of
`Sae`. Every reader returns a checked `ForeignSae` (the inference rule with nothing implicit), every writer
takes one whose activation scale is folded.

    fmt = detect_format(path)                       # "saekit" | "saelens" | "sparsify" | ... | None
    foreign = read_foreign(path, "auto")            # one SAE (select= picks one of several)
    write_foreign(foreign, "saelens", staging_dir)
"""

from saekit.formats.detect import detect_format, read_foreign, sae_choices, write_foreign
from saekit.formats.spec import FORMATS, ForeignSae, FormatError, check_foreign, fold_scale

__all__ = [
    "FORMATS",
    "ForeignSae",
    "FormatError",
    "check_foreign",
    "detect_format",
    "fold_scale",
    "read_foreign",
    "sae_choices",
    "write_foreign",
]
