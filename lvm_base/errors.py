"""The one error type for bad user input, shared by every package.

The `lvm` CLI turns any `InputError` into a one-line `error: ...` and exit
code 2; anything else is a bug and keeps its traceback.
"""


class InputError(ValueError):
    """A user mistake (missing/corrupt file, bad config key or value) with a message fit for one line."""


class ImageLoadError(InputError):
    """An image file that does not exist or that PIL cannot decode; the message names the path."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def one_line(e: BaseException) -> str:
    """`e` as one line fit for `error: ...`: its message with white space folded, naming the file of an
    OSError whose message leaves it out."""
    text = str(e) or type(e).__name__
    if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
        text = f"{e.filename}: {text}"
    return " ".join(text.split())
