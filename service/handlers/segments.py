"""Transcript segments: splitting one long text into timed pieces, and guessing speakers.

Why: Voxtral on vLLM returns only ``{"text", "usage": {"seconds"}}`` — no segments, no
timestamps, no speakers — while telephony expects ``segments`` like Whisper's. So we make
them, and this module says plainly how, because none of it comes from the audio:

* **Splitting.** Text is cut into sentences at ``.``, ``!``, ``?`` or ``…`` followed by
  whitespace (any script; ``3.5`` is not a boundary). A sentence longer than ``max_chars``
  is cut at clause marks (``,`` ``;`` ``:`` dashes), then between words, so a transcript
  without any punctuation still becomes pieces of at most ``max_chars``.
* **Timestamps.** Each span with known times (the whole audio, or a provider segment) is
  shared among its pieces in proportion to their length in non-space characters, i.e. we
  assume a steady speaking rate. Times are estimates; they are monotonic, contiguous, and
  end exactly at the span's end.
* **Speakers** (only when diarization is asked for). This is *not* diarization: nobody
  listened to voices. We label turns from text cues in a two-party call: the speaker changes
  after a question, and before a sentence that opens with a typical reply or greeting
  ("yes", "no", "okay", "hello", "да", "нет", "алло", …). Pieces of one sentence always
  share a speaker. With more than two speakers the labels rotate in order, which is a guess.
  Use these labels as hints for a dialogue view, never as evidence of who said what.
"""

# ruff: noqa: RUF001  (Cyrillic cue words are meant to be Cyrillic)

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MAX_SEGMENT_CHARS = 160
_SENTENCE = re.compile(r"\S.*?(?:[.!?…]+[\"'»”’)\]]*(?=\s|$)|$)", re.DOTALL)
_CLAUSE = re.compile(r"(?<=[,;:])\s+|\s+(?=[—–-]\s)")
_QUESTION_END = re.compile(r"[?？][\"'»”’)\]]*$")
_FIRST_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
_REPLY_WORDS = """
    yes yeah yep no nope ok okay sure right alright hello hi hey thanks thank sorry
    да нет ага угу хорошо ладно понятно конечно алло здравствуйте добрый спасибо извините слушаю
"""
REPLY_CUES = frozenset(_REPLY_WORDS.split())


@dataclass(frozen=True)
class Span:
    """A stretch of audio with its text: the whole recording or one provider segment."""

    start: float
    end: float
    text: str


def _pack(pieces: Sequence[str], max_chars: int, sep: str = " ") -> list[str]:
    """Greedily join consecutive pieces while the result stays within ``max_chars``."""
    out: list[str] = []
    for piece in pieces:
        if out and len(out[-1]) + len(sep) + len(piece) <= max_chars:
            out[-1] = out[-1] + sep + piece
        else:
            out.append(piece)
    return out


def _by_words(text: str, max_chars: int) -> list[str]:
    words: list[str] = []
    for w in text.split():
        # A "word" longer than a segment (a URL, a run of digits) is cut hard.
        words.extend(w[i : i + max_chars] for i in range(0, len(w), max_chars))
    return _pack(words, max_chars)


def split_sentence(sentence: str, max_chars: int = MAX_SEGMENT_CHARS) -> list[str]:
    """A sentence as pieces of at most ``max_chars``: whole, by clauses, or by words."""
    if len(sentence) <= max_chars:
        return [sentence]
    out: list[str] = []
    for clause in _pack([c for c in _CLAUSE.split(sentence) if c], max_chars):
        out.extend([clause] if len(clause) <= max_chars else _by_words(clause, max_chars))
    return out


def sentences(text: str) -> list[str]:
    """Sentences of ``text`` with whitespace normalised; punctuation kept."""
    flat = " ".join(text.split())
    return [m.group(0).strip() for m in _SENTENCE.finditer(flat) if m.group(0).strip()]


def split_text(text: str, max_chars: int = MAX_SEGMENT_CHARS) -> list[tuple[int, str]]:
    """``(sentence_index, piece)`` for every piece of ``text``, in order."""
    return [
        (i, piece)
        for i, sentence in enumerate(sentences(text))
        for piece in split_sentence(sentence, max_chars)
    ]


def _weights(pieces: Sequence[str]) -> list[int]:
    return [max(1, sum(1 for ch in p if not ch.isspace())) for p in pieces]


def _times(span: Span, pieces: Sequence[str]) -> list[tuple[float, float]]:
    weights = _weights(pieces)
    total = sum(weights)
    length = max(0.0, span.end - span.start)
    out: list[tuple[float, float]] = []
    done = 0
    for w in weights:
        start = span.start + length * done / total
        done += w
        end = span.start + length * done / total
        out.append((round(start, 3), round(end, 3)))
    if out:
        out[-1] = (out[-1][0], round(span.end, 3))
    return out


def _opens_with_reply(sentence: str) -> bool:
    m = _FIRST_WORD.search(sentence)
    return m is not None and m.start() <= 2 and m.group(0).lower() in REPLY_CUES


def label_turns(sentence_texts: Sequence[str], num_speakers: int = 2) -> list[int]:
    """Speaker index per sentence from turn cues (see the module docstring)."""
    if num_speakers <= 1:
        return [0] * len(sentence_texts)
    labels: list[int] = []
    speaker = 0
    for i, sentence in enumerate(sentence_texts):
        if i > 0:
            after_question = bool(_QUESTION_END.search(sentence_texts[i - 1]))
            if after_question or _opens_with_reply(sentence):
                speaker = (speaker + 1) % num_speakers
        labels.append(speaker)
    return labels


def speaker_name(index: int) -> str:
    return f"SPEAKER_{index:02d}"


def build_segments(
    text: str,
    duration: float,
    *,
    provider_segments: Sequence[Span] = (),
    diarization: bool = False,
    num_speakers: int | None = None,
    max_chars: int = MAX_SEGMENT_CHARS,
) -> list[dict[str, Any]]:
    """Segments ``{"id", "start", "end", "text", "speaker"?}`` for a transcript.

    Provider segments with text are kept (long ones split within their own times); otherwise
    the whole ``text`` spans ``0 .. duration``.
    """
    spans = [s for s in provider_segments if s.text.strip()]
    if not spans:
        spans = [Span(0.0, max(0.0, duration), text)]
    rows: list[tuple[int, float, float, str]] = []  # (sentence number, start, end, text)
    sentence_texts: list[str] = []
    for span in spans:
        pieces = split_text(span.text, max_chars)
        base = len(sentence_texts)
        sentence_texts.extend(sentences(span.text))
        for (i, piece), (start, end) in zip(
            pieces, _times(span, [p for _, p in pieces]), strict=True
        ):
            rows.append((base + i, start, end, piece))
    speakers = label_turns(sentence_texts, num_speakers or 2) if diarization else []
    out: list[dict[str, Any]] = []
    for n, (sentence, start, end, piece) in enumerate(rows):
        seg: dict[str, Any] = {"id": n, "start": start, "end": end, "text": piece}
        if diarization:
            seg["speaker"] = speaker_name(speakers[sentence])
        out.append(seg)
    return out
