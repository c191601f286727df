"""`agentledger show` and the page print a recorded LangChain message as its role and text."""

from __future__ import annotations

import io

from langchain_core.messages import AIMessage

import agentledger
from agentledger import Ledger
from agentledger._cli import main
from agentledger.langgraph._lg_calls import prepare_codec


def test_show_prints_a_message_as_role_and_text(ledger: Ledger, redis_url: str,
                                                prefix: str) -> None:
    prepare_codec(ledger.codec)

    @agentledger.step
    def reply(name: str) -> AIMessage:
        return AIMessage(content=f"hello {name}", id="run-1")

    with ledger.run("chat-1"):
        assert reply("ann").content == "hello ann"
    out = io.StringIO()
    assert main(["show", "chat-1", "--url", redis_url, "--prefix", prefix], out=out) == 0
    text = out.getvalue()
    assert '{"role": "ai", "text": "hello ann"}' in text and "$al" not in text
