"""fedpeft: federated, parameter-efficient fine-tuning of code and text language models.

Importing the package silences one library message before any library is imported: bitsandbytes, imported
by peft whether or not anything is quantised, warns on CPUs with AVX512-BF16 that it cannot fetch its
optional ``kernels`` inference kernel from a hub. fedpeft never uses that kernel (4-bit layers dequantise
on every CPU, see ``fedpeft.models.base.check_quantized_layers``), so the warning is noise.
"""

import logging

__version__ = "0.1.0"

BNB_KERNELS_MESSAGE = "Failed to load CPU gemm_4bit_forward from kernels-community"


def _drop_bnb_kernels_message(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(BNB_KERNELS_MESSAGE)


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_drop_bnb_kernels_message)
