"""Segment splitting, timestamps and heuristic speaker labels on real-looking transcripts."""

# ruff: noqa: RUF001

from __future__ import annotations

import itertools

import pytest

from service.handlers.segments import (
    MAX_SEGMENT_CHARS,
    Span,
    build_segments,
    label_turns,
    sentences,
)

SHORT_CALL = "Hello? Yes, I can hear you. Okay."

SUPPORT_CALL = (
    "Hello, thank you for calling Northwind support, my name is Anna, how can I help you "
    "today? Hi Anna, I ordered a sofa two weeks ago, order four five seven two one, and it "
    "still has not arrived even though the tracking page said it would be delivered last "
    "Tuesday between nine and twelve in the morning, and nobody called me to say it was "
    "late. I am sorry to hear that. Let me check the order. I see the delivery was moved to "
    "Friday because the warehouse ran out of the fabric you chose. Friday is too late, we "
    "have guests on Saturday! Is there anything you can do? I can offer a delivery on "
    "Thursday afternoon and a 3.5 percent discount for the delay. Okay, Thursday works. "
    "Thank you. You are welcome, have a nice day."
)

NO_PUNCTUATION = (
    "so basically what happened was the driver came to the wrong address and then he called "
    "me but I was at work and could not answer and then the package went back to the depot "
    "and now they say I have to pick it up myself which is forty minutes away by car and I "
    "do not even have a car right now because it is in the repair shop since last week"
)

RUSSIAN_CALL = (
    "Алло, здравствуйте! Это служба доставки? Да, здравствуйте, слушаю вас. Я заказывал "
    "холодильник на прошлой неделе, номер заказа четыре пять семь два один, и курьер так и не "
    "приехал, хотя в приложении было написано, что доставка будет во вторник с девяти до "
    "двенадцати, а мне никто даже не позвонил. Понимаю, сейчас проверю. Доставку перенесли "
    "на пятницу. Это слишком поздно, можно раньше? Хорошо, могу предложить четверг. Спасибо."
)


def _words(text: str) -> list[str]:
    return text.split()


@pytest.mark.parametrize(
    ("text", "duration"),
    [(SHORT_CALL, 3.0), (SUPPORT_CALL, 61.5), (NO_PUNCTUATION, 24.0), (RUSSIAN_CALL, 40.0)],
)
def test_segments_cover_the_text_and_the_audio(text: str, duration: float) -> None:
    segs = build_segments(text, duration)
    assert segs, "a transcript yields at least one segment"
    # No word lost, none invented, order kept.
    assert _words(" ".join(s["text"] for s in segs)) == _words(text)
    assert [s["id"] for s in segs] == list(range(len(segs)))
    assert all(len(s["text"]) <= MAX_SEGMENT_CHARS for s in segs)
    # Timestamps: from 0 to the end, contiguous, never going backwards.
    assert segs[0]["start"] == 0.0
    assert segs[-1]["end"] == duration
    for a, b in itertools.pairwise(segs):
        assert a["end"] == b["start"]
    assert all(s["start"] <= s["end"] for s in segs)
    assert all("speaker" not in s for s in segs)


def test_long_transcript_is_split_into_sentences_and_long_sentences_at_clauses() -> None:
    segs = build_segments(SUPPORT_CALL, 61.5)
    texts = [s["text"] for s in segs]
    assert texts[0].startswith("Hello, thank you for calling")
    assert "I am sorry to hear that." in texts
    # "3.5 percent" is a number, not a sentence end.
    assert any("3.5 percent discount" in t for t in texts)
    # The long complaint sentence is cut at commas, not in the middle of a phrase: its pieces
    # are consecutive segments that rebuild it, each but the last ending at a comma.
    [long] = [s for s in sentences(SUPPORT_CALL) if len(s) > MAX_SEGMENT_CHARS]
    first = next(i for i, t in enumerate(texts) if long.startswith(t))
    last = next(j for j in range(first, len(texts)) if " ".join(texts[first : j + 1]) == long)
    pieces = texts[first : last + 1]
    assert len(pieces) >= 2
    assert all(p.endswith(",") for p in pieces[:-1]), pieces
    assert pieces[-1].endswith(".")


