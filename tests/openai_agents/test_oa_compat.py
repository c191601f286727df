"""DurableRunner behaves as Runner does where the SDK has rules of its own: what a model
request carries, how the conversation session is read and rewound, how streams close, how
retries and errors look. Each test compares a durable run with a plain one, or pins the
SDK's documented behaviour."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent / "children"))

from agents import Agent, Runner, set_tracing_disabled
from agents.models.openai_responses import OpenAIResponsesModel
from oa_http import FakeResponses, fake_responses
from openai import AsyncOpenAI

from agentledger import Ledger
from agentledger.openai_agents import DurableRunner

set_tracing_disabled(True)


@pytest.fixture
def endpoint() -> Iterator[tuple[FakeResponses, str]]:
    with fake_responses() as found:
        yield found


class CachingResponsesModel(OpenAIResponsesModel):
    """A Responses model for a proxy that honours prompt cache keys (the SDK sends its
    automatic key only to models that say so)."""

    def _supports_default_prompt_cache_key(self) -> bool:
        return True


def responses_agent(base_url: str, cls: type[OpenAIResponsesModel] = OpenAIResponsesModel,
                    max_retries: int = 0) -> Agent[Any]:
    client = AsyncOpenAI(base_url=base_url, api_key="sk-test", max_retries=max_retries)
    return Agent(name="desk", instructions="help", model=cls("gpt-test", client))


@pytest.mark.parametrize("cls", [CachingResponsesModel, OpenAIResponsesModel])
async def test_the_automatic_prompt_cache_key_is_sent_as_plainly(
        cls: type[OpenAIResponsesModel], ledger: Ledger,
        endpoint: tuple[FakeResponses, str]) -> None:
    fake, url = endpoint
    plain = await Runner.run(responses_agent(url, cls), "hi")
    durable = await DurableRunner.run(responses_agent(url, cls), "hi", run_id="pck",
                                      ledger=ledger)
    assert durable.final_output == plain.final_output == "seen 1 item(s)"
    plain_key, durable_key = (r.get("prompt_cache_key") for r in fake.requests)
    if cls is CachingResponsesModel:
        assert str(plain_key).startswith("agents-sdk:run:")
        assert str(durable_key).startswith("agents-sdk:run:")
    else:  # not an official endpoint: the SDK adds no key, and neither do we
        assert plain_key is None and durable_key is None
    assert set(fake.requests[0]) == set(fake.requests[1])
