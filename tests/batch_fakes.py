"""A fake engine with VLLMEngine's surface, for batch pipeline tests that need Ray but no model."""

from __future__ import annotations

import asyncio
from typing import Any

from serve_app.errors import openai_error
from serve_app.vllm_adapter import EngineReply

# A prompt longer than this many words is refused, as vLLM refuses one longer than the context.
FAKE_CONTEXT_WORDS = 50


class FakeBatchEngine:
    """Answers after a short delay: a completion echoes the prompt's last word, one output token per call."""

    max_num_seqs = 4

    @classmethod
    async def start(cls, spec: Any, placement_group: Any = None) -> FakeBatchEngine:
        return cls()

    async def chat(self, body: dict[str, Any], request_id: str) -> EngineReply:
        text = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
        return await self._reply(body, request_id, text, {"message": {"role": "assistant", "content": text}})

    async def completions(self, body: dict[str, Any], request_id: str) -> EngineReply:
        return await self._reply(body, request_id, str(body.get("prompt", "")), {"text": body.get("prompt")})

    async def _reply(self, body: dict[str, Any], request_id: str, text: str, choice: dict[str, Any]) -> EngineReply:
        await asyncio.sleep(0.01)
        words = len(text.split())
        if words > FAKE_CONTEXT_WORDS:
            return EngineReply(400, openai_error(400, f"This model's maximum context length is "
                                                      f"{FAKE_CONTEXT_WORDS} tokens; the prompt has {words}"))
        return EngineReply(200, {"id": f"cmpl-{request_id}", "model": body["model"],
                                 "choices": [{"index": 0, **choice}],
                                 "usage": {"prompt_tokens": words, "completion_tokens": 1,
                                           "total_tokens": words + 1}})

    async def check_health(self) -> None:
        pass

    def shutdown(self) -> None:
        pass
