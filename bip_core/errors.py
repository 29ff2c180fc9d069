"""Errors that carry a message a user can act on. The app and the CLI show `str(err)` as is."""


class BipError(Exception):
    """Base class: anything raised on purpose by bip_core, with a readable message."""


class ModelSpecError(BipError):
    """The model spec names nothing loadable (missing folder, unknown Hub id, corrupt files)."""


class UnsupportedArchitectureError(BipError):
    """The model is not one of the LLaMA-family architectures we know how to score and prune."""


class OfflineError(BipError):
    """An online resource (Hugging Face Hub, hub datasets) was asked for and cannot be reached."""


class DataError(BipError):
    """Text or task data is missing, empty, or too short for what was asked."""


class PlanError(BipError):
    """A pruning plan cannot be made or applied (bad ratio, impossible constraints, other model)."""


class ExportError(BipError):
    """An exported pruned model cannot be written, or its folder is incomplete or corrupt."""


class ScoresError(BipError):
    """Scores are malformed, from another model, or cannot be computed as asked (method, unit, tokens)."""


class DeviceError(BipError):
    """A device, dtype or memory budget is malformed or not available on this machine."""


class ModelTooLargeError(BipError):
    """The model does not fit in the memory it may use; the message names the ways out."""
