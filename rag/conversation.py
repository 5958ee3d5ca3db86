"""Turning a conversation into the retrieval query for its latest turn."""

from __future__ import annotations

from collections.abc import Sequence

from rag.domain import ChatMessage
from rag.errors import InputError


def retrieval_query(messages: Sequence[ChatMessage], history_turns: int = 2) -> str:
    """The latest user turn, followed by up to `history_turns` earlier user turns (newest first).

    Follow-up questions ("and how many days for that?") rarely name their subject; the earlier
    user turns do. The latest turn comes first so that rank-sensitive embedders weigh it most.
    """
    user_turns = [m.content.strip() for m in messages if m.role == "user" and m.content.strip()]
    if not user_turns:
        raise InputError("the conversation has no user message to answer")
    latest, earlier = user_turns[-1], user_turns[:-1]
    return " ".join([latest, *reversed(earlier[-history_turns:] if history_turns else [])])
