"""Foundation tile encoders from local weights: Hugging Face transformers vision models.

Pathology foundation models such as Phikon (a ViT-B/16) and Phikon-v2 (a DINOv2 ViT-L/16) are
published as transformers folders: ``config.json``, the weights (``model.safetensors``) and
``preprocessor_config.json`` (the image processor: mean, standard deviation, input size).
Nothing is downloaded: the folder must be on disk.
"""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path
from typing import Any, Literal

import torch

from ._base import Network

POOLINGS = ("cls", "mean", "cls+mean")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
_IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL's codes in image processor configs


class HuggingFaceEncoder(Network):
    """A transformers vision model (ViT, DINOv2...) from a local folder, as a tile encoder.

    The folder is what ``save_pretrained`` writes (or a downloaded model repository): the
    model's ``config.json`` and weights, and its image processor's
    ``preprocessor_config.json``, whose mean and standard deviation become this encoder's
    ``metadata["normalisation"]`` (applied by :func:`histoexpr.tl.embed`) and whose size (and
    centre crop) are applied to every tile in :meth:`forward`. Loading never goes to the network
    (``local_files_only=True``: a path that is not a folder on disk is an error).

    A folder without weights builds the architecture with **random weights**: a
    :class:`UserWarning` says so, as features of a random network describe nothing learned.

    Parameters
    ----------
    path
        The model's folder.
    pooling
        The tile's features: ``"cls"`` (default; the class token of the last layer, after its
        layer norm, as Phikon and UNI are used), ``"mean"`` (the mean of the patch tokens,
        register tokens left out) or ``"cls+mean"`` (both, concatenated, as Virchow is used).

    Examples
    --------
    >>> encoder = hx.models.HuggingFaceEncoder(path="models/phikon")
    >>> hx.tl.embed(sdata, "he_tiles", encoder=encoder)  # or encoder="hf:models/phikon"
    """

    def __init__(self, *, path: str, pooling: Literal["cls", "mean", "cls+mean"] = "cls"
                 ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"Unknown pooling {pooling!r}; choose one of {POOLINGS}.")
        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"{folder} is not a transformers model folder (no config.json). Give the folder "
                "that save_pretrained wrote, or where the model's files were downloaded.")
        super().__init__(config={"path": str(path), "pooling": pooling})
        from transformers import AutoConfig, AutoModel

        _refuse_custom_code(folder)
        # never code from the folder, never the network, never a question on stdin
        safe = {"trust_remote_code": False, "local_files_only": True}
        try:
            config = AutoConfig.from_pretrained(folder, **safe)
        except (ValueError, OSError, KeyError) as error:
            raise ValueError(f"{folder}/config.json cannot be read as a transformers model "
                             f"configuration ({_without_advice(error)}). Give the folder that "
                             "save_pretrained wrote.") from None
        self.has_weights = any((folder / name).is_file() for name in _WEIGHT_FILES)
        if self.has_weights:
            try:
                self.model = AutoModel.from_pretrained(folder, config=config, **safe)
            except (ValueError, OSError, RuntimeError, pickle.UnpicklingError) as error:
                raise ValueError(f"The weights in {folder} cannot be loaded: "
                                 f"{_without_advice(error)}") from None
        else:
            warnings.warn(
                f"{folder} holds no weights ({', '.join(_WEIGHT_FILES[::2])}): the "
                f"{config.model_type} encoder has RANDOM weights, so its features describe "
                "nothing learned. Put the model's weights in the folder.", UserWarning,
                stacklevel=2)
            self.model = AutoModel.from_config(config, trust_remote_code=False)
        if not hasattr(config, "hidden_size"):
            raise ValueError(f"{folder} holds a {config.model_type} model, not a vision "
                             "transformer with a hidden size (ViT, DINOv2...).")
        self.pooling = pooling
        self.in_channels = int(getattr(config, "num_channels", 3))
        self.n_registers = int(getattr(config, "num_register_tokens", 0) or 0)
        self.out_features = config.hidden_size * (2 if pooling == "cls+mean" else 1)
        processing = _processing(folder, config)
        self.resize, self.crop, self.mode = processing["resize"], processing["crop"], \
            processing["mode"]
        self.metadata = {"normalisation": processing["normalisation"],
                         "size_px": processing["size_px"], "source": str(path),
                         "model_type": config.model_type}
        self._warned_size = False
        self.model.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``(N, out_features)`` of normalised tiles ``(N, C, H, W)``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects tiles of shape "
                             f"(N, {self.in_channels}, H, W), got {tuple(x.shape)}.")
        x = self._resize_and_crop(x)
        tokens = self.model(pixel_values=x).last_hidden_state
        cls, patches = tokens[:, 0], tokens[:, 1 + self.n_registers:]
        if self.pooling == "cls":
            return cls
        if self.pooling == "mean":
            return patches.mean(dim=1)
        return torch.cat([cls, patches.mean(dim=1)], dim=1)

    def _resize_and_crop(self, x: torch.Tensor) -> torch.Tensor:
        """The image processor's resize and centre crop (both linear: done after normalising)."""
        height, width = x.shape[-2:]
        if self.resize is not None:
            if "shortest_edge" in self.resize:
                scale = self.resize["shortest_edge"] / min(height, width)
                size = (round(height * scale), round(width * scale))
            else:
                size = (self.resize["height"], self.resize["width"])
            if size != (height, width):
                if not self._warned_size:
                    warnings.warn(
                        f"Tiles of {height}x{width} px are resized to {size[0]}x{size[1]} px as "
                        "the encoder's image processor asks, which changes the pixel size the "
                        f"encoder sees; tile at size={self.metadata['size_px']} px to avoid it.",
                        UserWarning, stacklevel=3)
                    self._warned_size = True
                x = torch.nn.functional.interpolate(x, size=size, mode=self.mode,
                                                    antialias=True, align_corners=False)
        if self.crop is not None:
            top = (x.shape[-2] - self.crop[0]) // 2
            left = (x.shape[-1] - self.crop[1]) // 2
            x = x[..., max(top, 0): max(top, 0) + self.crop[0],
                  max(left, 0): max(left, 0) + self.crop[1]]
        return x


