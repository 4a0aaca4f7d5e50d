"""The fake `Engine` of the tests, for Serve and batch tests without a model: it starts slowly on request,
answers at once, and hangs for good (as a stuck engine core does) when a prompt says HANG_WORD."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from serve_app.engine_protocol import EngineReply, EngineSpec
from serve_app.liveness import StallWatch

HANG_WORD = "please-hang-now"


def fake_embedding(text: str) -> list[float]:
    """The fake's vector of `text`: the same text, the same vector."""
    return [float(len(text)), float(sum(map(ord, text)) % 97)]


class FakeServingEngine:
    """Each answer is one engine step; once hung, no step ever finishes and every request waits forever."""

    start_delay_s: ClassVar[float] = 0.0
    answer_delay_s: ClassVar[float] = 0.01
    max_model_len = 2048
    max_num_seqs = 8

    def __init__(self, spec: EngineSpec) -> None:
        self._watch = StallWatch(spec.stall_timeout_s) if spec.stall_timeout_s else None
        self._in_flight = 0
        self._hung = False

    @classmethod
    async def start(cls, spec: EngineSpec, placement_group: Any = None) -> FakeServingEngine:
        await asyncio.sleep(cls.start_delay_s)
        return cls(spec)

    async def chat(self, body: dict[str, Any], request_id: str) -> EngineReply:
        text = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
        return await self._reply(body, request_id, text)

    async def completions(self, body: dict[str, Any], request_id: str) -> EngineReply:
        return await self._reply(body, request_id, str(body.get("prompt", "")))

    async def responses(self, body: dict[str, Any], request_id: str) -> EngineReply:
        reply = await self._reply(body, request_id, str(body.get("input", "")))
        reply.body = {"id": f"resp_{request_id}", "object": "response", "model": body.get("model"),
                      "status": "completed", "output": [{"type": "message", "role": "assistant", "content": [
                          {"type": "output_text", "text": "ok"}]}],
                      "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}}
        return reply

    async def embeddings(self, body: dict[str, Any], request_id: str) -> EngineReply:
        given = body.get("input")
        texts = [str(text) for text in ([given] if isinstance(given, str) else given or [])]
        reply = await self._reply(body, request_id, " ".join(texts))
        reply.body = {"object": "list", "model": body.get("model"),
                      "data": [{"object": "embedding", "index": i, "embedding": fake_embedding(text)}
                               for i, text in enumerate(texts)],
                      "usage": {"prompt_tokens": len(texts), "total_tokens": len(texts)}}
        return reply

    async def tokenize(self, body: dict[str, Any], request_id: str) -> EngineReply:
        """A token per word, its id the word's length."""
        ids = [len(word) for word in str(body.get("prompt", "")).split()]
        return EngineReply(200, {"tokens": ids, "count": len(ids), "max_model_len": self.max_model_len})

    async def detokenize(self, body: dict[str, Any], request_id: str) -> EngineReply:
        return EngineReply(200, {"prompt": " ".join("x" * int(n) for n in body.get("tokens", []))})

    async def _reply(self, body: dict[str, Any], request_id: str, text: str) -> EngineReply:
        self._in_flight += 1
        try:
            self._hung = self._hung or HANG_WORD in text
            if self._hung:
                await asyncio.Event().wait()
            await asyncio.sleep(self.answer_delay_s)
            if self._watch is not None:
                self._watch.stepped()
            return EngineReply(200, {"id": f"chatcmpl-{request_id}", "object": "chat.completion",
                                     "model": body.get("model"),
                                     "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                                  "finish_reason": "stop"}],
                                     "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
        finally:
            self._in_flight -= 1

    async def check_health(self) -> None:
        if self._watch is not None:
            self._watch.check(self._in_flight)

    def unfinished_requests(self) -> int:
        return self._in_flight

    def metrics_registry(self) -> Any:
        from prometheus_client import CollectorRegistry

        return CollectorRegistry()

    def shutdown(self) -> None:
        pass


class SlowStartingEngine(FakeServingEngine):
    """Loads for a few seconds, as a real engine does: long enough to see /ready say 503 meanwhile."""

    start_delay_s = 8.0


class SlowAnswerEngine(FakeServingEngine):
    """Takes seconds per answer, as a long generation does: long enough to drain its node meanwhile."""

    answer_delay_s = 15.0
