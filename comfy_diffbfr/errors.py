"""User-facing errors. Each message says what was wrong and what to do about it."""


class DiffBFRError(Exception):
    """Base class: the command line prints the message without a traceback."""


class CheckpointError(DiffBFRError):
    """A model file that is missing, unreadable, unsafe, of an unknown format, or contradicts its hints."""


class WrongModelKindError(DiffBFRError):
    """A model that cannot serve the stage it was given to (e.g. an unconditional model in an IRM stage)."""


class ImageReadError(DiffBFRError):
    """An input image that cannot be read or decoded."""


class NoFaceError(DiffBFRError):
    """No face was found where one was required."""


class WeightsMissingError(DiffBFRError):
    """Auxiliary weights (e.g. a face detector) are not on disk and cannot be downloaded."""


class Interrupted(DiffBFRError):
    """The user cancelled the run (ComfyUI's Cancel, or Ctrl-C on the command line)."""


class InvalidParameterError(DiffBFRError, ValueError):
    """A parameter outside its valid range or of the wrong shape (e.g. strength 0, mismatched batch sizes)."""


class WorkflowError(DiffBFRError):
    """A workflow file that cannot be read, converted or validated (unknown node, bad input value, ...)."""


class OutputError(DiffBFRError):
    """An output file that cannot be written (folder not writable, disk full, an empty output name, ...)."""


class NotEnoughMemoryError(DiffBFRError):
    """Even one face does not fit into the compute device's memory."""
