"""SAEs in and out of SAELens, sparsify and dictionary_learning, every conversion checked by its outputs.

    from saekit.interop import export_sae, import_sae
    export_sae("runs/demo/topk", "saelens", "out/topk-saelens")      # also: sparsify, dictionary_learning
    import_sae("out/topk-saelens", "runs/imported")                   # a run dir: eval, index, app
    Sae.load("out/topk-saelens")                                      # or open it directly

Readers and writers of the files live below `saekit.sae` (`saekit.formats`), so `Sae.load` can open
foreign directories; this package adds the run-directory side and the checks.
"""

from saekit.interop.common import REPORT_FILE, ConversionReport
from saekit.interop.export import export_sae
from saekit.interop.importer import import_sae
from saekit.interop.reference import reference_forward
from saekit.interop.verify import Agreement, compare_outputs

__all__ = [
    "REPORT_FILE",
    "Agreement",
    "ConversionReport",
    "compare_outputs",
    "export_sae",
    "import_sae",
    "reference_forward",
]
