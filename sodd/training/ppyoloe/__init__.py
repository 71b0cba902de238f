"""PP-YOLOE+ SOD detectors in Paddle dygraph, written from the published design.

`config` names the configurations, `model` builds the training model and the export wrapper.
"""

from sodd.training.ppyoloe.config import CONFIGS, PPYOLOEConfig, get_config

__all__ = ["CONFIGS", "PPYOLOEConfig", "get_config"]