def _refuse_custom_code(folder: Path) -> None:
    """Refuse a folder whose model exists only as code in the folder (``auto_map``).

    Loading never runs code from a model folder (``trust_remote_code=False`` everywhere): a
    model that transformers does not know, and whose ``config.json`` points at Python files
    of its own, cannot be built, and is refused here with the reason (never a question).
    """
    from transformers import CONFIG_MAPPING

    try:
        spec = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{folder}/config.json is not readable JSON ({error}); give the folder "
                         "that save_pretrained wrote.") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{folder}/config.json does not hold a model configuration.")
    model_type = spec.get("model_type")
    if spec.get("auto_map") and model_type not in CONFIG_MAPPING:
        raise ValueError(
            f"{folder} holds a model ({model_type!r}) that exists only as Python code in the "
            f"folder (config.json's auto_map: {sorted(spec['auto_map'])}); histoexpr never runs "
            "code from a model folder, so it cannot build it. Use a model that transformers "
            "has built in (ViT, DINOv2...), e.g. its weights converted to that architecture, "
            "or build the network yourself and pass it as encoder=.")


def _without_advice(error: BaseException) -> str:
    """An error's message without torch's advice to load with ``weights_only=False``."""
    message = str(error)
    if "weights_only" in message or "Unpickl" in message or "pickle" in message.lower():
        return ("a weights file holds Python objects other than tensors, and is refused for "
                "safety: histoexpr loads weights only (weights_only=True), so that loading "
                "never runs code from a file. Save the model with safetensors "
                "(save_pretrained(..., safe_serialization=True)).")
    return message


def _processing(folder: Path, config: Any) -> dict[str, Any]:
    """Normalisation, resize, crop and input size from ``preprocessor_config.json``."""
    image_size = getattr(config, "image_size", 224)
    image_size = image_size if isinstance(image_size, int) else int(image_size[0])
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        warnings.warn(f"{folder} has no preprocessor_config.json: tiles are normalised with "
                      f"ImageNet's mean and std and fed at {image_size} px. Add the model's "
                      "image processor configuration if it was trained otherwise.", UserWarning,
                      stacklevel=3)
        return {"normalisation": dict(_IMAGENET), "resize": None, "crop": None,
                "mode": "bilinear", "size_px": image_size}
    fix = ("Copy the model's preprocessor_config.json again (as save_pretrained of its image "
           "processor writes it), or delete it to use ImageNet's mean and std.")
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as error:  # JSONDecodeError, UnicodeDecodeError: ValueErrors
        raise ValueError(f"{path} is not readable JSON ({type(error).__name__}: {error}). "
                         f"{fix}") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{path} holds a {type(spec).__name__}, not an image processor "
                         f"configuration (a JSON object). {fix}")
    try:
        return _processing_of(spec, image_size)
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise ValueError(f"{path} is not an image processor configuration histoexpr can read "
                         f"({type(error).__name__}: {error}): it needs image_mean and image_std "
                         "as lists of numbers, and size and crop_size as a number or "
                         f"{{'height', 'width'}} or {{'shortest_edge'}}. {fix}") from None


def _processing_of(spec: dict[str, Any], image_size: int) -> dict[str, Any]:
    """The processing of a ``preprocessor_config.json`` read as ``spec``."""
    if spec.get("do_normalize", True):
        normalisation = {"mean": [float(v) for v in spec.get("image_mean", _IMAGENET["mean"])],
                         "std": [float(v) for v in spec.get("image_std", _IMAGENET["std"])]}
    else:
        normalisation = {"mean": 0.0, "std": 1.0}
    resize = _size(spec.get("size")) if spec.get("do_resize", True) else None
    crop = None
    if spec.get("do_center_crop", False):
        crop_size = _size(spec.get("crop_size", image_size))
        crop = (crop_size["height"], crop_size["width"])
    if crop is not None:
        size_px = crop[0]
    elif resize is not None and "height" in resize:
        size_px = resize["height"]
    else:
        size_px = image_size
    return {"normalisation": normalisation, "resize": resize, "crop": crop,
            "mode": _RESAMPLE.get(spec.get("resample", 2), "bilinear"), "size_px": size_px}


def _size(value: Any) -> dict[str, int] | None:
    """An image processor's size: ``{"height", "width"}`` or ``{"shortest_edge"}``."""
    if value is None:
        return None
    if isinstance(value, int):
        return {"height": value, "width": value}
    if "shortest_edge" in value:
        return {"shortest_edge": int(value["shortest_edge"])}
    return {"height": int(value["height"]), "width": int(value["width"])}
