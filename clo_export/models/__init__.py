"""Model assembly from YAML and checkpoint loading (imports torch).

``clo_export.models.load(path, cfg=None, plugins=())`` is :func:`clo_export.models.checkpoint.load`,
imported on first use so that ``clo_export.models.safe_pickle`` and friends stay importable alone.
"""

from clo_export.lazy import lazy_attributes

__getattr__ = lazy_attributes(
    __name__,
    {
        "load": "clo_export.models.checkpoint",
        "LoadedModel": "clo_export.models.checkpoint",
        "DetectionModel": "clo_export.models.yolo",
    },
)
