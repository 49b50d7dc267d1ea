"""Every exception hooked_clip raises on purpose, in one place (``from hooked_clip.errors import ...``).

Each is a subclass of the built-in a caller would already catch (``ValueError`` for bad input,
``KeyError`` for an unknown name, ``RuntimeError`` for something missing on this machine), and each message
says what was wrong and what to do.
"""

from __future__ import annotations


class HookReturnError(ValueError):
    """A hook returned something that cannot replace the activation it was given (another shape, dtype or
    device, or not a tensor)."""


class UnknownHookError(KeyError):
    """A hook name that the model does not have, or that names no tower in a run over both towers."""

    def __str__(self) -> str:  # KeyError quotes its message; print it plainly
        return str(self.args[0])


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not fit the model being built, or of an architecture that
    hooked_clip does not reimplement (the message names which and why)."""


class UnsupportedModelError(CheckpointMismatchError):
    """A model hooked_clip does not reimplement exactly (an architecture, family, pooling, activation or block
    kind the loaders refuse; the message names which and why). Every loader's refusal raises it or a subclass,
    so ``except UnsupportedModelError`` catches them all; it is a ``CheckpointMismatchError`` (and a
    ``ValueError``), as refusals were before it existed."""


class UnsupportedModelTypeError(UnsupportedModelError, TypeError):
    """:meth:`HookedCLIP.from_hf` given an object whose class is refused or is not a CLIP-family model (a
    ``TypeError`` too, as it was before :class:`UnsupportedModelError` existed)."""


class UnsupportedImageTower(UnsupportedModelError):
    """An image tower that :class:`~hooked_clip.vision.HookedCLIPVision` does not reimplement (the reason is
    the message); the model then keeps the reference module, which encodes images but has no hooks."""


class UnreadableFileError(ValueError):
    """A file that is empty, truncated, damaged or not in the format it should be in."""


class UnsafeCheckpointError(ValueError):
    """A checkpoint that can only be loaded by running code stored in it (TorchScript)."""


class WeightsUnavailableError(RuntimeError):
    """The requested checkpoint is neither on disk nor reachable."""


class TextTooLongError(ValueError):
    """A text has more tokens than the model's context length."""


class TokenizerUnavailableError(RuntimeError):
    """The model's own tokenizer could not be built here (its files are not on this machine)."""


class ArchitectureMismatchError(UnsupportedModelError):
    """Two models that should differ only in their weights (a checkpoint and its fine-tune, patched into each
    other) differ in their architecture or computation: the message names the differing config fields."""


class UnknownObjectError(KeyError, ValueError):
    """A word that names no object of a demo model's synthetic world (the message names the word and the nearest
    known names); a ``KeyError`` as the lookup was before, and a ``ValueError`` (bad input) for the command line."""

    def __str__(self) -> str:  # KeyError quotes its message; print it plainly
        return str(self.args[0])
