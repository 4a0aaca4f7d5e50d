"""The shared fake engine made to answer as batch pipeline tests need: echoes, and a context limit."""

from __future__ import annotations

from typing import Any

from serve_app.engine_protocol import EngineReply
from serve_app.errors import openai_error
from tests.engine_fakes import FakeServingEngine

# A prompt longer than this many words is refused, as vLLM refuses one longer than the context.
FAKE_CONTEXT_WORDS = 50


class FakeBatchEngine(FakeServingEngine):
    """Answers after a short delay: a completion echoes the prompt, a chat the messages, one output token each."""

    max_num_seqs = 4

    async def chat(self, body: dict[str, Any], request_id: str) -> EngineReply:
        text = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
        return await self._echo(body, request_id, text, {"message": {"role": "assistant", "content": text}})

    async def completions(self, body: dict[str, Any], request_id: str) -> EngineReply:
        return await self._echo(body, request_id, str(body.get("prompt", "")), {"text": body.get("prompt")})

    async def _echo(self, body: dict[str, Any], request_id: str, text: str, choice: dict[str, Any]) -> EngineReply:
        reply = await self._reply(body, request_id, text)  # the shared fake's step: in-flight count, hangs
        words = len(text.split())
        if words > FAKE_CONTEXT_WORDS:
            return EngineReply(400, openai_error(400, f"This model's maximum context length is "
                                                      f"{FAKE_CONTEXT_WORDS} tokens; the prompt has {words}"))
        reply.body = {"id": f"cmpl-{request_id}", "model": body["model"], "choices": [{"index": 0, **choice}],
                      "usage": {"prompt_tokens": words, "completion_tokens": 1, "total_tokens": words + 1}}
        return reply
