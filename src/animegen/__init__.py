"""animegen: curate a dataset, fine-tune, generate, evaluate and serve anime SD1.x / SDXL models.

The library's front door. `import animegen` is light (no torch): the names below load their home
module on first use (PEP 562, `animegen.core.lazy`), and are the real objects with real signatures.

The one-shot call is `animegen.generate_images(prompt, model=...)`, deliberately not
`animegen.generate(...)`: `animegen.generate` is the generation subpackage, and Python rebinds a
package attribute to its subpackage whenever `animegen.generate.<module>` is imported, so a function
of that name would silently turn into a module (the callable-module trick that papered over this
broke `import animegen; animegen.generate(...)` outright).
"""

import logging

from animegen.core.lazy import lazy_exports

# diffusers and peft import bitsandbytes wherever it is installed (the `8bit` extra); on CPUs with AVX512-BF16
# it logs, at import, that an optional 4-bit kernel package is absent. 4-bit matmuls are never used here.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__version__ = "0.1.0"

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "generate.oneshot": "generate_images",
    "generate.engine": ("GeneratedImage", "Generator"),
    "generate.request": "GenerationRequest",
})
