"""What ends an answer: stop sequences of token ids, and a filter that streams an answer without its stop.

Entry points: ``StopSequences(stop_ids)`` (``matched``, ``strip``) and ``StopFilter`` (tokens safe to show as
they come). A stop may be several tokens, as a prompt style's end marker written as text is (ChatML's
``<|im_end|>`` is 7 GPT-2 tokens): an answer stops once its new tokens end with any stop sequence, and that
sequence is not part of the answer. Invariant: the tokens a ``StopFilter`` passes on are the tokens
``StopSequences.strip`` leaves, in order, whether the answer stops or runs to its length limit.
"""

from __future__ import annotations

import operator
from typing import Sequence, Union

# One stop (a token id, or a sequence of ids) per item; None: nothing stops an answer before its length limit.
StopIds = Union[Sequence[Union[int, Sequence[int]]], None]


class StopSequences:
    """The token sequences that end an answer (from ``stop_ids``: ids and sequences of ids, e.g.
    ``PromptStyle.stop_ids()`` or ``(EOS_ID,)``)."""

    def __init__(self, stop_ids: StopIds):
        seqs = []
        for stop in stop_ids or ():
            seq = (operator.index(stop),) if not isinstance(stop, Sequence) else tuple(map(operator.index, stop))
            if not seq:
                raise ValueError("a stop sequence needs at least one token id")
            seqs.append(seq)
        self.seqs: tuple[tuple[int, ...], ...] = tuple(dict.fromkeys(seqs))
        self._longest = max((len(s) for s in self.seqs), default=0)

    def __bool__(self) -> bool:
        return bool(self.seqs)

    def matched(self, ids: Sequence[int]) -> int:
        """The length of the (longest) stop sequence ``ids`` end with; 0 when they end with none."""
        return max(
            (len(s) for s in self.seqs if len(s) <= len(ids) and tuple(ids[len(ids) - len(s) :]) == s), default=0
        )

    def strip(self, ids: Sequence[int]) -> list[int]:
        """``ids`` without the stop sequence they end with, if any."""
        return list(ids[: len(ids) - self.matched(ids)])

    def pending(self, ids: Sequence[int]) -> int:
        """How many of the last ``ids`` begin a stop sequence without completing it: tokens a stream holds back
        until the next tokens say whether they are the answer's or the stop's."""
        for k in range(min(self._longest - 1, len(ids)), 0, -1):
            tail = tuple(ids[len(ids) - k :])
            if any(len(s) > k and s[:k] == tail for s in self.seqs):
                return k
        return 0


class StopFilter:
    """One answer's tokens as they come, less its stop sequence: ``push`` each new token and show what it
    returns; ``stopped`` says the answer ended; ``flush`` returns the held tokens of an answer that ended
    otherwise (its length limit)."""

    def __init__(self, stops: StopSequences):
        self.stops = stops
        self.ids: list[int] = []
        self.shown = 0  # ids[:shown] were returned
        self.stopped = False

    def push(self, token: int) -> list[int]:
        """The tokens now known to be the answer's (none once it has stopped)."""
        if self.stopped:
            return []
        self.ids.append(token)
        n = self.stops.matched(self.ids)
        self.stopped = n > 0
        end = len(self.ids) - (n if self.stopped else self.stops.pending(self.ids))
        out = self.ids[self.shown : end]
        self.shown = max(self.shown, end)
        return out

    def flush(self) -> list[int]:
        """The tokens held back at the end of an answer that did not stop (they began no stop after all)."""
        if self.stopped:
            return []
        out = self.ids[self.shown :]
        self.shown = len(self.ids)
        return out