def test_text_without_punctuation_is_cut_between_words() -> None:
    segs = build_segments(NO_PUNCTUATION, 24.0, max_chars=80)
    assert len(segs) >= 4
    assert all(len(s["text"]) <= 80 for s in segs)
    assert _words(" ".join(s["text"] for s in segs)) == _words(NO_PUNCTUATION)
    # Longer pieces get more time: time is shared by length.
    by_len = sorted(segs, key=lambda s: len(s["text"]))
    assert by_len[0]["end"] - by_len[0]["start"] <= by_len[-1]["end"] - by_len[-1]["start"]


def test_russian_sentences_and_turns() -> None:
    assert sentences(RUSSIAN_CALL)[:3] == [
        "Алло, здравствуйте!",
        "Это служба доставки?",
        "Да, здравствуйте, слушаю вас.",
    ]
    segs = build_segments(RUSSIAN_CALL, 40.0, diarization=True)
    speaker = {s["text"]: s["speaker"] for s in segs}
    # After a question the other party answers.
    assert speaker["Это служба доставки?"] != speaker["Да, здравствуйте, слушаю вас."]
    assert (
        speaker["Это слишком поздно, можно раньше?"] != speaker["Хорошо, могу предложить четверг."]
    )
    assert set(speaker.values()) == {"SPEAKER_00", "SPEAKER_01"}


def test_speaker_labels_follow_questions_and_replies() -> None:
    segs = build_segments(SHORT_CALL, 3.0, diarization=True)
    assert [(s["text"], s["speaker"]) for s in segs] == [
        ("Hello?", "SPEAKER_00"),
        ("Yes, I can hear you.", "SPEAKER_01"),
        ("Okay.", "SPEAKER_00"),
    ]


def test_pieces_of_one_sentence_share_a_speaker() -> None:
    segs = build_segments(SUPPORT_CALL, 61.5, diarization=True, max_chars=60)
    complaint = [s for s in segs if s["id"] > 0 and s["start"] < 30]
    # Every piece between the opening question and "I am sorry" belongs to the caller.
    caller = [s for s in complaint if s["speaker"] == "SPEAKER_01"]
    assert len(caller) >= 3
    texts = " ".join(s["text"] for s in caller)
    assert "tracking page" in texts
    assert "nobody called me" in texts


def test_one_speaker_and_many_speakers() -> None:
    assert {s["speaker"] for s in build_segments(SUPPORT_CALL, 60, diarization=True,
                                                 num_speakers=1)} == {"SPEAKER_00"}  # fmt: skip
    labels = label_turns(["Who is there?", "Me. Who else?", "Yes.", "No."], num_speakers=3)
    assert labels == [0, 1, 2, 0]
    assert all(0 <= n < 3 for n in labels)


def test_provider_segments_are_kept_and_long_ones_split_inside_their_times() -> None:
    spans = [
        Span(0.0, 4.0, "Hello, thank you for calling."),
        Span(4.0, 30.0, NO_PUNCTUATION),
        Span(30.0, 31.0, "   "),
    ]
    segs = build_segments("ignored", 31.0, provider_segments=spans, max_chars=100)
    assert segs[0] == {"id": 0, "start": 0.0, "end": 4.0, "text": "Hello, thank you for calling."}
    inner = segs[1:]
    assert len(inner) >= 3
    assert inner[0]["start"] == 4.0
    assert inner[-1]["end"] == 30.0


def test_empty_and_tiny_transcripts() -> None:
    assert build_segments("", 5.0) == []
    assert build_segments("   ", 5.0) == []
    assert build_segments("Yes", 0.0) == [{"id": 0, "start": 0.0, "end": 0.0, "text": "Yes"}]
