"""Networks: tile encoders and the registry that lets model files be rebuilt safely."""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(
    __name__,
    submod_attrs={
        "_registry": ["register_model", "registered_models"],
        "_encoders": ["ConvEncoder"],
    },
)
