"""How handlers report trouble: ``reports_errors``, the one wrapper that turns an error into a message.

Bad input (``inputs.UserError``) is shown as its own one-line message; a bug
as a one-line summary, logged with its traceback. Either way the message is a
toast and the affected tab's status text, and the server keeps serving.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any, Callable

import gradio as gr

from gpt2_scratch.demo.inputs import UserError

log = logging.getLogger(__name__)


def plain(markdown: str) -> str:
    """``markdown`` as plain text, for a toast or a terminal (which show Markdown's backticks and stars as they are)."""
    return markdown.replace("`", "").replace("**", "")


def problem(message: str) -> str:
    """``message`` (Markdown) as a toast, in plain text, and as the status line's text."""
    gr.Warning(plain(message))
    return f"⚠️ {message}"


def failure(e: Exception, action: str = "Generation") -> str:
    """What to tell the user about ``e``: a UserError's own message, else a one-line summary of the bug."""
    return str(e) if isinstance(e, UserError) else f"{action} failed ({type(e).__name__}: {e})."


def reports_errors(blank: Callable[[Any, str], tuple], action: str = "Generation") -> Callable:
    """Decorate a handler method so that an error becomes ``blank(self, status line)``, not a traceback.

    ``blank`` builds the handler's outputs around the message (empty texts, an
    empty table...). A generator handler yields it as its last update. A bug is
    logged with its traceback; the server keeps serving.
    """

    def decorate(fn: Callable) -> Callable:
        def outputs(self: Any, e: Exception) -> tuple:
            if not isinstance(e, UserError):
                log.exception("%s failed", fn.__name__)
            return blank(self, problem(failure(e, action)))

        if inspect.isgeneratorfunction(fn):  # Gradio streams a handler only if it is a generator function

            @functools.wraps(fn)
            def generator(self, *args, **kwargs):
                try:
                    yield from fn(self, *args, **kwargs)
                except Exception as e:
                    yield outputs(self, e)

            return generator

        @functools.wraps(fn)
        def function(self, *args, **kwargs):
            try:
                return fn(self, *args, **kwargs)
            except Exception as e:
                return outputs(self, e)

        return function

    return decorate
