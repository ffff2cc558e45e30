"""fedpeft: federated, parameter-efficient fine-tuning of code and text language models.

Importing the package silences two bitsandbytes warnings before any library is imported; peft imports
bitsandbytes whether or not anything is quantised, so users read them as errors in runs that quantise
nothing. Neither concerns what fedpeft uses:
- on CPUs with AVX512-BF16 (0.48 and later), that its optional ``kernels`` inference kernel cannot be
  fetched from a hub: fedpeft never uses that kernel (4-bit layers dequantise on every CPU, see
  ``fedpeft.models.base.check_quantized_layers``);
- on CPU-only builds (before 0.48), that it "was compiled without GPU support" and its 8-bit optimizers
  are unavailable: fedpeft's optimizer is torch's AdamW.
"""

import logging

__version__ = "0.1.0"

SILENCED_LIBRARY_MESSAGES = {
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
    "bitsandbytes.cextension": "The installed version of bitsandbytes was compiled without GPU support",
}


def _silence(logger_name: str, prefix: str) -> None:
    logging.getLogger(logger_name).addFilter(lambda record: not str(record.msg).startswith(prefix))


for _name, _prefix in SILENCED_LIBRARY_MESSAGES.items():
    _silence(_name, _prefix)


def _stdlib_train_code():
    """The texts random-init built-in models train their tokenizer on: the stdlib corpus's train split."""
    from fedpeft.data.stdlib_corpus import corpus_split, load_stdlib_corpus

    return (r.code for r in load_stdlib_corpus() if corpus_split(r) == "train")


from fedpeft.models.builtin import set_tokenizer_corpus  # noqa: E402  (the root package composes the layers)

set_tokenizer_corpus(_stdlib_train_code)
