"""preflab: preference optimization for generative models.

The DPO family of objectives, reward and preference models, online and self-play loops, an exact tabular lab,
and diagnostics that say whether alignment worked. See README.md and DESIGN.md.
"""
from preflab.errors import ConfigError, DataError, PreflabError

__version__ = "0.2.0"
__all__ = ["PreflabError", "ConfigError", "DataError", "__version__"]
