"""Networks. Each file registers its networks by name with their config dataclass
(`@register_model("mamba_unet_v2", config=UNet2DConfig, task="dose_regression")`); every module of
this package is imported when the registry is first used, so a new model is one new file here.
Networks know nothing of files, datasets or samplers.
"""

from rtgen.core.registry import MODELS, build_model, count_parameters, register_model

__all__ = ["MODELS", "build_model", "count_parameters", "register_model"]
