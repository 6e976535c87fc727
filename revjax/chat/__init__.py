"""Talking to revjax models: a chat session (history → :func:`revjax.direction.chat_prompt` → engine), the
``revjax chat`` terminal front end (:mod:`revjax.chat.cli`) and the ``revjax serve`` OpenAI-compatible server
with its web page (:mod:`revjax.chat.server`, ``static/``; needs the ``serve`` extra)."""

from revjax.chat.session import ChatError, ChatModel, ChatSession, Piece, Reply, TextStream, load_model

__all__ = ["ChatError", "ChatModel", "ChatSession", "Piece", "Reply", "TextStream", "load_model"]
